"""The Calls stream: the service's unary RPCs pipelined over one bidi stream per
connection, each request run exactly as its unary RPC, answers sent back by id, packed.
"""

# Why a stream: a unary call is a new HTTP/2 request with its own headers and trailers,
# which costs grpc.aio (on both ends) more than the store call itself. On the stream a
# request is a few bytes in a message that often carries several.
#
# Order: the requests of a frame, and frames in arrival order, start in that order. Each
# runs as a task; a task's first step (auth, the store call for a read, the lane for a
# write) runs before the next task's, since asyncio runs ready tasks first in, first out,
# and a write waits in its session's lane (offload.Lanes) as a unary write does. Answers
# leave as they are ready: a read queued behind a slow durable write is not held back.

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
from google.protobuf.message_factory import GetMessageClass

from dspex_rx.errors import InvalidValueError
from dspex_rx.logs import get_logger
from dspex_rx.server import forward, offload
from dspex_rx.server.rpc import Malformed, Service, abort_with, clip, parse_request
from dspex_rx.v1 import calls_pb2 as cpb
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire.channel import AFTER_KEY, POSITION_KEY, position_in

log = get_logger("dspex_rx.server")

# Requests of one stream running at once: past this the stream stops reading, so gRPC's
# flow control holds the client back instead of the server's memory growing.
MAX_IN_FLIGHT = 256
# An answer frame stops growing at this many bytes (one large answer may pass it alone).
MAX_FRAME_BYTES = 1 << 20

# The unary RPCs of the service by name, with their request types: what a request may name.
UNARY_REQUESTS: dict[str, Any] = {
    method.name: GetMessageClass(method.input_type)
    for method in pb.DESCRIPTOR.services_by_name["Variables"].methods
    if not method.client_streaming and not method.server_streaming
}

CallObserver = Callable[[str, str, float], None]


class CallsService(Service, Protocol):
    """What the Calls stream uses of the servicer: the unary RPCs by name (as methods)
    and an optional observer of each call (method, status code name, seconds).

    Example: ``await getattr(service, "GetVariable")(request, context)`` is the answer.
    """

    call_observer: CallObserver | None


class Aborted(BaseException):
    """Raised by ``CallContext.abort``: a BaseException so that no handler's ``except
    Exception`` mistakes the end of a call for an error of its own.

    Example: ``except Aborted:`` around a handler, then read the context's code.
    """


class CallContext:
    """The ``ServicerContext`` one pipelined request's handler sees: the stream's
    metadata and peer (read once per stream), and the status it ends with, kept for its
    answer.

    >>> context = CallContext((), "ipv4:127.0.0.1:50312")
    >>> context.code() is None, context.peer()
    (True, 'ipv4:127.0.0.1:50312')
    """

    __slots__ = ("_code", "_details", "_metadata", "_peer", "_trailers", "caught_up")

    def __init__(self, metadata: Any, peer: str, caught_up: bool = False) -> None:
        self._metadata = metadata
        self._peer = peer
        # The stream's reader waited for the request's position already (``read``).
        self.caught_up = caught_up
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailers: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> Any:
        """The stream's call metadata (the session token travels there).

        Example: ``context.invocation_metadata()`` as on a unary call.
        """
        return self._metadata

    def peer(self) -> str:
        """The stream's peer address.

        Example: ``context.peer()`` is e.g. ``"ipv4:127.0.0.1:50312"``.
        """
        return self._peer

    def set_trailing_metadata(self, metadata: Any) -> None:
        """Keep the trailers the call's answer carries.

        Example: ``context.set_trailing_metadata((("dspex-error-kind", "conflict"),))``.
        """
        self._trailers = tuple(metadata)

    @property
    def trailers(self) -> tuple[tuple[str, str], ...]:
        """The trailers set so far (an answer carries them too: the store position a
        forwarded write reached).

        >>> CallContext((), "").trailers
        ()
        """
        return self._trailers

    def code(self) -> grpc.StatusCode | None:
        """The status set by ``abort`` (None while the call has not failed).

        Example: ``context.code()`` is ``None`` for a call that answered.
        """
        return self._code

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Any = ()) -> None:
        """End the call with ``code``: raises ``Aborted``.

        Example: ``await context.abort(grpc.StatusCode.NOT_FOUND, "no such variable")``.
        """
        self._code = code
        self._details = details
        if trailing_metadata:
            self._trailers = tuple(trailing_metadata)
        raise Aborted

    def reply(self, call_id: int) -> cpb.CallReply:
        """The answer of an aborted call.

        >>> context = CallContext((), "")
        >>> context._code = grpc.StatusCode.NOT_FOUND
        >>> context.reply(3).code
        5
        """
        code = self._code or grpc.StatusCode.UNKNOWN
        return cpb.CallReply(
            id=call_id, code=code.value[0], details=self._details,
            trailers=[cpb.TrailerPair(key=k, value=str(v)) for k, v in self._trailers],
        )


def request_metadata(request: cpb.CallRequest) -> tuple[tuple[str, str], ...]:
    """A request's own call metadata (a forwarding replica sends its caller's).

    >>> request = cpb.CallRequest(id=1)
    >>> _ = request.metadata.add(key="x-dspex-session-token", value="t")
    >>> request_metadata(request)
    (('x-dspex-session-token', 't'),)
    """
    return tuple((pair.key, pair.value) for pair in request.metadata)


