"""Variable RPCs: register (one or a batch), get (one or many), set, the batch update,
list and delete.
"""

from __future__ import annotations

from dspex_rx.server.encode import name_seen_by, spec_from_pb
from dspex_rx.server.rpc import Call
from dspex_rx.store.checked import raw_value
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import type_from_pb


def register_variable(
    call: Call, request: pb.RegisterVariableRequest
) -> pb.RegisterVariableResponse:
    """``RegisterVariable``: create one variable from its spec.

    Example: ``await stub.RegisterVariable(request)`` answers with the new variable.
    """
    sid = call.session_id
    # A large request's spec was decoded and checked on a worker (offload.check_register).
    specs = call.work.checked or [spec_from_pb(request.spec)]
    records, revision = call.store.register(sid, specs, actor=sid)
    response = pb.RegisterVariableResponse(revision=revision)
    call.variable(records[0], response.variable)
    return response


def register_variables(
    call: Call, request: pb.RegisterVariablesRequest
) -> pb.RegisterVariablesResponse:
    """``RegisterVariables``: create a batch of variables in one commit, or none.

    Example: ``await stub.RegisterVariables(request)`` answers with the new variables.
    """
    sid = call.session_id
    specs = call.work.checked or [spec_from_pb(spec) for spec in request.specs]
    records, revision = call.store.register(sid, specs, actor=sid)
    response = pb.RegisterVariablesResponse(revision=revision)
    # The echo fits one message: the store bounds what a batch stores (batch_bytes).
    for record in records:
        call.variable(record, response.variables.add())
    return response


def get_variable(call: Call, request: pb.GetVariableRequest) -> pb.GetVariableResponse:
    """``GetVariable``: one variable by name or id.

    Example: ``await stub.GetVariable(request)`` answers the variable and the revision.
    """
    sid = call.session_id
    record = call.store.get(sid, request.ref)
    response = pb.GetVariableResponse(revision=call.store.session(sid).revision)
    call.variable(record, response.variable)
    return response


def get_variables(call: Call, request: pb.GetVariablesRequest) -> pb.GetVariablesResponse:
    """``GetVariables``: many variables at one revision, and the refs that were missing.

    Example: ``await stub.GetVariables(request)`` answers the variables found.
    """
    sid = call.session_id
    found, missing = call.store.get_many(sid, list(request.refs))
    response = pb.GetVariablesResponse(
        missing=missing, revision=call.store.session(sid).revision
    )
    answer = call.answer()
    answer.add(response)
    for record in found:
        answer.add(call.variable(record, response.variables.add()))
    return response


def set_variable(call: Call, request: pb.SetVariableRequest) -> pb.SetVariableResponse:
    """``SetVariable``: write one value (optionally creating the variable, or only at an
    expected version, or under an optimization's fencing token).

    Example: ``await stub.SetVariable(request)`` answers with the variable as written.
    """
    sid = call.session_id
    hint = type_from_pb(request.type_hint) if request.type_hint else None
    # A large request's value was decoded and checked on a worker (offload.check_set).
    value = call.work.checked[0] if call.work.checked else codec.decode(request.value)
    record, revision, created = call.store.set(
        sid,
        request.ref,
        value,
        metadata=codec.decode_map(request.metadata),
        actor=sid,
        create_if_missing=request.create_if_missing,
        type_hint=hint,
        expected_version=request.expected_version or None,
        source=request.source or None,
        fencing_token=request.fencing_token or None,
    )
    response = pb.SetVariableResponse(revision=revision, created=created)
    call.variable(record, response.variable)
    return response


def update_variables(
    call: Call, request: pb.UpdateVariablesRequest
) -> pb.UpdateVariablesResponse:
    """``UpdateVariables``: a batch of writes, atomic or each on its own, with an outcome
    per write (a stored value that differs from the one sent is sent back).

    Example: ``await stub.UpdateVariables(request)`` answers one result per update.
    """
    sid = call.session_id
    # A large request's values were decoded and checked on a worker (check_updates).
    values = call.work.checked or [codec.decode(u.value) for u in request.updates]
    updates = [
        (u.ref, value, u.expected_version or None)
        for u, value in zip(request.updates, values, strict=True)
    ]
    outcomes, revision, applied = call.store.update_many(
        sid,
        updates,
        metadata=codec.decode_map(request.metadata),
        atomic=request.atomic,
        actor=sid,
        require_leases=[
            (guard.ref, guard.optimization_id, guard.fencing_token)
            for guard in request.require_leases
        ],
    )
    response = pb.UpdateVariablesResponse(revision=revision, applied=applied)
    for (_, sent, _), outcome in zip(updates, outcomes, strict=True):
        result = response.results.add(
            ref=outcome.ref, ok=outcome.ok, error=outcome.error,
            error_kind=outcome.error_kind, current_version=outcome.current_version,
        )
        record = outcome.record
        if record is not None:
            result.variable_id = record.id
            result.name = name_seen_by(call.store, sid, record)
            result.version = record.version
            result.mod_revision = record.mod_revision
            # The stored value goes back only if it differs from the one sent (a cast, a
            # normalization); a large one is compared and encoded on a worker, later.
            call.work.fill_if_changed(
                result.value, raw_value(sent), record.value, record.size - record.metadata_size
            )
    return response


def list_variables(call: Call, request: pb.ListVariablesRequest) -> pb.ListVariablesResponse:
    """``ListVariables``: the session's variables, optionally those matching a glob.

    Example: ``await stub.ListVariables(pb.ListVariablesRequest(session_id=sid))`` lists all.
    """
    sid = call.session_id
    records = call.store.list(sid, request.pattern or None)
    response = pb.ListVariablesResponse(revision=call.store.session(sid).revision)
    answer = call.answer()
    for record in records:
        answer.add(call.variable(record, response.variables.add()))
    return response


def delete_variable(call: Call, request: pb.DeleteVariableRequest) -> pb.DeleteVariableResponse:
    """``DeleteVariable``: delete a variable (with ``cascade``, its dependents too).

    Example: ``await stub.DeleteVariable(request)`` answers the deleted ids.
    """
    sid = call.session_id
    deleted, revision = call.store.delete(sid, request.ref, actor=sid, cascade=request.cascade)
    return pb.DeleteVariableResponse(id=deleted[0], revision=revision, deleted_ids=deleted)
