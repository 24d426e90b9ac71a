"""The SQLite backend keeps everything across a restart: whatever the engine did, the state
read back from the file equals the live state that was synced (and the engine's accounts
add up over it); a corrupt or foreign file is refused; a refused flush fails its writers,
undoes their changes and leaves reads going.
"""

from __future__ import annotations

import asyncio
import contextlib
import copyreg
import io
import pickle
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_property_wire import LIMITS, check_invariants

from dspex_rx.errors import DspexError, StorageError
from dspex_rx.store import MemoryStore, VariableSpec
from dspex_rx.store.backend import Backend
from dspex_rx.store.durable.backend import DurableBackend
from dspex_rx.store.durable.rows import dumps, loads
from dspex_rx.store.records import ChangeEvent, Commit, HistoryEntry, VariableRecord
from dspex_rx.store.sqlite import FILE_NAME, SqliteBackend


def dump(backend: Backend) -> dict[str, str]:
    """Everything a backend holds, comparable by value (repr: numpy arrays too)."""
    out = {"": repr(backend.revision)}
    for sid, s in sorted(backend.sessions.items()):
        out[sid] = repr((
            s.metadata, s.created_at, s.revision, s.metadata_size, s.token, s.claim,
            s.incarnation, sorted((k, c.name, c.ttl) for k, c in s.clients.items()),
            list(s.log), s.log_floor, sorted(s.variables.items()), sorted(s.names.items()),
            sorted((k, list(v)) for k, v in s.history.items()), sorted(s.leases.items()),
            sorted(s.running), sorted((k, list(v)) for k, v in s.recent_leases.items()),
            sorted((k, list(v)) for k, v in s.evaluations.items()), sorted(s.fixed.items()),
            sorted(s.rules.items()), sorted(s.derivations.items()),
            sorted((e.dependent, e.dependency, e.type, repr(e.metadata))
                   for e in s.graph.edges()),
        ))
    return out


def sync(store: MemoryStore) -> None:
    asyncio.run(store.sync(store.revision))


def with_t(backend: Backend) -> MemoryStore:
    """A store on ``backend`` with session "s" holding an integer "t" (0), synced."""
    store = MemoryStore(backend=backend)
    store.initialize_session("s")
    store.register("s", [VariableSpec("t", "integer", 0)], actor="s")
    sync(store)
    return store


def reopened(data: Path) -> SqliteBackend:
    return SqliteBackend(data)


# ------------------------------------------------------------ everything persists


NAMES = ["a", "b", "c", "d"]
VALUE = st.integers(0, 9) | st.floats(0, 1) | st.lists(st.integers(0, 3), max_size=3)


@st.composite
def steps(draw: st.DrawFn) -> tuple[str, ...] | tuple[str, Any, Any]:
    # Mostly valid calls (so most steps commit), over two sessions, with the calls that
    # change state in place: attach/leave, retention, compaction, optimizations and
    # derivation leases.
    name = draw(st.sampled_from(NAMES))
    op = draw(st.sampled_from([
        "register", "set", "set", "set", "batch", "delete", "depend", "undepend",
        "rollback", "optimize", "step", "finish", "stop", "rules", "attach", "leave",
        "retire", "reopen", "derive", "derive", "release",
    ]))
    return op, name, draw(VALUE)


