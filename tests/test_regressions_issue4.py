"""Regression tests from a second review of transactions, dependencies, history/rollback
and derive(): each asserts the promised behaviour; each name says the bug it guards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from helpers import drain, settle

import dspex_rx
from dspex_rx import SessionContext
from dspex_rx.client.actors import VariableUpdate
from dspex_rx.client.derive import Derived
from dspex_rx.errors import ConflictError
from dspex_rx.server import EmbeddedServer


async def quiet(derived: Derived) -> None:
    await settle(derived.session)
    with trio.fail_after(10):
        await derived.settled()
    await settle(derived.session)


def derive_tasks(session: SessionContext) -> list[str]:
    assert session._nursery is not None
    return [t.name for t in session._nursery.child_tasks if "dspex-rx-derive" in t.name]


# ------------------------------------------------------------- batch cache coherence


async def test_batch_write_caches_the_normalized_list_items(session: SessionContext) -> None:
    # item_type float turns [1, 2] into [1.0, 2.0] on the server, but same_value([1, 2],
    # [1.0, 2.0]) is True (list == list compares 1 == 1.0), so the lean batch answer omits
    # the stored value and the client caches the ints it sent.
    await session.register_variable("xs", "list", [0.5], constraints={"item_type": "float"})
    results = await session.update_variables({"xs": [1, 2]})
    assert results == {"xs": True}
    stored = await session.get_variable("xs", bypass_cache=False)
    server = await session.get_variable("xs", bypass_cache=True)
    assert [type(x) for x in server] == [float, float]
    assert [type(x) for x in stored] == [float, float], stored


# ------------------------------------------------------------------------ rollback


async def test_rollback_of_a_normalized_float64_embedding_restores_the_exact_value(
    session: SessionContext,
) -> None:
    # Rollback re-runs validation, and normalize=True divides by the norm again: for many
    # float64 vectors that is not idempotent, so the "restored" value differs in the last
    # bits from the version it claims to restore.
    vector = np.random.default_rng(0).normal(size=8)
    await session.register_variable(
        "emb", "embedding", vector, constraints={"dimensions": 8, "normalize": True}
    )
    await session.set_variable("emb", np.ones(8))
    version = await session.rollback_variable("emb", 1, reason="restore")
    assert version == 3
    page = await session.get_variable_history("emb", limit=3)
    by_version = {e["version"]: e["value"] for e in page}
    assert by_version[3].dtype == by_version[1].dtype
    assert np.array_equal(by_version[3], by_version[1]), by_version[3] - by_version[1]


# ------------------------------------------------------------------- compare-and-set


async def test_create_if_missing_does_not_ignore_expected_version(
    session: SessionContext,
) -> None:
    # A compare-and-set against version 7 of a variable that does not exist must not
    # silently create version 1.
    with pytest.raises(ConflictError):
        await session.set_variable("fresh", 1, create_if_missing=True, expected_version=7)
    assert await session.get_variable("fresh", default="<absent>", bypass_cache=True) == "<absent>"


async def test_re_adding_an_identical_dependency_takes_no_revision(
    server: EmbeddedServer, session: SessionContext
) -> None:
    # remove_dependency of a missing edge takes no revision; add_dependency of an edge
    # that is already there unchanged (graph.add returns False) still commits one.
    await session.register_variables(
        [{"name": n, "type": "integer", "initial_value": 0} for n in ("a", "b")]
    )
    await session.add_dependency("b", "a")
    sid = session.session_id
    before = server.call(lambda: server.store.session(sid).revision)
    await session.add_dependency("b", "a")
    after = server.call(lambda: server.store.session(sid).revision)
    assert after == before


# -------------------------------------------------------------------- propagation


class _HeldStream:
    """Delays the watch stream of a session (as the network may: unary answers and the
    stream are separate HTTP/2 streams with no order between them)."""

    def __init__(self, session: SessionContext) -> None:
        hub = session._hub
        assert hub is not None
        self.hub = hub
        self.original: Callable[[Any], None] = hub._handle
        self.held: list[Any] = []
        self.holding = False
        self.got_frame = trio.Event()
        hub._handle = self._handle  # type: ignore[method-assign]

    def _handle(self, message: Any) -> None:
        if self.holding:
            self.held.append(message)
            if message.frames:
                self.got_frame.set()
            return
        self.original(message)

    def release(self) -> None:
        self.holding = False
        held, self.held = self.held, []
        for message in held:
            self.original(message)


async def test_dependency_changed_never_reaches_an_observer_after_a_newer_version(
    two: tuple[SessionContext, SessionContext],
) -> None:
    # actors.apply delivers dependency_changed without the version check, so an observer
    # baselined from the (newer) cache entry later gets an older version's value.
    writer, watcher = two
    await writer.register_variables(
        [{"name": n, "type": "integer", "initial_value": 0} for n in ("a", "b")]
    )
    await writer.add_dependency("b", "a")
    first: list[VariableUpdate] = []
    watcher.observe("b").subscribe(first.append)
    await settle(watcher)
    stream = _HeldStream(watcher)
    stream.holding = True
    await writer.set_variable("a", 1)  # dependency_changed for b at version 1
    with trio.fail_after(5):
        await stream.got_frame.wait()
    assert await watcher.set_variable("b", 5) == 2  # the answer caches version 2
    late: list[VariableUpdate] = []
    watcher.observe("b").subscribe(late.append)  # baseline from the live entry: v2
    assert [(u.version, u.value) for u in late] == [(2, 5)]
    stream.release()
    await settle(watcher)
    versions = [u.version for u in late]
    assert versions == sorted(versions), [(u.update_type, u.version, u.value) for u in late]


async def test_conflated_frame_keeps_upstream_before_dependents() -> None:
    # _merge sorts a conflated frame by record.mod_revision, and a dependency_changed
    # event carries the dependent's own (older) mod_revision, so b's notification is put
    # before the change of a that caused it.
    with EmbeddedServer(max_pending_events=1) as embedded:
        async with dspex_rx.connect(embedded.target) as session:
            await session.register_variables(
                [{"name": n, "type": "integer", "initial_value": 0} for n in ("a", "b")]
            )
            await session.add_dependency("b", "a")
            watch = await session.watch_variables(["a", "b"], include_initial=False)
            await settle(session)
            sid = session.session_id

            def burst() -> int:
                embedded.store.set(sid, "a", 1, actor="burst")
                return max(s.conflations for s in embedded.service.subscribers)

            assert await trio.to_thread.run_sync(embedded.call, burst) > 0
            await settle(session)
            got = [(u.name, u.update_type) for u in drain(watch)]
            assert got == [("a", "value_change"), ("b", "dependency_changed")]
            watch.cancel()


async def test_debounce_flushes_dependents_after_their_source(
    two: tuple[SessionContext, SessionContext], mock_clock: trio.testing.MockClock
) -> None:
    # debounce_settled sorts by update.revision, which for dependency_changed is the
    # dependent's old mod_revision, not the commit's: the dependent comes out first.
    writer, watcher = two
    await writer.register_variables(
        [{"name": n, "type": "integer", "initial_value": 0} for n in ("a", "b")]
    )
    await writer.add_dependency("b", "a")
    watch = await watcher.watch_variables(["a", "b"], include_initial=False, debounce_ms=250)
    await writer.set_variable("a", 1)
    await settle(watcher)
    mock_clock.jump(0.25)
    await settle(watcher)
    got = [(u.name, u.update_type) for u in drain(watch)]
    assert got == [("a", "value_change"), ("b", "dependency_changed")]
    watch.cancel()


async def test_debounce_does_not_hide_a_value_change_behind_a_notification(
    two: tuple[SessionContext, SessionContext], mock_clock: trio.testing.MockClock
) -> None:
    # The server's _merge was fixed for this; the client's debounce keeps "the latest
    # update per variable", so b's value change is replaced by a later
    # dependency_changed and a consumer that skips notifications never sees b = 5.
    writer, watcher = two
    await writer.register_variables(
        [{"name": n, "type": "integer", "initial_value": 0} for n in ("a", "b")]
    )
    await writer.add_dependency("b", "a")
    watch = await watcher.watch_variables(["b"], include_initial=False, debounce_ms=250)
    await writer.set_variable("b", 5)
    await writer.set_variable("a", 1)
    await settle(watcher)
    mock_clock.jump(0.25)
    await settle(watcher)
    got = drain(watch)
    assert [(u.update_type, u.old_value, u.value) for u in got] == [("value_change", 0, 5)]
    watch.cancel()


# ------------------------------------------------------------------------ derive


async def test_derive_chain_never_computes_from_a_stale_derived_input(
    session: SessionContext,
) -> None:
    # d2 = d1 + a with d1 = 2a: when a changes, d2's inputs a (new) and d1 (still old,
    # only notified by dependency_changed) are combined: a glitch, and a wasted
    # recomputation/write of an inconsistent value.
    await session.register_variable("a", "integer", 1)
    d1 = await session.derive("d1", ["a"], lambda a: 2 * a)
    seen: list[tuple[int, int]] = []

    def total(x: int, a: int) -> int:
        seen.append((x, a))
        return x + a

    d2 = await session.derive("d2", ["d1", "a"], total)
    await quiet(d1)
    await quiet(d2)
    for value in (2, 3, 4):
        await session.set_variable("a", value)
        await quiet(d1)
        await quiet(d2)
        await quiet(d1)
        await quiet(d2)
    assert await session.get_variable("d2", bypass_cache=True) == 12
    inconsistent = [(x, a) for x, a in seen if x != 2 * a]
    assert inconsistent == [], seen
    history = await session.get_variable_history("d2")
    assert [e["value"] for e in history] == [12, 9, 6, 3]


async def test_derive_stops_when_its_variable_is_deleted_and_never_writes_a_new_one(
    session: SessionContext,
) -> None:
    # The Derived task writes by name forever: after "d" is deleted and a new, unrelated
    # variable "d" is registered, the old derive overwrites it.
    await session.register_variable("a", "float", 1.0)
    derived = await session.derive("d", ["a"], lambda a: a * 10)
    await quiet(derived)
    await session.delete_variable("d")
    await session.register_variable("d", "float", 123.0)
    await session.set_variable("a", 2.0)
    await quiet(derived)
    assert await session.get_variable("d", bypass_cache=True) == 123.0
    assert derive_tasks(session) == []


async def test_cascade_delete_of_an_input_ends_the_derive_task(session: SessionContext) -> None:
    # Cascade-deleting an input deletes the derived variable too; the Derived task's
    # subscriptions complete but the task waits forever (left in the session nursery).
    await session.register_variable("a", "float", 1.0)
    derived = await session.derive("d", ["a"], lambda a: a * 10)
    await quiet(derived)
    assert len(derive_tasks(session)) == 1
    await session.delete_variable("a", cascade=True)
    await settle(session)
    assert derive_tasks(session) == []
