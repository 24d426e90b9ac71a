"""One session's connection: channel and credentials, the embedded server, attaching and
re-attaching, the heartbeat, the background services (watch hub, cache), close, ``call``."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import grpc
import trio
from google.protobuf.message import Message

from dspex_rx.client.actors import WatchHub
from dspex_rx.client.aio import hold_current_run
from dspex_rx.client.cache import VariableCache
from dspex_rx.client.calls import NotSent, Pipeline
from dspex_rx.client.embedded import EmbeddedHandle, start_embedded
from dspex_rx.client.encoding import encode_metadata
from dspex_rx.client.interrupts import handed_to_main_task
from dspex_rx.client.leader_route import LeaderRoute, open_transport, unary_with_position
from dspex_rx.core.limits import DEFAULT_LIMITS, Limits
from dspex_rx.errors import (
    AuthenticationError,
    DspexError,
    InvalidValueError,
    ServerUnavailableError,
    SessionNotFoundError,
)
from dspex_rx.logs import get_logger
from dspex_rx.rx import TrioScheduler
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire.channel import (
    ASKS_LEADER,
    DEFAULT_KEEPALIVE_TIME,
    DEFAULT_KEEPALIVE_TIMEOUT,
    SERVICE_NAME,
    channel_target,
    client_keepalive_options,
    grpc_options,
    target_error,
    unreachable_hint,
)
from dspex_rx.wire.convert import map_rpc_error
from dspex_rx.wire.security import Pem, channel_credentials, principal_metadata, token_metadata

log = get_logger("dspex_rx.client")

M = TypeVar("M", bound=Message)
# A heartbeat failing with these says the connection, not the session, is in trouble.
_DEAD_CONNECTION = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# The session's own lifecycle calls stay unary RPCs: they run before the Calls stream
# exists or after it has stopped, and a heartbeat must test the connection by itself.
_UNARY_ONLY = frozenset({"InitializeSession", "Heartbeat", "CloseSession"})


class CallFn(Protocol):
    """A unary call: ``await call("GetVariable", request, pb.GetVariableResponse)``.

    Example: ``await core.call("Echo", pb.EchoRequest(), pb.EchoResponse)`` returns the echo.
    """

    def __call__(
        self, method: str, request: Message, response_type: type[M],
        timeout: float | None = ..., metadata: tuple[tuple[str, str], ...] | None = ...,
    ) -> Awaitable[M]: ...


class Connection:
    """The session's link to its server, from ``open()`` to ``close()``.

    ``send`` is how its own calls go out (heartbeat, re-attach, close): the facade points
    it at ``SessionContext._call`` so one wrapper there sees every call of the session.

    Example: ``await conn.open()`` attaches; ``conn.session_id`` is then the server's id.
    """

    def __init__(
        self,
        session_id: str | None,
        target: str | Sequence[str] | None,
        *,
        metadata: Mapping[str, Any] | None,
        ttl_seconds: float,
        client_name: str,
        timeout: float | None,
        token: str | None,
        tls: bool,
        ca_cert: Pem | None,
        tls_server_name: str | None,
        principal_key: str | None,
        limits: Limits | None,
        max_message_bytes: int | None,
        cache_ttl: float | None,
        cache_max_size: int | None,
        cache_eviction_policy: str,
        create: bool = True,
        data_dir: str | os.PathLike[str] | None = None,
        keepalive_time: float = DEFAULT_KEEPALIVE_TIME,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
        pipelined: bool = True,
        direct_writes: bool = False,
    ) -> None:
        if isinstance(target, list | tuple) and target and all(
            isinstance(t, str) for t in target
        ):
            target = ",".join(target)  # several replicas of one store
        if target is not None and not isinstance(target, str):
            raise TypeError(target_error(target))
        if not isinstance(create, bool):
            raise InvalidValueError(f"create must be True or False, got {create!r}")
        if not create and not session_id:
            raise InvalidValueError(
                "create=False joins an existing session, so it needs that session's id; "
                "none was given (pass session_id, or leave create=True for a new session)")
        # False: join only; the server refuses an id with no live session (must_exist).
        self._create = create
        if not isinstance(pipelined, bool):
            raise InvalidValueError(f"pipelined must be True or False, got {pipelined!r}")
        # Calls as requests on one Calls stream (calls.py) rather than one RPC each.
        self.pipelined = pipelined
        self.pipeline: Pipeline | None = None
        if not isinstance(direct_writes, bool):
            raise InvalidValueError(f"direct_writes must be True or False, got {direct_writes!r}")
        # Over replicas, writes go to the leader, which replicas name if asked (leader_route.py).
        self._direct_writes = direct_writes
        self._asks = ASKS_LEADER if direct_writes and pipelined else ()
        self.route: LeaderRoute | None = None
        self._attached_at = 0  # the first attach's position (over replicas), for the route
        self._open_replica: Callable[[str], Awaitable[Any]] | None = None
        if token is not None and not isinstance(token, str):
            raise InvalidValueError(f"token must be a string, got {type(token).__name__}")
        if principal_key is not None and not isinstance(principal_key, str):
            raise InvalidValueError(
                f"principal_key must be a string, got {type(principal_key).__name__}"
            )
        self._principal_key = principal_key or None
        if limits is not None and not isinstance(limits, Limits):
            raise InvalidValueError(f"limits must be a Limits, got {type(limits).__name__}")
        if limits is not None and target is not None:
            raise InvalidValueError(
                "limits configure the embedded server (no target); a server you connect to "
                "has its own (pass max_message_bytes= to match its message size)")
        self._limits = limits
        if data_dir is not None and target is not None:
            raise InvalidValueError(
                "data_dir is where the embedded server (no target) keeps its data; a "
                "server you connect to has its own (dspex-rx serve --data-dir)"
            )
        if data_dir is not None and not isinstance(data_dir, str | os.PathLike):
            raise InvalidValueError(f"data_dir must be a path, got {type(data_dir).__name__}")
        self._data_dir = data_dir
        if max_message_bytes is None:
            max_message_bytes = (limits or DEFAULT_LIMITS).max_message_bytes
        if not isinstance(max_message_bytes, int) or isinstance(max_message_bytes, bool) or (
            max_message_bytes < 1
        ):
            raise InvalidValueError(
                f"max_message_bytes must be a positive integer, got {max_message_bytes!r}"
            )
        self.max_message_bytes = max_message_bytes
        # Checked now: a bad keepalive is the caller's mistake, not a failed connect.
        self._keepalive = client_keepalive_options(keepalive_time, keepalive_timeout)
        self._requested_session_id = session_id
        self.target = target
        self.token = token or None
        self.tls = tls or ca_cert is not None
        self._ca_cert = ca_cert
        self._tls_server_name = tls_server_name
        self._metadata = dict(metadata or {})
        self.ttl_seconds = ttl_seconds
        self.client_name = client_name
        self.timeout = timeout
        self.send: CallFn = self.call
        self.embedded: EmbeddedHandle | None = None
        self.transport: Any = None
        self.session_id: str | None = None
        self.client_id = ""
        self._incarnation = 0
        # A client lease this client took on a session that is not its own (found while
        # re-attaching) and still has to release: (client id, token to present).
        self.stray: tuple[str, str | None] | None = None
        self.nursery: trio.Nursery | None = None
        self.scheduler: TrioScheduler | None = None
        self.hub: WatchHub | None = None
        self._stop_services: trio.Event | None = None
        self.services_done = trio.Event()
        self.revision = 0
        self.created = False
        self.heartbeats = 0
        # Times the client's lease had expired and it attached again; True once the server
        # no longer has the session at all (its variables are gone).
        self.reattached = 0
        self.lost = False
        self._lost_reason = ""
        self.closed = False
        self._portal_release: Callable[[], None] | None = None
        # Made last, as before the split: bad connection arguments are reported first. The
        # watch hub writes pushed values into it.
        self.cache = VariableCache(
            ttl=cache_ttl, max_size=cache_max_size, eviction_policy=cache_eviction_policy
        )

    def require_session_id(self) -> str:
        """The server's id for the session; ``RuntimeError`` before ``open`` or after close.

        Example: ``conn.require_session_id()`` returns ``"session_123"`` once attached.
        """
        if self.session_id is None:
            if self.closed:
                raise RuntimeError("the session is closed")
            raise RuntimeError("the session is not initialized; call await session.initialize()")
        return self.session_id

    def require_hub(self) -> WatchHub:
        """The watch hub of an open session that is not lost (else the error to raise).

        Example: ``conn.require_hub().known("temperature")`` is that variable's actor.
        """
        if self.hub is None:
            if self.closed:
                raise RuntimeError("the session is closed")
            raise RuntimeError("the session is not initialized; call await session.initialize()")
        if self.lost:
            raise self.lost_error()
        return self.hub

    @property
    def trio_token(self) -> trio.lowlevel.TrioToken | None:
        """The trio run the session lives in (its sync methods run there from other threads).

        Example: ``conn.trio_token`` is None until ``open()``.
        """
        return self.scheduler.token if self.scheduler is not None else None

    async def open(self) -> None:
        """Connect (starting an embedded server if there is no target) and attach.

        Example: ``await conn.open()``; a second call does nothing.
        """
        from dspex_rx.client.transport import Transport

        if self.session_id is not None:
            return
        self.closed = False
        try:
            if self.target is None:
                if self.tls:
                    raise InvalidValueError(
                        "tls/ca_cert need a target: the embedded server (no target) serves "
                        "plaintext on 127.0.0.1"
                    )
                self.embedded, self.target = await start_embedded(self._limits, self._data_dir)
            options: list[tuple[str, Any]] = [*grpc_options(self.max_message_bytes),
                                              *self._keepalive]
            # Several addresses (replicas): the channel connects to the first that answers
            # and moves to another when it goes; its streams resume there.
            channel, host = await trio.to_thread.run_sync(channel_target, self.target)
            credentials = channel_credentials(self._ca_cert) if self.tls else None
            self._open_replica = functools.partial(
                open_transport, options=list(options), timeout=self.timeout,
                credentials=credentials, server_name=self._tls_server_name)
            if self.tls:
                name = self._tls_server_name or (host if channel != self.target else None)
                if name:
                    options.append(("grpc.ssl_target_name_override", name))
            self.transport = Transport(channel, options, timeout=self.timeout,
                                       credentials=credentials)
            await self.transport.open()
            try:
                response = await self._attach(
                    pb.InitializeSessionRequest(
                        session_id=self._requested_session_id or "",
                        metadata=encode_metadata("session", self._metadata),
                        ttl_seconds=self.ttl_seconds,
                        client_name=self.client_name,
                        must_exist=not self._create,
                    )
                )
            except grpc.aio.AioRpcError as exc:
                unreachable = self._unreachable(exc)
                if unreachable is None:
                    raise
                raise unreachable from exc
        except BaseException:
            await self._teardown()
            raise
        self.session_id = response.session_id
        self.client_id = response.client_id
        self._incarnation = response.incarnation
        # A server with auth="none" gives no token to an attacher that sent none.
        self.token = response.session_token or self.token
        self.revision = response.revision
        self.created = response.created
        await self._start_services(response.ttl_seconds)
        # Opened from asyncio: the portal's trio run must last until this session closes.
        self._portal_release = hold_current_run()
        log.debug("session_initialized", session_id=self.session_id, target=self.target)

    def _unreachable(self, exc: grpc.aio.AioRpcError) -> ServerUnavailableError | None:
        # The first attach is where a wrong address, a server that is not running or TLS
        # on one side only shows: one error saying what to change, instead of gRPC's
        # status dump. Later calls keep gRPC's errors: the watch hub reconnects on them.
        code = exc.code()
        if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return None
        target = str(self.target)
        hint = unreachable_hint(target, exc.details() or "", tls=self.tls,
                                timed_out=code == grpc.StatusCode.DEADLINE_EXCEEDED)
        return ServerUnavailableError(
            f"cannot connect to the dspex-rx server at {target!r}: {hint}", target=target
        )

    async def _start_services(self, ttl: float) -> None:
        # One system task owns a nursery for all the session runs in the background, so
        # initialize()/close() need no nursery from the caller (Ctrl-C: interrupts.py).
        started = trio.Event()
        stop = self._stop_services = trio.Event()
        self.services_done = trio.Event()
        interval = max(ttl / 3.0, 0.05)
        session_id = self.require_session_id()

        async def run() -> None:
            try:
                async with handed_to_main_task(), trio.open_nursery() as nursery:
                    self.nursery = nursery
                    self.scheduler = TrioScheduler(nursery)
                    self.hub = WatchHub(
                        self.transport, SERVICE_NAME, session_id, self.client_id,
                        nursery, self.cache, metadata=token_metadata(self.token),
                    )
                    nursery.start_soon(self._heartbeat, interval)
                    if self.pipelined:
                        self.pipeline = Pipeline(self.transport, f"/{SERVICE_NAME}/Calls",
                                                 token_metadata(self.token) + self._asks)
                        await nursery.start(self.pipeline.run)
                    # Always: over replicas, positions keep a read after a write showing
                    # it on whichever replica serves the session (a failover moves it).
                    self.route = LeaderRoute(
                        self._open_replica if self._direct_writes and self.pipelined
                        else None, token_metadata(self.token) + self._asks, nursery,
                        self.pipeline, self._attached_at)
                    started.set()
                    await stop.wait()
                    nursery.cancel_scope.cancel()
            except Exception:
                log.exception("session_services_failed", session_id=self.session_id)
            finally:
                self.pipeline = self.route = None
                started.set()
                self.services_done.set()

        trio.lowlevel.spawn_system_task(run, name=f"dspex-rx-session[{self.session_id}]")
        await started.wait()

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            await self.detach_stray()
            if self.lost:
                continue  # nothing of this session to keep alive; said once already
            try:
                await self.send(
                    "Heartbeat",
                    pb.HeartbeatRequest(
                        session_id=self.require_session_id(), client_id=self.client_id
                    ),
                    pb.HeartbeatResponse,
                    # Bounded by the beat interval: a beat hanging on a dead connection
                    # must fail before the next one is due, not after the call timeout.
                    timeout=min(max(interval, 2.0), self.timeout or math.inf),
                )
                self.heartbeats += 1
            except SessionNotFoundError as exc:
                if self.lost:
                    continue  # said once; never attach to a later session of the same id
                if exc.details.get("detached"):
                    # Our lease ran out (a long pause, a network partition) but the session
                    # lives on through other clients: attach again rather than letting the
                    # session vanish under us when they leave. A failure here is retried
                    # at the next beat; it must not take the session's services down.
                    try:
                        await self.reattach()
                    except AuthenticationError as again:
                        # Replaced between the beat and the attach: not ours any more.
                        self.lose(str(again))
                    except (DspexError, grpc.RpcError, RuntimeError) as again:
                        log.warning("reattach_failed", session_id=self.session_id,
                                    error=str(again))
                else:
                    self.lose(str(exc))
            except AuthenticationError as exc:
                # A token that refuses ours is not the session we had: it ended, and a
                # principal made a later one of its id.
                self.lose(str(exc))
            except (DspexError, grpc.RpcError, RuntimeError) as exc:
                log.warning("heartbeat_failed", session_id=self.session_id, error=str(exc))
                code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
                if code in _DEAD_CONNECTION and self.hub is not None:
                    # Keepalive breaks a silent connection first; this is the backstop
                    # (a peer that answers pings but not calls): watched values stop
                    # being served from the cache and the stream is reopened.
                    self.hub.suspect(f"heartbeat: {code.name}")
                    if self.pipeline is not None:
                        await self.pipeline.reset(f"heartbeat: {code.name}")

    async def _attach(self, request: pb.InitializeSessionRequest) -> pb.InitializeSessionResponse:
        # Creating or (re)attaching: the token, and for an id in a reserved namespace the
        # principal's key.
        return await self.send(
            "InitializeSession", request, pb.InitializeSessionResponse,
            metadata=token_metadata(self.token) + principal_metadata(self._principal_key),
        )

    async def reattach(self) -> None:
        """Attach again after the client's lease expired; ``lose`` if the session ended
        or the id now names another session (and release the lease taken there).

        Example: the heartbeat calls ``await conn.reattach()`` on a detached answer.
        """
        try:
            # must_exist: a session that ended is never made again, empty, by a re-attach.
            response = await self._attach(
                pb.InitializeSessionRequest(
                    session_id=self.require_session_id(),
                    ttl_seconds=self.ttl_seconds,
                    client_name=self.client_name,
                    must_exist=True,
                )
            )
        except SessionNotFoundError:
            self.lose("it ended")
            return
        if response.created or response.incarnation != self._incarnation:
            # Not our session. The id names a later session (its holder came back with
            # the token, or a principal made it again); or, from a server that does not
            # know must_exist, this call made an empty one of the same id (undone with
            # that session's token). Say so at once; releasing the lease just taken
            # there is retried at each beat.
            self.lose("it ended" if response.created
                      else "it ended, and its id now names a later session")
            self.stray = (response.client_id,
                          response.session_token if response.created else None)
            await self.detach_stray()
            return
        self.client_id = response.client_id
        if self.hub is not None:
            self.hub.client_id = response.client_id
        self.reattached += 1
        log.warning("session_reattached", session_id=self.session_id,
                    client_id=response.client_id)

    def lose(self, reason: str) -> None:
        """Mark the session lost: every later call is refused and its watches end.

        Example: ``conn.lose("it ended")`` then ``conn.lost`` is True.
        """
        # A later session of the same id may accept this token (its claimant came back),
        # and must not get our writes or reads.
        if self.lost:
            return
        self.lost = True
        self._lost_reason = reason
        log.error("session_lost", session_id=self.session_id, reason=reason)
        if self.hub is not None:
            self.hub.fail(self.lost_error())

    def lost_error(self) -> SessionNotFoundError:
        """The error every call of a lost session raises.

        Example: ``raise conn.lost_error()`` says the session is lost and why.
        """
        return SessionNotFoundError(
            f"session {self.session_id!r} is lost ({self._lost_reason}); this connection no "
            "longer acts for it: connect again"
        )

    async def detach_stray(self) -> None:
        """Release the client lease taken on a session that is not ours, if any.

        Example: ``await conn.detach_stray()``; ``conn.stray`` is None once it went through.
        """
        if self.stray is None:
            return
        client_id, token = self.stray
        try:
            await self.send(
                "CloseSession",
                pb.CloseSessionRequest(session_id=self.require_session_id(),
                                       client_id=client_id),
                pb.CloseSessionResponse,
                metadata=token_metadata(token or self.token),
            )
        except SessionNotFoundError:
            pass  # that session (or our lease on it) has gone already
        except (DspexError, grpc.RpcError, RuntimeError) as exc:
            log.warning("detach_failed", session_id=self.session_id, error=str(exc))
            return
        self.stray = None

    async def close(self, before: Callable[[], None] = lambda: None) -> None:
        """Detach from the session, close the connection, stop an embedded server.

        ``before`` runs first (the facade ends its watches there). Watches end and
        observers complete. Safe to call twice. The session and its variables are removed
        when the last client attached to it closes.

        Example: ``await session.close()``.
        """
        with trio.CancelScope(shield=True):
            self.closed = self.session_id is not None or self.closed
            before()
            if self.hub is not None:
                await self.hub.close()
            if self._stop_services is not None:
                self._stop_services.set()
                await self.services_done.wait()
                self._stop_services = None
            if self.scheduler is not None:
                self.scheduler.close()
            self.hub = None
            self.nursery = None
            if self.session_id is not None and self.transport is not None:
                try:
                    await self.send(
                        "CloseSession",
                        pb.CloseSessionRequest(
                            session_id=self.session_id, client_id=self.client_id
                        ),
                        pb.CloseSessionResponse,
                        timeout=5.0,
                    )
                except (DspexError, grpc.RpcError) as exc:
                    log.warning("close_failed", session_id=self.session_id, error=str(exc))
            self.session_id = None
            await self._teardown()
            release, self._portal_release = self._portal_release, None
            if release is not None:
                release()

    async def _teardown(self) -> None:
        with trio.CancelScope(shield=True):
            if self.transport is not None:
                transport, self.transport = self.transport, None
                await transport.close()
            if self.embedded is not None:
                embedded, self.embedded = self.embedded, None
                await trio.to_thread.run_sync(embedded.stop)

    async def call(
        self,
        method: str,
        request: Message,
        response_type: type[M],
        timeout: float | None = None,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> M:
        """One call with the session's token (unless ``metadata`` is given), errors mapped
        to the package's; it raises the revision the session has seen. Pipelined on the
        Calls stream when the session is (``pipelined=True``), else one unary RPC.

        Example: ``await conn.call("Echo", pb.EchoRequest(payload=b"x"), pb.EchoResponse)``.
        """
        if self.transport is None:
            raise RuntimeError("the session is closed")
        if self.lost and method != "CloseSession":
            raise self.lost_error()
        if metadata is None:
            metadata = token_metadata(self.token) + self._asks
        # Closing: unary, since the Calls stream stops with the services, maybe mid-call.
        pipeline, route = None if self.closed else self.pipeline, self.route
        try:
            try:
                if pipeline is None or metadata != pipeline.metadata or method in _UNARY_ONLY:
                    raise NotSent
                wait = self.timeout if timeout is None else timeout
                response: M = await (
                    pipeline.call(method, request, response_type, wait) if route is None
                    else route.call(method, request, response_type, wait))
            except NotSent:
                path = f"/{SERVICE_NAME}/{method}"
                if route is not None:
                    response = await route.home_unary(self.transport, path, request,
                                                      response_type, timeout, metadata,
                                                      method not in _UNARY_ONLY)
                else:  # (the first attach: its position seeds the route)
                    response, at = await unary_with_position(
                        self.transport, path, request, response_type, timeout, metadata)
                    self._attached_at = at if method == "InitializeSession" else 0
        except grpc.aio.AioRpcError as exc:
            mapped = map_rpc_error(exc)
            if mapped is exc:
                raise
            raise mapped from None
        revision = getattr(response, "revision", 0)
        if isinstance(revision, int) and revision > self.revision:
            self.revision = revision
        return response