def run_step(store: MemoryStore, state: dict[str, Any], op: str, name: str, value: Any) -> None:
    sid = state["sid"]
    kind = "list" if isinstance(value, list) else "float"
    if op == "register":
        store.register(sid, [VariableSpec(name, kind, value)], actor="t")
    elif op == "set":
        store.set(sid, name, value, actor="t", create_if_missing=True)
    elif op == "batch":
        store.update_many(sid, [(n, value) for n in NAMES[:2]], actor="t", atomic=True)
    elif op == "delete":
        store.delete(sid, name, cascade=True)
    elif op == "depend":
        store.add_dependency(sid, name, NAMES[(NAMES.index(name) + 1) % 4])
    elif op == "undepend":
        store.remove_dependency(sid, name, NAMES[(NAMES.index(name) + 1) % 4])
    elif op == "rollback":
        store.rollback(sid, name, max(1, store.get(sid, name).version - 1),
                       reason="r", actor="t")
    elif op == "optimize":
        lease, _ = store.start_optimization(sid, name, optimizer_type="grid",
                                            max_iterations=50, client_id=state["client"])
        state["lease"] = (name, lease.id, lease.token)
    elif op in ("step", "finish") and "lease" in state:
        var, lease_id, token = state["lease"]
        evaluation = (state.setdefault("i", 0) + 1, value, {"m": 1.0}, 0.5)
        state["i"] += 1
        if op == "step":
            store.optimization_step(sid, var, lease_id, token, evaluation=evaluation)
        else:
            store.finish_optimization(sid, var, lease_id, token, evaluation=evaluation)
    elif op == "stop":
        store.stop_optimization(sid, name, reason="enough")
    elif op == "rules":
        store.set_permissions(sid, name, [{"session_pattern": "other",
                                           "permissions": ["read"]}], actor="t")
    elif op == "derive":
        # A derived variable's lease, from the main client or (as standby) the extra one.
        source = "b" if name == "a" else "a"
        if name not in store.session(sid).names:
            store.register(sid, [VariableSpec(name, "float", 0.5,
                                              metadata={"derived_from": [source]},
                                              dependencies=[source])], actor="t")
        store.claim_derivation(sid, name, [source], client_id=state.get("extra", state["client"]))
    elif op == "release":
        # The owner leaves: its standby takes over, or the variable is marked stale.
        store.release_derivation(sid, name, client_id=state["client"])
    elif op == "attach":
        state["extra"] = store.initialize_session(sid, client_name="x")[1]
    elif op == "leave" and "extra" in state:
        store.close_session(sid, state.pop("extra"))
    elif op == "retire":
        # A session that comes and goes: its id is retired, charged to the store budget.
        gone = f"gone_{name}"
        store.close_session(gone, store.initialize_session(gone)[1])


_ETCD: list[str] = []


@pytest.fixture(params=["sqlite", "etcd"])
def durable(request: pytest.FixtureRequest) -> str:
    # Which durable backend; an etcd member for the run when it is etcd.
    if request.param == "etcd" and not _ETCD:
        _ETCD.append(request.getfixturevalue("etcd_endpoint"))
    return str(request.param)


def opener(kind: str, tmp: pytest.TempPathFactory) -> Callable[[], DurableBackend]:
    """A function that opens the same durable storage again each time it is called."""
    if kind == "sqlite":
        data = tmp.mktemp("data")
        return lambda: SqliteBackend(data)
    from dspex_rx.etcd import EtcdBackend

    prefix = f"durable-{uuid.uuid4().hex}/"
    return lambda: EtcdBackend([_ETCD[0]], prefix=prefix)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(steps(), min_size=1, max_size=30))
def test_the_storage_holds_exactly_the_synced_state_after_any_calls(
    tmp_path_factory: pytest.TempPathFactory, durable: str, ops: list[tuple[str, str, Any]],
) -> None:
    open_backend = opener(durable, tmp_path_factory)
    options: dict[str, Any] = {"limits": LIMITS, "log_size": 5, "history_size": 3}
    store = MemoryStore(backend=open_backend(), **options)
    session, client, _ = store.initialize_session()
    store.initialize_session("other")
    state: dict[str, Any] = {"sid": session.id, "client": client}
    store.register(session.id, [VariableSpec(n, "float", 0.5) for n in NAMES[:2]], actor="t")
    for step, (op, name, value) in enumerate([*ops, ("reopen", "", None)]):
        if op != "reopen":
            with contextlib.suppress(DspexError):  # refused steps change nothing
                run_step(store, state, op, name, value)
            if step % 3:
                continue
        sync(store)
        live = dump(store._backend)
        retired = store.retired_bytes
        store.close()
        back = open_backend()
        assert dump(back) == live, op
        # The engine over the file: its running leases end (their holders are gone),
        # and every account adds up, the retired ids' charge included.
        store = MemoryStore(backend=back, **options)
        assert store.retired_bytes == retired
        assert not any(s.running for s in back.sessions.values())
        state.pop("lease", None)
        check_invariants(store)
    store.close()


