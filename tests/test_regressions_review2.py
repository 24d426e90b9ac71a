"""Adversarial review of rule claims and session incarnations (99cd078) and of the watch
resubscribe of acked actors still waiting for their initial value (0324d14).

Regression tests: each asserts the promised behaviour, and its name says the bug it
guards against (all failed on the code as reviewed). Store-level tests use the store
directly; the client tests run in virtual time (``mock_clock``), the watch ones with the
reconnect harness of tests/test_regressions_reconnect.py.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
import trio.testing
from helpers import beat_until, drain, expire_client, unavailable, until
from test_regressions_reconnect import Flaky, _carries_events, _hub, _reopen

import dspex_rx
from dspex_rx.errors import InvalidValueError
from dspex_rx.server import EmbeddedServer
from dspex_rx.store import MemoryStore, VariableSpec

ADMIN_KEY = "admin-key-" + "x" * 32


def grant(perms: list[str], pattern: str) -> list[dict[str, Any]]:
    return [{"session_pattern": pattern, "permissions": perms}]


# ------------------------------------------------------------------- claims


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


# ------------------------------------------------------------- incarnation


@pytest.fixture(scope="module")
def srv() -> Any:
    with EmbeddedServer() as embedded:
        yield embedded


async def test_a_failed_detach_from_a_later_session_neither_leaks_a_lease_nor_delays_lost(
    srv: EmbeddedServer, mock_clock: trio.testing.MockClock,
) -> None:
    # client._reattach: when the re-attach lands on a later incarnation of the id, it
    # calls CloseSession *before* setting ``lost``. If that CloseSession fails (a blip),
    # the error leaves _reattach (logged as reattach_failed by _heartbeat): the client is
    # not marked lost, and the lease it just took on the *other* session is never
    # released. The next beat attaches again (a second lease) and only then gives up, so
    # the first lease stays in the other session until its TTL runs out. Now ``lost`` is
    # set first, and the release is retried at each beat until it goes through.
    sid = f"blip_{time.monotonic_ns()}"
    a = await dspex_rx.SessionContext(sid, srv.target, ttl_seconds=30.0).initialize()
    try:
        cid = a._client_id
        real_call = a._call
        blips = [True]

        async def call(method: str, request: Any, response_type: Any, *args: Any,
                       **kwargs: Any) -> Any:
            if method == "CloseSession" and blips:
                blips.pop()
                raise unavailable()
            return await real_call(method, request, response_type, *args, **kwargs)

        a._call = call  # type: ignore[method-assign]

        assert sid in expire_client(srv, sid, cid)  # a's session ended while a was paused
        async with dspex_rx.connect(srv.target, session_id=sid, token=a.token) as c:
            assert c.created  # a later session of the same id, same token
            await beat_until(a, mock_clock, lambda: a.lost)
            assert not blips  # the injected failure did happen
            assert a.reattached == 0  # lost at the first re-attach, not a later one

            def others() -> list[str]:
                return list(srv.store.session(sid).clients)

            # The lease a took on c's session is released at the next beat.
            await beat_until(a, mock_clock, lambda: a._stray is None)
            assert srv.call(others) == [c._client_id]
    finally:
        a._call = real_call  # type: ignore[method-assign]
        await a.close()


# -------------------------------------------------------- watch resubscribe


async def test_a_variable_deleted_during_a_break_before_its_initial_value_ends_the_watch_cleanly(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
) -> None:
    # The watch is in force (the server acked it) but the break fell before the initial
    # value. Meanwhile the variable changes and is deleted. A watch that had its value
    # gets the missed change and the "deleted" event and completes (the resume replays the
    # log; test_a_variable_deleted_during_a_break_ends_the_watch_with_the_missed_events).
    # This one is re-subscribed afresh (WatchHub._resubscribe, from_revision=0), which the
    # server refuses outright for a missing ref: the established watch fails with
    # VariableNotFoundError, as if the variable had never existed.
    writer, watcher = two
    await writer.register_variable("x", "integer", 5)
    flaky = Flaky(watcher)
    flaky.plans[0] = lambda s: setattr(s, "fail_before", _carries_events)
    watch = watcher.watch_variable("x")
    await until(lambda: _hub(watcher).reconnects >= 1, "the break was noticed")
    assert not _hub(watcher)._pending  # the subscribe was acked before the break
    await writer.set_variable("x", 6)
    await writer.delete_variable("x")
    await _reopen(watcher, flaky, mock_clock)
    await until(lambda: watch.closed, "the watch ended")
    updates = drain(watch)
    assert watch._error is None, f"watch failed: {watch._error!r}"
    assert updates and updates[-1].update_type == "deleted"
