"""Helpers shared by the tests: wait for the stream to catch up, read a watch's buffer
without waiting, wait for a condition, inject a lost connection, beat a session's
heartbeat on in virtual time, run ``dspex-rx serve``, a store's fake clock, rules and
session ends, and a stand-in for a torch tensor."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import trio
import trio.testing

import dspex_rx
from dspex_rx.client.actors import VariableUpdate
from dspex_rx.server import EmbeddedServer
from dspex_rx.store import MemoryStore

SCRIPT = Path(sys.executable).parent / "dspex-rx"
T = TypeVar("T")


async def settle(watcher: dspex_rx.SessionContext) -> None:
    """Every change committed so far has reached the watcher; due timers have fired."""
    await watcher.sync()
    await trio.testing.wait_all_tasks_blocked()


def drain(watch: dspex_rx.Watch) -> list[VariableUpdate]:
    """What the watch has buffered, without waiting for more."""
    out = []
    while watch._buffer:
        out.append(watch._buffer.popleft())
    return out


async def beat_until(session: dspex_rx.SessionContext, clock: trio.testing.MockClock,
                     done: Callable[[], bool]) -> None:
    """Move virtual time on a heartbeat interval at a time until ``done()``."""
    guard = time.monotonic() + 10  # a hang guard, not a timing assertion
    while not done():
        assert time.monotonic() < guard, "the heartbeat never reacted"
        clock.jump(session.ttl_seconds / 3)
        for _ in range(50):
            await trio.sleep(0)
        await trio.to_thread.run_sync(lambda: None)


@asynccontextmanager
async def cli_server(tmp_path: Path, *flags: str) -> AsyncIterator[str]:
    """Run ``dspex-rx serve --port 0 <flags>`` (its data in ``tmp_path/data``); yields its
    target once it serves."""
    port_file = tmp_path / "port"
    proc = subprocess.Popen([str(SCRIPT), "serve", "--port", "0", "--port-file",
                             str(port_file), "--log-level", "warning",
                             "--data-dir", str(tmp_path / "data"), *flags])
    try:
        port = await trio.to_thread.run_sync(wait_for_port, proc, port_file)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_for_port(proc: subprocess.Popen[Any], port_file: Path, guard: float = 30.0,
                  detail: Callable[[], str] = lambda: "") -> int:
    """The port a ``dspex-rx serve --port-file`` child wrote, once it serves; fails if the
    child exits first or writes nothing within ``guard`` seconds (a hang guard, not a
    timing assertion). ``detail`` adds, say, the child's log to the failure."""
    deadline = time.monotonic() + guard
    while not port_file.exists() or not port_file.read_text().strip():
        assert proc.poll() is None, f"dspex-rx serve exited{detail()}"
        assert time.monotonic() < deadline, f"dspex-rx serve never wrote its port{detail()}"
        time.sleep(0.01)  # polls another process; no timing is asserted
    return int(port_file.read_text().strip())


class Clock:
    """A store clock the test moves by hand (``clock.now += 10``)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def grant(perms: list[str], pattern: str = "b") -> list[dict[str, Any]]:
    """One access rule granting ``perms`` to ``pattern`` (by default ``b``, the other session
    of the store-level access tests)."""
    return [{"session_pattern": pattern, "permissions": perms}]


def end(store: MemoryStore, session_id: str) -> None:
    """End a session by closing every client attached to it."""
    for client_id in list(store.session(session_id).clients):
        store.close_session(session_id, client_id)


def expire_client(server: EmbeddedServer, session_id: str, client_id: str) -> list[str]:
    """Let one client's lease lapse (a long pause) and run the server's expiry; returns
    the ids of the sessions that ended."""

    def run() -> list[str]:
        server.store.session(session_id).clients[client_id].last_seen = -1e12
        return server.store.expire()

    return server.call(run)


async def until(predicate: Callable[[], bool], what: str, guard: float = 10.0) -> None:
    """Let other tasks and threads run until ``predicate()`` (a hang guard, no timing)."""
    deadline = time.monotonic() + guard  # a hang guard, not a timing assertion
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await trio.sleep(0)
        await trio.to_thread.run_sync(lambda: None)


async def through_reconnect(call: Callable[[], Awaitable[T]], guard: float = 30.0) -> T:
    """``await call()`` again while it fails with a transport error (an ``OSError``): the
    client's channel is still reconnecting to a restarted or other server. A hang guard,
    no timing: the pause only paces the retries."""
    with trio.fail_after(guard):
        while True:
            try:
                return await call()
            except OSError:
                await trio.sleep(0.05)


async def eventually(check: Callable[[], Awaitable[bool]], what: str,
                     guard: float = 30.0) -> None:
    """Ask ``check()`` (which calls a server) until it says yes (a hang guard, no timing)."""
    deadline = time.monotonic() + guard  # a hang guard, not a timing assertion
    while not await check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await trio.sleep(0.01)  # polls another process; no timing is asserted


def unavailable() -> grpc.aio.AioRpcError:
    """The error a call or stream gets when the connection drops."""
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
        "injected: connection lost",
    )


class TensorDouble:
    """Stands for a ``torch.Tensor`` where torch is not wanted: the codec knows a tensor by
    its module and ``detach().cpu().numpy()``, which is all this provides."""

    __module__ = "torch"

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def detach(self) -> TensorDouble:
        return self

    def cpu(self) -> TensorDouble:
        return self

    def numpy(self) -> np.ndarray:
        return self.array