def test_a_flush_that_replaces_a_whole_tail_or_a_whole_session_is_stored(
    tmp_path_factory: pytest.TempPathFactory, durable: str,
) -> None:
    # Guards a bug: etcd refused a txn deleting a key range and putting a key inside it
    # ("duplicate key given in txn request"): a tail trimmed whole and refilled, a
    # session ended and created again, in one flush.
    open_backend = opener(durable, tmp_path_factory)
    options: dict[str, Any] = {"history_size": 1, "log_size": 3}
    store = MemoryStore(backend=open_backend(), **options)
    _, client, _ = store.initialize_session("s")
    store.register("s", [VariableSpec("t", "integer", 0)], actor="s")
    sync(store)
    store.set("s", "t", 1, actor="s")  # the one history entry replaced
    sync(store)
    for value in range(2, 7):  # more commits than the log keeps, in one flush
        store.set("s", "t", value, actor="s")
    sync(store)
    assert store.close_session("s", client)  # ended and created again, in one flush
    again, _, _ = store.initialize_session("s")
    store.register("s", [VariableSpec("u", "integer", 7)], actor="s")
    store.set("s", "u", 8, actor="s")
    sync(store)
    live = dump(store._backend)
    store.close()
    back = open_backend()
    assert dump(back) == live
    session = back.sessions["s"]
    assert session.incarnation == again.incarnation
    assert [r.name for r in session.variables.values()] == ["u"]
    assert [[e.value for e in h] for h in session.history.values()] == [[8]]
    assert len(session.log) == 2
    back.close()


def test_a_restart_keeps_versions_history_rules_graph_leases_and_revisions(
    tmp_path: Path,
) -> None:
    store = MemoryStore(backend=SqliteBackend(tmp_path), history_size=3)
    alice, client_id, _ = store.initialize_session("alice")
    store.initialize_session("bob")
    store.register("alice", [
        VariableSpec("base", "float", 0.5),
        VariableSpec("t", "float", 0.5, {"min": 0.0, "max": 1.0}, dependencies=["base"],
                     access_rules=[{"session_pattern": "bob", "permissions": ["read"]}]),
    ], actor="alice")
    for value in (0.1, 0.2, 0.3, 0.4):
        store.set("alice", "t", value, actor="alice")
    lease, _ = store.start_optimization("alice", "t", optimizer_type="grid", max_iterations=5,
                                        client_id=client_id)
    revision = store.revision
    sync(store)
    store.close()

    store = MemoryStore(backend=SqliteBackend(tmp_path), history_size=3)
    t = store.get("alice", "t")
    assert (t.value, t.version) == (0.4, 5)
    assert [e.version for e in store.session("alice").history[t.id]] == [3, 4, 5]
    assert store.session("alice").graph.edge(t.id, store.get("alice", "base").id)
    assert store.get("bob", t.id).value == 0.4  # bob's read rule came back with it
    assert store.session("alice").token == alice.token
    # The optimization running at the stop ended, in a commit after the stored ones.
    ended = store.session("alice").leases[t.id]
    assert (ended.id, ended.state) == (lease.id, "failed")
    assert "restarted" in ended.end_reason
    assert store.revision == revision + 1
    assert store.set("alice", "t", 0.9, actor="alice")[1] == revision + 2
    store.check_accounts()
    store.close()


