"""Pipelined calls from the client: calls from many tasks share frames, errors are the
unary path's, one call cancelled or timed out leaves the rest, a broken stream fails what
it carried and the next call opens another, and a server without the stream is used unary."""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest
import trio
import trio.testing
from calls_gate import Gate

import dspex_rx
from dspex_rx.client import calls as client_calls
from dspex_rx.client.deadlines import Deadlines
from dspex_rx.server import EmbeddedServer


def pipeline_of(session: dspex_rx.SessionContext) -> client_calls.Pipeline:
    pipeline = session._conn.pipeline
    assert pipeline is not None
    return pipeline


async def test_calls_from_many_tasks_leave_in_shared_frames(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variables([{"name": f"v{i}", "type": "integer", "initial_value": i}
                                      for i in range(32)])
    pipeline = pipeline_of(session)
    before = pipeline.frames_sent
    got: dict[int, int] = {}

    async def read(i: int) -> None:
        got[i] = await session.get_variable(f"v{i}", bypass_cache=True)

    async with trio.open_nursery() as nursery:
        for i in range(32):
            nursery.start_soon(read, i)
    assert got == {i: i for i in range(32)}
    # 32 calls made at once: the writer packs what queued while it wrote.
    assert 1 <= pipeline.frames_sent - before < 16


# Guards: the pipeline's task started after connect() returned, so the first calls went
# unary.
async def test_the_first_call_after_connect_goes_on_the_stream(server: EmbeddedServer) -> None:
    async with dspex_rx.connect(server.target) as s:
        assert await s.ping(b"first") == b"first"
        assert (pipeline_of(s).streams_opened, pipeline_of(s).frames_sent) == (1, 1)


async def test_pipelined_and_unary_sessions_raise_the_same_errors(
    server: EmbeddedServer,
) -> None:
    outcomes = []
    for pipelined in (True, False):
        async with dspex_rx.connect(server.target, pipelined=pipelined) as s:
            assert (s._conn.pipeline is not None) is pipelined
            await s.register_variable("t", "float", 0.5, constraints={"min": 0, "max": 1})
            seen = []
            for bad in (
                lambda: s.set_variable("t", 5.0),
                lambda: s.set_variable("t", 0.2, expected_version=7),
                lambda: s.get_variable("missing"),
                lambda: s.register_variable("t", "float", 0.1),
                lambda: s.set_variable("t", "not a number"),
            ):
                with pytest.raises(Exception) as caught:
                    await bad()
                message = str(caught.value).replace(s.session_id, "<sid>")
                seen.append((type(caught.value).__name__, message))
            seen.append(("value", await s.get_variable("t", bypass_cache=True)))
            outcomes.append(seen)
    assert outcomes[0] == outcomes[1], outcomes
    assert [kind for kind, _ in outcomes[0]] == [
        "InvalidValueError", "ConflictError", "VariableNotFoundError",
        "AlreadyExistsError", "VariableTypeError", "value"]


async def test_cancelling_one_call_cancels_only_that_request(
    session: dspex_rx.SessionContext, gate: Gate,
) -> None:
    await session.register_variable("t", "integer", 1)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.get_variable, "slow", None, True)
            await gate.until_in_trio(lambda g: g.waiting == 1)
            # Another call on the same stream meanwhile is answered.
            assert await session.get_variable("t", bypass_cache=True) == 1
            scope.cancel()
    assert scope.cancelled_caught
    await gate.until_in_trio(lambda g: g.cancelled == 1)
    assert gate.read(lambda g: g.waiting) == 0
    await session.set_variable("t", 2)
    assert await session.get_variable("t", bypass_cache=True) == 2


