"""Pipelined calls: a session's unary calls sent as requests on one ``Calls`` stream and
answered by id, so calls made at once from many trio tasks leave packed in a few messages.
"""

# A call alone on the stream (nothing else in flight or queued) writes its own frame at
# once (``Stream.post``: on the hosted loop the write starts before ``call`` awaits
# anything). Otherwise a writer task, woken once per frame, packs what is queued: it runs
# after the callers trio woke in the same round, so calls made together leave together,
# at most half of the calls in flight per frame (two halves out keep both ends busy), and
# what queues while a write is under way leaves as the next frame once that write is
# done; nothing waits for company. Answers reach their callers as they arrive (the
# stream's listener), with no reader task between: a sequential call costs its caller's
# two steps and gRPC's two completions, not the ten trio task steps a writer and a reader
# task took (bench_peers: sequential gets 0.89x -> 0.98x etcd's). A request that never left
# can always go another way (``NotSent``: the caller makes it a unary call); one that left
# and whose stream broke fails with the stream's error, as a unary call cut mid-way does.
# A stream that ended before its handshake carried nothing (nothing is written before it):
# its calls go unary, and so do later calls for a while (``FIRST_RETRY``, doubling), so a
# server that cannot be reached fails them UNAVAILABLE as it fails unary calls, and the
# stream is not reopened in a loop that only gRPC's fail-fast open stands between.
#
# Positions (over replicas): a call may say what its replica must hold before it runs
# (``after``, a store position some answer carried). It leaves with that position
# (``x-dspex-after``) only if the stream it leaves on was not told as much yet: the server
# reads a stream's requests in order and waits at each such one (server/calls.py), so
# every request after it on that stream runs once the replica holds it. A new stream,
# perhaps on another replica (a failover), was told nothing: decided as a request
# leaves, not as it is made, so one queued while a stream broke still carries it.

from __future__ import annotations

import itertools
from typing import Any, TypeVar

import grpc
import trio
from google.protobuf.message import Message

from dspex_rx.client.deadlines import Deadlines
from dspex_rx.logs import get_logger
from dspex_rx.v1 import calls_pb2 as cpb
from dspex_rx.wire.channel import AFTER_KEY, POSITION_KEY, position_in

log = get_logger("dspex_rx.client")

M = TypeVar("M", bound=Message)
# Requests on the stream at once (sent or queued): a caller past this waits its turn.
MAX_IN_FLIGHT = 1024
# A request frame stops growing at this many bytes.
MAX_FRAME_BYTES = 1 << 20
# A request this large goes as its own unary call: on the shared stream it would hold up
# every call behind it while it is sent.
MAX_PIPELINED_REQUEST = 256 * 1024
_CODES = {code.value[0]: code for code in grpc.StatusCode}
# After a stream ends before its handshake, calls go unary for this long (trio's clock)
# before one opens a stream again; doubled at each such stream up to LAST_RETRY, and back to
# FIRST_RETRY at a handshake. Short: the unary calls meanwhile work, only slower.
FIRST_RETRY = 0.1
LAST_RETRY = 5.0


class NotSent(Exception):  # a signal to the caller, not a failure
    """The request never left (no stream, or the server has no Calls stream): make it
    as a unary call instead.

    Example: ``except NotSent: response = await transport.unary(...)``.
    """


def rpc_error(code: grpc.StatusCode, details: str,
              trailers: tuple[tuple[str, str], ...] = ()) -> grpc.aio.AioRpcError:
    """The ``AioRpcError`` a unary call would have raised with this status.

    >>> rpc_error(grpc.StatusCode.NOT_FOUND, "no such variable").code().name
    'NOT_FOUND'
    """
    return grpc.aio.AioRpcError(
        code=code, initial_metadata=grpc.aio.Metadata(),
        trailing_metadata=grpc.aio.Metadata(*trailers), details=details,
    )


class _Waiter:
    __slots__ = ("after", "done", "error", "reply", "sent")

    def __init__(self, after: int) -> None:
        self.done = trio.Event()
        self.reply: cpb.CallReply | None = None
        self.error: BaseException | None = None
        self.sent = False
        self.after = after


