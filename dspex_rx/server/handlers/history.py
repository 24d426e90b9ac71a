"""History RPCs: a page of a variable's past versions (``GetHistory``) and ``Rollback``
to one of them.
"""

from __future__ import annotations

from dspex_rx.server.rpc import Call
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import timestamp


def get_history(call: Call, request: pb.GetHistoryRequest) -> pb.GetHistoryResponse:
    """``GetHistory``: a page of past versions, newest first, and what retention dropped.

    Example: ``await stub.GetHistory(pb.GetHistoryRequest(session_id=sid, ref="t"))``.
    """
    page = call.store.history(call.session_id, request.ref, request.limit or 100, request.offset)
    response = pb.GetHistoryResponse(
        current_version=page.current_version,
        oldest_retained_version=page.oldest_retained_version,
        retention=page.retention,
    )
    if page.expired is not None:
        response.expired_from_version, response.expired_to_version = page.expired
    answer = call.answer()
    for entry in page.entries:
        out = response.entries.add(version=entry.version, revision=entry.revision)
        codec.fill(out.value, entry.value)
        out.updated_at.CopyFrom(timestamp(entry.updated_at))
        if request.include_metadata:
            out.updated_by = entry.updated_by
            out.metadata.CopyFrom(codec.encode_map(entry.metadata))
        answer.add(out)
    return response


def rollback(call: Call, request: pb.RollbackRequest) -> pb.RollbackResponse:
    """``Rollback``: write a past version's value again, as a new version.

    Example: ``await stub.Rollback(request)`` answers the variable as written.
    """
    sid = call.session_id
    record, revision = call.store.rollback(
        sid,
        request.ref,
        request.version,
        reason=request.reason or None,
        actor=sid,
        expected_version=request.expected_version or None,
    )
    response = pb.RollbackResponse(revision=revision)
    call.variable(record, response.variable)
    return response