async def answer(service: CallsService, request: cpb.CallRequest, metadata: Any,
                 peer: str) -> cpb.CallReply:
    """Run one pipelined request as its unary RPC, with the stream's call ``metadata`` and
    ``peer``, and make its answer.

    Example: ``await answer(service, cpb.CallRequest(id=1, method="Echo"), (), peer)``.
    """
    started = time.perf_counter()
    held = 0
    if request.metadata:
        # A forwarding replica's request carries its own caller's token.
        metadata = request_metadata(request)
        if position_in(metadata, AFTER_KEY):
            # It said what it must see (the reader waited for it, at most HOLD_WAIT): its
            # answer says what it did see, so a client whose replica's wait ran out
            # tells it again rather than taking it to hold that much.
            held = service.store.position
    context = CallContext(metadata, peer, caught_up=bool(request.metadata))
    request_type = UNARY_REQUESTS.get(request.method)
    try:
        if request_type is None:
            await abort_with(context, InvalidValueError(
                f"no unary RPC named {clip(request.method, 100)!r} for the Calls stream"))
        message = parse_request(request_type, request.request, defer_large=True)
        response = await getattr(service, request.method)(message, context)
        reply = cpb.CallReply(id=request.id, response=offload.serialize_response(response))
        for key, value in context.trailers:
            reply.trailers.add(key=key, value=value)
    except Aborted:
        reply = context.reply(request.id)
    if held and not any(pair.key == POSITION_KEY for pair in reply.trailers):
        reply.trailers.add(key=POSITION_KEY, value=str(held))
    observer = service.call_observer
    if observer is not None:
        code = grpc.StatusCode.OK if reply.code == 0 else context.code()
        observer(request.method, code.name if code else "UNKNOWN", time.perf_counter() - started)
    return reply


async def calls(
    service: CallsService,
    request_iterator: AsyncIterator[cpb.CallFrame],
    context: grpc.aio.ServicerContext,
) -> AsyncIterator[cpb.ReplyFrame]:
    """The ``Calls`` stream: frames of requests in, frames of answers out, by id.

    Example: ``call = stub.Calls()``; ``await call.write(CallFrame(calls=[...]))``.
    """
    loop = asyncio.get_running_loop()
    # The same for every request of the stream: read once, not per call.
    metadata, peer = context.invocation_metadata(), str(context.peer())
    ready: deque[cpb.CallReply] = deque()
    wake = asyncio.Event()
    running: dict[int, asyncio.Task[None]] = {}
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def run(request: cpb.CallRequest) -> None:
        # A cancel (the client gave up on it) passes through: no answer, task cancelled.
        try:
            reply = await answer(service, request, metadata, peer)
        except Exception:
            log.exception("call_failed", method=clip(request.method, 100))
            reply = cpb.CallReply(id=request.id, code=grpc.StatusCode.INTERNAL.value[0],
                                  details=f"internal error in {clip(request.method, 100)}")
        ready.append(reply)
        wake.set()

    def finished(call_id: int, task: asyncio.Task[None]) -> None:
        # A done callback, not a finally: a task cancelled before its first step never
        # runs its coroutine. Its slot comes back now if it left no answer, else once the
        # answer is sent: a client that does not read holds at most MAX_IN_FLIGHT answers.
        if running.get(call_id) is task:
            del running[call_id]
        if task.cancelled():
            slots.release()
        wake.set()

    async def read() -> None:
        async for frame in request_iterator:
            if isinstance(frame, Malformed):
                raise frame.exception()
            for call_id in frame.cancel:
                task = running.pop(call_id, None)
                if task is not None:
                    task.cancel()
            for request in frame.calls:
                if request.id in running:
                    raise InvalidValueError(
                        f"request id {request.id} is already in flight on this stream")
                await slots.acquire()
                if request.metadata:
                    # Forwarded by another replica, or a ``direct_writes`` client's:
                    # run once this one holds what its caller saw (even the token check
                    # needs a session made there). Here, not in the request's task, so
                    # the stream's order stays.
                    await forward.catch_up(service.store, request_metadata(request))
                task = loop.create_task(run(request))
                task.add_done_callback(functools.partial(finished, request.id))
                running[request.id] = task

    reader = loop.create_task(read())
    reader.add_done_callback(lambda _: wake.set())
    try:
        # Served: the client writes nothing before this, since grpc.aio reports a write
        # racing a server's UNIMPLEMENTED (one from before the stream) as INTERNAL.
        yield cpb.ReplyFrame()
        while True:
            if not ready:
                if reader.done() and not running:
                    break
                await wake.wait()
                wake.clear()
                continue
            frame, size = cpb.ReplyFrame(), 0
            while ready and (size < MAX_FRAME_BYTES or not frame.replies):
                reply = ready.popleft()
                size += len(reply.response) + 16
                frame.replies.append(reply)
                slots.release()
            yield frame
        error = reader.exception()
        if isinstance(error, InvalidValueError):
            await abort_with(context, error)
        if error is not None:
            log.error("calls_reader_failed", error=clip(repr(error), 500))
            await context.abort(grpc.StatusCode.INTERNAL, "Calls stream reader failed")
    finally:
        reader.cancel()
        for task in list(running.values()):
            task.cancel()
