"""Dependency RPCs: add and remove an edge between two variables, and walk the graph
(``GetDependencies``, dependencies or dependents, direct or transitive).
"""

from __future__ import annotations

from dspex_rx.errors import InvalidValueError
from dspex_rx.server.rpc import Call
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import DEPENDENCY_FROM_PB, DEPENDENCY_TO_PB, type_to_pb


def add_dependency(call: Call, request: pb.AddDependencyRequest) -> pb.AddDependencyResponse:
    """``AddDependency``: ``from_ref`` depends on ``to_ref`` (unspecified type: data).

    Example: ``await stub.AddDependency(request)`` answers the new revision.
    """
    if request.dependency_type == pb.DEPENDENCY_TYPE_UNSPECIFIED:
        dependency_type = "data"
    elif request.dependency_type in DEPENDENCY_FROM_PB:
        dependency_type = DEPENDENCY_FROM_PB[request.dependency_type]
    else:
        raise InvalidValueError(
            f"dependency type is unknown (wire value {request.dependency_type})"
        )
    revision = call.store.add_dependency(
        call.session_id,
        request.from_ref,
        request.to_ref,
        dependency_type,
        codec.decode_map(request.metadata),
        actor=call.session_id,
    )
    return pb.AddDependencyResponse(revision=revision)


def remove_dependency(
    call: Call, request: pb.RemoveDependencyRequest
) -> pb.RemoveDependencyResponse:
    """``RemoveDependency``: drop the edge, saying whether there was one.

    Example: ``await stub.RemoveDependency(request)`` answers ``removed``.
    """
    removed, revision = call.store.remove_dependency(
        call.session_id, request.from_ref, request.to_ref, actor=call.session_id
    )
    return pb.RemoveDependencyResponse(removed=removed, revision=revision)


def get_dependencies(
    call: Call, request: pb.GetDependenciesRequest
) -> pb.GetDependenciesResponse:
    """``GetDependencies``: a variable's dependencies (or dependents), with their depth.

    Example: ``await stub.GetDependencies(request)`` answers one entry per variable.
    """
    found = call.store.dependencies(
        call.session_id, request.ref, dependents=request.dependents,
        transitive=request.transitive,
    )
    response = pb.GetDependenciesResponse()
    answer = call.answer()
    for record, depth, edge in found:
        answer.add(response.entries.add(
            variable_id=record.id,
            name=record.name,
            type=type_to_pb(record.type),
            dependency_type=DEPENDENCY_TO_PB[edge.type],
            metadata=codec.encode_map(edge.metadata),
            depth=depth,
        ))
    return response
