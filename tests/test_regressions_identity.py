"""Adversarial review of session identity (commits 9f171d4, 72565b1; issue #6).

Regression tests: each asserts the promised (or previously working) behaviour, and its
name says the bug it guards against (all failed on the code as first reviewed).
Store-level tests use a fake clock; the others an embedded server of their own.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
import trio.testing
from helpers import Clock, beat_until, end, expire_client, grant

import dspex_rx
from dspex_rx.core.limits import Limits
from dspex_rx.server import EmbeddedServer
from dspex_rx.store import MemoryStore, VariableSpec

# ------------------------------------------------------------------ import


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


# --------------------------------------------------------------- auth none


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


# --------------------------------------------------------------- client


@pytest.fixture(scope="module")
def srv() -> Any:
    with EmbeddedServer() as embedded:
        yield embedded


async def test_a_client_whose_session_ended_does_not_join_the_next_session_of_its_id(
    srv: EmbeddedServer, mock_clock: trio.testing.MockClock,
) -> None:
    # The client relied on "a session's token never changes, so one that refuses ours is
    # not the session we had" (client._heartbeat). A re-created id now keeps its old
    # token, so a client whose session expired (a long pause) and was re-created by
    # another holder of the token re-attached to the *new* session as if it were its
    # own: not lost, its cache serving a variable the new session does not have. The
    # incarnation number in InitializeSessionResponse tells them apart.
    sid = f"pause_{time.monotonic_ns()}"
    a = await dspex_rx.SessionContext(sid, srv.target, ttl_seconds=30.0).initialize()
    try:
        await a.register_variable("x", "integer", 1)
        cid = a._client_id

        assert sid in expire_client(srv, sid, cid)  # a's session ended while a was paused
        async with dspex_rx.connect(srv.target, session_id=sid, token=a.token) as c:
            assert c.created  # a later session of the same id, same token
            # (lost is said at once; the release of the lease taken there follows)
            await beat_until(a, mock_clock,
                             lambda: (a.lost and a._stray is None) or a.reattached > 0)
            assert a.lost and a.reattached == 0
            # a detached itself from c's session: c is its only client.
            assert srv.call(lambda: list(srv.store.session(sid).clients)) == [c._client_id]
    finally:
        await a.close()


# ------------------------------------------------------------- forgotten ids


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


async def test_a_lost_client_neither_writes_to_nor_watches_the_later_session_of_its_id(
    srv: EmbeddedServer, mock_clock: trio.testing.MockClock,
) -> None:
    # A returning claimant keeps its token, so a lost client's token is still valid for
    # the later session of its id: its writes and watches would land there. Lost means
    # the client refuses them itself, and its watches end.
    sid = f"lost_{time.monotonic_ns()}"
    a = await dspex_rx.SessionContext(sid, srv.target, ttl_seconds=30.0).initialize()
    try:
        await a.register_variable("x", "integer", 1)
        watch = await a.watch_variable("x")
        cid = a._client_id

        assert sid in expire_client(srv, sid, cid)
        async with dspex_rx.connect(srv.target, session_id=sid, token=a.token) as c:
            await beat_until(a, mock_clock, lambda: a.lost and a._stray is None)
            with pytest.raises(dspex_rx.SessionNotFoundError, match="is lost"):
                await a.set_variable("x", 2, create_if_missing=True)
            with pytest.raises(dspex_rx.SessionNotFoundError, match="is lost"):
                a.observe("x")
            assert await c.list_variables() == []  # nothing of a's landed in c's session
            assert watch.closed
    finally:
        await a.close()
