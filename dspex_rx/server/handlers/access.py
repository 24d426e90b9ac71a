"""Access RPCs: replace a variable's rules (``SetVariablePermissions``, owner only) and
ask whether the caller may use a permission (``CheckVariableAccess``).
"""

from __future__ import annotations

from dspex_rx.server.rpc import Call
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire.convert import rules_from_pb


def set_variable_permissions(
    call: Call, request: pb.SetVariablePermissionsRequest
) -> pb.SetVariablePermissionsResponse:
    """``SetVariablePermissions``: replace a variable's access rules (owner only).

    Example: ``await stub.SetVariablePermissions(request)`` answers the variable and rules.
    """
    sid = call.session_id
    revision = call.store.set_permissions(
        sid, request.ref, rules_from_pb(request.rules), actor=sid
    )
    response = pb.SetVariablePermissionsResponse(revision=revision)
    call.variable(call.store.get(sid, request.ref), response.variable)
    return response


def check_variable_access(
    call: Call, request: pb.CheckVariableAccessRequest
) -> pb.CheckVariableAccessResponse:
    """``CheckVariableAccess``: may the caller use a permission on a variable? A variable
    it may not see at all is not named in the answer.

    Example: ``await stub.CheckVariableAccess(request)`` answers ``allowed``.
    """
    sid, store = call.session_id, call.store
    allowed = store.check_access(sid, request.ref, request.permission)
    response = pb.CheckVariableAccessResponse(allowed=allowed)
    if not allowed and not store.visible(sid, request.ref):
        return response  # names nothing: the caller may not see the variable at all
    # One of its own (by id or name) or a foreign one it has some right to (by id).
    var_id = store.session(sid).names.get(request.ref, request.ref)
    owner = store.owner_of(var_id) or sid
    response.variable_id, response.owner_session = var_id, owner
    return response
