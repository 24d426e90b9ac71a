"""The transport's default loop host: an asyncio loop (trio-asyncio's) running inside the
current trio run, on the trio thread, so a grpc.aio call costs no thread crossing.
"""

# The loop lives in a trio system task (``open_loop`` wants a task that stays inside its
# ``async with`` for the loop's whole life, and a transport is opened without a nursery),
# and ends when ``stop`` sets its event or the trio run ends. Both hosts (this and
# ``transport.LoopThread``) offer the same four things: ``loop``, ``run(factory)``,
# ``to_loop(fn)`` (schedule on the loop from trio) and ``to_trio(fn)`` (wake trio from the
# loop). Here the last two need no token: asyncio callbacks already run in the trio thread,
# inside the loop's own trio task.

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class TrioHostedLoop:
    """An asyncio event loop hosted in the calling trio run (``trio_asyncio.open_loop``).

    >>> async def main():
    ...     host = TrioHostedLoop("example")
    ...     await host.start()
    ...     try:
    ...         return await host.run(lambda: asyncio.sleep(0, "done"))
    ...     finally:
    ...         await host.stop()
    >>> trio.run(main)
    'done'
    """

    hosted = True

    def __init__(self, name: str = "dspex-rx-io") -> None:
        self.name = name
        self.loop: Any = None
        self._stop: trio.Event | None = None
        self._stopped: trio.Event | None = None

    async def start(self) -> None:
        """Open the loop in a system task of the current trio run and wait until it runs.

        Example: ``await host.start()``; ``host.loop`` is then a running trio-asyncio loop.
        """
        # Imported here, not at module load: importing trio_asyncio patches asyncio's
        # loop functions process-wide, so a program that never opens a hosted transport
        # never has it patched.
        import trio_asyncio

        ready = trio.Event()
        stop = self._stop = trio.Event()
        stopped = self._stopped = trio.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            try:
                async with trio_asyncio.open_loop() as loop:
                    self.loop = loop
                    ready.set()
                    await stop.wait()
            except Exception as exc:  # a system task must not raise: it would end the run
                failure.append(exc)
            finally:
                self.loop = None
                ready.set()
                stopped.set()

        trio.lowlevel.spawn_system_task(main, name=self.name)
        await ready.wait()
        if failure:
            raise RuntimeError("the hosted asyncio loop did not start") from failure[0]

    async def run(self, factory: Callable[[], Awaitable[T]]) -> T:
        """Run ``factory()`` as a task on the loop and await its result, on this thread.

        Trio cancellation cancels the task and waits until it has finished.

        Example: ``await host.run(lambda: channel.channel_ready())``.
        """
        loop = self.loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the transport is closed")

        async def invoke() -> T:
            return await factory()

        result: T = await loop.run_aio_coroutine(invoke())
        return result

    def to_loop(self, fn: Callable[[], Any]) -> None:
        """Schedule ``fn()`` on the loop (from trio; same thread, so plain ``call_soon``).

        Example: ``host.to_loop(event.set)`` wakes an asyncio waiter.
        """
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon(fn)

    def to_trio(self, token: trio.lowlevel.TrioToken, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` for trio from a loop callback: directly, this is the trio thread.

        Example: ``host.to_trio(token, done.set)`` sets a trio event from the loop.
        """
        fn()

    async def stop(self) -> None:
        """End the loop (cancelling what is left on it) and wait until it has closed; safe
        to call twice.

        Example: ``await host.stop()`` returns once the loop's system task has finished.
        """
        if self._stop is None or self._stopped is None:
            return
        self._stop.set()
        with trio.CancelScope(shield=True):
            await self._stopped.wait()


def running_tasks() -> int:
    """The asyncio tasks on the running loop other than the caller's own.

    >>> asyncio.run(asyncio.sleep(0)) or 0
    0
    """
    return len(asyncio.all_tasks()) - 1
