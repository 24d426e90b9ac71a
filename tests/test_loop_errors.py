"""The loops dspex-rx runs drop grpc.aio's notice that another loop of the process has
closed (its poller hands an event to it), and log every other error as asyncio does."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import grpc
import pytest

from dspex_rx.logs import quiet_closed_loop_events


class PollerCompletionQueue:  # named as grpc.aio's own, whose method the handle runs
    def _handle_events(self, loop: Any) -> None:
        pass


class Handle:
    def __init__(self, callback: Any) -> None:
        self._callback = callback


def poller_events(loop: asyncio.AbstractEventLoop) -> Any:
    # As grpc.aio registers it: functools.partial(poller._handle_events, loop).
    return functools.partial(PollerCompletionQueue()._handle_events, loop)


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
        report(loop, RuntimeError("Event loop is closed"), poller_events(loop))
    assert caplog.records == []


def test_every_other_loop_error_is_still_logged(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture,
) -> None:
    def elsewhere() -> None:
        pass

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        report(loop, RuntimeError("Event loop is closed"), elsewhere)
        report(loop, RuntimeError("something else"), poller_events(loop))
        report(loop, ValueError("bad"), poller_events(loop))
    assert [str(r.exc_info[1]) for r in caplog.records if r.exc_info] == [
        "Event loop is closed", "something else", "bad"]


def test_grpcs_own_poller_handle_is_the_one_dropped(caplog: pytest.LogCaptureFixture) -> None:
    # Guards: grpc registers the poller as a functools.partial, which the first version
    # of the filter did not unwrap, so it never matched the real handle.
    async def main() -> int:
        loop = asyncio.get_running_loop()
        quiet_closed_loop_events(loop)
        channel = grpc.aio.insecure_channel("127.0.0.1:1")  # the poller joins this loop
        try:
            selector: Any = loop._selector  # type: ignore[attr-defined]
            readers = [key.data[0] for key in selector.get_map().values()]
            pollers = [h for h in readers if "PollerCompletionQueue" in repr(h)]
            for handle in pollers:
                loop.call_exception_handler({"message": "Exception in callback",
                                             "exception": RuntimeError("Event loop is closed"),
                                             "handle": handle})
            return len(pollers)
        finally:
            await channel.close()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        assert asyncio.run(main()) == 1
    assert caplog.records == []
