"""Every Backend keeps the guarantees of dspex_rx/store/backend.py (one suite, every backend).

A new backend joins by one line in BACKENDS.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from dspex_rx.core.access import AccessRule
from dspex_rx.core.graph import Edge
from dspex_rx.errors import ConflictError
from dspex_rx.store import MemoryStore, VariableSpec
from dspex_rx.store.backend import Backend, RevisionConflict, WriteTxn
from dspex_rx.store.leases import OptimizationEntry, OptimizationLease
from dspex_rx.store.leasing import staged_copy
from dspex_rx.store.memory import MemoryBackend
from dspex_rx.store.records import ChangeEvent, Commit, HistoryEntry, VariableRecord
from dspex_rx.store.state import Session


def SqliteBackend() -> Backend:
    # A fresh data dir per test; the durable store behind the same seam.
    from dspex_rx.store.sqlite import SqliteBackend as Durable

    return Durable(tempfile.mkdtemp(prefix="dspex-conformance-"))


def EtcdBackend() -> Backend:
    # A fresh prefix per test on the run's etcd member (set by the fixture below).
    from dspex_rx.etcd import EtcdBackend as Replicated

    return Replicated([_ETCD[0]], prefix=f"conformance-{uuid.uuid4().hex}/")


_ETCD: list[str] = []
BACKENDS: list[Callable[[], Backend]] = [
    MemoryBackend,
    SqliteBackend,
    EtcdBackend,
]


@pytest.fixture(params=BACKENDS, ids=lambda make: make.__name__)
def empty_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param is EtcdBackend and not _ETCD:
        _ETCD.append(request.getfixturevalue("etcd_endpoint"))
    made: Backend = request.param()
    yield made
    made.close()


@pytest.fixture
def backend(empty_backend: Backend) -> Backend:
    empty_backend.add_session(Session("s", {}, 0.0))
    empty_backend.add_session(Session("other", {}, 0.0))
    return empty_backend


def record(name: str, value: object, version: int = 1, var_id: str = "") -> VariableRecord:
    return VariableRecord(
        var_id or f"var_{name}_1", name, "int", value, {}, {}, version, 0, 0, 0.0, 0.0, "t"
    )


def event(rec: VariableRecord) -> ChangeEvent:
    return ChangeEvent(rec, None, "value_change", {}, "t")


def put(backend: Backend, name: str, value: object, session: str = "s") -> Commit:
    # One committed write of one record (a new version when it exists).
    with backend.write() as txn:
        old = txn.find(session, name)
        rec = record(name, value, old.version + 1 if old else 1, old.id if old else "")
        txn.put(session, rec)
        return txn.commit(session, [event(rec)], timestamp=1.0)


def test_revisions_strictly_increase_by_one_per_commit(backend: Backend) -> None:
    assert backend.revision == 0
    revisions = [put(backend, "x", n).revision for n in range(3)]
    revisions.append(put(backend, "y", 9, session="other").revision)
    assert revisions == [1, 2, 3, 4]  # one counter for every session
    assert backend.revision == 4
    assert backend.sessions["s"].revision == 3
    assert backend.sessions["other"].revision == 4


def test_a_txn_stamps_one_revision_known_before_its_commit(backend: Backend) -> None:
    put(backend, "x", 1)
    with backend.write() as txn:
        assert (txn.base_revision, txn.revision) == (1, 2)
        txn.put("s", record("a", 1, var_id="var_a_1"))
        txn.put("s", record("b", 2, var_id="var_b_1"))
        commit = txn.commit("s", [], timestamp=2.0)
    assert commit.revision == 2 and commit.session_id == "s" and commit.timestamp == 2.0
    assert [r.name for r in backend.read().records("s")] == ["a", "b", "x"]


def test_puts_and_deletes_apply_records_names_and_owners(backend: Backend) -> None:
    put(backend, "x", 1)
    view = backend.read()
    assert view.get("s", "var_x_1") == view.find("s", "x") == record("x", 1)
    assert view.owner("var_x_1") == "s"
    assert view.get("other", "var_x_1") is None
    with backend.write() as txn:
        txn.delete("s", "var_x_1")
        txn.commit("s", [], timestamp=1.0)
    view = backend.read()
    assert (view.get("s", "var_x_1"), view.find("s", "x"), view.owner("var_x_1")) == (
        None, None, None
    )
    assert view.records("s") == []


def test_access_rules_are_staged_and_applied_with_the_commit(backend: Backend) -> None:
    readers = (AccessRule("any", ("read",)),)
    with backend.write() as txn:
        txn.put("s", record("x", 1))
        txn.set_rules("s", "var_x_1", readers)
        assert txn.rules("s", "var_x_1") == readers
        assert backend.read().rules("s", "var_x_1") == ()
        txn.commit("s", [], timestamp=1.0, permissions=["var_x_1"])
    assert backend.read().rules("s", "var_x_1") == readers
    assert [c.permissions for c in backend.commits_since("s", 0) or ()] == [("var_x_1",)]
    with pytest.raises(KeyError), backend.write() as txn:
        txn.set_rules("s", "var_x_1", ())
        raise KeyError("refused")
    assert backend.read().rules("s", "var_x_1") == readers  # the refused txn left them
    with backend.write() as txn:
        txn.set_rules("s", "var_x_1", ())
        txn.commit("s", [], timestamp=1.0)
    assert backend.read().rules("s", "var_x_1") == ()


def test_dependency_edges_are_staged_and_applied_with_the_commit(backend: Backend) -> None:
    for name in ("a", "b", "c"):
        put(backend, name, 1)
    b_on_a, c_on_b = Edge("var_b_1", "var_a_1", size=10), Edge("var_c_1", "var_b_1", size=20)
    with pytest.raises(KeyError), backend.write() as txn:
        txn.add_edge("s", b_on_a)
        assert txn.graph("s").edge("var_b_1", "var_a_1") == b_on_a  # its own change
        assert backend.read().graph("s").edge("var_b_1", "var_a_1") is None
        raise KeyError("refused")
    assert len(backend.read().graph("s")) == 0  # the aborted txn left the graph
    with backend.write() as txn:
        txn.add_edge("s", b_on_a)
        txn.add_edge("s", c_on_b)
        assert txn.graph("s").downstream(["var_a_1"]) == ["var_b_1", "var_c_1"]
        assert len(backend.read().graph("s")) == 0  # a reader sees it after the commit
        txn.commit("s", [], timestamp=1.0)
    graph = backend.read().graph("s")
    assert (graph.edges(), graph.bytes) == ([b_on_a, c_on_b], 30)
    txn = backend.write()
    txn.drop_edge("s", "var_b_1", "var_a_1")
    txn.drop_edges("s", "var_c_1")
    assert len(txn.graph("s")) == 0
    txn.abort()
    assert backend.read().graph("s").edges() == [b_on_a, c_on_b]
    with backend.write() as txn:
        txn.drop_edges("s", "var_b_1")  # both ways
        assert len(backend.read().graph("s")) == 2
        txn.commit("s", [], timestamp=1.0)
    graph = backend.read().graph("s")
    assert (len(graph), graph.bytes) == (0, 0)
    with backend.write() as txn:
        txn.add_edge("s", c_on_b)
        txn.drop_edge("s", "var_c_1", "var_b_1")  # in order: added, then dropped
        txn.commit("s", [], timestamp=1.0)
    assert len(backend.read().graph("s")) == 0


def entry(version: int, value: object, revision: int) -> HistoryEntry:
    return HistoryEntry(version, value, 0.0, "t", {}, revision, 100)


def test_history_entries_are_staged_and_applied_with_the_commit(backend: Backend) -> None:
    put(backend, "x", 1)
    first, second = entry(1, 1, 1), entry(2, 5, 2)
    with backend.write() as txn:
        txn.append_history("s", "var_x_1", first)
        txn.commit("s", [], timestamp=1.0)
    assert list(backend.read().history("s", "var_x_1")) == [first]
    with pytest.raises(KeyError), backend.write() as txn:
        txn.append_history("s", "var_x_1", second)
        assert list(txn.history("s", "var_x_1")) == [first, second]  # its own change
        assert list(backend.read().history("s", "var_x_1")) == [first]
        raise KeyError("refused")
    assert list(backend.read().history("s", "var_x_1")) == [first]  # the abort left it
    with backend.write() as txn:
        txn.append_history("s", "var_x_1", second)
        assert list(backend.read().history("s", "var_x_1")) == [first]  # not before commit
        txn.commit("s", [], timestamp=1.0)
    assert list(backend.read().history("s", "var_x_1")) == [first, second]
    txn = backend.write()
    txn.drop_history("s", "var_x_1")
    assert list(txn.history("s", "var_x_1")) == []
    txn.abort()
    assert list(backend.read().history("s", "var_x_1")) == [first, second]
    with backend.write() as txn:
        txn.drop_history("s", "var_x_1")
        txn.commit("s", [], timestamp=1.0)
    assert list(backend.read().history("s", "var_x_1")) == []
    assert list(backend.read().history("other", "var_x_1")) == []


def lease(lease_id: str) -> OptimizationLease:
    return OptimizationLease(
        lease_id, "var_x_1", "grid", "s", "c1", 7, 30.0, {}, 10, 0.0, 0.0, 30.0, size=50
    )


def evaluation(iteration: int) -> OptimizationEntry:
    return OptimizationEntry("opt_1", "grid", iteration, 0.5, {}, 0.9, 0.0, 1, 40)


def test_leases_and_evaluations_are_staged_and_applied_with_the_commit(
    backend: Backend,
) -> None:
    put(backend, "x", 1)
    first = lease("opt_1")
    with pytest.raises(KeyError), backend.write() as txn:
        txn.put_lease("s", first)
        txn.append_evaluation("s", "var_x_1", evaluation(1))
        assert txn.lease("s", "var_x_1") is first  # its own changes
        assert list(txn.evaluations("s", "var_x_1")) == [evaluation(1)]
        assert backend.read().lease("s", "var_x_1") is None
        raise KeyError("refused")
    view = backend.read()
    assert (view.lease("s", "var_x_1"), list(view.evaluations("s", "var_x_1"))) == (None, [])
    session = backend.sessions["s"]
    assert (session.running, session.recent_leases) == ({}, {})  # the abort left them
    with backend.write() as txn:
        txn.put_lease("s", first)
        txn.append_evaluation("s", "var_x_1", evaluation(1))
        assert backend.read().lease("s", "var_x_1") is None  # not before the commit
        txn.commit("s", [], timestamp=1.0)
    view = backend.read()
    assert view.lease("s", "var_x_1") is first
    assert list(view.evaluations("s", "var_x_1")) == [evaluation(1)]
    assert session.running == {"var_x_1": first}
    ended = staged_copy(first)  # the engine ends a copy and puts it
    ended.end("stopped", "by a test", 2.0)
    with pytest.raises(KeyError), backend.write() as txn:
        txn.put_lease("s", ended)
        assert txn.lease("s", "var_x_1") is ended
        raise KeyError("refused")
    assert first.state == "running" and session.running == {"var_x_1": first}
    with backend.write() as txn:
        txn.put_lease("s", ended)
        txn.commit("s", [], timestamp=1.0)
    # Written back into the lease object every holder has.
    assert (first.state, first.end_reason) == ("stopped", "by a test")
    assert session.running == {} and backend.read().lease("s", "var_x_1") is first
    assert list(session.recent_leases["var_x_1"]) == [first]
    second = lease("opt_2")
    with backend.write() as txn:
        txn.put_lease("s", second)
        txn.commit("s", [], timestamp=1.0)
    assert [kept.id for kept in session.recent_leases["var_x_1"]] == ["opt_1", "opt_2"]
    txn = backend.write()
    txn.drop_leases("s", "var_x_1")
    assert txn.lease("s", "var_x_1") is None and list(txn.evaluations("s", "var_x_1")) == []
    txn.abort()
    assert backend.read().lease("s", "var_x_1") is second
    with backend.write() as txn:
        txn.drop_leases("s", "var_x_1")
        txn.commit("s", [], timestamp=1.0)
    view = backend.read()
    assert (view.lease("s", "var_x_1"), list(view.evaluations("s", "var_x_1"))) == (None, [])
    assert (session.running, session.recent_leases) == ({}, {})


def test_a_refused_engine_write_leaves_the_session_and_its_accounts_alone(
    empty_backend: Backend,
) -> None:
    # The engine stages a whole write, then the commit applies it: a write that fails
    # while its txn is open (here: the backend refuses the commit) changes nothing.
    store = MemoryStore(backend=empty_backend)
    _, client_id, _ = store.initialize_session("s")
    store.register("s", [VariableSpec("a", "int", 1), VariableSpec("b", "int", 2)], actor="me")
    store.set("s", "a", 5, actor="me")
    run, _ = store.start_optimization("s", "b", optimizer_type="grid", client_id=client_id)

    def state() -> object:
        session = empty_backend.sessions["s"]
        return (
            [(e.version, e.value) for e in store.history("s", "a").entries],
            [(e.version, e.value) for e in store.history("s", "b").entries],
            empty_backend.read().graph("s").edges(), session.used, session.pinned,
            session.history_entries, empty_backend.revision, dict(session.running),
            {var: list(kept) for var, kept in session.recent_leases.items()},
            {var: list(kept) for var, kept in session.evaluations.items()},
        )

    before = state()
    real = empty_backend.write

    def refusing() -> WriteTxn:
        txn = real()

        def commit(*args: object, **kwargs: object) -> Commit:
            raise RevisionConflict("moved on")

        txn.commit = commit  # type: ignore[method-assign]
        return txn

    empty_backend.write = refusing  # type: ignore[method-assign]
    with pytest.raises(RevisionConflict):
        store.set("s", "a", 6, actor="me")
    with pytest.raises(RevisionConflict):
        store.add_dependency("s", "b", "a")
    with pytest.raises(RevisionConflict):
        store.delete("s", "a")
    with pytest.raises(RevisionConflict):
        store.start_optimization("s", "a", optimizer_type="grid", client_id=client_id)
    with pytest.raises(RevisionConflict):
        store.optimization_step("s", "b", run.id, run.token, evaluation=(1, 3, {}, 0.5))
    with pytest.raises(RevisionConflict):
        store.stop_optimization("s", "b", reason="refused")
    empty_backend.write = real  # type: ignore[method-assign]
    assert state() == before
    assert (run.state, run.iteration, run.best_score) == ("running", 0, None)  # as it was
    store.check_accounts()
    store.optimization_step("s", "b", run.id, run.token, evaluation=(1, 3, {}, 0.5))
    assert [e.iteration for e in empty_backend.read().evaluations("s", "var_b_2")] == [1]
    assert (run.iteration, run.best_score) == (1, 0.5)
    assert store.add_dependency("s", "b", "a") == store.revision
    assert store.set("s", "a", 7, actor="me")[0].version == 3
    store.check_accounts()


def test_an_exception_inside_a_write_txn_leaves_no_trace(backend: Backend) -> None:
    put(backend, "x", 1)
    seen: list[Commit | None] = []
    backend.watch("s", seen.append)
    with pytest.raises(ZeroDivisionError), backend.write() as txn:
        txn.put("s", record("x", 2, version=2))
        txn.put("s", record("y", 3))
        txn.delete("s", "var_x_1")
        raise ZeroDivisionError
    view = backend.read()
    assert view.get("s", "var_x_1") == record("x", 1)
    assert view.find("s", "y") is None and view.owner("var_y_1") is None
    assert backend.revision == 1
    assert backend.commits_since("s", 1) == []
    assert seen == []
    assert put(backend, "x", 5).revision == 2  # the aborted txn took no revision


def test_abort_drops_the_staged_changes(backend: Backend) -> None:
    seen: list[Commit | None] = []
    backend.watch("s", seen.append)
    txn = backend.write()
    txn.put("s", record("x", 1))
    txn.abort()
    assert txn.done
    assert backend.read().records("s") == []
    assert (backend.revision, backend.commits_since("s", 0), seen) == (0, [], [])
    with pytest.raises(RuntimeError):
        txn.put("s", record("x", 1))  # an ended txn takes nothing more


def test_reads_in_a_txn_see_its_own_changes_and_others_do_not(backend: Backend) -> None:
    put(backend, "x", 1)
    before = backend.read()
    with backend.write() as txn:
        txn.put("s", record("x", 2, version=2))
        txn.put("s", record("y", 7))
        assert txn.get("s", "var_x_1") == record("x", 2, version=2)
        assert txn.find("s", "y") == record("y", 7)
        assert [r.value for r in txn.records("s")] == [2, 7]
        assert txn.owner("var_y_1") == "s"
        outside = backend.read()
        assert outside.get("s", "var_x_1") == record("x", 1)
        assert outside.find("s", "y") is None
        txn.commit("s", [], timestamp=1.0)
    # A view opened before the commit never mixes the two states: it still reads the old
    # one (a snapshot), or refuses to read (RevisionConflict).
    try:
        old = (before.get("s", "var_x_1"), before.find("s", "y"))
    except RevisionConflict:
        pass
    else:
        assert old == (record("x", 1), None)
    assert [r.value for r in backend.read().records("s")] == [2, 7]


def test_one_write_txn_at_a_time(backend: Backend) -> None:
    txn = backend.write()
    with pytest.raises(RuntimeError):
        backend.write()
    txn.commit("s", [], timestamp=1.0)
    second = backend.write()  # the first ended: the next may open
    second.abort()
    with backend.write() as third:
        third.commit("s", [], timestamp=1.0)
    assert backend.revision == 2


def test_a_watch_from_revision_r_sees_every_later_commit_once_in_order(
    backend: Backend,
) -> None:
    for n in range(3):
        put(backend, "x", n)
    put(backend, "z", 0, session="other")
    start = backend.revision
    # What a resuming watcher does: replay the log after R, then follow the watch.
    seen: list[int] = [c.revision for c in backend.commits_since("s", 2) or ()]
    watched: list[Commit | None] = []
    stop = backend.watch("s", watched.append)
    for n in range(3):
        put(backend, "x", 10 + n)
    put(backend, "z", 1, session="other")  # another session's commit is not this watch's
    put(backend, "y", 1)
    seen += [c.revision for c in watched if c is not None]
    assert seen == [3, 5, 6, 7, 9]
    assert [c.revision for c in backend.commits_since("s", start) or ()] == [5, 6, 7, 9]
    assert [[e.record.value for e in c.events] for c in watched if c] == [[10], [11], [12], [1]]
    stop()
    put(backend, "x", 99)
    assert len(watched) == 4  # a removed watch hears nothing more


def test_watchers_run_after_the_state_changed_and_after_settle(backend: Backend) -> None:
    order: list[str] = []

    def listener(commit: Commit | None) -> None:
        assert commit is not None
        assert backend.read().find("s", "x") == record("x", 1)
        assert backend.revision == commit.revision
        order.append("watch")

    backend.watch("s", listener)
    with backend.write() as txn:
        txn.put("s", record("x", 1))
        txn.commit("s", [], timestamp=1.0, settle=lambda c: order.append(f"settle {c.revision}"))
    assert order == ["settle 1", "watch"]


def test_a_failing_watcher_does_not_undo_a_commit(backend: Backend) -> None:
    def broken(commit: Commit | None) -> None:
        raise RuntimeError("watcher bug")

    seen: list[Commit | None] = []
    backend.watch("s", broken)
    backend.watch("s", seen.append)
    assert put(backend, "x", 1).revision == 1
    assert backend.read().find("s", "x") == record("x", 1)
    assert [c.revision for c in seen if c] == [1]


def test_a_compacted_point_answers_none(backend: Backend) -> None:
    for n in range(5):
        put(backend, "x", n)
    dropped = backend.compact("s", 3)
    assert [c.revision for c in dropped] == [1, 2, 3]
    assert backend.commits_since("s", 0) is None
    assert backend.commits_since("s", 2) is None
    assert [c.revision for c in backend.commits_since("s", 3) or ()] == [4, 5]
    assert backend.commits_since("s", 5) == []
    assert backend.compact("s", 3) == []  # compacting again drops nothing


def test_removing_a_session_settles_then_tells_its_watchers_none(backend: Backend) -> None:
    put(backend, "x", 1)
    order: list[object] = []
    backend.watch("s", order.append)
    other: list[Commit | None] = []
    backend.watch("other", other.append)
    gone = backend.remove_session("s", settle=lambda s: order.append(f"settle {s.id}"))
    assert gone.id == "s"
    assert order == ["settle s", None]
    assert other == []
    assert "s" not in backend.sessions and backend.read().owner("var_x_1") is None


def test_sync_returns_for_committed_revisions(backend: Backend) -> None:
    revision = put(backend, "x", 1).revision

    async def durable() -> None:
        await backend.sync(0)
        await backend.sync(revision)
        with pytest.raises(ValueError):
            await backend.sync(revision + 1)

    asyncio.run(durable())


def test_the_id_sequence_never_repeats_a_number(backend: Backend) -> None:
    first = [backend.next_id() for _ in range(3)]
    txn = backend.write()
    taken = backend.next_id()  # taken by a write that is then refused: skipped, not reused
    txn.abort()
    after = backend.next_id()
    numbers = [*first, taken, after]
    assert numbers == sorted(numbers) and len(set(numbers)) == 5


def test_the_engine_runs_over_the_backend(empty_backend: Backend) -> None:
    store = MemoryStore(backend=empty_backend)
    session, client_id, _ = store.initialize_session("s")
    assert empty_backend.sessions["s"] is session
    frames: list[Commit | None] = []
    store.add_listener("s", frames.append)
    records, first = store.register(
        "s", [VariableSpec("a", "int", 1), VariableSpec("b", "int", 2, dependencies=["a"])],
        actor="me",
    )
    record, second, _ = store.set("s", "a", 5, actor="me")
    assert (record.version, record.mod_revision) == (2, 2)
    with pytest.raises(ConflictError):
        store.set("s", "a", 6, actor="me", expected_version=1)  # refused: no trace
    outcomes, _, applied = store.update_many("s", [("a", 7), ("nope", 1)], actor="me")
    assert not applied and [o.ok for o in outcomes] == [False, False]
    deleted, third = store.delete("s", "a", cascade=True)
    assert (first, second, third) == (1, 2, 3) == (1, 2, empty_backend.revision)
    assert [c.revision for c in frames if c] == [1, 2, 3]
    write = frames[1]
    assert write is not None
    assert [(e.record.name, e.update_type) for e in write.events] == [
        ("a", "value_change"), ("b", "dependency_changed"),
    ]
    assert sorted(deleted) == sorted(r.id for r in records)
    assert empty_backend.read().records("s") == []
    assert [c.revision for c in store.commits_since("s", 1) or ()] == [2, 3]
    store.check_accounts()
    assert store.close_session("s", client_id)
    assert frames[-1] is None and "s" not in empty_backend.sessions


# ------------------------------------------------ the server acknowledges durable writes


class GatedBackend(MemoryBackend):
    """A MemoryBackend whose ``sync`` waits for the test to open a gate, as a durable
    backend waits for its fsync; it notes each revision it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.synced: list[int] = []

    async def sync(self, revision: int) -> None:
        await super().sync(revision)
        self.entered.set()
        await asyncio.get_running_loop().run_in_executor(None, self.gate.wait)
        self.synced.append(revision)


async def test_the_server_answers_a_write_only_after_its_revision_is_durable() -> None:
    import trio

    import dspex_rx
    from dspex_rx.server import EmbeddedServer

    backend = GatedBackend()
    with EmbeddedServer(store=MemoryStore(backend=backend)) as server:
        async with dspex_rx.connect(server.target) as session:
            await session.register_variable("t", "float", 0.5)
            registered = backend.revision
            assert backend.synced == [registered]
            backend.gate.clear()
            backend.entered.clear()
            answered: list[int] = []

            async def write() -> None:
                await session.set_variable("t", 0.25)
                answered.append(backend.revision)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                await trio.to_thread.run_sync(backend.entered.wait)
                # The write is committed (a read sees it) but not acknowledged until durable.
                assert await session.get_variable("t", bypass_cache=True) == 0.25
                assert answered == [] and backend.synced == [registered]
                backend.gate.set()
            assert answered == [registered + 1]
            assert backend.synced == [registered, registered + 1]  # reads never wait
