"""The one place a write is applied (one revision, through the Backend's write txn), and the
watch API over the commit log.

A commit stages records, rules, edges, history, leases and evaluations on the txn, and
charges the memory account in its settle step (only once the backend applied them).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from dspex_rx.core.access import AccessRule
from dspex_rx.core.graph import Edge
from dspex_rx.core.limits import too_many
from dspex_rx.store.accounts import _commit_cost, _rules_cost
from dspex_rx.store.backend import RevisionConflict, WriteTxn
from dspex_rx.store.checks import RECENT_LEASES
from dspex_rx.store.leases import OptimizationEntry, OptimizationLease
from dspex_rx.store.permissions import AccessMethods
from dspex_rx.store.records import (
    ITEM_OVERHEAD,
    MAX_SOURCE_NAMES,
    OPTIMIZATION_EVENT,
    ChangeEvent,
    Commit,
    HistoryEntry,
    Listener,
    VariableRecord,
)
from dspex_rx.store.state import Session

# What a commit's settle step accounts beyond its records, when it has any: the removed
# records, new variables' fixed costs, started leases, evaluations, deleted histories.
_Rare = tuple[
    Sequence[VariableRecord], Mapping[str, int] | None, Sequence[OptimizationLease],
    Sequence[tuple[str, OptimizationEntry]], Sequence[Sequence[HistoryEntry]] | None,
]
# How often a method whose commit conflicted (a remote backend moved on) is run again.
MAX_CONFLICT_ATTEMPTS = 3
_T = TypeVar("_T")


class Committer(AccessMethods):
    """The engine's commit part: ``_commit`` applies a write; watchers follow the log.

    Example: ``store.add_listener(sid, frames.append)`` hears every later commit.
    """

    def _commit(
        self,
        session: Session,
        records: Iterable[VariableRecord],
        removed: Sequence[VariableRecord] = (),
        metadata: Mapping[str, Any] | None = None,
        source: str = "",
        notes: Sequence[OptimizationLease] = (),
        metadata_size: int = 0,
        edges: Sequence[Edge] = (),
        restored: Mapping[str, Sequence[HistoryEntry]] | None = None,
        rules: Mapping[str, tuple[AccessRule, ...]] | None = None,
        unlinked: Sequence[tuple[str, str]] = (),
        fixed: Mapping[str, int] | None = None,
        evaluated: Sequence[tuple[str, OptimizationEntry]] = (),
    ) -> tuple[list[VariableRecord], int]:
        # The only place variable state changes: one new revision for the whole write,
        # stamped on every record it writes (and as create_revision on new ones), logged
        # as one commit and handed to the session's listeners. ``notes`` are leases whose
        # status changed in this commit: each becomes an optimization event after the
        # value changes, so a watcher sees a write and the status it led to together;
        # each is put as its variable's latest lease (a new one joins its recent leases).
        # ``evaluated``: (variable id, evaluation) pairs a run recorded.
        # ``edges`` (checked acyclic by the caller) join the graph before propagation;
        # ``unlinked`` edges (dependent, dependency) leave it;
        # ``restored`` seeds the history of new records (an import) before their own
        # version is remembered, each entry stamped with this revision (its ``size`` set
        # by the caller). ``rules`` sets variables' access rules (on register, or by their
        # owner). ``fixed``: the bytes charged once for each new variable. The revision
        # counter is the store's, shared by all sessions.
        # Callers have checked every limit (``check_room`` included): nothing here fails.
        # The records, rules, graph and history go through the backend's write txn
        # (staged, applied by its commit under one revision); the memory account and the
        # session's other tables change in the commit's settle step, so a txn that ends
        # without a commit leaves them too (backend.py lists what is not behind the seam).
        with self._backend.write() as txn:
            return self._write(txn, session, records, removed, metadata, source, notes,
                               metadata_size, edges, restored, rules, unlinked, fixed,
                               evaluated)

    def _write(
        self,
        txn: WriteTxn,
        session: Session,
        records: Iterable[VariableRecord],
        removed: Sequence[VariableRecord],
        metadata: Mapping[str, Any] | None,
        source: str,
        notes: Sequence[OptimizationLease],
        metadata_size: int,
        edges: Sequence[Edge],
        restored: Mapping[str, Sequence[HistoryEntry]] | None,
        rules: Mapping[str, tuple[AccessRule, ...]] | None,
        unlinked: Sequence[tuple[str, str]],
        fixed: Mapping[str, int] | None,
        evaluated: Sequence[tuple[str, OptimizationEntry]],
    ) -> tuple[list[VariableRecord], int]:
        revision = txn.revision
        sid = session.id
        graph_bytes = session.graph.bytes  # the graph changes with the commit: charged then
        other = 0  # other_bytes the staged changes add (rules, leases), charged by settle
        stamped = [
            r
            if r.mod_revision == revision and r.create_revision
            else VariableRecord(
                r.id, r.name, r.type, r.value, r.constraints, r.metadata, r.version, revision,
                r.create_revision or revision, r.created_at, r.updated_at, r.updated_by,
                r.description, r.size, r.metadata_size,
            )
            for r in records
        ]
        events = []
        meta = metadata or {}
        changed: list[VariableRecord] = []
        keep = self.limits.history_size
        for record in stamped:
            old = txn.get(sid, record.id)
            txn.put(sid, record)
            if restored and record.id in restored:
                for entry in restored[record.id][-keep:]:  # as a deque of keep would
                    seeded = dataclasses.replace(entry, revision=revision)
                    txn.append_history(sid, record.id, seeded)
            txn.append_history(sid, record.id, HistoryEntry(
                record.version, record.value, record.updated_at, record.updated_by, meta,
                revision, ITEM_OVERHEAD + record.size + metadata_size,
            ))
            if old is not None:
                changed.append(record)
                events.append(ChangeEvent(record, old.value, "value_change", meta, source))
        for edge in edges:
            txn.add_edge(sid, edge)
        for child, parent in unlinked:
            txn.drop_edge(sid, child, parent)
        graph = txn.graph(sid) if changed else None
        if graph is not None and len(graph):
            # Dependents learn of the change in the same frame, upstream first, each told
            # which of the changed variables it depends on (the first MAX_SOURCE_NAMES).
            downstream = graph.downstream_with_sources(
                (r.id for r in changed), MAX_SOURCE_NAMES
            )
            for var_id, source_ids, truncated in downstream:
                dependent = _present(txn.get(sid, var_id))
                names = [_present(txn.get(sid, s)).name for s in source_ids]
                note: dict[str, Any] = {
                    "source_variable": names[0],
                    "source_variables": names,
                    "source_revision": revision,
                }
                if truncated:
                    note["source_variables_truncated"] = True
                events.append(ChangeEvent(
                    dependent, dependent.value, "dependency_changed", note, source,
                    tuple(source_ids),
                ))
        # The leases new in this commit (not yet among their variable's recent leases).
        recents = session.recent_leases
        started = [
            lease for lease in notes
            if not any(kept.id == lease.id for kept in recents.get(lease.variable_id, ()))
        ] if notes else ()
        for lease in notes:
            txn.put_lease(sid, lease)
            lease.revision = revision
            record = _present(txn.get(sid, lease.variable_id))
            events.append(
                ChangeEvent(
                    record, record.value, OPTIMIZATION_EVENT,
                    lease.status(record.name, revision), lease.id,
                )
            )
        for var_id, evaluation in evaluated:
            txn.append_evaluation(sid, var_id, evaluation)
            other += evaluation.size
        for var_id, clean in (rules or {}).items():
            other += self._set_rules(txn, sid, var_id, clean)
        # The deleted variables' histories, released by settle (None: no list to make).
        forgotten: list[Sequence[HistoryEntry]] | None = None
        for record in removed:
            txn.delete(sid, record.id)
            txn.drop_edges(sid, record.id)
            entries = txn.history(sid, record.id)
            if entries:
                forgotten = forgotten or []
                forgotten.append(entries)
            txn.drop_history(sid, record.id)
            other -= sum(kept.size for kept in session.recent_leases.get(record.id, ()))
            other -= sum(e.size for e in session.evaluations.get(record.id, ()))
            txn.drop_leases(sid, record.id)
            other += self._set_rules(txn, sid, record.id, ())
            gone = dataclasses.replace(record, mod_revision=revision)
            events.append(ChangeEvent(gone, record.value, "deleted", meta, source))
        # What settle accounts once the commit applied (the rare tables only when touched).
        rare = (removed, fixed, started, evaluated, forgotten) if (
            removed or fixed or notes or evaluated
        ) else None
        settle = functools.partial(self._settle, session, stamped, restored, graph_bytes,
                                   other, rare)
        commit = txn.commit(sid, events, timestamp=self._clock(),
                            permissions=tuple(rules or ()), settle=settle)
        return stamped, commit.revision

    def _settle(
        self,
        session: Session,
        stamped: Sequence[VariableRecord],
        restored: Mapping[str, Sequence[HistoryEntry]] | None,
        graph_bytes: int,
        other: int,
        rare: _Rare | None,
        commit: Commit,
    ) -> None:
        # What the commit retained, accounted before any watcher hears of it.
        accounts = self._accounts
        if other or session.graph.bytes != graph_bytes:
            accounts.charge(session, "other_bytes", other + session.graph.bytes - graph_bytes)
        if rare is not None:
            self._settle_tables(session, commit.revision, *rare)
        for record in stamped:
            if restored and record.id in restored:
                count = min(len(restored[record.id]), self.limits.history_size)
                accounts.seeded(session, record.id, count)
            accounts.remember(session, record.id)
        accounts.charge(session, "log_bytes", _commit_cost(commit))
        if len(session.log) > self.log_size:
            accounts.trim_log(session, session.log[0].revision)
        accounts.make_room(session)

    def _settle_tables(
        self,
        session: Session,
        revision: int,
        removed: Sequence[VariableRecord],
        fixed: Mapping[str, int] | None,
        started: Sequence[OptimizationLease],
        evaluated: Sequence[tuple[str, OptimizationEntry]],
        forgotten: Sequence[Sequence[HistoryEntry]] | None,
    ) -> None:
        # The fixed costs, leases and evaluations a commit changed, and the retention by
        # count of a variable's recent leases and evaluations.
        charge = self._accounts.charge
        if fixed:
            session.fixed.update(fixed)
            charge(session, "other_bytes", sum(fixed.values()))
        for record in removed:
            charge(session, "other_bytes", -session.fixed.pop(record.id, 0))
            session.derivations.pop(record.id, None)  # its row goes with the variable
        for lease in started:
            recent = session.recent_leases[lease.variable_id]
            charge(session, "other_bytes", lease.size)
            while len(recent) > RECENT_LEASES:
                charge(session, "other_bytes", -recent.popleft().size)
        for var_id, _ in evaluated:
            kept = session.evaluations[var_id]
            while len(kept) > self.optimization_history_size:
                charge(session, "other_bytes", -kept.popleft().size)
        for entries in forgotten or ():
            self._accounts.forget_history(session, entries, revision)

    @staticmethod
    def _set_rules(
        txn: WriteTxn, session_id: str, var_id: str, rules: tuple[AccessRule, ...]
    ) -> int:
        # A variable's access rules, staged on the txn; returns what they add to the
        # session's other_bytes (_rules_cost), charged once the commit applied them.
        old = txn.rules(session_id, var_id)
        txn.set_rules(session_id, var_id, rules)
        return _rules_cost(rules) - _rules_cost(old)

    def add_listener(
        self, session_id: str, listener: Listener, *, foreign: bool = False
    ) -> Callable[[], None]:
        """Call ``listener`` with every later commit of the session; returns the remover.

        Listeners run synchronously inside the write, after the state changed, so a
        listener added in the same step as a snapshot misses nothing and sees nothing twice.
        A ``foreign`` listener (another session's stream watching this session's shared
        variables) does not count against this session's ``max_streams_per_session``:
        what another session opens must not lock the owner out of its own streams. It
        is bounded by the watching session's own stream limit (one per owner per stream).

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> frames = []
        >>> stop = store.add_listener("s", frames.append)
        >>> _ = store.set("s", "t", 0.9, actor="me")
        >>> stop()
        >>> [(c.revision, c.events[0].record.value) for c in frames]
        [(2, 0.9)]
        """
        session = self.session(session_id)
        limit = self.limits.max_streams_per_session
        own = len(session.listeners) - session.foreign_listeners
        if not foreign and own >= limit:
            raise too_many(
                f"session {session_id!r} already has {own} watch streams",
                own + 1, "max_streams_per_session", limit,
            )
        return self._backend.watch(session_id, listener, foreign=foreign)

    def commits_since(self, session_id: str, revision: int) -> list[Commit] | None:
        """The logged commits after ``revision``, or None if the log no longer reaches back.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> [c.revision for c in store.commits_since("s", 0)]
        [1]
        """
        self.session(session_id)
        return self._backend.commits_since(session_id, revision)


def _present(record: VariableRecord | None) -> VariableRecord:
    # A record the txn must hold (a dependent, a leased variable).
    if record is None:
        raise AssertionError("a commit refers to a variable it does not hold")
    return record


def rerun_on_conflict(
    method: Callable[..., _T], attempts: int = MAX_CONFLICT_ATTEMPTS
) -> Callable[..., _T]:
    """The conflict hook: run a store method again (validating again) when its commit
    meets ``RevisionConflict``, at most ``attempts`` times; then the conflict propagates.

    Not applied to MemoryStore's methods yet: MemoryBackend never conflicts (the first
    backend that can applies it; what a method changes before its commit is listed in
    backend.py).

    >>> calls = []
    >>> def flaky() -> str:
    ...     calls.append(1)
    ...     if len(calls) < 2:
    ...         raise RevisionConflict("moved on")
    ...     return "done"
    >>> rerun_on_conflict(flaky)(), len(calls)
    ('done', 2)
    """

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> _T:
        for _ in range(attempts - 1):
            try:
                return method(*args, **kwargs)
            except RevisionConflict:
                continue
        return method(*args, **kwargs)

    return run
