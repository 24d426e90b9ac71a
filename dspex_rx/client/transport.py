"""The transport: one grpc.aio channel, its asyncio loop hosted in the trio run (default) or
on a private thread (``LoopThread``): unary calls and ``Stream``s of protobuf messages by path.
"""

# It knows nothing of variables or types; call metadata (such as a session token) is
# whatever pairs the caller passes, and the channel is plain or TLS as the caller's
# ``credentials`` say. Where the loop runs is the host's business (``hosted_loop``,
# ``LoopThread``): on the thread a call is started with ``call_soon_threadsafe`` and its
# outcome handed back through the trio token; hosted, both are plain calls on the trio
# thread. Either way, cancelling the trio caller cancels the asyncio task (and with it the
# RPC), then waits, shielded, until that task has really finished, so nothing of a call
# outlives its caller.

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import grpc
import outcome
import trio
from google.protobuf.message import Message

from dspex_rx.client.hosted_loop import TrioHostedLoop

T = TypeVar("T")
M = TypeVar("M", bound=Message)
# Call metadata: (key, value) pairs, keys lower-case ASCII (gRPC's rule).
Metadata = Sequence[tuple[str, str]]


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def plain_event_loop() -> asyncio.AbstractEventLoop:
    """A new asyncio selector event loop, whatever event-loop policy is installed.

    >>> loop = plain_event_loop()
    >>> loop.run_until_complete(asyncio.sleep(0, "done"))
    'done'
    >>> loop.close()
    """
    return asyncio.SelectorEventLoop()