async def test_a_call_past_its_deadline_fails_deadline_exceeded_and_is_cancelled(
    server: EmbeddedServer, gate: Gate, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The deadlines fired by the test instead of by the timer thread and the wall clock
    # (that thread's own logic is tested on a fake clock in test_deadlines.py).
    made: list[Deadlines] = []

    class Manual(Deadlines):
        def __init__(self, token: object) -> None:
            super().__init__(token=None)  # no token: no timer thread
            made.append(self)

    monkeypatch.setattr(client_calls, "Deadlines", Manual)
    async with dspex_rx.connect(server.target) as s:
        async with trio.open_nursery() as nursery:
            async def stalled() -> None:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await s.get_variable("slow", bypass_cache=True)
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

            nursery.start_soon(stalled)
            await gate.until_in_trio(lambda g: g.waiting == 1)
            for deadline in made[0].due(math.inf):  # the call's deadline passes
                deadline.fire()
        await gate.until_in_trio(lambda g: g.cancelled == 1)  # the server was told
        assert await s.ping(b"after") == b"after"


# Guards: pipelined calls timed out with trio's clock, so under an autojump MockClock they
# failed DEADLINE_EXCEEDED while the server was still answering (virtual time leapt on).
async def test_virtual_time_leaping_past_the_timeout_does_not_fail_a_call(
    server: EmbeddedServer, gate: Gate, autojump_clock: trio.testing.MockClock,
) -> None:
    async with dspex_rx.connect(server.target, timeout=5.0) as s:
        got: list[object] = []

        async def held() -> None:
            got.append(await s.get_variable("slow", default="answered", bypass_cache=True))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(held)
            start = trio.current_time()
            await gate.until_in_trio(lambda g: g.waiting == 1)
            await trio.sleep(60)  # autojump: a minute of virtual time, all blocked
            assert trio.current_time() - start >= 60
            gate.open()
        assert gate.read(lambda g: g.cancelled) == 0
        assert len(got) == 1


async def test_a_reset_stream_fails_what_it_carried_and_the_next_call_opens_another(
    session: dspex_rx.SessionContext, gate: Gate,
) -> None:
    await session.register_variable("t", "integer", 1)
    pipeline = pipeline_of(session)
    opened = pipeline.streams_opened
    async with trio.open_nursery() as nursery:
        async def carried() -> None:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await session.get_variable("slow", bypass_cache=True)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "connection suspected dead" in (caught.value.details() or "")

        nursery.start_soon(carried)
        await gate.until_in_trio(lambda g: g.waiting == 1)
        await pipeline.reset("connection suspected dead")
    assert await session.get_variable("t", bypass_cache=True) == 1
    assert pipeline.streams_opened == opened + 1
    await gate.until_in_trio(lambda g: g.cancelled == 1)


# Guards: with the server gone, a pipelined call reopened the Calls stream in a hot loop
# (thousands of opens) and failed DEADLINE_EXCEEDED at its timeout, not UNAVAILABLE as unary.
async def test_calls_to_an_unreachable_server_fail_unavailable_as_unary_and_open_one_stream(
    mock_clock: trio.testing.MockClock,  # trio's clock stands still: the unary pause lasts
) -> None:
    with EmbeddedServer() as server:
        async with dspex_rx.connect(server.target, timeout=5.0) as s:
            await s.register_variable("x", "integer", 0)
            pipeline = pipeline_of(s)
            opened = pipeline.streams_opened
            await trio.to_thread.run_sync(server.stop)
            codes = []
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await s.get_variable("x", bypass_cache=True)
                codes.append(caught.value.code())
            assert codes == [grpc.StatusCode.UNAVAILABLE] * 3
            # One try at a stream: the first call's; the others go unary meanwhile.
            assert pipeline.streams_opened - opened == 1
            assert pipeline.available


# Guards: an error inside the pipeline's task took the session's whole services nursery
# (heartbeat, watches) down with it, and every later call hung.
async def test_a_failing_calls_stream_leaves_the_session_working_unary(
    server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with dspex_rx.connect(server.target) as s:
        real_open = s._conn.transport.open_stream

        async def broken(path: str, response_type: Any, metadata: Any = (),
                         listener: Any = None) -> Any:
            if path.endswith("/Calls"):
                raise TypeError("a bug in the stream's set-up")
            return await real_open(path, response_type, metadata=metadata, listener=listener)

        monkeypatch.setattr(s._conn.transport, "open_stream", broken)
        await s.register_variable("t", "integer", 1)
        async with s.watch_variable("t", include_initial=False) as watch:
            await s.set_variable("t", 2)
            update = await watch.__anext__()
        assert (update.value, await s.get_variable("t", bypass_cache=True)) == (2, 2)
        assert not pipeline_of(s).available and not pipeline_of(s).running


async def test_a_large_request_goes_as_its_own_unary_call(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("text", "string", "")
    pipeline = pipeline_of(session)
    await session.get_variable("text", bypass_cache=True)
    before = pipeline.frames_sent
    big = "x" * (client_calls.MAX_PIPELINED_REQUEST + 1)
    await session.set_variable("text", big)
    assert pipeline.frames_sent == before
    assert await session.get_variable("text", bypass_cache=True) == big
    assert pipeline.frames_sent == before + 1


class _HideCalls(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        if details.method.endswith("/Calls"):
            return None  # what a server from before the stream answers: UNIMPLEMENTED
        return await continuation(details)


@pytest.fixture
def old_server(monkeypatch: pytest.MonkeyPatch) -> EmbeddedServer:
    """A server without the Calls stream, as one from before it."""
    real = grpc.aio.server

    def server(*args: Any, interceptors: Any = (), **kwargs: Any) -> Any:
        return real(*args, interceptors=[*interceptors, _HideCalls()], **kwargs)

    monkeypatch.setattr(grpc.aio, "server", server)
    return EmbeddedServer()


async def test_a_server_without_the_calls_stream_gets_each_call_once_as_unary(
    old_server: EmbeddedServer,
) -> None:
    with old_server:
        async with dspex_rx.connect(old_server.target) as s:
            await s.register_variable("t", "integer", 0)
            for i in range(1, 4):
                await s.set_variable("t", i)
            history = await s.get_variable_history("t")
            assert sorted(entry["version"] for entry in history) == [1, 2, 3, 4]  # each once
            assert await s.get_variable("t", bypass_cache=True) == 3
            assert s._conn.pipeline is not None and not s._conn.pipeline.available


# Guards: a call made while the session closed (an optimization run's finish) went on the
# Calls stream, which stops with the session's services, and failed CANCELLED when the
# stream was torn down before its answer came.
async def test_a_call_made_while_the_session_closes_goes_as_a_unary_rpc(
    session: dspex_rx.SessionContext,
) -> None:
    pipeline = pipeline_of(session)
    assert await session.ping(b"x") == b"x"
    before = pipeline.frames_sent
    session._conn.closed = True  # as close() sets it before it stops the services
    try:
        assert await session.ping(b"y") == b"y"
    finally:
        session._conn.closed = False
    assert pipeline.frames_sent == before
