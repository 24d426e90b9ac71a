"""MemoryBackend's transactions: a read view of the live Session objects, and the write txn
that stages changes (records, rules, edges, history, leases) for the backend to apply.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from dspex_rx.core.access import AccessRule
from dspex_rx.core.graph import DependencyGraph, Edge
from dspex_rx.store.backend import ReadTxn, RevisionConflict, WriteTxn
from dspex_rx.store.leases import OptimizationEntry, OptimizationLease
from dspex_rx.store.records import ChangeEvent, Commit, HistoryEntry, VariableRecord
from dspex_rx.store.state import Session

if TYPE_CHECKING:
    from collections.abc import Callable

    from dspex_rx.store.memory.backend import MemoryBackend


class _MemoryRead(ReadTxn):
    # A view of the live dicts: consistent because nothing commits while the engine runs;
    # a read after a commit moved the backend on is refused, never a mix of two states.
    def __init__(self, backend: MemoryBackend) -> None:
        self._backend = backend
        self._revision = backend._revision

    @property
    def revision(self) -> int:
        return self._revision

    def _check(self) -> None:
        if self._backend.revision != self._revision:
            raise RevisionConflict(
                f"read at revision {self._revision}, and the store is at "
                f"{self._backend.revision}: open a new read"
            )

    def session(self, session_id: str) -> Session | None:
        self._check()
        return self._backend.sessions.get(session_id)

    def get(self, session_id: str, var_id: str) -> VariableRecord | None:
        session = self.session(session_id)
        return session.variables.get(var_id) if session is not None else None

    def find(self, session_id: str, name: str) -> VariableRecord | None:
        session = self.session(session_id)
        var_id = session.names.get(name) if session is not None else None
        return self.get(session_id, var_id) if var_id else None

    def records(self, session_id: str) -> list[VariableRecord]:
        session = self.session(session_id)
        found = list(session.variables.values()) if session is not None else []
        return sorted(found, key=lambda r: r.name)

    def owner(self, var_id: str) -> str | None:
        self._check()
        return self._backend._owners.get(var_id)

    def rules(self, session_id: str, var_id: str) -> tuple[AccessRule, ...]:
        session = self.session(session_id)
        return session.rules.get(var_id, ()) if session is not None else ()

    def history(self, session_id: str, var_id: str) -> Sequence[HistoryEntry]:
        session = self.session(session_id)
        return session.history.get(var_id, ()) if session is not None else ()

    def lease(self, session_id: str, var_id: str) -> OptimizationLease | None:
        session = self.session(session_id)
        return session.leases.get(var_id) if session is not None else None

    def evaluations(self, session_id: str, var_id: str) -> Sequence[OptimizationEntry]:
        session = self.session(session_id)
        return session.evaluations.get(var_id, ()) if session is not None else ()

    def graph(self, session_id: str) -> DependencyGraph:
        self._check()
        return self._backend._sessions[session_id].graph


class _MemoryWrite(WriteTxn, _MemoryRead):
    # Staged changes by variable id (None: deleted), in order; reads see them first.
    # The optional ones are class-level defaults until first set (one write txn per
    # write: nothing set that the write does not use).
    # Staged graph changes, in order: (session id, edge to add, or None and the
    # dependent/dependency of the edge to drop, dependency "" for every edge of it).
    graph_ops: list[_GraphOp] | None = None
    # A session's graph as the txn leaves it (built on first read), and how many of its
    # ops it holds.
    _view: tuple[str, DependencyGraph, int] | None = None
    # Staged changes of the session's other tables, in order: (session id, variable id,
    # a history entry or evaluation to append, a lease to put, or _DROP_HISTORY /
    # _DROP_LEASES).
    table_ops: list[tuple[str, str, _Change]] | None = None
    # The session the staged changes are of, and whether some were of another.
    staged_session: str | None = None
    mixed = False

    def __init__(self, backend: MemoryBackend) -> None:
        _MemoryRead.__init__(self, backend)
        self.staged: dict[str, VariableRecord | None] = {}
        self.staged_rules: dict[str, tuple[AccessRule, ...]] = {}
        # The session of each staged variable (a commit is one session's).
        self.session_of: dict[str, str] = {}
        self._done = False

    @property
    def base_revision(self) -> int:
        return self._revision

    @property
    def revision(self) -> int:
        return self._revision + 1

    @property
    def done(self) -> bool:
        return self._done

    def _live(self) -> None:
        if self._done:
            raise RuntimeError("this write txn has ended (committed or aborted)")

    def _touch(self, session_id: str) -> None:
        # Before staging a change of ``session_id``: the txn is live, and the session
        # every change so far was of (a commit is one session's) is remembered.
        self._live()
        if self.staged_session is None:
            self.staged_session = session_id
        elif session_id != self.staged_session:
            self.mixed = True

    def get(self, session_id: str, var_id: str) -> VariableRecord | None:
        # The hot path of every commit: no staleness check (nothing commits while the one
        # write txn is open).
        staged = self.staged
        if var_id in staged and self.session_of.get(var_id) == session_id:
            return staged[var_id]
        session = self._backend._sessions.get(session_id)
        return session.variables.get(var_id) if session is not None else None

    def find(self, session_id: str, name: str) -> VariableRecord | None:
        for var_id, record in reversed(self.staged.items()):
            if record is not None and record.name == name and (
                self.session_of[var_id] == session_id
            ):
                return record
        found = _MemoryRead.find(self, session_id, name)
        if found is not None and found.id in self.staged:
            return self.get(session_id, found.id)
        return found

    def records(self, session_id: str) -> list[VariableRecord]:
        mine = {r.id: r for r in _MemoryRead.records(self, session_id)}
        for var_id, record in self.staged.items():
            if self.session_of[var_id] != session_id:
                continue
            if record is None:
                mine.pop(var_id, None)
            else:
                mine[var_id] = record
        return sorted(mine.values(), key=lambda r: r.name)

    def owner(self, var_id: str) -> str | None:
        owner = _MemoryRead.owner(self, var_id)
        if var_id in self.staged:
            return self.session_of[var_id] if self.staged[var_id] is not None else None
        return owner

    def rules(self, session_id: str, var_id: str) -> tuple[AccessRule, ...]:
        if var_id in self.staged_rules and self.session_of.get(var_id) == session_id:
            return self.staged_rules[var_id]
        return _MemoryRead.rules(self, session_id, var_id)

    def graph(self, session_id: str) -> DependencyGraph:
        base = self._backend._sessions[session_id].graph  # no staleness check (as get)
        if not self.graph_ops:  # the write path: nothing staged, nothing allocated
            return base
        ops = [op for op in self.graph_ops if op[0] == session_id]
        if not ops:
            return base
        if self._view is not None and self._view[0] == session_id:
            _, view, applied = self._view
        else:
            view, applied = base.copy(), 0
        _apply_graph(view, ops[applied:])
        self._view = (session_id, view, len(ops))
        return view

    def _changes(self, session_id: str, var_id: str) -> list[_Change]:
        return [op[2] for op in self.table_ops or () if op[1] == var_id and op[0] == session_id]

    def history(self, session_id: str, var_id: str) -> Sequence[HistoryEntry]:
        kept = _MemoryRead.history(self, session_id, var_id)
        return _replay(kept, self._changes(session_id, var_id), HistoryEntry, _DROP_HISTORY)

    def evaluations(self, session_id: str, var_id: str) -> Sequence[OptimizationEntry]:
        kept = _MemoryRead.evaluations(self, session_id, var_id)
        return _replay(kept, self._changes(session_id, var_id), OptimizationEntry, _DROP_LEASES)

    def lease(self, session_id: str, var_id: str) -> OptimizationLease | None:
        latest = _MemoryRead.lease(self, session_id, var_id)
        for change in self._changes(session_id, var_id):
            if isinstance(change, OptimizationLease):
                latest = change
            elif change is _DROP_LEASES:
                latest = None
        return latest

    def append_history(self, session_id: str, var_id: str, entry: HistoryEntry) -> None:
        # On every write's path: _stage inlined.
        if self._done or session_id != self.staged_session:
            self._touch(session_id)
        if self.table_ops is None:
            self.table_ops = []
        self.table_ops.append((session_id, var_id, entry))

    def drop_history(self, session_id: str, var_id: str) -> None:
        self._stage(session_id, var_id, _DROP_HISTORY)

    def put_lease(self, session_id: str, lease: OptimizationLease) -> None:
        self._stage(session_id, lease.variable_id, lease)

    def append_evaluation(self, session_id: str, var_id: str, entry: OptimizationEntry) -> None:
        self._stage(session_id, var_id, entry)

    def drop_leases(self, session_id: str, var_id: str) -> None:
        self._stage(session_id, var_id, _DROP_LEASES)

    def _stage(self, session_id: str, var_id: str, change: _Change) -> None:
        self._touch(session_id)
        if self.table_ops is None:
            self.table_ops = []
        self.table_ops.append((session_id, var_id, change))

    def add_edge(self, session_id: str, edge: Edge) -> None:
        self._stage_graph((session_id, edge, edge.dependent, edge.dependency))

    def drop_edge(self, session_id: str, dependent: str, dependency: str) -> None:
        self._stage_graph((session_id, None, dependent, dependency))

    def drop_edges(self, session_id: str, var_id: str) -> None:
        self._stage_graph((session_id, None, var_id, ""))

    def _stage_graph(self, op: _GraphOp) -> None:
        self._touch(op[0])
        if self.graph_ops is None:
            self.graph_ops = []
        self.graph_ops.append(op)

    def set_rules(self, session_id: str, var_id: str, rules: tuple[AccessRule, ...]) -> None:
        self._touch(session_id)
        self.staged_rules[var_id] = rules
        self.session_of[var_id] = session_id

    def put(self, session_id: str, record: VariableRecord) -> None:
        if self._done or session_id != self.staged_session:
            self._touch(session_id)
        self.staged.pop(record.id, None)  # keep the order of the last change
        self.staged[record.id] = record
        self.session_of[record.id] = session_id

    def delete(self, session_id: str, var_id: str) -> None:
        self._touch(session_id)
        if self.get(session_id, var_id) is None:
            raise KeyError(var_id)
        self.staged.pop(var_id, None)
        self.staged[var_id] = None
        self.session_of[var_id] = session_id

    def commit(
        self,
        session_id: str,
        events: Sequence[ChangeEvent],
        *,
        timestamp: float,
        permissions: Sequence[str] = (),
        settle: Callable[[Commit], None] | None = None,
    ) -> Commit:
        self._live()
        self._done = True
        try:
            return self._backend._apply(self, session_id, events, timestamp, permissions,
                                        settle)
        finally:
            self._backend._open = None

    def abort(self) -> None:
        self._live()
        self._done = True
        self.staged.clear()
        self.staged_rules.clear()
        self.graph_ops = self.table_ops = None
        self._view = None
        self._backend._open = None


# A staged change of a session table (history, leases, evaluations) and the two drops.
_DROP_HISTORY, _DROP_LEASES = "drop history", "drop leases"
_Change = HistoryEntry | OptimizationLease | OptimizationEntry | str
_T = TypeVar("_T")
_LEASE_FIELDS = tuple(f.name for f in dataclasses.fields(OptimizationLease))


def _replay(kept: Sequence[_T], changes: list[_Change], kind: type[_T], drop: str) -> Sequence[_T]:
    # A variable's entries of one kind as the staged changes leave them.
    if not changes:
        return kept
    seen = list(kept)
    for change in changes:
        if change is drop:
            seen = []
        elif isinstance(change, kind):
            seen.append(change)
    return seen


def _apply_change(session: Session, var_id: str, change: _Change) -> None:
    if isinstance(change, HistoryEntry):
        kept = session.history.get(var_id)
        if kept is None:
            kept = session.history[var_id] = deque()
        kept.append(change)
    elif isinstance(change, OptimizationEntry):
        session.evaluations.setdefault(var_id, deque()).append(change)
    elif isinstance(change, OptimizationLease):
        live = session.leases.get(var_id)
        if live is not None and live is not change and live.id == change.id:
            # A staged copy of the live lease: written back, so every holder of the
            # lease object sees the committed state.
            for name in _LEASE_FIELDS:
                setattr(live, name, getattr(change, name))
            change = live
        session.leases[var_id] = change
        if change.active:
            session.running[var_id] = change
        else:
            session.running.pop(var_id, None)
        recent = session.recent_leases.setdefault(var_id, deque())
        if not any(kept is change for kept in recent):
            recent.append(change)
    elif change is _DROP_HISTORY:
        session.history.pop(var_id, None)
    else:
        for table in (session.leases, session.running, session.recent_leases,
                      session.evaluations):
            table.pop(var_id, None)


# A staged graph change: (session id, edge to add or None, dependent, dependency).
_GraphOp = tuple[str, Edge | None, str, str]


def _apply_graph(graph: DependencyGraph, ops: Sequence[_GraphOp]) -> None:
    # The staged graph changes, in order (the engine checked that no add closes a cycle).
    for _, edge, dependent, dependency in ops:
        if edge is not None:
            graph.add(edge)
        elif dependency:
            graph.remove(dependent, dependency)
        else:
            graph.drop(dependent)
