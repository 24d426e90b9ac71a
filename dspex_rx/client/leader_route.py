"""Where a session's calls go over replicas, and what each replica must hold first: its own
replica, and with ``direct_writes=True`` the write leader that replica names for writes.
"""

# Over replicas, a follower forwards each write to the leader, which costs a second RPC
# per write, on both servers (bench_replicas: about 40% of the servers' CPU per write
# with writers on each replica). A follower's answer to a write it forwarded names the
# leader (``x-dspex-leader``); from then on that RPC goes to the leader on a stream of
# its own, once that stream is open and served (so a leader the client cannot reach, or
# one still connecting, never delays a write: it goes the old way meanwhile).
#
# What a call made after another sees stays as it was, whichever replica makes it.
# Replicas answer a write with their store's position (over etcd, the etcd revision their
# live state holds: not the store revision answers carry, which counts writes only). Each
# call says the highest position the session was answered with, and goes with it to any
# stream not told as much (``Pipeline.call``'s ``after``): the leader runs it once it holds
# that much (a write its replica made itself, the link down); the session's own replica
# waits until it holds the leader's write, so a read after a write shows it; and so does
# another replica after a failover, which no one told anything. Only calls in flight at
# once may pass each other, as calls from two tasks may on one stream. Without
# ``direct_writes`` the route only carries positions: every call goes to its own replica.

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio
from google.protobuf.message import Message

from dspex_rx.client.calls import NotSent, Pipeline
from dspex_rx.logs import get_logger
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire.channel import (
    AFTER_KEY,
    LEADER_KEY,
    POSITION_KEY,
    SERVICE_NAME,
    position_in,
)

log = get_logger("dspex_rx.client")

M = TypeVar("M", bound=Message)
CALLS_PATH = f"/{SERVICE_NAME}/Calls"
# How long the first call on a new leader's stream (an Echo) may take to be answered.
PROBE_TIMEOUT = 5.0
# After a leader's stream could not be opened, the next try waits this long (trio's
# clock), doubling up to LAST_PAUSE; writes go to the session's own replica meanwhile.
FIRST_PAUSE = 0.5
LAST_PAUSE = 30.0


def _leader(trailers: list[tuple[str, str]]) -> str:
    return next((value for key, value in trailers if key == LEADER_KEY), "")


