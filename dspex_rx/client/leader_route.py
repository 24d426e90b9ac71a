"""Writes sent to the write leader directly (``direct_writes=True``): which replica leads,
as the session's own replica says when it forwards a write, and the Calls stream to it.
"""

# Over replicas, a follower forwards each write to the leader, which costs a second RPC
# per write, on both servers (bench_replicas: about 40% of the servers' CPU per write
# with writers on each replica). A follower's answer to a write it forwarded names the
# leader (``x-dspex-leader``); from then on that RPC goes to the leader on a stream of
# its own, once that stream is open and served (so a leader the client cannot reach, or
# one still connecting, never delays a write: it goes the old way meanwhile).
#
# What a call made after another sees stays as it was. Replicas answer a write with
# their store's position (over etcd, the etcd revision their live state holds: not the
# store revision answers carry, which counts writes only). A call to the leader carries
# the highest position the session was answered with (``x-dspex-after``): the leader runs
# it once it holds that much (a write its replica made itself, the link down). The
# session's next call on its own replica carries the leader's latest position, and waits
# there until that replica holds it, so a read after a write shows the write, as after a
# forwarded one. Only calls in flight at
# once may pass each other, as calls from two tasks may on one stream.

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
        # The highest position this leader holds, as far as the session knows (it said
        # so, or answered with it): calls carry a position only past it.
        self.told = 0
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
    """Where a ``direct_writes`` session's calls go: the RPCs its replica forwarded go to
    the leader that replica named, the rest (and all of them while the leader's stream is
    not up) to the session's own replica, each carrying what the other path stored.

    ``connect(address)`` makes an opened transport to a replica, as the session's own;
    ``metadata`` is the session's (its token); ``nursery`` runs the leader's stream.

    Example: ``route = LeaderRoute(connect, token_metadata(token), nursery)``, then
    ``await route.call(home, "SetVariable", request, pb.SetVariableResponse, 30.0)``.
    """

    def __init__(self, connect: Callable[[str], Awaitable[Any]],
                 metadata: tuple[tuple[str, str], ...], nursery: trio.Nursery) -> None:
        self._connect = connect
        self._metadata = metadata
        self._nursery = nursery
        # RPCs a replica answered as forwarded: the leader's own from now on.
        self.methods: set[str] = set()
        self._leg: _Leg | None = None
        # The highest position the leader answered with; the highest one the session's
        # own replica was asked to hold (and held: it answered), and answered with.
        self.position = 0
        self._home_holds = 0
        self._home_position = 0
        # Calls the leader answered (for tests and the logs).
        self.sent = 0
        # Set once a leader answered without its position (a server from before this
        # route): the session's replica could not be told what to wait for.
        self.off = False
        # The home stream the holds above were made on (another one, perhaps on another
        # replica, was told nothing).
        self._home_stream = -1

    @property
    def address(self) -> str:
        """The leader's address as the session's replica last named it ("" for none yet).

        Example: ``route.address`` is ``"10.0.0.2:50051"`` after a forwarded write.
        """
        return self._leg.address if self._leg is not None else ""

    async def call(self, home: Pipeline, method: str, request: Message,
                   response_type: type[M], timeout: float | None) -> M:
        """Make one pipelined call: at the leader if ``method`` goes there and its stream
        is up, else on ``home`` (the session's replica's pipeline). Errors as
        ``Pipeline.call`` raises them.

        Example: ``await route.call(home, "GetVariable", request, pb.GetVariableResponse,
        30.0)``.
        """
        leg = self._leg
        if method in self.methods and leg is not None and not self.off:
            pipeline = leg.pipeline
            if pipeline is not None and pipeline.connected:
                try:
                    return await self._at_leader(leg, pipeline, method, request,
                                                 response_type, timeout)
                except NotSent:
                    pass  # never left (too large, or its stream broke first): made here
            else:
                self._probe(leg)
        # What the replica serving the home stream was asked to hold: nothing, for a
        # stream not yet open, or another than the one asked (perhaps another replica).
        stream = home.streams_opened if home.connected else -1
        if stream != self._home_stream:
            self._home_holds = 0
        trailers: list[tuple[str, str]] = []
        after = self.position
        if after > self._home_holds:
            response = await home.call(method, request, response_type, timeout,
                                       (*self._metadata, (AFTER_KEY, str(after))), trailers)
            if stream >= 0 and home.streams_opened == stream:
                # Answered on the stream it left on. (Raised to ``after`` even if that
                # replica's wait ran out: then it is catching up, and will hold it.)
                self._home_stream = stream
                self._home_holds = max(self._home_holds, after)
        else:
            response = await home.call(method, request, response_type, timeout, (), trailers)
        if trailers:
            self.home_answered(trailers)
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
        with the leader's position to hold first if ``wait`` (not the lifecycle calls: a
        heartbeat must test the connection, not wait on a replica catching up), and
        noting the position it answers with.

        Example: ``await route.home_unary(transport, path, request, pb.GetVariableResponse,
        30.0, token_metadata(token), True)``.
        """
        if wait:
            metadata = (*metadata, *self.home_metadata())
        trailers: list[tuple[str, str]] = []
        response: M = await transport.unary(path, request, response_type, timeout,
                                            metadata=metadata, trailers=trailers)
        self.home_answered(trailers)
        return response

    def home_metadata(self) -> tuple[tuple[str, str], ...]:
        """What a unary call to the session's replica adds to its metadata: the leader's
        position it must hold first (always: the unary call may reach another replica
        than the stream did).

        Example: ``metadata = (*token_metadata(token), *route.home_metadata())``.
        """
        return ((AFTER_KEY, str(self.position)),) if self.position else ()

    def home_answered(self, trailers: list[tuple[str, str]]) -> None:
        """Note the position the session's replica answered with (a write it made, or an
        attach): news for the leader's next call.

        Example: ``route.home_answered([("x-dspex-position", "1042")])``.
        """
        self._home_position = max(self._home_position, position_in(trailers, POSITION_KEY))

    async def _at_leader(self, leg: _Leg, pipeline: Pipeline, method: str,
                         request: Message, response_type: type[M], timeout: float | None,
                         ) -> M:
        seen = max(self.position, self._home_position)
        # Per-request metadata only when there is news for the leader: it replaces the
        # stream's, and costs both ends a wait check per request.
        metadata = (*self._metadata, (AFTER_KEY, str(seen))) if seen > leg.told else ()
        trailers: list[tuple[str, str]] = []
        leg.calls += 1
        try:
            response = await pipeline.call(method, request, response_type, timeout,
                                           metadata, trailers)
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
        self.position = max(self.position, position)
        # What it answered with, not what it was told: its wait may have run out.
        leg.told = max(leg.told, position)
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
                transport = await self._connect(leg.address)
                leg.pipeline = Pipeline(transport, CALLS_PATH, self._metadata)
                await leg.pipeline.run(task_status=task_status)
        except Exception:
            # In the session's services nursery: the others must go on.
            log.exception("write_leader_stream_failed", leader=leg.address)
        finally:
            leg.pipeline = None
            if transport is not None:
                with trio.CancelScope(shield=True):
                    await transport.close()


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