class Pipeline:
    """The ``Calls`` stream of one connection, opened on first use and again after it
    breaks; ``run`` (a background task) owns it, ``call`` is what callers await.

    Example: ``await nursery.start(pipeline.run)``, then
    ``await pipeline.call("GetVariable", request, pb.GetVariableResponse, 30.0)``.
    """

    def __init__(self, transport: Any, path: str, metadata: tuple[tuple[str, str], ...],
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._transport = transport
        self._path = path
        # The stream's call metadata (the session token): each request is checked with it.
        self.metadata = metadata
        self._ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self._outbox: dict[int, cpb.CallRequest] = {}
        self._cancels: list[int] = []
        self._work = trio.Event()
        self._slots = trio.Semaphore(max_in_flight)
        self.running = False
        # False once the server turned the stream down (no Calls RPC): calls go unary.
        self.available = True
        self.frames_sent = 0
        self.streams_opened = 0
        # Set by ``reset``: the status the calls the dropped stream carried fail with.
        self._reset_error: BaseException | None = None
        self._stream: Any = None
        # Whether the stream's server sent its first frame (so it serves the stream),
        # and the stream a frame is being written on (one write at a time), else None.
        self._served = False
        self._writing: Any = None
        self._pack = trio.Event()  # wakes the writer task
        # Whether the last answers came several at once: their callers, woken together,
        # are likely to call again together, so even the first of them (alone on the
        # stream for a moment) leaves it to the writer to pack them.
        self._crowd = False
        self._deadlines: Deadlines | None = None
        # Until when calls go unary (a stream ended before its handshake), else None;
        # and the next such pause.
        self._retry_at: float | None = None
        self._retry_delay = FIRST_RETRY
        # The highest position the current stream's replica holds, as far as this side
        # knows: it was told so, or answered with it (0 for a new stream); the position
        # each request still unanswered told it, by id; and the highest position any
        # answer carried (on any stream).
        self.holds = 0
        self._told: dict[int, int] = {}
        self.position = 0

    async def call(self, method: str, request: Message, response_type: type[M],
                   timeout: float | None, after: int = 0,
                   trailers: list[tuple[str, str]] | None = None) -> M:
        """Make ``method`` with ``request`` on the stream; its answer, or the
        ``AioRpcError`` the unary call would raise. ``NotSent`` if it never left.
        ``after``: the store position the replica must hold before it runs the call
        (sent only if its stream was not told as much); an answer's trailers go into
        ``trailers``.

        Example: ``await pipeline.call("Echo", pb.EchoRequest(), pb.EchoResponse, 5.0)``.
        """
        retry_at = self._retry_at
        if not self.running or not self.available or (
                retry_at is not None and trio.current_time() < retry_at):
            raise NotSent
        payload = request.SerializeToString()
        if len(payload) > MAX_PIPELINED_REQUEST:
            raise NotSent
        # Not ``async with``: a free slot is taken without a trip through trio's scheduler
        # (the answer's wait is this call's checkpoint).
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            await self._slots.acquire()
        try:
            call_id = next(self._ids)
            waiter = _Waiter(after)
            self._waiters[call_id] = waiter
            self._outbox[call_id] = cpb.CallRequest(id=call_id, method=method, request=payload)
            if len(self._waiters) == 1 and not self._crowd:
                self._flush()  # alone: at once, no writer task to wake
            else:
                self._wake_writer()
            deadlines = self._deadlines
            deadline = (None if timeout is None or deadlines is None
                        else deadlines.add(timeout, lambda: self._expire(call_id)))
            try:
                await waiter.done.wait()
            finally:
                if deadline is not None and deadlines is not None:
                    deadlines.forget(deadline)
                if waiter.reply is None:
                    # Cancelled or past its deadline: only this request is given up.
                    self._give_up(call_id, waiter)
            if waiter.reply is None:
                raise waiter.error or rpc_error(grpc.StatusCode.UNKNOWN, "no answer")
        finally:
            self._slots.release()
        reply = waiter.reply
        if reply.code:
            raise rpc_error(_CODES.get(reply.code, grpc.StatusCode.UNKNOWN), reply.details,
                            tuple((pair.key, pair.value) for pair in reply.trailers))
        if trailers is not None:
            trailers.extend((pair.key, pair.value) for pair in reply.trailers)
        return response_type.FromString(reply.response)

    @property
    def connected(self) -> bool:
        """Whether a stream is open and its server serves it (a call sent now leaves at
        once, with no connection to wait for).

        Example: ``if leader.connected: await leader.call(...)``.
        """
        stream = self._stream
        return self._served and stream is not None and not stream.ended

    def _give_up(self, call_id: int, waiter: _Waiter) -> None:
        if self._waiters.pop(call_id, None) is None:
            return  # answered, or failed with its stream, meanwhile
        if self._told.pop(call_id, None) is not None:
            # Its answer, which would say whether that replica's wait ran out, may never
            # come (the server drops a cancelled call's): tell the stream again.
            self.holds = 0
        if self._outbox.pop(call_id, None) is None and waiter.sent:
            self._cancels.append(call_id)
            self._wake_writer()

    def _expire(self, call_id: int) -> None:
        # In the trio run, from the deadline thread: what gRPC's deadline does for a
        # unary call (the server is told to cancel it by ``_give_up``).
        waiter = self._waiters.get(call_id)
        if waiter is not None and not waiter.done.is_set():
            waiter.error = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            waiter.done.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Serve the callers until cancelled: open the stream when a request waits, write
        frames, hand out answers; a broken stream fails what it carried and is reopened
        for the next request.

        Example: ``await nursery.start(pipeline.run)`` in the session's services nursery.
        """
        self.running = True
        self._deadlines = Deadlines(trio.lowlevel.current_trio_token())
        ended = rpc_error(grpc.StatusCode.CANCELLED, "the session is closing")
        task_status.started()
        try:
            while self.available:
                await self._work.wait()
                if self._outbox:
                    await self._serve_one_stream()
                else:
                    self._work = trio.Event()
        except Exception as exc:
            # A bug here must not take the session's other services down with it: the
            # calls go unary from now on.
            log.exception("calls_stream_failed")
            self.available = False
            ended = rpc_error(grpc.StatusCode.UNAVAILABLE, f"the Calls stream failed: {exc!r}")
        finally:
            self.running = False
            self._deadlines.close()
            self._end_all(ended, NotSent())

    async def _serve_one_stream(self) -> None:
        # Before the open: the server's first frame may reach the listener before
        # open_stream returns (the writer task's first flush then sends the queue).
        self._served = False
        self.holds = 0  # a new stream, perhaps to another replica, was told nothing
        self._told.clear()
        try:
            stream = await self._transport.open_stream(
                self._path, cpb.ReplyFrame, metadata=self.metadata, listener=self._deliver)
        except grpc.aio.AioRpcError as exc:
            self._fail(exc)  # before any handshake: nothing was sent
            return
        self.streams_opened += 1
        self._reset_error = None
        self._stream = stream
        error: BaseException = rpc_error(grpc.StatusCode.UNAVAILABLE, "the Calls stream ended")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write)
                try:
                    # The server's empty first frame, which the listener takes: the
                    # server serves the stream (else this raises, UNIMPLEMENTED from a
                    # server before it, and nothing was sent). Then the listener delivers
                    # every answer, and this returns at the stream's end.
                    await stream.receive_batch()
                except grpc.aio.AioRpcError as exc:
                    error = exc
                nursery.cancel_scope.cancel()
        finally:
            self._stream = None
            self._writing = None
            with trio.CancelScope(shield=True):
                await stream.close()
        self._fail(self._reset_error or error)

    async def reset(self, reason: str) -> None:
        """Drop the current stream (a connection suspected dead): what it carried fails
        UNAVAILABLE with ``reason``; the next call opens another.

        Example: ``await pipeline.reset("heartbeat: DEADLINE_EXCEEDED")``.
        """
        stream = self._stream
        if stream is not None:
            self._reset_error = rpc_error(grpc.StatusCode.UNAVAILABLE, reason)
            await stream.close()

    def _deliver(self, batch: list[cpb.ReplyFrame]) -> None:
        if not self._served:
            # The server's empty first frame: it serves the stream; the queue may go.
            self._served = True
            self._retry_at, self._retry_delay = None, FIRST_RETRY
            self._flush()
        waiters = self._waiters
        self._crowd = len(batch) > 1 or any(len(frame.replies) > 1 for frame in batch)
        for frame in batch:
            for reply in frame.replies:
                waiter = waiters.pop(reply.id, None)
                told = self._told.pop(reply.id, 0) if self._told else 0
                if reply.trailers:
                    self._answered_at(reply, told)
                if waiter is not None:  # else: given up on meanwhile
                    waiter.reply = reply
                    waiter.done.set()

    def _answered_at(self, reply: cpb.CallReply, told: int) -> None:
        # A write's answer names the position it reached there (the replica holds it,
        # or holds the session's later calls until it does, for a write it relayed); an
        # answer to a request that told a position, the one the call ran at. Less than
        # it was told: that wait ran out (at most 5 s), so the stream is told again.
        position = position_in([(p.key, p.value) for p in reply.trailers], POSITION_KEY)
        if not position:
            return
        self.position = max(self.position, position)
        if told > position:
            self.holds = min(self.holds, position)
        else:
            self.holds = max(self.holds, position)

    def _fail(self, error: BaseException) -> None:
        # The stream ended with ``error``: the calls it carried fail with it; the queued
        # ones wait for the next stream, unless this one ended before its handshake.
        if isinstance(error, grpc.aio.AioRpcError) and (
            error.code() == grpc.StatusCode.UNIMPLEMENTED
        ):
            # A server from before the Calls stream: nothing sent ran; all go unary.
            log.info("calls_stream_unavailable", details=error.details())
            self.available = False
            self._end_all(NotSent(), NotSent())
        elif not self._served:
            # Nothing was written on it (``_flush`` waits for the handshake), so every
            # call goes unary: it fails as a unary call would (UNAVAILABLE from a server
            # that cannot be reached) or is served. Left queued, the calls would reopen
            # the stream at once, again and again (gRPC fails an open fast while the
            # channel waits to reconnect), until their deadlines.
            self._retry_at = trio.current_time() + self._retry_delay
            log.info("calls_stream_not_served", error=repr(error), unary_for=self._retry_delay)
            self._retry_delay = min(self._retry_delay * 2, LAST_RETRY)
            self._end_all(error, NotSent())
        else:
            for call_id in [i for i, waiter in self._waiters.items() if waiter.sent]:
                waiter = self._waiters.pop(call_id)
                waiter.error = error
                waiter.done.set()

    def _end_all(self, sent: BaseException, unsent: BaseException) -> None:
        # Every waiting call ends: with ``sent`` if its request left, else ``unsent``.
        for waiter in self._waiters.values():
            waiter.error = waiter.error or (sent if waiter.sent else unsent)
            waiter.done.set()
        self._waiters.clear()
        self._outbox.clear()

    def _wake_writer(self) -> None:
        if self._stream is None:
            self._work.set()  # ``run`` opens a stream, and then writes
        else:
            self._pack.set()

    async def _write(self) -> None:
        while True:
            self._pack = trio.Event()
            self._flush()
            await self._pack.wait()

    def _flush(self) -> None:
        # Write what is queued as a frame, unless a write is under way (its end wakes
        # the writer for the next) or there is no stream yet (``run`` opens one).
        stream = self._stream
        if stream is None:
            self._work.set()
            return
        if not self._served or self._writing is not None or stream.ended or not (
                self._outbox or self._cancels):
            return  # (an ended stream: the queue waits for the next one)
        frame = cpb.CallFrame(cancel=self._cancels)
        self._cancels = []
        size = 0
        outbox = self._outbox
        # At most half of the calls in flight (sent or queued) per frame; the rest leave
        # once this write is done. Sent all at once, the server ran them all while this
        # side waited, then this side took every answer while the server waited: in two
        # halves each runs one while the other is busy with the other (against one serve
        # child, 32 in flight: writes 7k -> 12k/s, reads 12.5k -> 21k/s; bench_peers'
        # writes 0.90x -> 1.33x etcd's; see ARCHITECTURE.md).
        room = (len(self._waiters) + 1) // 2
        while outbox and size < MAX_FRAME_BYTES and len(frame.calls) < room:
            call_id = next(iter(outbox))
            request = outbox.pop(call_id)
            waiter = self._waiters[call_id]
            waiter.sent = True
            if waiter.after > self.holds:
                # Its own metadata replaces the stream's: the token goes with it.
                for key, value in (*self.metadata, (AFTER_KEY, str(waiter.after))):
                    request.metadata.add(key=key, value=value)
                self.holds = self._told[call_id] = waiter.after
            frame.calls.append(request)
            size += len(request.request) + 32
        # Counted before the write ends: its answers may come back first.
        self.frames_sent += 1
        self._writing = stream
        try:
            stream.post(frame, lambda error: self._written(stream, error))
        except RuntimeError:
            self._writing = None  # closed meanwhile: the reader fails what was sent

    def _written(self, stream: Any, error: BaseException | None) -> None:
        if self._writing is not stream:
            return  # a write of a stream dropped since
        self._writing = None
        if error is None and (self._outbox or self._cancels):
            self._pack.set()
        # Else the stream has ended: the reader learns how, and fails what was sent with
        # that status (an UNIMPLEMENTED one sends everything unary).
