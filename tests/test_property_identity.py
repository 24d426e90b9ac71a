"""Property test of session identity (issue #6): random sequences of session creations
(right, wrong or no token; with or without a principal's key), session ends, rule
changes and imports of earlier exports, against a model of who holds each id. After
every step: no id changed hands without its token or key, every rule naming an exact
unreserved id names the claim it was written for, live and retired ids are apart, and
retired ids stay near the cap. Derandomized and bounded, like the other property tests.
"""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_identity import ADMIN_KEY

from dspex_rx.core.limits import Limits
from dspex_rx.errors import DspexError
from dspex_rx.store import MemoryStore, VariableSpec

IDS = ["bob", "carol", "dave", "admin_1", "admin_2"]
PATTERNS = [*IDS, "any", "admin_*", "b*", "nobody"]
CAP = 4
OWNER = "owner"


def _ops() -> st.SearchStrategy[tuple[Any, ...]]:
    return st.one_of(
        st.tuples(st.just("create"), st.sampled_from(IDS),
                  st.sampled_from(["own", "none", "wrong"]), st.booleans()),
        st.tuples(st.just("end"), st.integers(0, 5)),  # one of the live ids
        # Rules name ids the store knows (index into them) or any of PATTERNS.
        st.tuples(st.just("rules"), st.lists(st.integers(0, len(PATTERNS) + 3), min_size=1,
                                             max_size=3)),
        st.tuples(st.just("export")),
        st.tuples(st.just("restore")),
        st.tuples(st.just("churn"), st.integers(1, 6)),
        st.tuples(st.just("takeover"), st.sampled_from(IDS)),
    )


class World:
    """The store, and the model: the token each id was last claimed with (or None once
    the store may have forgotten it), and the exports taken so far."""

    def __init__(self) -> None:
        self.store = MemoryStore(principals={"admin_*": ADMIN_KEY},
                                 limits=Limits(max_retired_sessions=CAP))
        self.store.initialize_session(OWNER)
        (self.var,), _ = self.store.register(OWNER, [VariableSpec("v", "integer", 1)],
                                             actor=OWNER)
        self.tokens: dict[str, str] = {}
        self.exports: list[Any] = []
        self.churned = 0
        for sid in ("bob", "carol"):  # two grantees to start from
            self.create(sid, "own", False)

    def create(self, sid: str, which: str, key: bool) -> None:
        store = self.store
        live = sid in store.session_ids()
        claimed = store.claimed(sid)
        token = {"own": self.tokens.get(sid, ""), "none": "", "wrong": "w" * 43}[which]
        reserved = store.principals.owner(sid) is not None
        try:
            session, _, created = store.initialize_session(
                sid, token=token, require_token=True, principal_key=ADMIN_KEY if key else "")
        except DspexError:
            return
        if created:
            assert not live
            if reserved:
                assert key, f"{sid} created without its principal's key"
            elif claimed:
                assert token and token == self.tokens.get(sid), f"{sid} changed hands"
                assert session.token == token
            self.tokens[sid] = session.token
        else:
            assert live and token == self.tokens[sid], f"attached to {sid} without its token"

    def end(self, pick: int | str) -> None:
        if isinstance(pick, int):
            live = sorted(sid for sid in IDS if sid in self.store.session_ids())
            if not live:
                return
            pick = live[pick % len(live)]
        if pick in self.store.session_ids():
            for client in list(self.store.session(pick).clients):
                self.store.close_session(pick, client)

    def churn(self, n: int) -> None:
        for _ in range(n):  # anonymous sessions made and ended: pushes ids out of memory
            self.churned += 1
            sid = f"x{self.churned}"
            self.store.initialize_session(sid)
            self.end(sid)

    def takeover(self, sid: str) -> None:
        # The attack on a backup: the owner exports, the id's session ends, no live rule
        # names it, churn makes the store forget it, a stranger creates it without any
        # token, and the owner restores its backup (``restore`` checks who it grants).
        self.export()
        self.end(sid)
        self.rules([])
        self.churn(CAP + 2)
        self.create(sid, "none", False)
        self.restore()

    def rules(self, picks: list[int]) -> None:
        known = sorted(sid for sid in IDS if self.store.claimed(sid))
        choices = known + PATTERNS
        patterns = [choices[i % len(choices)] for i in picks]
        rules = [{"session_pattern": p, "permissions": ["read"]} for p in patterns]
        with contextlib.suppress(DspexError):
            self.store.set_permissions(OWNER, "v", rules)

    def export(self) -> None:
        self.exports.append(self.store.export_snapshot(OWNER))

    def restore(self) -> None:
        if not self.exports:
            return
        if "v" in self.store.session(OWNER).names:
            self.store.delete(OWNER, "v", actor=OWNER)
        backup = self.exports[-1]
        report = self.store.import_snapshot(OWNER, backup, actor=OWNER)
        if report.applied:
            # Each restored rule names the claim it was exported with (or binds anew).
            (exported,) = backup.variables
            restored = self.store.session(OWNER).rules.get(
                self.store.session(OWNER).names["v"], ())
            for before, after in zip(exported.access_rules, restored, strict=True):
                assert not before.claim or after.claim == before.claim, (
                    f"a restored rule for {after.session_pattern} changed hands")
        if not report.applied:  # a rule no longer names its party: restore without rules
            (outcome,) = report.outcomes
            assert "another party holds it now" in outcome.message or (
                "names no session" in outcome.message), outcome.message
            self.store.register(OWNER, [VariableSpec("v", "integer", 1)], actor=OWNER)

    def check(self) -> None:
        store = self.store
        live = set(store.session_ids())
        assert not live & set(store._retired._digests), "an id both live and retired"
        named = set()
        owner = store.session(OWNER)
        for rules in owner.rules.values():
            for rule in rules:
                pattern = rule.session_pattern
                if pattern == "any" or store.principals.covers(pattern):
                    assert rule.claim == 0
                    continue
                assert "*" not in pattern, f"a glob over open ids: {pattern}"
                assert rule.claim and rule.claim == store.claim_of(pattern), (
                    f"rule for {pattern} names another claim than the id's")
                named.add(pattern)
        # Ids a rule names are kept; the rest stay within the cap and its trim slack.
        assert len(set(store._retired._digests) - named) <= CAP + 1


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ops(), min_size=1, max_size=30))
def test_identity_holds_under_random_sessions_rules_and_restores(ops: list[Any]) -> None:
    world = World()
    for op in ops:
        getattr(world, op[0])(*op[1:])
        world.check()