class LoopThread:
    """A plain asyncio event loop running forever on a daemon thread.

    >>> io = LoopThread("example"); io.start()
    >>> trio.run(io.run, lambda: asyncio.sleep(0, "done"))
    'done'
    >>> io.stop()
    """

    def __init__(self, name: str = "dspex-rx-io") -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def to_loop(self, fn: Callable[[], Any]) -> None:
        """Schedule ``fn()`` on the loop from another thread.

        Example: ``io.to_loop(event.set)`` wakes an asyncio waiter on the loop thread.
        """
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn)

    def to_loop_now(self, fn: Callable[[], Any]) -> None:
        """As ``to_loop``: a loop on another thread cannot run ``fn`` before this returns.

        Example: ``io.to_loop_now(start_write)``.
        """
        self.to_loop(fn)

    def to_trio(self, token: trio.lowlevel.TrioToken, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` in the trio run of ``token`` (from the loop thread); a run that has
        finished is skipped.

        Example: ``io.to_trio(token, done.set)`` sets a trio event from a loop callback.
        """
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(fn)

    async def open(self) -> None:
        """``start`` from trio (the hosts' common form; the thread starts at once).

        Example: ``await io.open()`` before the first ``io.run``.
        """
        self.start()

    async def close(self) -> None:
        """``stop`` from trio, on a worker thread: joining the loop's thread may wait.

        Example: ``await io.close()`` once no call is wanted any more.
        """
        await trio.to_thread.run_sync(self.stop)

    def start(self) -> None:
        """Start the thread and wait until its loop runs.

        Example: ``io.start()`` returns once ``io.loop`` runs on its thread.
        """
        ready = threading.Event()
        # A plain selector loop made directly, not through asyncio's event-loop policy: a
        # policy is process-wide and others replace it. trio_asyncio's refuses to make a
        # loop on a trio thread ("You're within a Trio environment") and elsewhere makes
        # its own trio-driven loop; grpc.aio needs neither, only a loop of its own.
        loop = plain_event_loop()

        def main() -> None:
            loop.call_soon(ready.set)
            loop.run_forever()

        self.loop = loop
        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()

    async def run(self, factory: Callable[[], Awaitable[T]]) -> T:
        """Run ``factory()`` as a task on the loop and await its result from trio.

        Trio cancellation cancels the task and waits until it has finished.

        Example: ``await io.run(lambda: channel.channel_ready())`` awaits it on the loop thread.
        """
        loop = self.loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the transport is closed")
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: dict[str, Any] = {}

        def finished(task: asyncio.Task[T]) -> None:
            # On the loop thread: capture the outcome, then wake the trio caller.
            box["outcome"] = (
                outcome.Error(asyncio.CancelledError())
                if task.cancelled()
                else outcome.capture(task.result)
            )
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        def start() -> None:
            async def invoke() -> T:
                return await factory()

            task = loop.create_task(invoke())
            task.add_done_callback(finished)
            box["task"] = task

        loop.call_soon_threadsafe(start)
        try:
            await done.wait()
        except BaseException:
            # Callbacks run in order, so start() has run before this cancel does.
            loop.call_soon_threadsafe(lambda: box["task"].cancel())
            with trio.CancelScope(shield=True):
                await done.wait()
            raise
        result: outcome.Outcome[T] = box["outcome"]
        return result.unwrap()

    def stop(self) -> None:
        """Cancel what is left on the loop, stop it, join the thread and close the loop.

        Example: ``io.stop()`` cancels what is left, then joins the thread and closes the loop.
        """
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await loop.shutdown_asyncgens()
            await loop.shutdown_default_executor()

        if not loop.is_closed():
            asyncio.run_coroutine_threadsafe(drain(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
        self.loop = None
        self._thread = None


Host = LoopThread | TrioHostedLoop
HOSTS: dict[str, Callable[[str], Host]] = {
    "trio": TrioHostedLoop,
    "thread": LoopThread,
    # trio-asyncio's loop in the run: measured against the others (benchmarks/bench_hop.py)
    "trio_asyncio": lambda name: TrioHostedLoop(name, driver="trio_asyncio"),
}
# What a Transport made without ``host=`` uses (connections, probes); ARCHITECTURE.md
# "Where grpc.aio's loop runs" has the figures behind the choice.
DEFAULT_HOST = "trio"


class Transport:
    """One grpc.aio channel, callable from trio by method path with any protobuf messages.

    ``credentials`` (``grpc.ssl_channel_credentials(...)``) makes the channel TLS; without
    them it is plaintext. ``host`` says where grpc.aio's asyncio loop runs: ``"trio"``
    hosts it inside the caller's trio run on the same thread
    (``hosted_loop.TrioHostedLoop``); ``"thread"`` runs it on a private daemon thread
    (``LoopThread``), every call crossing threads twice; ``"trio_asyncio"`` hosts
    trio-asyncio's loop in the run (for measuring). None: ``DEFAULT_HOST``.

    Example: ``await transport.unary("/dspex_rx.v1.Variables/Echo", request, EchoResponse)``.
    """

    def __init__(
        self,
        target: str,
        options: list[tuple[str, Any]] | None = None,
        timeout: float | None = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        host: str | None = None,
    ) -> None:
        host = DEFAULT_HOST if host is None else host
        if host not in HOSTS:
            raise ValueError(f"host must be one of {sorted(HOSTS)}, not {host!r}")
        self.target = target
        self.options = options or []
        self.timeout = timeout
        self.credentials = credentials
        self.host = host
        self._loop: Host = HOSTS[host](f"dspex-rx-io[{target}]")
        self._channel: grpc.aio.Channel | None = None
        self._methods: dict[str, Any] = {}

    async def open(self) -> None:
        """Start the loop (hosted in this trio run, or on its thread) and create the
        channel on it.

        Example: ``await transport.open()`` before the first call.
        """
        await self._loop.open()

        async def make() -> grpc.aio.Channel:
            if self.credentials is not None:
                return grpc.aio.secure_channel(self.target, self.credentials, options=self.options)
            return grpc.aio.insecure_channel(self.target, options=self.options)

        self._channel = await self._loop.run(make)

    def _method(self, path: str, response_type: type[M]) -> Any:
        method = self._methods.get(path)
        if method is None:
            if self._channel is None:
                raise RuntimeError("the transport is not open")
            method = self._channel.unary_unary(
                path,
                request_serializer=_serialize,
                response_deserializer=response_type.FromString,
            )
            self._methods[path] = method
        return method

    async def unary(
        self,
        path: str,
        request: Message,
        response_type: type[M],
        timeout: float | None = None,
        metadata: Metadata = (),
        trailers: list[tuple[str, str]] | None = None,
    ) -> M:
        """Make one unary call; raises ``grpc.aio.AioRpcError`` on a non-OK status.

        ``metadata`` is sent as the call's metadata, as given; the answer's trailers go
        into ``trailers`` if given.

        Example: ``await transport.unary(path, request, EchoResponse, timeout=5)`` is the reply.
        """
        method = self._method(path, response_type)
        deadline = self.timeout if timeout is None else timeout
        sent = tuple(metadata) or None
        if trailers is None:
            response: M = await self._loop.run(
                lambda: method(request, timeout=deadline, metadata=sent)
            )
            return response

        async def made() -> M:
            call = method(request, timeout=deadline, metadata=sent)
            answer: M = await call
            trailers.extend((key, value) for key, value in await call.trailing_metadata()
                            if isinstance(value, str))
            return answer

        return await self._loop.run(made)

    async def open_stream(
        self, path: str, response_type: type[M], metadata: Metadata = (),
        listener: Callable[[list[M]], None] | None = None,
    ) -> Stream[M]:
        """Open a bidirectional stream, sending ``metadata`` with the call; see ``Stream``.

        Example: ``await transport.open_stream(path, ServerMessage, metadata=metadata)``.
        """
        if self._channel is None:
            raise RuntimeError("the transport is not open")
        method = self._channel.stream_stream(
            path, request_serializer=_serialize, response_deserializer=response_type.FromString
        )
        stream: Stream[M] = Stream(self._loop, trio.lowlevel.current_trio_token(),
                                   listener=listener)
        try:
            await self._loop.run(lambda: stream._start(method, tuple(metadata) or None))
        except BaseException:
            # Cancelled after the call was made on the loop: do not leave it running.
            await stream.close()
            raise
        return stream

    async def close(self) -> None:
        """Close the channel and stop the loop (its thread, or its hosted task); safe to
        call twice.

        Example: ``await transport.close()`` closes the channel, then stops the loop.
        """
        channel, self._channel = self._channel, None
        self._methods.clear()
        with trio.CancelScope(shield=True):
            if channel is not None and self._loop.loop is not None:
                await self._loop.run(lambda: channel.close(grace=None))
            await self._loop.close()


async def _write(call: Any, message: Message) -> None:
    try:
        await call.write(message)
    except (asyncio.InvalidStateError, grpc.aio.AioRpcError, grpc.RpcError) as exc:
        # A write racing the end of the RPC fails with "already finished" or a core
        # error; report how the RPC really ended (the server's status) instead.
        if not call.done():
            raise
        if isinstance(exc, grpc.aio.AioRpcError) and exc.code() != grpc.StatusCode.INTERNAL:
            raise
        raise grpc.aio.AioRpcError(
            code=await call.code(),
            initial_metadata=await call.initial_metadata(),
            trailing_metadata=await call.trailing_metadata(),
            details=await call.details(),
        ) from None


class Stream(Generic[M]):
    """A bidi gRPC stream whose incoming messages reach trio in batches.

    A reader task on the loop appends each message to an inbox and wakes trio at most once
    per batch (``run_sync_soon``), since handing messages over one at a time costs about
    as much as the messages themselves. When ``max_inbox`` messages wait, the
    reader stops reading until trio drains them, so gRPC flow control reaches the server
    (which then conflates) instead of client memory growing. Writes are serialized.

    Example: ``while (batch := await stream.receive_batch()) is not None:`` reads to the end.
    """

    def __init__(
        self, loop: Host, token: trio.lowlevel.TrioToken, max_inbox: int = 1024,
        listener: Callable[[list[M]], None] | None = None,
    ) -> None:
        self._loop = loop
        self._token = token
        # Given, each batch goes to it (in trio, as it arrives) rather than waiting for
        # receive_batch, which then only reports the end: a caller handed its answer by
        # the arriving message costs no reader task's wake-up.
        self._listener = listener
        self.max_inbox = max_inbox
        self._inbox: deque[M] = deque()
        self._space: asyncio.Event | None = None
        self._paused = False
        self._kick_pending = False
        self._ready = trio.Event()
        self._finished = False
        self._error: BaseException | None = None
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._write_lock = trio.Lock()
        self.batches = 0

    async def _start(self, method: Any, metadata: Metadata | None = None) -> None:
        # On the loop thread.
        self._call = method(metadata=metadata)
        self._space = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                message = await self._call.read()
                if message is grpc.aio.EOF:
                    break
                self._inbox.append(message)
                self._kick()
                if len(self._inbox) >= self.max_inbox:
                    await self._wait_for_space()
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # grpc.aio.AioRpcError and friends: hand to trio
            self._error = self._error or exc  # (a listener's failure came first)
        finally:
            self._finished = True
            self._kick()

    async def _wait_for_space(self) -> None:
        # On the loop: the flag goes up before the re-check, so a drain either happened
        # before the check (no wait) or sees the flag and sets the event (wakes us).
        assert self._space is not None
        self._space.clear()
        self._paused = True
        try:
            if len(self._inbox) >= self.max_inbox:
                await self._space.wait()
        finally:
            self._paused = False

    def _kick(self) -> None:
        if not self._kick_pending:
            self._kick_pending = True
            self._loop.to_trio(self._token, self._on_kick)

    def _on_kick(self) -> None:
        # On the trio thread: the flag drops before the wake so a message appended after
        # this point schedules another kick rather than being stranded.
        self._kick_pending = False
        if self._listener is not None and self._inbox:
            self._hand(self._drain())
            if not self._finished:
                return
        self._ready.set()

    def _hand(self, batch: list[M]) -> None:
        # To the listener, whichever side drained the inbox (a kick, or receive_batch
        # finding messages before their kick ran). Its failure ends the stream with it,
        # as a reader's would: receive_batch raises it, now and at every later read (it
        # must not escape into the loop or trio), and what arrives after it is dropped.
        assert self._listener is not None
        try:
            self._listener(batch)
        except Exception as exc:
            self._listener = self._discard
            self._error = self._error or exc
            self._finished = True
            call = self._call
            if call is not None:
                self._loop.to_loop(call.cancel)

    def _discard(self, batch: list[M]) -> None:
        pass  # the listener failed: the stream is over

    def _drain(self) -> list[M]:
        # popleft, not a copy and clear: the loop thread may append meanwhile.
        batch = []
        inbox = self._inbox
        while inbox:
            batch.append(inbox.popleft())
        self.batches += 1
        if self._paused and self._space is not None:
            self._loop.to_loop(self._space.set)
        return batch

    async def receive_batch(self) -> list[M] | None:
        """Every message that has arrived, waiting for at least one; None at a clean end.

        Raises the stream's error (a ``grpc.aio.AioRpcError``) once the inbox is drained.

        Example: ``await stream.receive_batch()`` is a non-empty list, or None at the end.
        """
        while True:
            self._ready = trio.Event()
            if self._inbox:
                batch = self._drain()
                if self._listener is None:
                    return batch
                self._hand(batch)
                continue
            if self._finished:
                if self._error is not None:
                    raise self._error
                return None
            await self._ready.wait()

    async def send(self, message: Message) -> None:
        """Write one message (in order with every other ``send``).

        Example: ``await stream.send(ClientMessage(ping=Ping(nonce=1)))``.
        """
        async with self._write_lock:
            call = self._call
            if call is None:
                raise RuntimeError("the stream is closed")
            await self._loop.run(lambda: _write(call, message))

    @property
    def ended(self) -> bool:
        """Whether the RPC has ended (cleanly or not): nothing posted now would leave.

        Example: ``if not stream.ended: stream.post(frame, on_written)``.
        """
        return self._finished

    def post(self, message: Message,
             written: Callable[[BaseException | None], None]) -> None:
        """Start writing ``message`` without waiting for it; ``written(error)`` runs in
        trio once gRPC took it (``None``) or the write failed. One post at a time (the
        next after ``written``), and not mixed with ``send``.

        Example: ``stream.post(frame, on_written)``.
        """
        call = self._call
        if call is None:
            raise RuntimeError("the stream is closed")
        host, token = self._loop, self._token

        def finished(task: asyncio.Task[None]) -> None:
            error = (RuntimeError("the write was cancelled") if task.cancelled()
                     else task.exception())
            host.to_trio(token, lambda: written(error))

        def start() -> None:
            asyncio.get_running_loop().create_task(_write(call, message)).add_done_callback(
                finished)

        # On the hosted loop the write starts before this returns: no task of the
        # loop's, and no trio task, has to wake for it.
        host.to_loop_now(start)

    async def close(self) -> None:
        """Cancel the RPC and wait until its reader has stopped; safe to call twice.

        Example: ``await stream.close()`` cancels the RPC and waits for its reader.
        """
        call, reader = self._call, self._reader
        if call is None:
            return

        async def stop() -> None:
            call.cancel()
            if reader is not None:
                await asyncio.gather(reader, return_exceptions=True)

        with trio.CancelScope(shield=True):
            await self._loop.run(stop)
        self._call = None
