"""A server-side GetVariable that holds requests for ref "slow" until the test opens it,
for the Calls stream's cancellation, deadline and in-flight tests. Its counts change under
a condition, so a test waits for them without polling."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import trio

from dspex_rx.server import EmbeddedServer

# A bound on waiting for the server's side, not a timing assertion.
HANG_GUARD = 30.0


class Gate:
    """A GetVariable that, for ref "slow", waits on the server loop until opened; counts
    how many wait at once (``waiting``, ``most``) and how many were cancelled."""

    def __init__(self, server: EmbeddedServer) -> None:
        self.server = server
        self.inner = server.service.GetVariable
        self.waiting = 0
        self.most = 0
        self.cancelled = 0
        self.event: asyncio.Event | None = None
        self._changed = threading.Condition()

    def _count(self, waiting: int = 0, cancelled: int = 0) -> None:
        with self._changed:
            self.waiting += waiting
            self.most = max(self.most, self.waiting)
            self.cancelled += cancelled
            self._changed.notify_all()

    async def __call__(self, message: Any, context: Any) -> Any:
        if getattr(message, "ref", "") != "slow":
            return await self.inner(message, context)
        if self.event is None:
            self.event = asyncio.Event()
        self._count(waiting=1)
        try:
            await self.event.wait()
        except asyncio.CancelledError:
            self._count(cancelled=1)
            raise
        finally:
            self._count(waiting=-1)
        return await self.inner(message, context)  # then answered as usual (NOT_FOUND)

    def open(self) -> None:
        def release() -> None:
            if self.event is None:
                self.event = asyncio.Event()
            self.event.set()
        self.server.call(release)

    def read(self, fn: Callable[[Gate], Any]) -> Any:
        with self._changed:
            return fn(self)

    def until(self, predicate: Callable[[Gate], bool]) -> None:
        """Block (a thread) until ``predicate(gate)`` holds."""
        with self._changed:
            assert self._changed.wait_for(lambda: predicate(self), HANG_GUARD), \
                "the server side never got there"

    async def until_in_trio(self, predicate: Callable[[Gate], bool]) -> None:
        """``until`` from trio, on a worker thread (so also under a MockClock)."""
        await trio.to_thread.run_sync(self.until, predicate)
