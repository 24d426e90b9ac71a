"""The transport: one grpc.aio channel on a private asyncio loop thread, bridged to trio.

It moves opaque protobuf messages by method path and knows nothing of variables or types.
A call is started on the loop with ``call_soon_threadsafe`` and its outcome is handed back
through the trio token. Cancelling the trio caller cancels the asyncio task (and with it
the RPC), then waits, shielded, until that task has really finished, so nothing of a call
outlives its caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import outcome
import trio
from google.protobuf.message import Message

T = TypeVar("T")
M = TypeVar("M", bound=Message)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class LoopThread:
    """A plain asyncio event loop running forever on a daemon thread.

    Example::

        loop = LoopThread("dspex-rx-io"); loop.start()
        result = await loop.run(lambda: asyncio.sleep(0, "done"))
        loop.stop()
    """

    def __init__(self, name: str = "dspex-rx-io") -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread and wait until its loop runs.

        Example::

            LoopThread().start()
        """
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self.loop = loop
        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()

    async def run(self, factory: Callable[[], Awaitable[T]]) -> T:
        """Run ``factory()`` as a task on the loop and await its result from trio.

        Trio cancellation cancels the task and waits until it has finished.

        Example::

            response = await loop_thread.run(lambda: stub.Echo(request))
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

        Example::

            loop_thread.stop()
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


class Transport:
    """One grpc.aio channel, callable from trio by method path with any protobuf messages.

    Example::

        transport = Transport("127.0.0.1:50051")
        await transport.open()
        reply = await transport.unary("/dspex_rx.v1.Variables/Echo", request, EchoResponse)
        await transport.close()
    """

    def __init__(
        self,
        target: str,
        options: list[tuple[str, Any]] | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        self.target = target
        self.options = options or []
        self.timeout = timeout
        self._loop = LoopThread(f"dspex-rx-io[{target}]")
        self._channel: grpc.aio.Channel | None = None
        self._methods: dict[str, Any] = {}

    async def open(self) -> None:
        """Start the loop thread and create the channel on it.

        Example::

            await transport.open()
        """
        self._loop.start()

        async def make() -> grpc.aio.Channel:
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
    ) -> M:
        """Make one unary call; raises ``grpc.aio.AioRpcError`` on a non-OK status.

        Example::

            reply = await transport.unary(path, request, EchoResponse, timeout=5)
        """
        method = self._method(path, response_type)
        deadline = self.timeout if timeout is None else timeout
        response: M = await self._loop.run(lambda: method(request, timeout=deadline))
        return response

    async def close(self) -> None:
        """Close the channel and stop the loop thread; safe to call twice.

        Example::

            await transport.close()
        """
        channel, self._channel = self._channel, None
        self._methods.clear()
        with trio.CancelScope(shield=True):
            if channel is not None:
                await self._loop.run(lambda: channel.close(grace=None))
            await trio.to_thread.run_sync(self._loop.stop)
