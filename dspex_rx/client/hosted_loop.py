"""The transport's default loop host: one asyncio loop per trio run, running inside that run on
the trio thread (``trio_loop.TrioDrivenLoop``, or trio-asyncio's), so a call crosses no thread.
"""

# The loop lives in a trio system task (a transport is opened without a nursery, and the
# loop must outlive any one caller) and ends when its last user stops it or the trio run
# ends. Both hosts (this and ``transport.LoopThread``) offer the same things: ``open()`` and
# ``close()`` (awaited from trio), ``loop``, ``run(factory)``, ``to_loop(fn)`` (schedule on
# the loop from trio) and ``to_trio(fn)`` (wake trio from the loop). Here the last two
# need no token: asyncio callbacks already run on the trio thread, inside the loop's own
# trio task.

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from dspex_rx.client.trio_loop import TrioDrivenLoop, outside_loop, run_on

T = TypeVar("T")


class _RunLoop:
    # The one hosted loop of a trio run, shared by every transport in it: grpc.aio's
    # poller has one wake-up socket per process and every loop it serves watches it with
    # add_reader, but trio lets only one task wait on an fd per run (a second hosted loop
    # in the same run fails with BusyResourceError).
    def __init__(self, driver: str) -> None:
        self.driver = driver
        self.loop: Any = None
        self.users = 0
        self.failure: BaseException | None = None
        self.ready = trio.Event()
        self.stop = trio.Event()
        self.stopped = trio.Event()


_RUN_LOOP: trio.lowlevel.RunVar[_RunLoop | None] = trio.lowlevel.RunVar(
    "dspex_rx_hosted_loop", default=None
)


class TrioHostedLoop:
    """An asyncio event loop hosted in the calling trio run, shared by every
    ``TrioHostedLoop`` started in that run and closed with the last. ``driver`` is
    ``"native"`` (``trio_loop.TrioDrivenLoop``) or ``"trio_asyncio"`` (its ``open_loop``,
    kept to be measured against: ``benchmarks/bench_hop.py``).

    >>> async def main():
    ...     host = TrioHostedLoop("example")
    ...     await host.open()
    ...     try:
    ...         return await host.run(lambda: asyncio.sleep(0, "done"))
    ...     finally:
    ...         await host.close()
    >>> trio.run(main)
    'done'
    """

    def __init__(self, name: str = "dspex-rx-io", driver: str = "native") -> None:
        self.name = name
        self.driver = driver
        self.loop: Any = None
        self._shared: _RunLoop | None = None

    async def open(self) -> None:
        """Join this trio run's hosted loop, opening it (in a system task) if there is
        none, and wait until it runs.

        Example: ``await host.open()``; ``host.loop`` is then a running trio-asyncio loop.
        """
        if self._shared is not None:
            return
        while (shared := _RUN_LOOP.get()) is not None and shared.stop.is_set():
            # The last user is closing it: a second loop may watch the poller's socket
            # only once the first has let go of it.
            await shared.stopped.wait()
        if shared is not None and shared.driver != self.driver:
            raise RuntimeError(
                f"this trio run already hosts a {shared.driver!r} loop; one run hosts one "
                f"loop (gRPC's poller socket takes one waiter), so not a {self.driver!r} one"
            )
        if shared is None:
            shared = _RunLoop(self.driver)
            _RUN_LOOP.set(shared)
            _open(shared, self.name)
        # Counted before waiting, so the loop cannot close under a joiner; one cancelled
        # while it opens leaves again (the last to leave closes the loop).
        shared.users += 1
        self._shared = shared
        try:
            await shared.ready.wait()
        except BaseException:
            await self.close()
            raise
        if shared.loop is None:
            await self.close()
            raise RuntimeError("the hosted asyncio loop did not start") from shared.failure
        self.loop = shared.loop

    async def run(self, factory: Callable[[], Awaitable[T]]) -> T:
        """Run ``factory()`` as a task on the loop and await its result, on this thread.

        Trio cancellation cancels the task and waits until it has finished.

        Example: ``await host.run(lambda: channel.channel_ready())``.
        """
        loop = self.loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the transport is closed")

        if isinstance(loop, TrioDrivenLoop):
            return await run_on(loop, factory)

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

    def to_loop_now(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` on the loop before returning (``TrioDrivenLoop.run_now``), or
        schedule it where the loop cannot (trio-asyncio's).

        Example: ``host.to_loop_now(start_write)`` has started the write on return.
        """
        loop = self.loop
        if isinstance(loop, TrioDrivenLoop) and not loop.is_closed():
            loop.run_now(fn)
        else:
            self.to_loop(fn)

    def to_trio(self, token: trio.lowlevel.TrioToken, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` for trio from a loop callback: directly, this is the trio thread,
        with no asyncio loop running meanwhile (as in any trio task).

        Example: ``host.to_trio(token, done.set)`` sets a trio event from the loop.
        """
        outside_loop(fn)

    async def close(self) -> None:
        """Leave the run's loop; the last user ends it (cancelling what is left on it) and
        waits until it has closed. Safe to call twice.

        Example: ``await host.close()``.
        """
        shared, self._shared = self._shared, None
        self.loop = None
        if shared is None:
            return
        shared.users -= 1
        if shared.users == 0:
            shared.stop.set()
            with trio.CancelScope(shield=True):
                await shared.stopped.wait()


_LOOP_FUNCTIONS = ("new_event_loop", "get_event_loop", "set_event_loop")


def import_trio_asyncio() -> Any:
    """``trio_asyncio``, imported without changing how the rest of the process makes loops.

    Importing it replaces asyncio's loop functions process-wide: ``asyncio.run`` outside
    trio would then make a trio-driven ``SyncTrioEventLoop``, and an asyncio program (or a
    library calling ``asyncio.run`` in a worker thread) would run inside a trio run of its
    own. When this is the first import, the three loop-making functions go back to
    asyncio's own; the running-loop lookup stays patched (the hosted loop needs it, and it
    defers to asyncio's outside trio). A program that imported trio_asyncio itself keeps
    all its patches.

    >>> import_trio_asyncio().__name__
    'trio_asyncio'
    """
    if "trio_asyncio" in sys.modules:
        return sys.modules["trio_asyncio"]
    saved = {name: getattr(asyncio.events, name) for name in _LOOP_FUNCTIONS}
    import trio_asyncio

    for name, original in saved.items():
        setattr(asyncio.events, name, original)
        setattr(asyncio, name, original)
    return trio_asyncio


def _open(shared: _RunLoop, name: str) -> None:
    async def native() -> None:
        loop = TrioDrivenLoop()
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.drive)
            shared.loop = loop
            shared.ready.set()
            await shared.stop.wait()
            await loop.shutdown()

    async def hosted_by_trio_asyncio() -> None:
        # Imported here, not at module load: a program that never asks for this driver
        # never loads it.
        trio_asyncio = import_trio_asyncio()
        async with trio_asyncio.open_loop() as loop:
            shared.loop = loop
            shared.ready.set()
            await shared.stop.wait()

    async def main() -> None:
        try:
            await (native() if shared.driver == "native" else hosted_by_trio_asyncio())
        except Exception as exc:  # a system task must not raise: it would end the run
            shared.failure = exc
        finally:
            shared.loop = None
            shared.stop.set()
            shared.ready.set()
            shared.stopped.set()
            if _RUN_LOOP.get() is shared:
                _RUN_LOOP.set(None)

    trio.lowlevel.spawn_system_task(main, name=name)


