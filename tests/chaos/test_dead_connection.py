"""A connection that goes silent (black-holed by the chaos proxy, nothing closed) is noticed
within the keepalive bound: the watch reconnects, a write made meanwhile arrives, and reads
of watched variables are not served from a cache nobody keeps current.

These run in real time, a few seconds each: gRPC's keepalive timers live in its C core,
which trio's MockClock cannot move, and the silence has to be a real socket's. The waits
are hang guards around polls; the bound asserted is loose (several times the settings).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
import trio
import trio.testing
from helpers import beat_until, unavailable
from proxy import ChaosProxy

import dspex_rx
from dspex_rx.client.actors import VariableUpdate
from dspex_rx.errors import InvalidValueError
from dspex_rx.server import EmbeddedServer

# Small settings so detection takes about two seconds (the defaults are 3 s and 2 s).
KEEPALIVE = {"keepalive_time": 1.0, "keepalive_timeout": 1.0}
DETECTION_GUARD = 10.0  # several times keepalive_time + keepalive_timeout


@asynccontextmanager
async def proxied(server: EmbeddedServer) -> AsyncIterator[ChaosProxy]:
    host, _, port = server.target.rpartition(":")
    proxy = ChaosProxy(lambda: (host, int(port)))
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()


async def wait_for(predicate: object, what: str, guard: float) -> float:
    """Poll ``predicate()`` (real time: gRPC's timers); returns the seconds it took."""
    began = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - began < guard, f"never happened within {guard} s: {what}"
        await trio.sleep(0.02)  # polls a real socket's fate; no timing is asserted here
    return time.monotonic() - began


async def test_black_holed_watch_reconnects_and_gets_the_write_made_meanwhile(
    server: EmbeddedServer,
) -> None:
    # Guards: black-holed for 75 s, watchers saw 0 errors and 0 reconnects, reads stale.
    async with proxied(server) as proxy, dspex_rx.connect(server.target) as writer:
        await writer.register_variable("kept", "integer", 1)
        async with dspex_rx.connect(f"127.0.0.1:{proxy.port}", writer.session_id,
                                    token=writer.token, timeout=2.0, **KEEPALIVE) as watcher:
            seen: list[VariableUpdate] = []
            errors: list[Exception] = []
            watcher.observe("kept").subscribe(on_next=seen.append, on_error=errors.append)
            await watcher.sync()
            assert [u.value for u in seen] == [1]
            assert await watcher.get_variable("kept") == 1
            hub = watcher._hub
            assert hub is not None and hub.reconnects == 0

            proxy.black_hole_all(new_too=True)
            await writer.set_variable("kept", 2)
            took = await wait_for(lambda: hub.reconnects > 0, "the watch noticed the silence",
                                  DETECTION_GUARD)
            assert took < DETECTION_GUARD
            # Dead connection: the cached 1 is no longer current, so a read must ask the
            # server (and fail: it cannot reach it) rather than answer 1.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await watcher.get_variable("kept")
            assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                            grpc.StatusCode.DEADLINE_EXCEEDED)
            assert [u.value for u in seen] == [1]

            proxy.heal_all()
            await wait_for(lambda: [u.value for u in seen] == [1, 2],
                           "the write made while silent arrived", 30.0)
            assert errors == []
            assert await watcher.get_variable("kept") == 2


async def test_keepalive_pings_do_not_make_the_server_drop_an_idle_client(
    server: EmbeddedServer,
) -> None:
    # Guards: the server's default ping policy (5 min between pings) answers the client's
    # keepalive with GOAWAY "too_many_pings", breaking the watch (seen before the fix).
    async with dspex_rx.connect(server.target, **KEEPALIVE) as session:
        await session.register_variable("idle", "integer", 1)
        seen: list[VariableUpdate] = []
        session.observe("idle").subscribe(on_next=seen.append)
        await session.sync()
        hub = session._hub
        assert hub is not None
        await trio.sleep(6.0)  # six pings' worth of idle stream, in real time (see above)
        assert hub.reconnects == 0
        await session.set_variable("idle", 2)
        await session.sync()
        assert [u.value for u in seen] == [1, 2]


@pytest.mark.parametrize(("option", "value"), [
    ("keepalive_time", 0.1), ("keepalive_time", "3"), ("keepalive_timeout", 0.0),
    ("keepalive_timeout", -1.0),
])
async def test_keepalive_settings_out_of_range_are_refused_by_name(
    option: str, value: object
) -> None:
    with pytest.raises(InvalidValueError, match=option):
        dspex_rx.SessionContext(None, "127.0.0.1:1", **{option: value})  # type: ignore[arg-type]


async def test_failed_heartbeat_marks_watched_entries_stale_and_reopens_the_stream(
    server: EmbeddedServer, mock_clock: trio.testing.MockClock,
) -> None:
    # The backstop behind keepalive: a heartbeat failing as a dead connection does must
    # not leave watched values served from the cache (virtual time: heartbeats only).
    async with dspex_rx.connect(server.target) as writer:
        await writer.register_variable("beat", "integer", 1)
        async with dspex_rx.connect(server.target, writer.session_id,
                                    token=writer.token) as watcher:
            seen: list[VariableUpdate] = []
            watcher.observe("beat").subscribe(on_next=seen.append)
            await watcher.sync()
            hub = watcher._hub
            assert hub is not None
            actor = hub.known("beat")
            assert actor is not None and actor.cached() == (True, 1)
            dropped: list[str] = []

            async def on_drop(key: str, reason: str) -> None:
                dropped.append(reason)

            watcher._cache.subscribe_invalidation(actor.id, on_drop)
            real = watcher._call

            async def heartbeat_unavailable(method: str, *args: Any, **kwargs: Any) -> Any:
                if method == "Heartbeat":
                    raise unavailable()
                return await real(method, *args, **kwargs)

            watcher._call = heartbeat_unavailable  # type: ignore[method-assign]
            await beat_until(watcher, mock_clock, lambda: hub.reconnects > 0)
            await watcher._cache.flush_invalidations()
            assert dropped == ["stream broken"]
            watcher._call = real  # type: ignore[method-assign]
            mock_clock.jump(5)  # past the reconnect backoff
            await writer.set_variable("beat", 2)
            await watcher.sync()
            assert [u.value for u in seen] == [1, 2]
            assert await watcher.get_variable("beat") == 2
