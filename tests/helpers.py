"""Helpers shared by the tests that watch: wait for the stream to catch up, read a
watch's buffer without waiting."""

from __future__ import annotations

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
