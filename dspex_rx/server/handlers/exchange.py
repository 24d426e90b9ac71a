"""Export and import RPCs, with their encoders: a session's variables as a wire snapshot
(``ExportVariables``) and a snapshot validated whole, then applied in one commit or none.
"""

from __future__ import annotations

from dspex_rx.errors import DspexError, InvalidValueError
from dspex_rx.server.encode import record_to_pb, rules_to_pb
from dspex_rx.server.rpc import Call
from dspex_rx.store import (
    HistoryEntry,
    ImportReport,
    Snapshot,
    SnapshotDependency,
    SnapshotVariable,
)
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import (
    DEPENDENCY_FROM_PB,
    DEPENDENCY_TO_PB,
    rules_from_pb,
    seconds,
    timestamp,
    type_from_pb,
    type_to_pb,
)

MERGE_STRATEGIES: dict[int, str] = {
    pb.MERGE_STRATEGY_UNSPECIFIED: "replace",
    pb.MERGE_STRATEGY_REPLACE: "replace",
    pb.MERGE_STRATEGY_KEEP: "keep",
    pb.MERGE_STRATEGY_MERGE: "merge",
}


def snapshot_to_pb(snapshot: Snapshot, out: pb.VariablesSnapshot) -> None:
    """Fill a wire ``VariablesSnapshot`` from a store snapshot.

    Example:

    >>> out = pb.VariablesSnapshot()
    >>> snapshot_to_pb(Snapshot((), "session_1", 7, 0.0, False, False, 1), out)
    >>> out.session_id, out.revision, len(out.variables)
    ('session_1', 7, 0)
    """
    out.format_version = snapshot.format_version
    out.session_id = snapshot.session_id
    out.revision = snapshot.revision
    out.exported_at.CopyFrom(timestamp(snapshot.exported_at))
    out.include_history = snapshot.include_history
    out.include_dependencies = snapshot.include_dependencies
    for variable in snapshot.variables:
        msg = out.variables.add(
            name=variable.name,
            type=type_to_pb(variable.type),
            constraints=codec.encode_map(variable.constraints),
            metadata=codec.encode_map(variable.metadata),
            description=variable.description,
            version=variable.version,
            created_at=timestamp(variable.created_at),
            updated_at=timestamp(variable.updated_at),
            updated_by=variable.updated_by,
        )
        codec.fill(msg.value, variable.value)
        rules_to_pb(variable.access_rules, msg.access_rules)
        if variable.history is not None:
            msg.has_history = True
            for entry in variable.history:
                item = msg.history.add(
                    version=entry.version,
                    updated_at=timestamp(entry.updated_at),
                    updated_by=entry.updated_by,
                    metadata=codec.encode_map(entry.metadata),
                    revision=entry.revision,
                )
                codec.fill(item.value, entry.value)
        if variable.dependencies is not None:
            msg.has_dependencies = True
            for dependency in variable.dependencies:
                msg.dependencies.add(
                    name=dependency.name,
                    dependency_type=DEPENDENCY_TO_PB[dependency.type],
                    metadata=codec.encode_map(dependency.metadata),
                )


def snapshot_from_pb(msg: pb.VariablesSnapshot) -> Snapshot:
    """A store snapshot from a wire ``VariablesSnapshot``; a value that cannot be decoded
    raises an error naming its variable (the store validates the rest).

    Example:

    >>> snapshot_from_pb(pb.VariablesSnapshot(session_id="session_1", revision=7)).revision
    7
    """
    variables = []
    for index, item in enumerate(msg.variables):
        try:
            history = (
                tuple(
                    HistoryEntry(
                        entry.version, codec.decode(entry.value), seconds(entry.updated_at),
                        entry.updated_by, codec.decode_map(entry.metadata), entry.revision,
                    )
                    for entry in item.history
                )
                if item.has_history
                else None
            )
            dependencies = (
                tuple(
                    SnapshotDependency(
                        dependency.name,
                        DEPENDENCY_FROM_PB.get(
                            dependency.dependency_type,
                            f"unknown (wire value {dependency.dependency_type})",
                        )
                        if dependency.dependency_type
                        else "data",
                        codec.decode_map(dependency.metadata),
                    )
                    for dependency in item.dependencies
                )
                if item.has_dependencies
                else None
            )
            variables.append(
                SnapshotVariable(
                    item.name, type_from_pb(item.type), codec.decode(item.value),
                    codec.decode_map(item.constraints), codec.decode_map(item.metadata),
                    item.description, item.version, seconds(item.created_at),
                    seconds(item.updated_at), item.updated_by, history, dependencies,
                    tuple(rules_from_pb(item.access_rules)),
                )
            )
        except DspexError as exc:
            raise exc.prefixed(f"variable {item.name or index!r} of the import") from None
    return Snapshot(
        tuple(variables), msg.session_id, msg.revision, seconds(msg.exported_at),
        msg.include_history, msg.include_dependencies, msg.format_version,
    )


def import_report_to_pb(report: ImportReport) -> pb.ImportVariablesResponse:
    """The wire answer to an import: outcomes, revision, whether it was applied.

    Example: ``import_report_to_pb(store.import_snapshot(sid, snapshot))`` is the answer.
    """
    response = pb.ImportVariablesResponse(
        revision=report.revision, applied=report.applied, dry_run=report.dry_run,
        dependencies_added=report.dependencies_added,
    )
    for outcome in report.outcomes:
        out = response.outcomes.add(
            name=outcome.name, action=outcome.action, message=outcome.message,
            error_kind=outcome.error_kind, version=outcome.version,
        )
        if outcome.record is not None:
            record_to_pb(outcome.record, out.variable)
    return response


def export_variables(
    call: Call, request: pb.ExportVariablesRequest
) -> pb.ExportVariablesResponse:
    """``ExportVariables``: the caller's session's variables as a snapshot.

    Example: ``await stub.ExportVariables(request)`` answers the snapshot.
    """
    snapshot = call.store.export_snapshot(
        call.session_id,
        include_history=request.include_history,
        include_dependencies=request.include_dependencies,
        pattern=request.filter_pattern or None,
    )
    response = pb.ExportVariablesResponse(revision=snapshot.revision)
    snapshot_to_pb(snapshot, response.snapshot)
    call.answer().add(response)
    return response


def import_variables(
    call: Call, request: pb.ImportVariablesRequest
) -> pb.ImportVariablesResponse:
    """``ImportVariables``: validate the whole snapshot, then one commit or none.

    Example: ``await stub.ImportVariables(request)`` answers the outcomes.
    """
    strategy = MERGE_STRATEGIES.get(request.merge_strategy)
    if strategy is None:
        raise InvalidValueError(
            f"merge strategy is unknown (wire value {request.merge_strategy})"
        )
    report = call.store.import_snapshot(
        call.session_id,
        snapshot_from_pb(request.snapshot),
        strategy=strategy,
        dry_run=request.dry_run,
        actor=call.session_id,
    )
    return import_report_to_pb(report)
