"""Helpers shared by the optimization tests: a server clock the test moves, an objective
the test steps through, two clients of one session with a float ``t``, and Session
streams the test can break."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from helpers import unavailable

import dspex_rx
from dspex_rx.v1 import session_pb2 as spb

FLOAT = {"min": 0.0, "max": 2.0}


class FakeClock:
    """The server's clock, moved by the test: lease expiry without waiting."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Gate:
    """An async objective the test steps through one evaluation at a time."""

    def __init__(self) -> None:
        self.entered: list[Any] = []
        self._arrived = trio.Event()
        self._release = trio.Event()

    async def __call__(self, value: Any) -> float:
        self.entered.append(value)
        self._arrived.set()
        await self._release.wait()
        self._release = trio.Event()
        return -((float(value) - 1.3) ** 2)

    async def arrived(self, count: int) -> None:
        while len(self.entered) < count:
            self._arrived = trio.Event()
            await self._arrived.wait()

    def release(self) -> None:
        self._release.set()


@asynccontextmanager
async def open_pair(
    target: str,
) -> AsyncIterator[tuple[dspex_rx.SessionContext, dspex_rx.SessionContext]]:
    """The holder ``a`` and another client ``b`` of one session, with a float ``t``."""
    async with dspex_rx.connect(target, ttl_seconds=3600) as a, dspex_rx.connect(
        target, session_id=a.session_id, token=a.token, ttl_seconds=3600
    ) as b:
        await a.register_variable("t", "float", 0.5, constraints=FLOAT)
        yield a, b


class BreakableStream:
    """A real transport stream that the test can break (UNAVAILABLE) at any moment."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.failed = False
        self.pending: deque[spb.ServerMessage] = deque()
        self._scope: trio.CancelScope | None = None

    async def send(self, message: spb.ClientMessage) -> None:
        if self.failed:
            raise unavailable()
        await self.real.send(message)

    async def receive_batch(self) -> list[spb.ServerMessage] | None:
        while True:
            if self.failed:
                raise unavailable()
            if self.pending:
                return [self.pending.popleft()]
            with trio.CancelScope() as self._scope:
                batch = await self.real.receive_batch()
                if batch is None:
                    return None
                self.pending.extend(batch)
            self._scope = None

    def fail(self) -> None:
        self.failed = True
        if self._scope is not None:
            self._scope.cancel()

    async def close(self) -> None:
        await self.real.close()


def breakable(session: dspex_rx.SessionContext) -> list[BreakableStream]:
    """Wrap every Session stream the session's transport opens from now on."""
    transport = session._transport
    real_open = transport.open_stream
    streams: list[BreakableStream] = []

    async def open_stream(path: str, response_type: Any, **kw: Any) -> Any:
        if not path.endswith("/Session"):
            return await real_open(path, response_type, **kw)  # the Calls stream
        # The hub's listener is dropped: the hub then reads batches through the wrapper.
        kw.pop("listener", None)
        stream = BreakableStream(await real_open(path, response_type, **kw))
        streams.append(stream)
        return stream

    transport.open_stream = open_stream
    return streams


async def report_proposals(
    session: dspex_rx.SessionContext,
    name: str,
    evaluate: Callable[[Any], dict[str, Any]],
    reported: list[tuple[int, Any]] | None = None,
    runs: int = 1,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The program's side of ask/tell: watch ``name`` and report ``evaluate(value)`` for
    every proposal an optimization writes (tied to it by the version it wrote), until
    ``runs`` runs have written their final value. Start it with ``nursery.start``: it is
    started once its watch is registered, so it sees the first proposal."""
    finals = 0
    async with session.watch_variable(name, include_initial=False) as watch:
        await session.sync()
        task_status.started()
        async for update in watch:
            if update.metadata.get("final"):
                finals += 1
                if finals == runs:
                    return
            elif "iteration" in update.metadata:  # a proposal's write
                await session.report_metrics(name, evaluate(update.value),
                                             version=update.version)
                if reported is not None:
                    reported.append((update.metadata["iteration"], update.value))