class _Leg:
    """The stream to one leader: its transport and pipeline, and the calls on it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.pipeline: Pipeline | None = None
        self.calls = 0
        self.retiring = False
        # Cancels the current run of its stream (a new scope for each run).
        self.scope = trio.CancelScope()
        # Whether its stream is being opened, and when it may be tried again.
        self.probing = False
        self.probe_at = 0.0
        self.pause = FIRST_PAUSE

    def retire(self) -> None:
        # A replaced leader's stream: closed once its last call is answered.
        self.retiring = True
        if self.calls == 0:
            self.scope.cancel()


class LeaderRoute:
    """Where a session's calls go: given ``connect`` (``direct_writes=True``), the RPCs its
    replica forwarded go to the leader that replica named, the rest (and all of them while
    the leader's stream is not up) to the session's own replica; each call carries the
    highest position the session was answered with, for a replica not told it yet.

    ``connect(address)`` makes an opened transport to a replica, as the session's own
    (None: no calls to the leader); ``metadata`` is the session's (its token);
    ``nursery`` runs the leader's stream; ``home`` is the session's replica's pipeline
    (None for a session without one: only ``home_unary`` then).

    Example: ``route = LeaderRoute(connect, token_metadata(token), nursery, pipeline)``,
    then ``await route.call("SetVariable", request, pb.SetVariableResponse, 30.0)``.
    """

    def __init__(self, connect: Callable[[str], Awaitable[Any]] | None,
                 metadata: tuple[tuple[str, str], ...], nursery: trio.Nursery,
                 home: Pipeline | None = None, position: int = 0) -> None:
        self._connect = connect
        self._metadata = metadata
        self._nursery = nursery
        # Whether the leader's RPCs go to the leader (``direct_writes=True``).
        self.direct = connect is not None
        # The session's own replica's pipeline: the positions its answers carried count.
        self.home = home
        # RPCs a replica answered as forwarded: the leader's own from now on.
        self.methods: set[str] = set()
        self._leg: _Leg | None = None
        # The highest position the leader's and unary answers carried (and the attach's,
        # made before the route).
        self._position = position
        # Calls the leader answered (for tests and the logs).
        self.sent = 0
        # Set once a leader answered without its position (a server from before this
        # route): the session's replica could not be told what to wait for.
        self.off = False

    @property
    def position(self) -> int:
        """The highest position any replica answered this session with (0 on one server,
        which answers none): what a replica the session's calls reach must hold first.

        Example: ``route.position`` is ``1042`` after a write a replica stored there.
        """
        position, home, leg = self._position, self.home, self._leg
        if home is not None and home.position > position:
            position = home.position
        if leg is not None and leg.pipeline is not None and leg.pipeline.position > position:
            position = leg.pipeline.position  # (a direct write given up on, kept there)
        return position

    @property
    def address(self) -> str:
        """The leader's address as the session's replica last named it ("" for none yet).

        Example: ``route.address`` is ``"10.0.0.2:50051"`` after a forwarded write.
        """
        return self._leg.address if self._leg is not None else ""

    async def call(self, method: str, request: Message, response_type: type[M],
                   timeout: float | None) -> M:
        """Make one pipelined call: at the leader if ``method`` goes there and its stream
        is up, else on ``home`` (the session's replica's pipeline). Errors as
        ``Pipeline.call`` raises them.

        Example: ``await route.call("GetVariable", request, pb.GetVariableResponse, 30.0)``.
        """
        home = self.home
        assert home is not None, "a pipelined call needs the session's pipeline"
        leg = self._leg
        if method in self.methods and leg is not None and not self.off and self.direct:
            pipeline = leg.pipeline
            if pipeline is not None and pipeline.connected:
                try:
                    return await self._at_leader(leg, pipeline, method, request,
                                                 response_type, timeout)
                except NotSent:
                    pass  # never left (too large, or its stream broke first): made here
            else:
                self._probe(leg)
        # (The answer's position, if any, is ``home.position`` now: ``position`` reads it.)
        if not self.direct:
            return await home.call(method, request, response_type, timeout, self.position)
        trailers: list[tuple[str, str]] = []
        response = await home.call(method, request, response_type, timeout, self.position,
                                   trailers)
        if trailers:
            leader = _leader(trailers)
            if leader:
                self.methods.add(method)
                self._follow(leader)
            elif method in self.methods and self._leg is not None:
                # Made by the session's replica itself: it leads now (or cannot reach
                # the leader either); the old leader's stream is of no use.
                self._follow("")
        return response

    async def home_unary(self, transport: Any, path: str, request: Message,
                         response_type: type[M], timeout: float | None,
                         metadata: tuple[tuple[str, str], ...], wait: bool) -> M:
        """Make one unary call on the session's replica (its Calls stream unavailable):
        with the session's position to hold first if ``wait`` (not the lifecycle calls: a
        heartbeat must test the connection, not wait on a replica catching up), and
        noting the position it answers with.

        Example: ``await route.home_unary(transport, path, request, pb.GetVariableResponse,
        30.0, token_metadata(token), True)``.
        """
        # (Trailers read even from one server, which answers no position: one name may
        # stand for several replicas, and an attach may have reached one from before
        # positions.)
        if wait:
            metadata = (*metadata, *self.home_metadata())
        response, position = await unary_with_position(transport, path, request,
                                                       response_type, timeout, metadata)
        self._position = max(self._position, position)
        return response

    def home_metadata(self) -> tuple[tuple[str, str], ...]:
        """What a unary call to the session's replica adds to its metadata: the session's
        position it must hold first (always: a unary call may reach another replica than
        the last one did).

        Example: ``metadata = (*token_metadata(token), *route.home_metadata())``.
        """
        return ((AFTER_KEY, str(self.position)),) if self.position else ()

    async def _at_leader(self, leg: _Leg, pipeline: Pipeline, method: str,
                         request: Message, response_type: type[M], timeout: float | None,
                         ) -> M:
        trailers: list[tuple[str, str]] = []
        leg.calls += 1
        try:
            response = await pipeline.call(method, request, response_type, timeout,
                                           self.position, trailers)
        finally:
            leg.calls -= 1
            if leg.retiring and leg.calls == 0:
                leg.scope.cancel()
        self.sent += 1
        position = position_in(trailers, POSITION_KEY)
        if not position:
            log.warning("write_leader_without_position", leader=leg.address,
                        why="a server from before direct writes: they go through the "
                        "session's replica from now on")
            self.off = True
        self._position = max(self._position, position)
        moved = _leader(trailers)
        if moved:
            # Not the leader any more: it forwarded the call to the one it names.
            self._follow(moved)
        return response

    def _follow(self, address: str) -> None:
        # "" for none: the RPCs learned stay the leader's, sent once a replica names it.
        leg = self._leg
        if leg is not None and leg.address == address:
            return
        log.info("write_leader_named", leader=address or None,
                 previous=leg.address if leg is not None else None)
        if leg is not None:
            leg.retire()
        self._leg = _Leg(address) if address else None
        if self._leg is not None:
            self._probe(self._leg)

    def _probe(self, leg: _Leg) -> None:
        # Open the leader's stream in the background (its run task first, if none yet):
        # calls use it once it is served.
        if leg.probing or trio.current_time() < leg.probe_at:
            return
        try:
            self._nursery.start_soon(self._open, leg)
        except RuntimeError:
            return  # the session's services are closing
        leg.probing = True

    async def _open(self, leg: _Leg) -> None:
        try:
            if leg.pipeline is None:
                await self._nursery.start(self._serve, leg)
            pipeline = leg.pipeline
            if pipeline is None or leg.retiring:
                return
            await pipeline.call("Echo", pb.EchoRequest(), pb.EchoResponse, PROBE_TIMEOUT)
            leg.pause = FIRST_PAUSE
        except Exception as exc:
            # Whatever it is, the session's other services must go on: writes go through
            # its replica, and the leader is tried again after the pause.
            log.info("write_leader_unreachable", leader=leg.address, error=repr(exc),
                     next_try_in=leg.pause)
            leg.probe_at = trio.current_time() + leg.pause
            leg.pause = min(leg.pause * 2, LAST_PAUSE)
        finally:
            leg.probing = False

    async def _serve(self, leg: _Leg, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # The leader's transport and pipeline, until the leg retires or the session ends.
        transport = None
        leg.scope = trio.CancelScope()
        if leg.retiring:
            return
        try:
            with leg.scope:
                assert self._connect is not None  # (legs are made only when direct)
                transport = await self._connect(leg.address)
                leg.pipeline = Pipeline(transport, CALLS_PATH, self._metadata)
                await leg.pipeline.run(task_status=task_status)
        except Exception:
            # In the session's services nursery: the others must go on.
            log.exception("write_leader_stream_failed", leader=leg.address)
        finally:
            if leg.pipeline is not None:
                self._position = max(self._position, leg.pipeline.position)
            leg.pipeline = None
            if transport is not None:
                with trio.CancelScope(shield=True):
                    await transport.close()


async def unary_with_position(transport: Any, path: str, request: Message,
                              response_type: type[M], timeout: float | None,
                              metadata: tuple[tuple[str, str], ...]) -> tuple[M, int]:
    """A unary call's answer and the position it carried (0: none, as from one server).

    Example: ``response, position = await unary_with_position(transport, path, request,
    pb.InitializeSessionResponse, 30.0, metadata)``.
    """
    trailers: list[tuple[str, str]] = []
    response: M = await transport.unary(path, request, response_type, timeout,
                                        metadata=metadata, trailers=trailers)
    return response, position_in(trailers, POSITION_KEY)


async def open_transport(address: str, *, options: list[tuple[str, Any]],
                         timeout: float | None, credentials: Any,
                         server_name: str | None) -> Any:
    """An opened transport to one replica (the write leader), set up as the session's
    own channel: the same options and credentials; a TLS certificate must name
    ``server_name`` if given, else the address's host.

    Example: ``transport = await open_transport("10.0.0.2:50051", options=opts,
    timeout=30.0, credentials=None, server_name=None)``.
    """
    from dspex_rx.client.transport import Transport

    if credentials is not None and server_name:
        options = [*options, ("grpc.ssl_target_name_override", server_name)]
    transport = Transport(address, options, timeout=timeout, credentials=credentials)
    try:
        await transport.open()
    except BaseException:
        with trio.CancelScope(shield=True):
            await transport.close()
        raise
    return transport