def test_retired_ids_stay_claimed_across_a_restart(tmp_path: Path) -> None:
    store = MemoryStore(backend=SqliteBackend(tmp_path))
    session, client_id, _ = store.initialize_session("carol")
    token = session.token
    store.close_session("carol", client_id)
    sync(store)
    store.close()
    store = MemoryStore(backend=SqliteBackend(tmp_path))
    with pytest.raises(PermissionError, match="belonged to a session that has ended"):
        store.initialize_session("carol", require_token=True)
    again, _, created = store.initialize_session("carol", token=token, require_token=True)
    assert created and again.token == token
    store.close()


def test_variable_ids_are_never_handed_out_twice_across_restarts(tmp_path: Path) -> None:
    store = MemoryStore(backend=SqliteBackend(tmp_path))
    store.initialize_session("s")
    first = store.register("s", [VariableSpec("a", "float", 0.5)], actor="s")[0][0].id
    store.delete("s", "a")
    sync(store)
    store.close()
    store = MemoryStore(backend=SqliteBackend(tmp_path))
    second = store.register("s", [VariableSpec("a", "float", 0.5)], actor="s")[0][0].id
    assert first != second
    store.close()


def test_a_resume_point_before_the_restart_replays_the_stored_log(tmp_path: Path) -> None:
    store = MemoryStore(backend=SqliteBackend(tmp_path))
    store.initialize_session("s")
    store.register("s", [VariableSpec("t", "integer", 0)], actor="s")
    resume = store.revision
    for value in range(1, 6):
        store.set("s", "t", value, actor="s")
    sync(store)
    store.close()
    store = MemoryStore(backend=SqliteBackend(tmp_path))
    replay = store.commits_since("s", resume)
    assert replay is not None
    assert [c.events[0].record.value for c in replay] == [1, 2, 3, 4, 5]
    assert [c.revision for c in replay] == list(range(resume + 1, resume + 6))
    store.close()


def test_an_unsynced_change_is_not_in_the_file(tmp_path: Path) -> None:
    # What sync has not returned for is not promised: here it is simply not there.
    backend = SqliteBackend(tmp_path)
    store = with_t(backend)
    store.set("s", "t", 1, actor="s")
    assert backend.pending
    backend.close()
    store = MemoryStore(backend=SqliteBackend(tmp_path))
    assert store.get("s", "t").value == 0
    store.close()


# ------------------------------------------------------------ group commit


def test_concurrent_syncs_share_flushes(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path)
    store = MemoryStore(backend=backend)
    store.initialize_session("s")
    store.register("s", [VariableSpec(f"v{i}", "integer", 0) for i in range(32)], actor="s")
    flushes = []
    write = backend._write

    def counted(batch: Any) -> None:
        flushes.append(len(batch))
        write(batch)

    backend._write = counted  # type: ignore[method-assign]

    async def writers() -> None:
        async def one(i: int) -> None:
            for value in range(5):
                store.set("s", f"v{i}", value, actor="s")
                await store.sync(store.revision)

        await asyncio.gather(*(one(i) for i in range(32)))

    asyncio.run(writers())
    # 160 acknowledged writes; each flush carries every change waiting when it began.
    assert 2 <= len(flushes) <= 20, len(flushes)
    assert not backend.pending
    store.close()
    back = SqliteBackend(tmp_path)
    values = {r.name: r.value for r in back.read().records("s")}
    assert values == {f"v{i}": 4 for i in range(32)}
    back.close()


# ------------------------------------------------------------ refusing bad files


def test_a_second_server_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    first = SqliteBackend(tmp_path)
    with pytest.raises(StorageError, match="in use by another dspex-rx server"):
        SqliteBackend(tmp_path)
    first.close()
    SqliteBackend(tmp_path).close()


