"""Regressions of issue #6 at the seams between access rules, sessions and limits.

Driven on one in-process ``MemoryStore`` (A owns the variables, B is another session),
with the server adapter's subscribe (``VariablesService._subscribe`` with a
``Subscriber``), synchronously, as on the server's loop. No sleeps, no clocks but a fake.
"""

from __future__ import annotations

from typing import Any

from dspex_rx.core.limits import Limits
from dspex_rx.errors import ResourceExhaustedError
from dspex_rx.server import VariablesService
from dspex_rx.server.fanout import Subscriber
from dspex_rx.store import MemoryStore, VariableSpec
from dspex_rx.v1 import session_pb2 as spb


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def grant(perms: list[str], pattern: str = "b") -> list[dict[str, Any]]:
    return [{"session_pattern": pattern, "permissions": perms}]


def open_stream(store: MemoryStore, session_id: str, refs: list[str]) -> Subscriber:
    """A ``Session`` stream of ``session_id`` subscribing ``refs``, as the server opens it."""
    sub = Subscriber(
        session_id=session_id,
        listen=lambda owner, fn: store.add_listener(owner, fn, foreign=True),
        may_observe=lambda i: store.may(session_id, i, "observe"),
        revision=lambda: store.revision,
    )
    store.add_listener(session_id, sub.on_commit)
    VariablesService(store)._subscribe(session_id, sub, spb.Subscribe(
        request_id=1, refs=refs, include_initial=True))
    sub.drain()
    return sub


def test_a_foreign_watcher_uses_up_the_owners_stream_slots() -> None:
    """A session granted only ``observe`` on one variable can lock the owner out of
    watching its own variables: every stream of B that watches A's variable adds a
    listener to A (``Subscriber.watch`` -> ``store.add_listener(owner, ...)``), counted
    against A's ``max_streams_per_session`` (store.py ``add_listener``, ~line 840). B
    stays within its own limit, yet A's next own stream is refused RESOURCE_EXHAUSTED.
    "No hostile request can exhaust" the server's resources is broken across sessions:
    what another session opens is charged to the owner, who never asked for it.
    Fix: count foreign listeners against the watching session (or a separate per-owner
    foreign budget that leaves room for the owner's own streams)."""
    store = MemoryStore(clock=Clock(), limits=Limits(max_streams_per_session=2))
    store.initialize_session("a")
    store.initialize_session("b")
    (x,), _ = store.register(
        "a", [VariableSpec("x", "integer", 1, access_rules=grant(["observe"]))], actor="a")
    open_stream(store, "b", [x.id])
    open_stream(store, "b", [x.id])  # B is at its own limit, and so, now, is A
    # The owner opens its first watch stream of its own session.
    store.add_listener("a", lambda commit: None)


def test_foreign_streams_do_not_count_when_the_owner_is_below_its_limit() -> None:
    """Control for the stream-slot test: with room to spare, the owner's own stream and
    a foreign one coexist (so the failure above is the slot accounting, not subscribe)."""
    store = MemoryStore(clock=Clock(), limits=Limits(max_streams_per_session=3))
    store.initialize_session("a")
    store.initialize_session("b")
    (x,), _ = store.register(
        "a", [VariableSpec("x", "integer", 1, access_rules=grant(["observe"]))], actor="a")
    open_stream(store, "b", [x.id])
    store.add_listener("a", lambda commit: None)
    try:
        store.add_listener("a", lambda commit: None)
    except ResourceExhaustedError:  # pragma: no cover - would be a different bug
        raise AssertionError("owner refused below its limit") from None


def test_fencing_tokens_differ_from_the_variables_remembered_ones_without_a_growing_set(
    monkeypatch: Any,
) -> None:
    # The store used to keep every token it ever issued (one int per optimization run,
    # never freed, outside the memory budget). A new token now only has to differ from
    # the tokens of the variable's leases it still remembers; a draw that repeats one is
    # drawn again.
    import dspex_rx.store.memory as store_module

    draws = iter([41, 41, 41, 99])
    monkeypatch.setattr(store_module.secrets, "randbits", lambda bits: next(draws))
    store = MemoryStore(clock=Clock())
    _, client, _ = store.initialize_session("a")
    store.register("a", [VariableSpec("x", "float", 0.5)], actor="a")
    first, _ = store.start_optimization("a", "x", optimizer_type="grid", client_id=client)
    store.stop_optimization("a", "x")
    second, _ = store.start_optimization("a", "x", optimizer_type="grid", client_id=client)
    assert (first.token, second.token) == (42, 100)  # the two repeats of 41 were skipped
    assert not any(isinstance(v, set) and 42 in v for v in vars(store).values())


def test_imported_dependency_edges_are_charged_like_registered_ones() -> None:
    # The import rebuilt its edges without their size: the graph (and so the session's
    # memory account) charged 0 bytes for every imported dependency.
    from dspex_rx.store import Snapshot, SnapshotDependency, SnapshotVariable

    native = MemoryStore(clock=Clock())
    native.initialize_session("a")
    native.register("a", [VariableSpec("base", "float", 0.5),
                          VariableSpec("eff", "float", 0.5, dependencies=["base"])], actor="a")
    imported = MemoryStore(clock=Clock())
    imported.initialize_session("a")
    report = imported.import_snapshot("a", Snapshot((
        SnapshotVariable("base", "float", 0.5, dependencies=()),
        SnapshotVariable("eff", "float", 0.5, dependencies=(SnapshotDependency("base"),)),
    )), actor="a")
    assert report.applied and report.dependencies_added == 1
    assert native.session("a").graph.bytes > 0
    assert imported.session("a").graph.bytes == native.session("a").graph.bytes
    imported.check_accounts()
