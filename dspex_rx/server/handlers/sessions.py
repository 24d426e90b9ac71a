"""Session RPCs: create or attach (``InitializeSession``, which hands out the token),
``Heartbeat``, ``CloseSession``, and the session-less ``Echo`` and ``ListSessions``.
"""

from __future__ import annotations

import contextlib

from dspex_rx.errors import AuthenticationError
from dspex_rx.logs import get_logger
from dspex_rx.server.rpc import Call, presented, presented_token
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import timestamp
from dspex_rx.wire.security import PRINCIPAL_KEY_KEY

log = get_logger("dspex_rx.server")


def initialize_session(
    call: Call, request: pb.InitializeSessionRequest
) -> pb.InitializeSessionResponse:
    """``InitializeSession``: create a session, or attach to one (the store checks the
    token an attacher presents); the token goes only to who made it or proved it.
    ``must_exist`` only attaches: no live session of the id is ``NOT_FOUND``.

    Example: ``await stub.InitializeSession(request)`` answers the session's id and token.
    """
    store, auth = call.store, call.service.auth
    given = presented_token(call.context)
    session, client_id, created = store.initialize_session(
        request.session_id or None,
        codec.decode_map(request.metadata),
        request.ttl_seconds or None,
        request.client_name,
        token=given,
        require_token=auth == "token",
        principal_key=presented(call.context, PRINCIPAL_KEY_KEY),
        create=not request.must_exist,
    )
    lease = session.clients[client_id]
    log.info("session_created" if created else "session_attached", session_id=session.id,
             client_id=client_id, created=created)
    response = pb.InitializeSessionResponse(
        session_id=session.id,
        client_id=client_id,
        created=created,
        revision=session.revision,
        ttl_seconds=lease.ttl,
        created_at=timestamp(session.created_at),
        incarnation=session.incarnation,
    )
    # The token goes to whoever made the session or proved they hold it; with
    # auth="none" an attacher that sent none (or a wrong one) is not given it.
    proven = created or auth == "token"
    if not proven and given:
        with contextlib.suppress(AuthenticationError):
            store.authenticate(session.id, given)
            proven = True
    if proven:
        response.session_token = session.token
    return response


def heartbeat(call: Call, request: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
    """``Heartbeat``: renew the client's lease on its session.

    Example: ``await stub.Heartbeat(request)`` answers the new expiry.
    """
    expires_at = call.store.heartbeat(call.session_id, request.client_id)
    return pb.HeartbeatResponse(
        revision=call.store.session(call.session_id).revision, expires_at=timestamp(expires_at)
    )


def close_session(call: Call, request: pb.CloseSessionRequest) -> pb.CloseSessionResponse:
    """``CloseSession``: detach the client; the session goes with its last client, or
    with a session TTL is kept idle that long.

    Example: ``await stub.CloseSession(request)`` says whether the session was removed.
    """
    removed = call.store.close_session(call.session_id, request.client_id)
    log.info("session_closed" if removed else "session_detached", session_id=call.session_id,
             client_id=request.client_id, session_removed=removed)
    return pb.CloseSessionResponse(session_removed=removed)


def list_sessions(call: Call, request: pb.ListSessionsRequest) -> pb.ListSessionsResponse:
    """``ListSessions``: the sessions the caller may see (``store.visible_sessions``): its
    own when it presents the session's token, those in namespaces whose principal key it
    presents; every session when the server checks no tokens (``auth="none"``).

    Example: ``await stub.ListSessions(request, metadata=token_metadata(token))`` lists
    the caller's session.
    """
    store = call.store
    everything = call.service.auth == "none"
    found = store.visible_sessions(
        request.session_id, presented_token(call.context),
        presented(call.context, PRINCIPAL_KEY_KEY), everything=everything,
    )
    response = pb.ListSessionsResponse(all_sessions=everything)
    answer = call.answer()
    for session in found:
        info = response.sessions.add(
            session_id=session.id, created_at=timestamp(session.created_at),
            clients=len(session.clients), variables=len(session.variables),
            revision=session.revision, session_ttl_seconds=store.session_ttl,
        )
        if not session.clients and session.idle_since is not None:
            info.idle_since.CopyFrom(timestamp(session.idle_since))
            info.expires_at.CopyFrom(timestamp(session.idle_since + store.session_ttl))
        answer.add(info)
    return response


def echo(call: Call, request: pb.EchoRequest) -> pb.EchoResponse:
    """``Echo``: the payload back (no session, no token).

    Example:

    >>> echo(None, pb.EchoRequest(payload=b"hi"))  # type: ignore[arg-type]
    payload: "hi"
    <BLANKLINE>
    """
    return pb.EchoResponse(payload=request.payload)
