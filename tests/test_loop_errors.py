"""The loops dspex-rx runs drop grpc.aio's notice that another loop of the process has
closed (its poller hands an event to it), and log every other error as asyncio does."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from dspex_rx.logs import quiet_closed_loop_events


class PollerCompletionQueue:  # named as grpc.aio's own, whose method the handle runs
    def _handle_events(self) -> None:
        pass


class Handle:
    def __init__(self, callback: Any) -> None:
        self._callback = callback


def report(loop: asyncio.AbstractEventLoop, error: BaseException, callback: Any) -> None:
    loop.call_exception_handler({"message": "Exception in callback", "exception": error,
                                 "handle": Handle(callback)})


@pytest.fixture
def loop() -> Any:
    loop = asyncio.new_event_loop()
    quiet_closed_loop_events(loop)
    yield loop
    loop.close()


def test_the_pollers_event_for_a_closed_loop_is_dropped(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        report(loop, RuntimeError("Event loop is closed"),
               PollerCompletionQueue()._handle_events)
    assert caplog.records == []


def test_every_other_loop_error_is_still_logged(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture,
) -> None:
    def elsewhere() -> None:
        pass

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        report(loop, RuntimeError("Event loop is closed"), elsewhere)
        report(loop, RuntimeError("something else"), PollerCompletionQueue()._handle_events)
        report(loop, ValueError("bad"), PollerCompletionQueue()._handle_events)
    assert [str(r.exc_info[1]) for r in caplog.records if r.exc_info] == [
        "Event loop is closed", "something else", "bad"]
