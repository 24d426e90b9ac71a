"""Store values to wire messages and back: records (as a given caller may see them), access
rules, change events, optimization statuses and history entries, variable specs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dspex_rx.core.access import AccessRule
from dspex_rx.core.limits import DEFAULT_LIMITS
from dspex_rx.store import (
    OPTIMIZATION_EVENT,
    ChangeEvent,
    MemoryStore,
    VariableRecord,
    VariableSpec,
)
from dspex_rx.store.leases import OptimizationEntry, OptimizationLease
from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import rules_from_pb, timestamp, type_from_pb, type_to_pb

# Writes a value into a wire ``Value`` (``codec.fill`` or one that defers the work).
Fill = Callable[[Any, Any], None]

UPDATE_TYPES: dict[str, int] = {
    name: spb.UpdateType.Value("UPDATE_TYPE_" + name.upper())
    for name in (
        "initial", "value_change", "deleted", "dependency_changed", "resync", "optimization",
        "revoked",
    )
}
# Old values of events above this size are not sent (old_value stays unset), so one event
# always fits in a message: the new value is never dropped.
MAX_OLD_VALUE_BYTES = 16 * 1024 * 1024


def rules_to_pb(rules: Sequence[AccessRule], out: Any) -> None:
    """Append access rules to a repeated wire ``AccessRule`` field.

    Example:

    >>> msg = pb.Variable()
    >>> rules_to_pb([AccessRule("any", ("read",))], msg.access_rules)
    >>> msg.access_rules[0].session_pattern, list(msg.access_rules[0].permissions)
    ('any', ['read'])
    """
    for rule in rules:
        out.add(
            session_pattern=rule.session_pattern, permissions=list(rule.permissions),
            conditions=codec.encode_map(rule.conditions), claim=rule.claim,
        )


def record_to_pb(
    record: VariableRecord, out: pb.Variable | None = None, fill: Fill = codec.fill
) -> pb.Variable:
    """Fill a wire ``Variable`` from a store record; ``fill`` writes the value (the
    server's writes a large one later, off the loop).

    Example:

    >>> record = VariableRecord("var_t_1", "t", "float", 0.5, {}, {}, 1, 3, 3, 0.0, 0.0, "s")
    >>> msg = record_to_pb(record)
    >>> msg.name, msg.version, codec.decode(msg.value)
    ('t', 1, 0.5)
    """
    msg = pb.Variable() if out is None else out
    msg.id = record.id
    msg.name = record.name
    msg.type = type_to_pb(record.type)  # type: ignore[assignment]
    fill(msg.value, record.value)
    msg.constraints.CopyFrom(codec.encode_map(record.constraints))
    msg.metadata.CopyFrom(codec.encode_map(record.metadata))
    msg.version = record.version
    msg.mod_revision = record.mod_revision
    msg.create_revision = record.create_revision
    msg.created_at.CopyFrom(timestamp(record.created_at))
    msg.updated_at.CopyFrom(timestamp(record.updated_at))
    msg.updated_by = record.updated_by
    msg.description = record.description
    return msg


def name_seen_by(store: MemoryStore, session_id: str, record: VariableRecord) -> str:
    """The record's name for this caller: names are per session, so another session's
    variable goes by its id (one deleted, whose owner is unknown now, was the caller's own).

    Example: ``name_seen_by(store, "session_1", record)`` is ``record.name`` for its owner.
    """
    return record.name if store.owner_of(record.id) in (session_id, None) else record.id


def seen_variable(
    store: MemoryStore, session_id: str, record: VariableRecord, out: pb.Variable,
    fill: Fill = codec.fill,
) -> pb.Variable:
    """Fill ``out`` with a record as this caller sees it: its owner, its rules for the
    owner only, and no value for a caller that may write but not read (``fill`` writes
    the value, as in ``record_to_pb``).

    Example: ``seen_variable(store, "session_1", record, response.variable)`` returns it.
    """
    owner = store.owner_of(record.id) or session_id
    # A caller that may write but not read (a write-only set) gets no value back, and its
    # client caches none: decided before the value is written, which may be later.
    readable = owner == session_id or store.may(session_id, record.id, "read")
    record_to_pb(record, out, fill if readable else _no_value)
    out.owner_session = owner
    if owner == session_id:
        rules_to_pb(store.session(owner).rules.get(record.id, ()), out.access_rules)
    return out


def _no_value(out: Any, value: Any) -> None:
    pass


def event_to_pb(
    event: ChangeEvent,
    update_type: str | None,
    out: spb.VariableEvent,
    max_pair_bytes: int = DEFAULT_LIMITS.max_value_bytes,
) -> None:
    """Fill a wire ``VariableEvent``; ``update_type`` overrides the event's own.

    The old value is left out (unset) above ``MAX_OLD_VALUE_BYTES``, or when value and old
    value together pass ``max_pair_bytes`` (the server's ``max_value_bytes``): one event
    always fits in a message and the new value is never dropped.

    Example:

    >>> record = VariableRecord("var_t_1", "t", "float", 0.5, {}, {}, 2, 3, 3, 0.0, 0.0, "s")
    >>> out = spb.VariableEvent()
    >>> event_to_pb(ChangeEvent(record, 0.25, "value_change", {}, "s"), None, out)
    >>> codec.decode(out.value), codec.decode(out.old_value), out.version
    (0.5, 0.25, 2)
    """
    record = event.record
    kind = update_type or event.update_type
    out.variable_id = record.id
    out.name = record.name
    if kind in ("deleted", "revoked"):
        codec.fill(out.value, None)
    else:
        codec.fill(out.value, record.value)
    if kind not in ("initial", "resync", "revoked", OPTIMIZATION_EVENT):
        codec.fill(out.old_value, event.old_value)
        old = out.old_value.ByteSize()
        if old > MAX_OLD_VALUE_BYTES or old + out.value.ByteSize() > max_pair_bytes:
            out.ClearField("old_value")
    out.version = record.version
    out.revision = record.mod_revision
    out.update_type = UPDATE_TYPES[kind]  # type: ignore[assignment]
    if event.metadata:
        out.metadata.CopyFrom(codec.encode_map(event.metadata))
    out.source = event.source
    out.timestamp.CopyFrom(timestamp(record.updated_at))


def current(record: VariableRecord) -> ChangeEvent:
    """A record's current value as an ``initial`` event (a snapshot or a resync).

    Example:

    >>> record = VariableRecord("var_t_1", "t", "float", 0.5, {}, {}, 1, 3, 3, 0.0, 0.0, "s")
    >>> current(record).update_type
    'initial'
    """
    return ChangeEvent(record, None, "initial", {}, record.updated_by)


def status_to_pb(
    record: VariableRecord, lease: OptimizationLease | None, out: pb.OptimizationStatus
) -> None:
    """Fill a wire ``OptimizationStatus`` (a variable never optimized has an empty id).

    Example:

    >>> record = VariableRecord("var_t_1", "t", "float", 0.5, {}, {}, 1, 3, 3, 0.0, 0.0, "s")
    >>> out = pb.OptimizationStatus()
    >>> status_to_pb(record, None, out)
    >>> out.name, out.optimization_id, out.is_optimizing
    ('t', '', False)
    """
    out.variable_id = record.id
    out.name = record.name
    if lease is None:
        return
    out.is_optimizing = lease.active
    out.optimization_id = lease.id
    out.optimizer_type = lease.optimizer_type
    out.holder_session = lease.holder_session
    out.holder_client = lease.holder_client
    out.iteration = lease.iteration
    if lease.best_score is not None:
        out.has_best = True
        codec.fill(out.best_value, lease.best_value)
        out.best_metrics.CopyFrom(codec.encode_map(lease.best_metrics))
        out.best_score = lease.best_score
    out.started_at.CopyFrom(timestamp(lease.started_at))
    out.last_update.CopyFrom(timestamp(lease.last_update))
    out.expires_at.CopyFrom(timestamp(lease.expires_at))
    out.state = lease.state
    out.end_reason = lease.end_reason
    if lease.ended_at is not None:
        out.ended_at.CopyFrom(timestamp(lease.ended_at))
    out.max_iterations = lease.max_iterations
    out.ttl_seconds = lease.ttl
    out.minimize = lease.minimize
    if lease.has_final:
        out.has_final = True
        codec.fill(out.final_value, lease.final_value)
    out.config.CopyFrom(codec.encode_map(lease.config))
    out.takes_reports = lease.takes_reports
    out.proposal_iteration = lease.proposal_iteration
    out.proposal_version = lease.proposal_version
    if lease.report is not None:
        out.has_report = True
        out.report_metrics.CopyFrom(codec.encode_map(lease.report))
        out.reported_by = lease.reported_by


def entry_to_pb(entry: OptimizationEntry, out: pb.OptimizationHistoryEntry) -> None:
    """Fill a wire ``OptimizationHistoryEntry`` from one evaluated iteration.

    Example: ``entry_to_pb(entry, response.entries.add())`` fills the added entry.
    """
    out.optimization_id = entry.optimization_id
    out.optimizer_type = entry.optimizer_type
    out.iteration = entry.iteration
    codec.fill(out.value, entry.value)
    out.metrics.CopyFrom(codec.encode_map(entry.metrics))
    out.score = entry.score
    out.timestamp.CopyFrom(timestamp(entry.timestamp))
    out.revision = entry.revision


def spec_from_pb(spec: pb.VariableSpec) -> VariableSpec:
    """A store ``VariableSpec`` from a wire one.

    Example:

    >>> wire = pb.VariableSpec(name="t", type=pb.VARIABLE_TYPE_FLOAT)
    >>> wire.initial_value.CopyFrom(codec.encode(0.5))
    >>> spec = spec_from_pb(wire)
    >>> spec.name, spec.type, spec.initial_value
    ('t', 'float', 0.5)
    """
    return VariableSpec(
        name=spec.name,
        type=type_from_pb(spec.type),
        initial_value=codec.decode(spec.initial_value),
        constraints=codec.decode_map(spec.constraints),
        metadata=codec.decode_map(spec.metadata),
        description=spec.description,
        dependencies=list(spec.dependencies),
        access_rules=rules_from_pb(spec.access_rules),
    )
