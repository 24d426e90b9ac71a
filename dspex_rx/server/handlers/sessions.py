"""Session RPCs: create or attach (``InitializeSession``, which hands out the token),
``Heartbeat``, ``CloseSession``, and the session-less ``Echo`` and ``ListSessions``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from dspex_rx.errors import AuthenticationError, SessionNotFoundError
from dspex_rx.logs import get_logger
from dspex_rx.server.ratelimit import peer_address
from dspex_rx.server.rpc import Call, presented, presented_token
from dspex_rx.store import MemoryStore
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
    ``must_exist`` only attaches: no live session of the id is ``NOT_FOUND``. Rate
    limited per peer and per session id (``ratelimit.Guard``): over a limit it is
    RESOURCE_EXHAUSTED with a retry-after, and so is creating a session from a peer with
    ``max_sessions_per_peer`` sessions attached.

    Example: ``await stub.InitializeSession(request)`` answers the session's id and token.
    """
    store, auth, guard = call.store, call.service.auth, call.service.guard
    given = presented_token(call.context)
    # Rate limits first (ratelimit.py): a refused call changes nothing, and a caller out
    # of failed authentications learns nothing from its credentials.
    peer = peer_address(call.context.peer())
    guard.admit_init(peer, request.session_id)
    attached = _attached(store)
    if not request.must_exist and not _exists(store, request.session_id):
        guard.check_sessions(peer, attached)
    try:
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
    except AuthenticationError:
        guard.failed(peer, request.session_id)
        raise
    if created:
        guard.made(peer, session.id, session.incarnation, attached)
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


def _exists(store: MemoryStore, session_id: str) -> bool:
    # Whether the call would attach to a live session rather than create one.
    if not session_id:
        return False
    try:
        store.session(session_id)
    except SessionNotFoundError:
        return False
    return True


def _attached(store: MemoryStore) -> Callable[[str, int], bool]:
    # Whether that incarnation of a session id is live with a client attached.
    def attached(session_id: str, incarnation: int) -> bool:
        try:
            session = store.session(session_id)
        except SessionNotFoundError:
            return False
        return bool(session.clients) and incarnation == session.incarnation

    return attached


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
    presents; every session when the server checks no tokens (``auth="none"``). A wrong
    token or a key that opens no namespace counts as a failed authentication
    (``ratelimit.Guard``).

    Example: ``await stub.ListSessions(request, metadata=token_metadata(token))`` lists
    the caller's session.
    """
    store, guard = call.store, call.service.guard
    everything = call.service.auth == "none"
    key = presented(call.context, PRINCIPAL_KEY_KEY)
    peer = peer_address(call.context.peer())
    if not everything and (request.session_id or key):
        # The answer says whether a token or key is right, so it is rate limited like
        # any authentication; a key that opens no namespace is a failed one.
        guard.admit_auth(peer)
        if key and not any(ns.key_matches(key) for ns in store.principals.namespaces):
            guard.failed(peer)
    try:
        found = store.visible_sessions(
            request.session_id, presented_token(call.context), key, everything=everything,
        )
    except AuthenticationError:
        guard.failed(peer, request.session_id)
        raise
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
