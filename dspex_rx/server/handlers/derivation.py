"""The ``DeriveLease`` RPC: a derived variable's lease claimed, renewed, released, or its
status read, answered with the status, the caller's role and (to the owner) its token.
"""

from __future__ import annotations

from dspex_rx.errors import InvalidValueError
from dspex_rx.server.rpc import Call
from dspex_rx.store.checks import _show
from dspex_rx.store.derivations import Derivation
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire.convert import timestamp

ACTIONS = ("claim", "renew", "release", "status")


def derivation_to_pb(
    name: str, var_id: str, derivation: Derivation | None, input_names: dict[str, str],
    out: pb.DerivationStatus,
) -> None:
    """Fill a wire ``DerivationStatus`` (``derived`` False when there is no lease).

    >>> from dspex_rx.store.derivations import Derivation
    >>> d = Derivation("var_d_2", ("var_a_1",), 5.0); d.take("s", "c", 7, 1.0)
    >>> out = pb.DerivationStatus()
    >>> derivation_to_pb("d", "var_d_2", d, {"var_a_1": "a"}, out)
    >>> out.owner_client, list(out.inputs), out.ttl_seconds, out.derived
    ('c', ['a'], 5.0, True)
    """
    out.variable_id = var_id
    out.name = name
    if derivation is None:
        return
    status = derivation.status(name, input_names)
    out.derived = True
    out.inputs.extend(status["inputs"])
    out.owner_session = derivation.owner_session
    out.owner_client = derivation.owner_client
    out.standby_sessions.extend(status["standby_sessions"])
    out.standby_clients.extend(status["standbys"])
    out.last_computed_revision = derivation.last_computed_revision
    out.stale = derivation.stale
    out.stale_reason = derivation.stale_reason
    out.ttl_seconds = derivation.ttl
    if derivation.owned:
        out.expires_at.CopyFrom(timestamp(derivation.expires_at))


def derive_lease(call: Call, request: pb.DeriveLeaseRequest) -> pb.DeriveLeaseResponse:
    """``DeriveLease``: ``claim`` (owner or standby), ``renew``, ``release`` or ``status``.

    Example: ``await stub.DeriveLease(pb.DeriveLeaseRequest(session_id=sid, ref="d",
    client_id=cid, action="claim", inputs=["a"]))`` answers role "owner" and the token.
    """
    sid, store, action = call.session_id, call.store, request.action
    if action not in ACTIONS:
        raise InvalidValueError(
            f"variable {_show(request.ref)}: derivation action must be one of "
            f"{', '.join(ACTIONS)}, got {_show(action)}"
        )
    client_id = request.client_id
    revision = 0
    if action == "claim":
        _, role, revision = store.claim_derivation(
            sid, request.ref, list(request.inputs), client_id=client_id,
            ttl=request.ttl_seconds or None,
        )
    elif action == "renew":
        role = store.renew_derivation(sid, request.ref, client_id=client_id)[1]
    elif action == "release":
        revision = store.release_derivation(sid, request.ref, client_id=client_id)[1]
    record, derivation, role = store.derivation_status(sid, request.ref, client_id)
    response = pb.DeriveLeaseResponse(role=role, revision=revision or store.revision)
    if derivation is not None and role == "owner":
        response.fencing_token = derivation.token
    derivation_to_pb(record.name, record.id, derivation,
                     store.derivation_input_names(sid, request.ref), response.status)
    return response
