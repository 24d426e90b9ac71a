"""Optimization RPCs: the lease's life (start, step, finish, stop), its status and
history, and ``ReportMetrics`` for a run's current proposal.
"""

from __future__ import annotations

from typing import Any, TypeVar

from dspex_rx.server.encode import entry_to_pb, status_to_pb
from dspex_rx.server.rpc import Call
from dspex_rx.store import VariableRecord
from dspex_rx.store.leases import OptimizationLease
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import seconds

HeldAnswer = TypeVar("HeldAnswer", pb.OptimizationStepResponse, pb.FinishOptimizationResponse)


def _evaluation(request: Any) -> tuple[int, Any, dict[str, Any], float] | None:
    # The holder's record of an evaluated iteration, when the request carries one.
    if not request.has_record:
        return None
    return (
        int(request.iteration),
        codec.decode(request.evaluated_value),
        codec.decode_map(request.metrics),
        request.score,
    )


def _held_answer(
    call: Call, lease: OptimizationLease, written: VariableRecord | None, response: HeldAnswer
) -> HeldAnswer:
    # A step's or finish's answer: the variable when it was written, and the status.
    record = written or call.store.lookup(call.session_id, lease.variable_id, "optimize")
    if written is not None:
        call.variable(written, response.variable)
    status_to_pb(record, lease, response.status)
    return response


def _who(call: Call, client_id: str) -> str:
    # The actor named in the run's record: the session, and its client when given.
    return f"{call.session_id}/{client_id}" if client_id else call.session_id


def start_optimization(
    call: Call, request: pb.StartOptimizationRequest
) -> pb.StartOptimizationResponse:
    """``StartOptimization``: take the variable's lease; answers its fencing token.

    Example: ``await stub.StartOptimization(request)`` answers the token and the status.
    """
    sid = call.session_id
    lease, revision = call.store.start_optimization(
        sid,
        request.ref,
        optimizer_type=request.optimizer_type,
        config=codec.decode_map(request.config),
        max_iterations=request.max_iterations or 100,
        ttl=request.ttl_seconds or None,
        client_id=request.client_id,
        actor=sid,
        minimize=request.minimize,
        takes_reports=request.takes_reports,
    )
    response = pb.StartOptimizationResponse(fencing_token=lease.token, revision=revision)
    status_to_pb(call.store.lookup(sid, lease.variable_id, "optimize"), lease, response.status)
    return response


def optimization_step(
    call: Call, request: pb.OptimizationStepRequest
) -> pb.OptimizationStepResponse:
    """``OptimizationStep``: renew the lease, record an evaluation, write a proposal.

    Example: ``await stub.OptimizationStep(request)`` renews the lease.
    """
    sid = call.session_id
    proposal = (
        (codec.decode(request.write_value), int(request.write_iteration))
        if request.has_write else None
    )
    lease, written, revision = call.store.optimization_step(
        sid, request.ref, request.optimization_id, request.fencing_token,
        evaluation=_evaluation(request), proposal=proposal, actor=sid,
    )
    return _held_answer(call, lease, written, pb.OptimizationStepResponse(revision=revision))


def finish_optimization(
    call: Call, request: pb.FinishOptimizationRequest
) -> pb.FinishOptimizationResponse:
    """``FinishOptimization``: the holder's last record, final write and release.

    Example: ``await stub.FinishOptimization(request)`` ends the run.
    """
    sid = call.session_id
    lease, written, revision = call.store.finish_optimization(
        sid, request.ref, request.optimization_id, request.fencing_token,
        evaluation=_evaluation(request),
        final_value=codec.decode(request.final_value) if request.has_final else None,
        write_final=request.has_final,
        state=request.state or "completed",
        reason=request.reason,
        actor=sid,
        metadata=codec.decode_map(request.metadata),
    )
    return _held_answer(call, lease, written, pb.FinishOptimizationResponse(revision=revision))


def stop_optimization(
    call: Call, request: pb.StopOptimizationRequest
) -> pb.StopOptimizationResponse:
    """``StopOptimization``: revoke the lease from any allowed session (optionally
    writing the best value found).

    Example: ``await stub.StopOptimization(request)`` answers ``stopped`` and the status.
    """
    sid = call.session_id
    stopped, lease, revision, written = call.store.stop_optimization(
        sid, request.ref, reason=request.reason,
        optimization_id=request.optimization_id, apply_best=request.apply_best,
        actor=_who(call, request.client_id),
    )
    response = pb.StopOptimizationResponse(stopped=stopped, revision=revision)
    if written is not None:
        call.variable(written, response.variable)
    status_to_pb(call.store.lookup(sid, request.ref, "optimize"), lease, response.status)
    return response


def get_optimization_status(
    call: Call, request: pb.GetOptimizationStatusRequest
) -> pb.GetOptimizationStatusResponse:
    """``GetOptimizationStatus``: the variable's latest run, or the one named by id.

    Example: ``await stub.GetOptimizationStatus(request)`` answers the status.
    """
    sid = call.session_id
    record: VariableRecord
    lease: OptimizationLease | None
    if request.optimization_id:
        record, lease = call.store.optimization_by_id(sid, request.ref, request.optimization_id)
    else:
        record, lease = call.store.optimization_status(sid, request.ref)
    response = pb.GetOptimizationStatusResponse(revision=call.store.session(sid).revision)
    status_to_pb(record, lease, response.status)
    return response


def get_optimization_history(
    call: Call, request: pb.GetOptimizationHistoryRequest
) -> pb.GetOptimizationHistoryResponse:
    """``GetOptimizationHistory``: evaluated iterations, newest last.

    Example: ``await stub.GetOptimizationHistory(request)`` answers the entries.
    """
    sid = call.session_id
    entries = call.store.optimization_history(
        sid, request.ref, limit=request.limit or 100,
        since=seconds(request.since) if request.HasField("since") else None,
        optimization_id=request.optimization_id,
    )
    response = pb.GetOptimizationHistoryResponse(revision=call.store.session(sid).revision)
    answer = call.answer()
    for entry in entries:
        out = response.entries.add()
        entry_to_pb(entry, out)
        answer.add(out)
    return response


def report_metrics(call: Call, request: pb.ReportMetricsRequest) -> pb.ReportMetricsResponse:
    """``ReportMetrics``: the evaluation of a running optimization's current proposal;
    the store checks it against the live lease and publishes it.

    Example: ``await stub.ReportMetrics(request)`` answers the run's status.
    """
    lease, record, revision = call.store.report_metrics(
        call.session_id, request.ref, codec.decode_map(request.metrics),
        iteration=int(request.iteration), version=int(request.version),
        optimization_id=request.optimization_id, actor=_who(call, request.client_id),
    )
    response = pb.ReportMetricsResponse(revision=revision)
    status_to_pb(record, lease, response.status)
    return response
