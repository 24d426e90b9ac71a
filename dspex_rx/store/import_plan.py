"""Planning an import: each snapshot entry checked and planned (create, replace, merge, skip);
nothing changes here.

Its history, its dependency edges and the room the import needs are checked too.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dspex_rx.core.access import AccessRule, check_rules
from dspex_rx.core.graph import DEPENDENCY_TYPES, CycleError, Edge
from dspex_rx.core.limits import check_length, measure_map, measure_value
from dspex_rx.core.types import same_value
from dspex_rx.errors import AlreadyExistsError, DspexError, InvalidValueError, VariableTypeError
from dspex_rx.store.accounts import _rules_cost
from dspex_rx.store.checks import MAX_VERSION, _check_name, _check_not_id_shaped, _plain_dict
from dspex_rx.store.records import (
    ITEM_OVERHEAD,
    HistoryEntry,
    Snapshot,
    SnapshotVariable,
    VariableRecord,
)
from dspex_rx.store.reports import OptimizationReports
from dspex_rx.store.state import Session

MERGE_STRATEGIES = ("replace", "keep", "merge")


# Graph keys of variables an import is about to create: ':' is never in a name or an id.
_NEW = "import:"


@dataclass(slots=True)
class _ImportPlan:
    # One variable's planned change; ``key`` is its id in the graph (or _NEW + name).
    name: str
    action: str
    key: str
    version: int
    message: str = ""
    existing: VariableRecord | None = None
    type: str = ""
    value: Any = None
    constraints: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    history: list[HistoryEntry] = field(default_factory=list)
    untouched: bool = False
    rules: tuple[AccessRule, ...] = ()
    # Measured for the limits and the memory account: the record's encoded value plus
    # metadata, the metadata's part, and (new variables) the bytes charged once for it.
    size: int = 0
    metadata_size: int = 0
    fixed: int = 0


def _import_note(snapshot: Snapshot, strategy: str) -> dict[str, Any]:
    # The metadata of an import's commit.
    return {
        "imported_from": snapshot.session_id or "unknown",
        "export_revision": snapshot.revision,
        "format_version": snapshot.format_version,
        "merge_strategy": strategy,
    }


class ImportPlanning(OptimizationReports):
    """The engine's import planner.

    Example: ``store.import_snapshot(sid, snapshot, dry_run=True)`` reports the plan only.
    """

    def _plan_import(
        self,
        session: Session,
        entry: SnapshotVariable,
        strategy: str,
        seen: Mapping[str, str],
        dry_run: bool,
    ) -> _ImportPlan:
        name = entry.name
        _check_name(name)
        if name in seen:
            raise InvalidValueError(f"variable {name!r} appears more than once in the import")
        limits = self.limits
        type_name, constraints, fixed = self._declared(name, entry.type, entry.constraints)
        value = self._stored(name, type_name, entry.value, constraints)
        metadata, metadata_size = self._clean_metadata(
            name, _plain_dict(entry.metadata), f"variable {name!r}: metadata"
        )
        fixed += self._description_size(name, entry.description)
        if not isinstance(entry.version, int) or isinstance(entry.version, bool) or not (
            1 <= entry.version <= MAX_VERSION
        ):
            raise InvalidValueError(
                f"variable {name!r}: version must be an integer from 1 to {MAX_VERSION}, "
                f"got {entry.version!r}"
            )
        history = self._check_history(name, type_name, constraints, entry)
        # The shape of every entry's rules is checked; who they name only for the variables
        # the import creates (an existing variable keeps its own rules).
        rules = check_rules(name, type_name, list(entry.access_rules or ()))
        existing_id = session.names.get(name)
        if existing_id is None:
            rules = self._access.bind_rules(name, rules)
            if name in session.variables:
                raise AlreadyExistsError(
                    f"variable name {name!r} already exists as the id of another variable"
                )
            _check_not_id_shaped(name)
            # The entry of the current version is the import's own write (remembered by
            # _commit with the import's metadata); the older ones are restored.
            restored = [h for h in history or () if h.version < entry.version]
            version = entry.version if history else 1
            message = "new variable"
            if restored:
                message += f"; history restored from version {restored[0].version}"
            value_size = measure_value(value, limits, f"variable {name!r}: value")
            return _ImportPlan(
                name, "create", _NEW + name, version, message, None, type_name, value,
                constraints, metadata, entry.description, restored, rules=rules,
                size=value_size + metadata_size, metadata_size=metadata_size,
                fixed=fixed + _rules_cost(rules),
            )
        existing = session.variables[existing_id]
        if strategy == "keep":
            return _ImportPlan(
                name, "skip", existing.id, existing.version,
                "exists; kept as it is (merge_strategy 'keep')", existing, untouched=True,
            )
        if existing.type != type_name:
            raise VariableTypeError(
                f"variable {name!r} is a {existing.type} in the session but a {type_name} in "
                "the import; an import never changes a variable's type"
            )
        notes = []
        if dict(existing.constraints) != constraints:
            notes.append("the session's constraints kept (the import's differ)")
        if history:
            notes.append("exported history not restored (an existing variable's history is "
                         "only appended to)")
        if strategy == "merge":
            if type_name == "dict":
                value = {**existing.value, **value}
                notes.append("dict merged key-wise")
            metadata = {**existing.metadata, **metadata}
            description = entry.description or existing.description
        else:
            description = entry.description
        value = self._stored(name, type_name, value, existing.constraints)
        value_size = measure_value(value, limits, f"variable {name!r}: value")
        metadata_size = measure_map(metadata, limits, f"variable {name!r}: metadata (merged)")
        if strategy == "merge" and (
            same_value(value, existing.value)
            and same_value(metadata, dict(existing.metadata))
            and description == existing.description
        ):
            return _ImportPlan(
                name, "skip", existing.id, existing.version, "unchanged", existing,
            )
        lease = session.running.get(existing.id)
        if lease is not None and not (dry_run and self._clock() > lease.expires_at):
            # (A dry run does not sweep leases, so one past its expiry counts as gone.)
            self._check_lease(session, existing, None, doing="overwritten by an import")
        return _ImportPlan(
            name, strategy, existing.id, existing.version + 1, "; ".join(notes), existing,
            type_name, value, existing.constraints, metadata, description,
            size=value_size + metadata_size, metadata_size=metadata_size,
        )

    def _check_history(
        self,
        name: str,
        type_name: str,
        constraints: Mapping[str, Any],
        entry: SnapshotVariable,
    ) -> builtins.list[HistoryEntry] | None:
        # A well-formed history: consecutive versions ending at the variable's version,
        # every value valid for the variable as it is declared.
        if entry.history is None:
            return None
        out: builtins.list[HistoryEntry] = []
        for i, item in enumerate(entry.history):
            where = f"variable {name!r}: history entry {i}"
            version = item.version
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise InvalidValueError(
                    f"{where}: version must be a positive integer, got {version!r}"
                )
            if out and version != out[-1].version + 1:
                raise InvalidValueError(
                    f"{where}: versions must be consecutive, oldest first (version "
                    f"{version} follows {out[-1].version})"
                )
            if not isinstance(item.updated_at, int | float) or isinstance(
                item.updated_at, bool
            ) or not math.isfinite(item.updated_at):
                raise InvalidValueError(f"{where}: updated_at must be a finite number")
            if not isinstance(item.updated_by, str):
                raise VariableTypeError(f"{where}: updated_by must be a string")
            try:
                value = self._stored(name, type_name, item.value, constraints)
                metadata, metadata_size = self._clean_metadata(
                    name, _plain_dict(item.metadata), f"variable {name!r}: metadata"
                )
                size = ITEM_OVERHEAD + metadata_size + measure_value(
                    value, self.limits, f"variable {name!r}: value"
                )
            except DspexError as exc:
                prefix = f"variable {name!r}: "
                text = exc.message[len(prefix):] if exc.message.startswith(prefix) else exc.message
                raise type(exc)(f"{where} (version {version}): {text}") from None
            check_length(f"{where}: updated_by", item.updated_by, "max_string_length",
                         self.limits.max_string_length)
            out.append(
                HistoryEntry(version, value, float(item.updated_at), item.updated_by, metadata, 0,
                             size)
            )
        if out and out[-1].version != entry.version:
            raise InvalidValueError(
                f"variable {name!r}: its history ends at version {out[-1].version} but the "
                f"variable is at version {entry.version}"
            )
        return out

    def _plan_import_edges(
        self,
        session: Session,
        entries: Sequence[SnapshotVariable],
        plans: Sequence[_ImportPlan | None],
        keys: Mapping[str, str],
        errors: dict[int, DspexError],
    ) -> builtins.list[Edge]:
        # Tried on a copy of the graph, so a cycle is found before anything changes.
        trial = session.graph.copy()
        labels = {key: name for name, key in keys.items()}
        added: builtins.list[Edge] = []
        for index, (entry, plan) in enumerate(zip(entries, plans, strict=True)):
            if plan is None or plan.untouched or not entry.dependencies:
                continue
            try:
                for dependency in entry.dependencies:
                    target = keys.get(dependency.name) or session.names.get(dependency.name)
                    if target is None:
                        raise InvalidValueError(
                            f"variable {plan.name!r} depends on {dependency.name!r}, which is "
                            "neither in the import nor in the session"
                        )
                    if dependency.type not in DEPENDENCY_TYPES:
                        raise InvalidValueError(
                            f"variable {plan.name!r}: dependency type must be one of "
                            f"{', '.join(DEPENDENCY_TYPES)}, got {dependency.type!r}"
                        )
                    metadata, size = self._clean_metadata(
                        plan.name, _plain_dict(dependency.metadata),
                        f"variable {plan.name!r}: dependency metadata",
                    )
                    edge = Edge(plan.key, target, dependency.type, metadata,
                                ITEM_OVERHEAD + size)
                    try:
                        if trial.add(edge):
                            added.append(edge)
                    except CycleError as exc:
                        raise self._cycle_error(session, exc, labels) from None
            except DspexError as exc:
                errors[index] = exc
        return added

    def _check_import_room(
        self,
        session: Session,
        note: dict[str, Any],
        plans: Sequence[_ImportPlan],
        edges: Sequence[Edge],
    ) -> int:
        # The limits of what an applied import stores, checked before anything changes
        # (a dry run reports the refusal too): one answer must echo it, and the pinned
        # bytes (current values, per-variable costs, rules, edges) must fit the budgets.
        # Returns the size of the metadata every write carries.
        writes = [p for p in plans if p.action in ("create", "replace", "merge")]
        self._check_batch_bytes(sum(p.size for p in writes), len(writes), "the import")
        note_size = measure_map(note, self.limits, "the import's metadata")
        added = sum(e.size for e in edges) + sum(p.fixed for p in writes)
        for plan in writes:
            added += ITEM_OVERHEAD + plan.size + note_size
            if plan.existing is not None:
                added -= session.history[plan.existing.id][-1].size
        self._accounts.check_room(session, added)
        return note_size
