"""A server-side GetVariable that holds requests for ref "slow" until the test opens it,
for the Calls stream's cancellation, timeout and in-flight tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from dspex_rx.server import EmbeddedServer


class Gate:
    """A GetVariable that, for ref "slow", waits on the server loop until opened; counts
    how many wait at once and whether one was cancelled."""

    def __init__(self, server: EmbeddedServer) -> None:
        self.server = server
        self.inner = server.service.GetVariable
        self.waiting = 0
        self.most = 0
        self.cancelled = 0
        self.event: asyncio.Event | None = None

    async def __call__(self, message: Any, context: Any) -> Any:
        if getattr(message, "ref", "") != "slow":
            return await self.inner(message, context)
        if self.event is None:
            self.event = asyncio.Event()
        self.waiting += 1
        self.most = max(self.most, self.waiting)
        try:
            await self.event.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.waiting -= 1
        return await self.inner(message, context)  # then answered as usual (NOT_FOUND)

    def open(self) -> None:
        def release() -> None:
            if self.event is None:
                self.event = asyncio.Event()
            self.event.set()
        self.server.call(release)

    def read(self, fn: Callable[[Gate], Any]) -> Any:
        return self.server.call(lambda: fn(self))
