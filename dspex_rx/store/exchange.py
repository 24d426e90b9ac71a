"""Export and import of snapshots: export_snapshot, and import_snapshot applying a checked plan
(import_plan.py) in one commit, or nothing.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Sequence
from typing import Any

from dspex_rx.core.access import AccessRule
from dspex_rx.core.graph import Edge
from dspex_rx.core.limits import check_count, too_many
from dspex_rx.errors import DspexError, InvalidValueError
from dspex_rx.store.accounts import _rules_cost
from dspex_rx.store.base import log
from dspex_rx.store.import_plan import (
    _NEW,
    MERGE_STRATEGIES,
    ImportPlanning,
    _import_note,
    _ImportPlan,
)
from dspex_rx.store.records import (
    HistoryEntry,
    ImportOutcome,
    ImportReport,
    Snapshot,
    SnapshotDependency,
    SnapshotVariable,
    VariableRecord,
)
from dspex_rx.store.state import Session


class Exchange(ImportPlanning):
    """The engine's export/import part.

    Example: ``store.export_snapshot(sid, include_history=True)`` returns a Snapshot.
    """

    def export_snapshot(
        self,
        session_id: str,
        *,
        include_history: bool = False,
        include_dependencies: bool = True,
        pattern: str | None = None,
    ) -> Snapshot:
        """The session's variables whose names match ``pattern`` (all when None), by name:
        values, types, constraints, metadata, descriptions, versions, and on request each
        one's retained history (oldest first) and what it depends on (by name).

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> snapshot = store.export_snapshot("s", include_history=True)
        >>> [(v.name, v.value, len(v.history)) for v in snapshot.variables]
        [('t', 0.7, 1)]
        """
        session = self.session(session_id)
        variables = []
        # store.list is the one place names are matched against patterns.
        for record in self.list(session_id, pattern):
            history = tuple(session.history.get(record.id, ())) if include_history else None
            dependencies = (
                tuple(
                    SnapshotDependency(session.variables[dep].name, edge.type, edge.metadata)
                    for dep, _, edge in session.graph.dependencies(record.id)
                )
                if include_dependencies
                else None
            )
            variables.append(
                SnapshotVariable(
                    record.name, record.type, record.value, record.constraints,
                    record.metadata, record.description, record.version, record.created_at,
                    record.updated_at, record.updated_by, history, dependencies,
                    session.rules.get(record.id, ()),
                )
            )
        return Snapshot(
            tuple(variables), session.id, session.revision, self._clock(),
            include_history, include_dependencies,
        )

    def import_snapshot(
        self,
        session_id: str,
        snapshot: Snapshot,
        *,
        strategy: str = "replace",
        dry_run: bool = False,
        actor: str = "",
    ) -> ImportReport:
        """Import a snapshot: validate everything, then apply it in one commit, or nothing.

        Every variable is checked first (name, type, constraints, value, metadata, a
        well-formed history, dependencies that exist and close no cycle); one bad entry
        means nothing is applied and its outcome names the error. Otherwise every change
        is one commit under one revision, with ``imported_from``, ``export_revision``,
        ``format_version`` and ``merge_strategy`` as the write's metadata.

        - A new variable is created; with a history in the snapshot it keeps its
          exported version and its older versions are restored (their own time, writer
          and metadata; the import's revision). Without one it starts at version 1.
        - An existing one, by ``strategy``: ``replace`` writes the imported value,
          metadata and description as one new version; ``keep`` leaves it alone;
          ``merge`` merges dict values and metadata key-wise (imported keys win), takes
          other values and a non-empty description from the import, and skips it when
          nothing changes. Its history is only appended to, never rewritten; its type
          never changes and its own constraints stay (the value must meet them).
        - Dependencies are added (never removed) for every variable not kept as it was;
          a dependency must name a variable of the snapshot or of the session.

        ``dry_run`` validates and reports what would happen, changing nothing.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> snapshot = store.export_snapshot("s")
        >>> _ = store.initialize_session("copy")
        >>> report = store.import_snapshot("copy", snapshot)
        >>> [(o.name, o.action, o.version) for o in report.outcomes], report.applied
        ([('t', 'create', 1)], True)
        """
        if strategy not in MERGE_STRATEGIES:
            raise InvalidValueError(
                f"merge_strategy must be one of {', '.join(MERGE_STRATEGIES)}, got {strategy!r}"
            )
        session = self.session(session_id)
        if not dry_run:
            self._expire_leases(session)
        entries = snapshot.variables
        check_count("the import", len(entries), "max_batch_size", self.limits.max_batch_size)
        plans: builtins.list[_ImportPlan | None] = []
        errors: dict[int, DspexError] = {}
        keys: dict[str, str] = {}  # every name the import knows -> its graph key
        for index, entry in enumerate(entries):
            try:
                plan = self._plan_import(session, entry, strategy, keys, dry_run)
            except DspexError as exc:
                plan = None
                errors[index] = exc
            plans.append(plan)
            if isinstance(entry.name, str) and entry.name not in keys:
                existing = session.names.get(entry.name)
                keys[entry.name] = existing or _NEW + entry.name
        creates = sum(1 for p in plans if p is not None and p.action == "create")
        count = len(session.variables) + creates
        if creates and count > self.max_variables_per_session:
            raise too_many(
                f"session {session_id!r} would hold {count} variables (the import creates "
                f"{creates})", count, "max_variables_per_session",
                self.max_variables_per_session,
            )
        new_edges = self._plan_import_edges(session, entries, plans, keys, errors)
        count = len(session.graph) + len(new_edges)
        if new_edges and count > self.limits.max_dependencies_per_session:
            raise too_many(
                f"session {session_id!r} would hold {count} dependencies", count,
                "max_dependencies_per_session", self.limits.max_dependencies_per_session,
            )
        if errors:
            first = entries[min(errors)].name
            outcomes = [
                ImportOutcome(entry.name, "error", str(errors[i]), errors[i].kind)
                if i in errors
                else ImportOutcome(
                    entry.name, plan.action if plan else "error",
                    f"not applied: the import failed on {first!r}",
                    version=plan.version if plan else 0,
                )
                for i, (entry, plan) in enumerate(zip(entries, plans, strict=True))
            ]
            return ImportReport(outcomes, session.revision, False, dry_run, 0)
        ready = [p for p in plans if p is not None]
        note = _import_note(snapshot, strategy)  # the metadata every write carries
        note_size = self._check_import_room(session, note, ready, new_edges)
        if dry_run:
            outcomes = [ImportOutcome(p.name, p.action, p.message, version=p.version)
                        for p in ready]
            return ImportReport(outcomes, session.revision, False, True, len(new_edges))
        return self._apply_import(session, note, note_size, strategy, ready, new_edges, actor)

    def _apply_import(
        self,
        session: Session,
        note: dict[str, Any],
        note_size: int,
        strategy: str,
        plans: Sequence[_ImportPlan],
        edges: Sequence[Edge],
        actor: str,
    ) -> ImportReport:
        now = self._clock()
        ids: dict[str, str] = {}
        records: builtins.list[VariableRecord] = []
        restored: dict[str, builtins.list[HistoryEntry]] = {}
        rules: dict[str, tuple[AccessRule, ...]] = {}
        fixed: dict[str, int] = {}
        for plan in plans:
            if plan.action == "create":
                var_id = ids[plan.key] = f"var_{plan.name}_{self._backend.next_id()}"
                if plan.rules:
                    rules[var_id] = plan.rules
                records.append(VariableRecord(
                    var_id, plan.name, plan.type, plan.value, plan.constraints, plan.metadata,
                    plan.version, 0, 0, now, now, actor, plan.description, plan.size,
                    plan.metadata_size,
                ))
                fixed[var_id] = plan.fixed - _rules_cost(plan.rules)
                if plan.history:
                    restored[var_id] = plan.history
            elif plan.action in ("replace", "merge"):
                old = plan.existing
                assert old is not None
                records.append(VariableRecord(
                    old.id, old.name, old.type, plan.value, old.constraints, plan.metadata,
                    old.version + 1, 0, old.create_revision, old.created_at, now, actor,
                    plan.description, plan.size, plan.metadata_size,
                ))
        # The edges as planned (sized, for the memory account), with created ids filled in.
        final_edges = [
            dataclasses.replace(e, dependent=ids.get(e.dependent, e.dependent),
                                dependency=ids.get(e.dependency, e.dependency))
            for e in edges
        ]
        written: dict[str, VariableRecord] = {}
        revision = session.revision
        if records or final_edges:
            stamped, revision = self._commit(
                session, records, metadata=note, source=actor, edges=final_edges,
                restored=restored, rules=rules, metadata_size=note_size, fixed=fixed,
            )
            written = {r.name: r for r in stamped}
            log.info("variables_imported", session_id=session.id, revision=revision,
                     written=len(stamped), edges=len(final_edges), strategy=strategy)
        outcomes = [
            ImportOutcome(
                p.name, p.action, p.message, version=p.version, record=written.get(p.name)
            )
            for p in plans
        ]
        return ImportReport(
            outcomes, revision, bool(records or final_edges), False, len(final_edges)
        )
