"""Helpers shared by the tests that watch: wait for the stream to catch up, read a
watch's buffer without waiting, beat a session's heartbeat on in virtual time."""

from __future__ import annotations

import time
from collections.abc import Callable

import trio
import trio.testing

import dspex_rx
from dspex_rx.actors import VariableUpdate


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
