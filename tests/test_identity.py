"""Session identity behind access rules (issue #6): a rule names the party its owner meant.

An id stays claimed by its session's token after the session ends; namespaces reserved
for principals need a key to create; a rule may name only 'any', a claimed or reserved
id, or a glob inside a reserved namespace. Store-level tests use a fake clock; the
server-level ones an embedded server; the CLI one a real ``dspex-rx serve``.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import SCRIPT, Clock, cli_server, end, grant

import dspex_rx
from dspex_rx import AuthenticationError
from dspex_rx.core.identity import Principals, RetiredIds
from dspex_rx.core.limits import Limits
from dspex_rx.errors import InvalidValueError, SessionNotFoundError
from dspex_rx.server import EmbeddedServer, Server
from dspex_rx.store import MemoryStore, Snapshot, SnapshotVariable, VariableSpec

ADMIN_KEY = "admin-key-0123456789"
ROOT_KEY = "root-key-0123456789ab"
PRINCIPALS = {"admin_*": ADMIN_KEY, "admin_root": ROOT_KEY}


def shared_secret(store: MemoryStore, pattern: str = "bob") -> str:
    """Session a owns ``secret``, readable by ``pattern``; returns its id."""
    (record,), _ = store.register("a", [VariableSpec(
        "secret", "string", "launch code", access_rules=grant(["read"], pattern))], actor="a")
    return record.id


# --------------------------------------------------------------- claimed ids


def test_a_rule_naming_bob_is_not_inherited_by_whoever_recreates_bob() -> None:
    store = MemoryStore(clock=Clock())
    store.initialize_session("a")
    bob, _, _ = store.initialize_session("bob")
    secret = shared_secret(store)
    assert store.get("bob", secret).value == "launch code"
    end(store, "bob")  # the real bob is gone
    for token in ("", "guess-" + "x" * 40):
        with pytest.raises(AuthenticationError, match="'bob' belonged to a session that has"):
            store.initialize_session("bob", token=token, require_token=True)
    assert "bob" not in store.session_ids()  # the refusal made nothing
    # Bob himself comes back with his token: same identity, same token, the grant holds.
    again, _, created = store.initialize_session("bob", token=bob.token, require_token=True)
    assert created and again.token == bob.token
    assert store.get("bob", secret).value == "launch code"


def test_without_token_checks_an_ended_id_is_free_again() -> None:
    # auth="none" (require_token=False) checks no tokens, so it protects no identity.
    store = MemoryStore(clock=Clock())
    first, _, _ = store.initialize_session("bob")
    end(store, "bob")
    again, _, created = store.initialize_session("bob")
    assert created and again.token != first.token


def test_a_glob_on_a_server_without_principals_says_how_to_reserve_one() -> None:
    store = MemoryStore(clock=Clock())
    store.initialize_session("a")
    with pytest.raises(InvalidValueError, match=r"this server reserves none: see principals "
                                                r"/ --principals\), or use 'any'"):
        shared_secret(store, "admin_*")


def test_a_rule_may_name_a_live_or_ended_session_but_not_an_unknown_one() -> None:
    store = MemoryStore(clock=Clock())
    store.initialize_session("a")
    store.initialize_session("carol")
    end(store, "carol")
    store.initialize_session("dave")
    (record,), _ = store.register("a", [VariableSpec(
        "v", "integer", 1, access_rules=grant(["read"], "carol") + grant(["read"], "dave")
    )], actor="a")
    before = store.revision
    with pytest.raises(InvalidValueError, match="'mallory' names no session this server"):
        store.set_permissions("a", "v", grant(["read"], "mallory"))
    with pytest.raises(InvalidValueError, match="access rule 1: session_pattern 'mallory'"):
        store.register("a", [VariableSpec("w", "integer", 1, access_rules=grant(
            ["read"], "dave") + grant(["read"], "mallory"))], actor="a")
    assert store.revision == before
    assert [r.session_pattern for r in store.session("a").rules[record.id]] == ["carol", "dave"]
    assert [v.name for v in store.list("a")] == ["v"]


@pytest.mark.parametrize("pattern", ["b_*", "b?", "[ab]", "*"])
def test_a_glob_outside_every_reserved_namespace_is_refused(pattern: str) -> None:
    store = MemoryStore(clock=Clock(), principals=PRINCIPALS)
    store.initialize_session("a")
    store.initialize_session("b1")
    with pytest.raises(InvalidValueError, match="is a glob over ids anyone may create") as info:
        shared_secret(store, pattern)
    assert "reserved: 'admin_root', 'admin_*'" in str(info.value)
    assert store.list("a") == []


@pytest.mark.parametrize("pattern", ["any", "admin_*", "admin_ops_*", "admin_?", "admin_root",
                                     "admin_never_made"])
def test_any_and_patterns_inside_reserved_namespaces_are_accepted(pattern: str) -> None:
    store = MemoryStore(clock=Clock(), principals=PRINCIPALS)
    store.initialize_session("a")
    secret = shared_secret(store, pattern)
    assert store.session("a").rules[secret][0].session_pattern == pattern


def test_an_import_naming_an_unknown_session_imports_nothing() -> None:
    store = MemoryStore(clock=Clock())
    store.initialize_session("a")
    snapshot = Snapshot((
        SnapshotVariable("ok", "integer", 1),
        SnapshotVariable("bad", "integer", 2,
                         access_rules=tuple(grant(["read"], "mallory")))))
    report = store.import_snapshot("a", snapshot, actor="a")
    assert not report.applied and store.list("a") == []
    assert [o.action for o in report.outcomes][1] == "error"
    assert "'mallory' names no session" in report.outcomes[1].message


def test_ended_ids_a_rule_names_outlive_the_cap_and_the_others_do_not() -> None:
    store = MemoryStore(clock=Clock(), limits=Limits(max_retired_sessions=10))
    store.initialize_session("a")
    bob, _, _ = store.initialize_session("bob")
    secret = shared_secret(store)
    end(store, "bob")
    for i in range(50):  # churn: 50 sessions made and ended after bob
        store.initialize_session(f"s{i}")
        end(store, f"s{i}")
    assert store.claimed("bob") and len(store._retired) <= 10
    assert not store.claimed("s0")  # forgotten: it grants nothing, nothing names it
    assert store.claimed("s49")
    with pytest.raises(AuthenticationError):
        store.initialize_session("bob", require_token=True)
    store.initialize_session("bob", token=bob.token, require_token=True)
    assert store.get("bob", secret).value == "launch code"
    # A forgotten id is unclaimed: a rule may not name it until someone claims it anew.
    with pytest.raises(InvalidValueError, match="'s0' names no session"):
        store.set_permissions("a", "secret", grant(["read"], "s0"))


def test_retired_ids_trim_only_past_the_cap() -> None:
    retired = RetiredIds(cap=5)
    for i in range(5):
        retired.retire(f"s{i}", "t" * 20)
    assert retired.trim(lambda: pytest.fail("named() is only asked when over the cap")) == 0
    retired.retire("s5", "t" * 20)
    assert retired.trim(set) == 1 and not retired.claims("s0") and retired.claims("s5")
    retired.retire("s1", "u" * 20)  # retiring again moves it to the newest end
    assert retired.token_matches("s1", "u" * 20) and not retired.token_matches("s1", "t" * 20)


def test_when_rules_name_more_ids_than_the_cap_the_rules_are_not_scanned_every_time() -> None:
    retired = RetiredIds(cap=100)
    named_ids = {f"n{i}" for i in range(120)}
    for session_id in sorted(named_ids):
        retired.retire(session_id, "t" * 20)
    scans = []

    def named() -> set[str]:
        scans.append(1)
        return named_ids

    assert retired.trim(named) == 0 and len(scans) == 1  # all named: nothing to forget
    for i in range(100):  # every one of these ends over the cap
        retired.retire(f"x{i}", "t" * 20)
        retired.trim(named)
    # A scan per tenth of the cap retired, not one per session end.
    assert len(scans) <= 1 + 100 // 10
    assert len(retired) <= 120 + 100 // 10 + 1
    assert all(retired.claims(session_id) for session_id in named_ids)


# ---------------------------------------------------------- reserved namespaces


def test_creating_a_reserved_id_needs_its_principals_key() -> None:
    store = MemoryStore(clock=Clock(), principals=PRINCIPALS)
    with pytest.raises(AuthenticationError, match=r"namespace 'admin_\*'.*no principal key"):
        store.initialize_session("admin_7")
    with pytest.raises(AuthenticationError, match="the principal key is wrong"):
        store.initialize_session("admin_7", principal_key=ROOT_KEY)
    # The most specific namespace owns an id: admin_root takes the root key only.
    with pytest.raises(AuthenticationError, match="namespace 'admin_root'"):
        store.initialize_session("admin_root", principal_key=ADMIN_KEY)
    assert store.session_ids() == []
    store.initialize_session("admin_7", principal_key=ADMIN_KEY)
    store.initialize_session("admin_root", principal_key=ROOT_KEY)
    assert sorted(store.session_ids()) == ["admin_7", "admin_root"]
    # Ids outside every namespace need nothing.
    store.initialize_session("guest")


def test_a_principal_recreates_its_ended_ids_with_the_key_alone() -> None:
    store = MemoryStore(clock=Clock(), principals=PRINCIPALS)
    first, _, _ = store.initialize_session("admin_7", principal_key=ADMIN_KEY,
                                           require_token=True)
    end(store, "admin_7")
    with pytest.raises(AuthenticationError, match="no principal key"):
        store.initialize_session("admin_7", token=first.token, require_token=True)
    again, _, created = store.initialize_session("admin_7", principal_key=ADMIN_KEY,
                                                 require_token=True)
    assert created and again.token != first.token


def test_a_key_may_be_given_as_its_sha256_digest() -> None:
    hexdigest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    store = MemoryStore(clock=Clock(), principals={"ops": f"sha256:{hexdigest}"})
    with pytest.raises(AuthenticationError):
        store.initialize_session("ops", principal_key=f"sha256:{hexdigest}")
    store.initialize_session("ops", principal_key=ADMIN_KEY)


@pytest.mark.parametrize("namespaces, message", [
    ({"*": ADMIN_KEY}, "namespace '\\*' must be a session id, or a non-empty id prefix"),
    ({"a*b": ADMIN_KEY}, "namespace 'a\\*b' must be"),
    ({"a?": ADMIN_KEY}, "namespace 'a\\?' must be"),
    ({"": ADMIN_KEY}, "namespace '' must be"),
    ({"1abc": ADMIN_KEY}, "namespace '1abc' must be"),
    ({"ops": "short"}, "principal 'ops': the key must be at least 16 characters"),
    ({"ops": "sha256:abc"}, "a 'sha256:' key must be 64 lower-case hex digits"),
    ({"ops": 12345678901234567}, "the key must be a string, got int"),
    (["ops"], "principals must be a mapping"),
])
def test_malformed_principals_are_refused(namespaces: Any, message: str) -> None:
    with pytest.raises(InvalidValueError, match=message):
        Principals(namespaces)


def test_principals_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "principals.yaml"
    path.write_text(f"admin_*: {ADMIN_KEY}\nci: sha256:{'0' * 64}\n")
    principals = Principals.from_file(path)
    assert [ns.pattern for ns in principals.namespaces] == ["ci", "admin_*"]
    assert principals.owner("admin_1") is not None and principals.owner("bob") is None
    with pytest.raises(InvalidValueError, match="cannot read principals from"):
        Principals.from_file(tmp_path / "missing.yaml")


def test_principals_need_token_auth() -> None:
    with pytest.raises(InvalidValueError, match="principals need auth='token'"):
        Server(port=0, auth="none", principals=PRINCIPALS)
    with pytest.raises(InvalidValueError, match="principals, which need auth='token'"):
        Server(port=0, auth="none", store=MemoryStore(principals=PRINCIPALS))


# ------------------------------------------------------------- over the wire


@pytest.fixture(scope="module")
def srv() -> Any:
    with EmbeddedServer(principals=PRINCIPALS) as embedded:
        yield embedded


async def test_nobody_becomes_bob_or_an_admin_by_naming_a_session(srv: EmbeddedServer) -> None:
    async with dspex_rx.connect(srv.target) as owner:
        bob = await dspex_rx.SessionContext("bob_w", srv.target).initialize()
        bob_token = bob.token
        var = await owner.register_variable("secret", "string", "launch code", access_rules=[
            {"session_pattern": "bob_w", "permissions": ["read"]},
            {"session_pattern": "admin_*", "permissions": ["read", "write"]}])
        assert await bob.get_variable(var) == "launch code"
        await bob.close()  # bob's only client leaves: the session ends
        with pytest.raises(AuthenticationError, match="belonged to a session that has ended"):
            async with dspex_rx.connect(srv.target, session_id="bob_w"):
                pass
        with pytest.raises(AuthenticationError, match="reserved on this server"):
            async with dspex_rx.connect(srv.target, session_id="admin_evil"):
                pass
        with pytest.raises(AuthenticationError, match="principal key is wrong"):
            async with dspex_rx.connect(srv.target, session_id="admin_evil",
                                        principal_key="x" * 20):
                pass
        async with dspex_rx.connect(srv.target, session_id="bob_w", token=bob_token) as back, \
                dspex_rx.connect(srv.target, session_id="admin_ops",
                                 principal_key=ADMIN_KEY) as admin:
            assert await back.get_variable(var, bypass_cache=True) == "launch code"
            await admin.set_variable(var, "abort")
            assert await owner.get_variable("secret", bypass_cache=True) == "abort"
        with pytest.raises(ValueError, match="'b_\\*' is a glob over ids anyone may create"):
            await owner.set_variable_permissions(
                "secret", [{"session_pattern": "b_*", "permissions": ["read"]}])
        assert len(await owner.get_variable_permissions("secret")) == 2


async def test_a_principals_session_reattaches_with_its_key(srv: EmbeddedServer) -> None:
    # A reserved session whose id ended and is made again by its own client (the
    # reattach path sends every InitializeSession with the key).
    async with dspex_rx.connect(srv.target, session_id="admin_reattach",
                                principal_key=ADMIN_KEY) as admin:
        await admin._reattach()
        assert admin.reattached == 1 and not admin.lost


# ---------------------------------------------------------------------- CLI


def test_cli_principals_flag(tmp_path: Path) -> None:
    out = subprocess.run([str(SCRIPT), "serve", "--help"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "--principals PATH" in out and "--max-retired-sessions N" in out
    path = tmp_path / "principals.yaml"
    path.write_text(f"admin_*: {ADMIN_KEY}\n")
    done = subprocess.run([str(SCRIPT), "serve", "--port", "0", "--auth", "none",
                           "--principals", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "--principals needs --auth token" in done.stderr
    path.write_text("admin_*: short\n")
    done = subprocess.run([str(SCRIPT), "serve", "--port", "0", "--principals", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "at least 16 characters" in done.stderr


async def test_cli_serves_with_principals(tmp_path: Path) -> None:
    path = tmp_path / "principals.yaml"
    path.write_text(f"admin_*: sha256:{hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}\n")
    async with cli_server(tmp_path, "--principals", str(path)) as target:
        with pytest.raises(AuthenticationError):
            async with dspex_rx.connect(target, session_id="admin_1"):
                pass
        async with dspex_rx.connect(target, session_id="admin_1",
                                    principal_key=ADMIN_KEY) as admin:
            assert admin.created


def test_a_removed_session_is_not_found_but_stays_claimed() -> None:
    store = MemoryStore(clock=Clock())
    store.initialize_session("bob")
    end(store, "bob")
    with pytest.raises(SessionNotFoundError, match="no session 'bob'"):
        store.session("bob")
    assert store.claimed("bob") and "bob" not in store.session_ids()


# ------------------------------------------------------------------- claims


def test_a_rule_is_bound_to_the_claim_of_the_id_it_names() -> None:
    store = MemoryStore(clock=Clock())
    store.initialize_session("a")
    bob, _, _ = store.initialize_session("bob")
    secret = shared_secret(store)
    (rule,) = store.session("a").rules[secret]
    assert rule.claim == bob.claim == store.claim_of("bob") and rule.claim > 0
    assert "claim" not in rule.as_dict()  # the spec's shape, as get_variable_permissions
    end(store, "bob")
    again, _, _ = store.initialize_session("bob", token=bob.token, require_token=True)
    assert again.claim == bob.claim and again.incarnation != bob.incarnation
    # A rule that says it was written for another claim of the id is refused.
    with pytest.raises(InvalidValueError, match="another party holds it now"):
        store.set_permissions("a", "secret", [
            {"session_pattern": "bob", "permissions": ["read"], "claim": bob.claim + 1}])
    assert store.session("a").rules[secret] == (rule,)


def test_an_export_naming_an_id_imports_only_where_that_id_has_the_same_claim() -> None:
    exporter = MemoryStore(clock=Clock())
    exporter.initialize_session("a")
    exporter.initialize_session("bob")
    shared_secret(exporter)
    backup = exporter.export_snapshot("a")
    # Another server has its own 'bob': a rule written for the first one grants nothing
    # here, and says so; without any 'bob', the rule names nobody.
    for make_bob in (True, False):
        other = MemoryStore(clock=Clock())
        other.initialize_session("a")
        if make_bob:
            other.initialize_session("bob")
        report = other.import_snapshot("a", backup, actor="a")
        assert not report.applied and other.list("a") == []
        expected = "another party holds it now" if make_bob else "names no session"
        assert expected in report.outcomes[0].message
    # A rule without a claim (hand-written, or from before claims) binds to the id's
    # current claim, as a rule set now would.
    other = MemoryStore(clock=Clock())
    other.initialize_session("a")
    here, _, _ = other.initialize_session("bob")
    unbound = Snapshot((SnapshotVariable(
        "secret", "string", "x", access_rules=tuple(grant(["read"], "bob"))),))
    assert other.import_snapshot("a", unbound, actor="a").applied
    assert other.get("bob", other.session("a").names["secret"]).value == "x"
    assert other.session("a").rules[other.session("a").names["secret"]][0].claim == here.claim


def test_principals_are_given_once() -> None:
    with pytest.raises(InvalidValueError, match="given to both the Server and its store"):
        Server(port=0, store=MemoryStore(principals=PRINCIPALS), principals=PRINCIPALS)
    server = Server(port=0, store=MemoryStore(principals=PRINCIPALS), principals={})
    assert server.store.principals.owner("admin_1") is not None


# ----------------------------------------------------- restores, forgotten ids, auth none


# Guards: an import checked the rules of variables it keeps; a forgotten grantee refused it.
@pytest.mark.parametrize("strategy", ["keep", "merge", "replace"])
def test_restoring_a_backup_onto_existing_variables_is_not_refused_for_rules_it_ignores(
    strategy: str,
) -> None:
    # An import applies a file's access rules only to the variables it creates ("an
    # existing variable keeps its own rules"), yet _plan_import runs _checked_rules on
    # every entry *before* it looks whether the variable exists. So a session restoring
    # its own backup (same server) onto its own variables fails as soon as a grantee the
    # backup names has been forgotten, although those rules would not be used at all.
    store = MemoryStore(clock=Clock(), limits=Limits(max_retired_sessions=10))
    store.initialize_session("a")
    store.initialize_session("bob")
    store.register("a", [VariableSpec("t", "integer", 1,
                                      access_rules=grant(["read"], "bob"))], actor="a")
    backup = store.export_snapshot("a")
    store.set_permissions("a", "t", [])  # bob's grant revoked
    store.set("a", "t", 2, actor="a")  # later work, then the backup is restored
    end(store, "bob")
    for i in range(30):  # ordinary churn: bob, no longer named, is forgotten
        store.initialize_session(f"s{i}")
        end(store, f"s{i}")
    assert not store.claimed("bob")
    report = store.import_snapshot("a", backup, strategy=strategy, actor="a")
    assert [o.action for o in report.outcomes] != ["error"], report.outcomes[0].message
    assert store.session("a").rules.get(store.session("a").names["t"], ()) == ()


# Guards: glob rules were refused on an auth='none' server, where identity is not checked.
async def test_auth_none_still_accepts_glob_rules() -> None:
    # README: "With --auth none nothing about identity is checked", and a server with
    # auth="none" may not reserve namespaces (principals need token auth). But
    # _checked_rules refuses every glob outside a reserved namespace whatever the auth
    # mode, so on an auth="none" server no glob rule can ever be registered again (it
    # worked before), while refusing it protects nothing: any caller may act as any id.
    with EmbeddedServer(auth="none") as srv:
        async with dspex_rx.connect(srv.target) as owner:
            await owner.register_variable("g", "integer", 7, access_rules=[
                {"session_pattern": "worker_*", "permissions": ["read"]}])
            rules = await owner.get_variable_permissions("g")
            assert [r["session_pattern"] for r in rules] == ["worker_*"]


# Guards: a restored rule granted a stranger who churned a forgotten id free and claimed it.
def test_a_restored_backup_does_not_grant_a_stranger_who_took_a_forgotten_id() -> None:
    # Trim forgets ended ids that no *live* rule names. A backup (export) is not live,
    # so once its owner session is gone, anybody can force the grantee's id out with
    # unauthenticated session churn (max_retired_sessions creates/closes), claim it, and
    # wait: restoring the backup passes _checked_rules (the id is "claimed", by the
    # stranger now) and the restored rule grants the stranger what was meant for bob.
    store = MemoryStore(clock=Clock(), limits=Limits(max_retired_sessions=10))
    store.initialize_session("a")
    store.initialize_session("bob")
    store.register("a", [VariableSpec("secret", "string", "launch code",
                                      access_rules=grant(["read"], "bob"))], actor="a")
    backup = store.export_snapshot("a")
    end(store, "a")    # the owner's process ends; it keeps its backup
    end(store, "bob")
    for i in range(20):  # the attacker: churn until bob is forgotten...
        store.initialize_session(f"x{i}", require_token=True)
        end(store, f"x{i}")
    store.initialize_session("bob", require_token=True)  # ...then become bob
    store.initialize_session("a2")
    report = store.import_snapshot("a2", backup, actor="a2")  # the owner restores
    # The exported rule is bound to bob's claim; the stranger's bob is another claim.
    assert not report.applied
    assert "another party holds it now" in report.outcomes[0].message
    assert "secret" not in store.session("a2").names


# ---------------------------------------------------------------------------- rule claims


# Guards: an import replaced a foreign bound claim for a reserved id, granting the principal.
def test_a_bound_rule_from_another_server_is_not_rebound_to_a_principal_holding_the_id() -> None:
    # README: a rule naming an exact id is bound to that id's claim; "importing it where
    # the id is now held by another party (a forgotten id taken over, or another server)
    # is refused, not granted to them". _bind_rules checks the claim only for open ids:
    # for an id the importing server reserves it silently replaces the file's claim with
    # 0, so a grant written for whoever held the open id 'admin_1' on the exporting
    # server goes to the principal of 'admin_*' here.
    exporter = MemoryStore()
    exporter.initialize_session("a")
    exporter.initialize_session("admin_1")  # an open id there, held by some party
    exporter.register("a", [VariableSpec("secret", "string", "for that admin_1 only",
                                         access_rules=grant(["read"], "admin_1"))], actor="a")
    backup = exporter.export_snapshot("a")
    (rule,) = backup.variables[0].access_rules
    assert rule.claim  # bound on the exporting server

    importer = MemoryStore(principals={"admin_*": ADMIN_KEY})
    importer.initialize_session("a2")
    report = importer.import_snapshot("a2", backup, actor="a2")
    assert not report.applied, "a rule written for another party now grants the principal"
    assert "another party holds it now" in report.outcomes[0].message


# Guards: `rule.get('claim') or 0` accepted every falsy non-integer claim as 0.
@pytest.mark.parametrize("claim", [False, None, "", 0.0, []])
def test_a_malformed_falsy_claim_is_refused_like_a_truthy_one(claim: Any) -> None:
    # access.check_rules reads ``rule.get("claim") or 0``, so every falsy non-integer
    # (False, None, "", 0.0, []) becomes 0 and is accepted silently, while True, 1.5 or
    # "7" are refused with "claim must be an unsigned 64-bit integer" (and an export file
    # refuses all of them, exchange._access_rule).
    store = MemoryStore()
    store.initialize_session("a")
    store.initialize_session("bob")
    store.register("a", [VariableSpec("t", "integer", 1)], actor="a")
    rules = [{"session_pattern": "bob", "permissions": ["read"], "claim": claim}]
    with pytest.raises(InvalidValueError, match="claim"):
        store.set_permissions("a", "t", rules)