def test_a_corrupt_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    store = MemoryStore(backend=SqliteBackend(tmp_path))
    store.initialize_session("s")
    store.register("s", [VariableSpec("t", "string", "x" * 5000)], actor="s")
    sync(store)
    store.close()
    path = tmp_path / FILE_NAME
    for leftover in (tmp_path / (FILE_NAME + "-wal"), tmp_path / (FILE_NAME + "-shm")):
        leftover.unlink(missing_ok=True)
    data = bytearray(path.read_bytes())
    data[4096:8192] = b"\xde\xad" * 2048  # a torn page in the middle
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="refusing to start") as refused:
        SqliteBackend(tmp_path)
    assert str(path) in str(refused.value)
    assert path.read_bytes() == bytes(data)


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"hello, not a database" * 100)
    with pytest.raises(StorageError, match="refusing to start"):
        SqliteBackend(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    db = sqlite3.connect(other / FILE_NAME)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(StorageError, match="not a dspex-rx store"):
        SqliteBackend(other)


def test_a_data_dir_that_cannot_be_created_is_refused_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="cannot use data dir"):
        SqliteBackend(blocker / "data")


# ------------------------------------------------------------ a disk that refuses


def test_a_refused_flush_fails_its_writers_undoes_their_change_and_reads_go_on(
    tmp_path: Path,
) -> None:
    backend = SqliteBackend(tmp_path)
    store = MemoryStore(backend=backend)
    reloads = []
    store.on_reload(lambda: reloads.append(store.revision))
    store.initialize_session("s")
    store.register("s", [VariableSpec("t", "integer", 0)], actor="s")
    sync(store)
    kept = store.revision
    write = backend._write

    def full_disk(batch: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    backend._write = full_disk  # type: ignore[method-assign]
    store.set("s", "t", 1, actor="s")
    assert store.get("s", "t").value == 1  # live, not yet acknowledged
    with pytest.raises(StorageError, match="disk is full") as refused:
        sync(store)
    assert "nothing of it was kept" in str(refused.value)
    # The refused write is gone: reads see the file's state, and go on.
    assert store.get("s", "t").value == 0
    assert (store.revision, store.generation, reloads) == (kept, 1, [kept])
    store.check_accounts()
    # For a moment writes are refused at once, without touching the disk.
    with pytest.raises(StorageError):
        store.set("s", "t", 2, actor="s")
    assert store.get("s", "t").value == 0
    # Once the disk takes writes again, so does the store.
    backend._write = write  # type: ignore[method-assign]
    backend._refusing_until = 0.0
    store.set("s", "t", 3, actor="s")
    sync(store)
    store.close()
    store = MemoryStore(backend=SqliteBackend(tmp_path))
    assert store.get("s", "t").value == 3
    assert [e.value for e in store.session("s").history[store.get("s", "t").id]] == [0, 3]
    store.close()


def test_the_real_disk_refusing_a_flush_is_reported(tmp_path: Path) -> None:
    # A real SQLite error from the writer thread, not a stand-in: the file is made
    # read-only under a running backend.
    backend = SqliteBackend(tmp_path)
    store = MemoryStore(backend=backend)
    store.initialize_session("s")
    sync(store)
    backend._db.execute("PRAGMA query_only=ON")
    store.register("s", [VariableSpec("t", "integer", 0)], actor="s")
    with pytest.raises(StorageError, match=r"readonly|read-only|query_only"):
        sync(store)
    assert store.session("s").variables == {}
    backend._db.execute("PRAGMA query_only=OFF")
    store.close()


def test_a_read_only_data_file_serves_reads_and_refuses_writes(tmp_path: Path) -> None:
    # As a read-only mount looks to SQLite: the file opens, and the first write fails.
    store = with_t(SqliteBackend(tmp_path))
    store.close()
    real = sqlite3.connect

    def read_only(path: Any, **options: Any) -> sqlite3.Connection:
        return real(f"file:{path}?mode=ro", uri=True, **options)

    sqlite3.connect = read_only  # type: ignore[assignment]
    try:
        store = MemoryStore(backend=SqliteBackend(tmp_path))
    finally:
        sqlite3.connect = real
    assert store.get("s", "t").value == 0
    store.set("s", "t", 1, actor="s")
    with pytest.raises(StorageError, match="readonly") as refused:
        sync(store)
    assert "nothing of it was kept" in str(refused.value)
    assert store.get("s", "t").value == 0  # reads go on, from what the file holds
    store.close()


# ------------------------------------------------------------ a flush cut short


@pytest.mark.parametrize("stored", [False, True], ids=["not-stored", "stored"])
def test_a_flush_cancelled_mid_write_shows_nothing_until_the_file_is_read_back(
    tmp_path: Path, stored: bool,
) -> None:
    # Guards a bug: a flush cancelled while its write was out (a program's loop shutting
    # down) left the batch's changes unmarked, so the next flush skipped them and the
    # store called them durable: a write the storage never took stayed on show.
    backend = SqliteBackend(tmp_path)
    store = MemoryStore(backend=backend)
    store.initialize_session("s")
    store.register("s", [VariableSpec("t", "integer", 0), VariableSpec("u", "integer", 0)],
                   actor="s")
    sync(store)
    store_rows = backend._store

    async def cut_short(ops: Any) -> None:
        if stored:
            await store_rows(ops)  # the storage took it; its answer never came back
        await asyncio.Event().wait()

    backend._store = cut_short  # type: ignore[method-assign]
    store.set("s", "t", 1, actor="s")

    async def give_up() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(store.sync(store.revision), 0.05)

    asyncio.run(give_up())  # the loop's end cancels the flush still waiting
    backend._store = store_rows  # type: ignore[method-assign]
    assert store.pending
    store.set("s", "u", 1, actor="s")
    with pytest.raises(StorageError, match="interrupted before it was known to be stored"):
        sync(store)
    # Read back: what the file holds, nothing else; u (made on the unsure state) undone.
    assert (store.get("s", "t").value, store.get("s", "u").value) == (int(stored), 0)
    assert not store.pending
    store.set("s", "u", 2, actor="s")
    sync(store)
    store.close()
    again = MemoryStore(backend=SqliteBackend(tmp_path))
    assert (again.get("s", "t").value, again.get("s", "u").value) == (int(stored), 2)
    again.close()


def test_a_closed_durable_store_refuses_to_flush_by_name(tmp_path: Path) -> None:
    store = with_t(SqliteBackend(tmp_path))
    store.set("s", "t", 1, actor="s")
    store.close()
    with pytest.raises(StorageError, match=r"the data file .* is closed: nothing more"):
        sync(store)


def test_a_broken_store_that_was_closed_says_it_is_closed(tmp_path: Path) -> None:
    # Guards a bug: syncing a broken (flush interrupted) store after close() tried to read
    # the closed file back and failed with sqlite3's ProgrammingError, not a StorageError.
    backend = SqliteBackend(tmp_path)
    store = with_t(backend)

    async def failing(ops: Any) -> None:
        raise RuntimeError("an unexpected failure mid-write")

    backend._store = failing  # type: ignore[method-assign]
    store.set("s", "t", 1, actor="s")
    with pytest.raises(RuntimeError, match="unexpected failure"):
        sync(store)
    store.close()
    with pytest.raises(StorageError, match=r"the data file .* is closed: nothing more"):
        sync(store)


# Guards: records pickle with their own state functions (speed, for every replica's
# unpickling); a change of their state's shape would leave rows stored before unreadable.
def test_stored_records_keep_the_pickled_state_older_rows_have() -> None:
    record = VariableRecord("var_t_1", "t", "float", 0.5, {"min": 0.0}, {"k": 1}, 3, 10, 1,
                            1.0, 2.0, "client-1", "a knob", 8, 4)
    event = ChangeEvent(record, 0.4, "value_change", {}, "client-1", ("var_u_2",))
    commit = Commit(10, (event,), 2.0, "s", ("var_t_1",))
    entry = HistoryEntry(3, 0.5, 2.0, "client-1", {"k": 1}, 10, 8)

    class AsDataclassesDid(pickle.Pickler):
        # The reduction Python's dataclasses give a frozen slotted class: its field
        # values as a list, in field order.
        def reducer_override(self, obj: Any) -> Any:
            if type(obj) in (VariableRecord, ChangeEvent, Commit, HistoryEntry):
                return copyreg.__newobj__, (type(obj),), [getattr(obj, f.name)
                                                          for f in fields(obj)]
            return NotImplemented

    for value in (record, event, commit, entry):
        older = io.BytesIO()
        AsDataclassesDid(older, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
        assert loads(older.getvalue()) == value
        assert dumps(value) == older.getvalue()

    class WithALaterField(pickle.Pickler):
        # A row from a later version with one more field: it loads here, as it did.
        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is HistoryEntry:
                return copyreg.__newobj__, (HistoryEntry,), [
                    *(getattr(obj, f.name) for f in fields(obj)), "later"]
            return NotImplemented

    newer = io.BytesIO()
    WithALaterField(newer, protocol=pickle.HIGHEST_PROTOCOL).dump(entry)
    assert loads(newer.getvalue()) == entry


def test_a_trim_deletes_only_the_rows_it_drops_not_every_number_below_them() -> None:
    # Guards: a trim deleted [0, first) each flush; etcd walks every key ever deleted in
    # such a range until it compacts, so its CPU per write grew with the store's age
    # (3 replicas over etcd: 100 -> 270 us per write, writes/s 2,800 -> 2,000 in 48k).
    from collections import deque

    from dspex_rx.store.durable.image import Dirty, Image
    from dspex_rx.store.durable.rows import ENTRIES, LOG, Delete, delete_range, encode_key
    from dspex_rx.store.state import Session

    kept, new = object(), object()
    image = Image()
    image.know("s", LOG, "", 10, 14, kept)  # rows 10..13 held, 13 written from ``kept``
    session = Session("s", {}, 0.0)
    session.log = deque([kept, new])  # type: ignore[list-item]
    ops = image.batch({"s": session}, {"s": Dirty(log=True)}, (), 0, 1, None)
    deletes = [op for op in ops if isinstance(op, Delete)]
    assert len(deletes) == 1
    span = delete_range(deletes[0])
    assert span == (encode_key(ENTRIES, ("s", LOG, "", 10)),
                    encode_key(ENTRIES, ("s", LOG, "", 13)))
    assert image.tails() == [(("s", LOG, ""), 13, 15, new)]


def test_a_trim_after_another_writers_trim_starts_where_that_one_stopped() -> None:
    # The first row held moves with the deletes another replica's flush made (the
    # watch replays one per row), so this replica's next trim starts there.
    from collections import deque

    from dspex_rx.store.durable.image import Dirty, Image
    from dspex_rx.store.durable.rows import ENTRIES, LOG, Delete, delete_range, encode_key
    from dspex_rx.store.state import Session

    items = [object() for _ in range(6)]  # rows 10..15
    image = Image()
    image.know("s", LOG, "", 10, 14, items[3])
    image.appended("s", LOG, "", 14, items[4])
    image.appended("s", LOG, "", 15, items[5])
    for seq in (10, 11):  # the other writer trimmed two rows
        image.trimmed("s", LOG, "", seq, items[5])
    new = object()
    session = Session("s", {}, 0.0)
    session.log = deque([items[4], items[5], new])  # type: ignore[list-item]
    ops = image.batch({"s": session}, {"s": Dirty(log=True)}, (), 0, 1, None)
    [delete] = [op for op in ops if isinstance(op, Delete)]
    assert delete_range(delete) == (encode_key(ENTRIES, ("s", LOG, "", 12)),
                                    encode_key(ENTRIES, ("s", LOG, "", 14)))
    assert image.tails() == [(("s", LOG, ""), 14, 17, new)]
