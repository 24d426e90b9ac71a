"""The client's Pipeline against a scripted stream (no server, no threads): what goes out in
which frame, the in-flight bound, cancellation of queued and sent requests, the
handshake, and what a broken or missing stream does to the calls waiting on it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import trio
import trio.testing

from dspex_rx.client.calls import FIRST_RETRY, NotSent, Pipeline, rpc_error
from dspex_rx.v1 import calls_pb2 as cpb
from dspex_rx.v1 import variables_pb2 as pb


class ScriptedStream:
    """A Calls stream the test answers by hand: ``sent`` holds every frame written."""

    def __init__(self) -> None:
        self.sent: list[cpb.CallFrame] = []
        self.inbox: list[cpb.ReplyFrame] = []
        self.end: BaseException | None = None
        self.ended = False
        self.arrived = trio.Event()
        self.wrote = trio.Event()
        # While True, writes stay under way (as on a slow link) until ``release``.
        self.hold = False
        self.held: list[Any] = []
        self.listener: Any = None

    def post(self, frame: cpb.CallFrame, written: Any) -> None:
        if self.ended:
            raise RuntimeError("the stream is closed")
        self.sent.append(frame)
        self.wrote.set()
        if self.hold:
            self.held.append(written)
        else:  # done a moment later, as gRPC's completion is
            trio.lowlevel.current_trio_token().run_sync_soon(written, None)

    def release(self) -> None:
        self.hold = False
        held, self.held = self.held, []
        for written in held:
            written(None)

    async def receive_batch(self) -> list[cpb.ReplyFrame] | None:
        # As the real stream with a listener: batches go to it; this returns at the end.
        while True:
            while not self.inbox and not self.ended:
                self.arrived = trio.Event()
                await self.arrived.wait()
            if not self.inbox:
                break
            batch, self.inbox = self.inbox, []
            if self.listener is None:
                return batch
            self.listener(batch)
        if self.end is not None:
            raise self.end
        return None

    async def close(self) -> None:
        self.finish(rpc_error(grpc.StatusCode.CANCELLED, "closed"))

    def answer(self, *ids: int, code: int = 0, trailers: tuple[tuple[str, str], ...] = (),
               ) -> None:
        self.inbox.append(cpb.ReplyFrame(replies=[
            cpb.CallReply(id=i, code=code,
                          response=pb.EchoResponse(payload=str(i).encode()).SerializeToString(),
                          trailers=[cpb.TrailerPair(key=k, value=v) for k, v in trailers])
            for i in ids]))
        self.arrived.set()

    def finish(self, error: BaseException | None) -> None:
        self.ended, self.end = True, error
        self.arrived.set()

    async def wait_for_frames(self, count: int) -> None:
        while len(self.sent) < count:
            self.wrote = trio.Event()
            await self.wrote.wait()


class ScriptedTransport:
    def __init__(self) -> None:
        self.streams: list[ScriptedStream] = []
        self.refuse: grpc.aio.AioRpcError | None = None
        # True: the server's first frame reaches the listener before open_stream returns.
        self.early = False
        # True: the streams' writes stay under way until released (ScriptedStream.hold).
        self.hold = False

    async def open_stream(self, path: str, response_type: Any, metadata: Any = (),
                          listener: Any = None) -> Any:
        assert path.endswith("/Calls") and response_type is cpb.ReplyFrame
        if len(self.streams) >= 100:  # a pipeline reopening in a loop: stop it
            raise RuntimeError("the Calls stream was reopened 100 times")
        stream = ScriptedStream()
        stream.listener = listener
        stream.hold = self.hold
        self.streams.append(stream)
        if self.refuse is not None:
            stream.finish(self.refuse)  # the server turns the stream down at once
        elif self.early:
            listener([cpb.ReplyFrame()])
        else:
            stream.inbox.append(cpb.ReplyFrame())  # the server's empty first frame
        return stream


def ids(frame: cpb.CallFrame) -> list[int]:
    return [request.id for request in frame.calls]


async def echo(pipeline: Pipeline, payload: bytes = b"", timeout: float | None = 30) -> bytes:
    reply = await pipeline.call("Echo", pb.EchoRequest(payload=payload), pb.EchoResponse, timeout)
    return bytes(reply.payload)


@contextlib.asynccontextmanager
async def running(**options: Any) -> AsyncIterator[tuple[Pipeline, ScriptedTransport]]:
    transport = ScriptedTransport()
    pipeline = Pipeline(transport, "/dspex_rx.v1.Variables/Calls", (("k", "v"),), **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(pipeline.run)
        yield pipeline, transport
        nursery.cancel_scope.cancel()


@pytest.fixture
async def piped() -> AsyncIterator[tuple[Pipeline, ScriptedTransport]]:
    async with running(max_in_flight=3) as both:
        yield both


async def test_calls_made_together_leave_in_two_halves_and_are_answered_by_id(
    piped: Any,
) -> None:
    pipeline, transport = piped
    got: dict[int, bytes] = {}

    async def call(n: int) -> None:
        got[n] = await echo(pipeline, str(n).encode())

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(call, n)
        await trio.testing.wait_all_tasks_blocked()
        stream = transport.streams[0]
        # Half of the three in flight (rounded up), then the rest once that was written.
        assert [ids(f) for f in stream.sent] == [[1, 2], [3]]
        assert [r.method for f in stream.sent for r in f.calls] == ["Echo"] * 3
        stream.answer(3, 1, 2)  # out of order: each still reaches its own caller
    # The replies carry the id as payload: each caller got the answer to its own id.
    assert sorted(got.values()) == [b"1", b"2", b"3"]


@pytest.fixture
async def wide() -> AsyncIterator[tuple[Pipeline, ScriptedTransport]]:
    async with running() as both:  # the default in-flight bound (1,024)
        yield both


async def test_the_second_half_leaves_once_the_first_is_written_without_waiting_for_answers(
    wide: Any,
) -> None:
    pipeline, transport = wide
    transport.hold = True  # the first half's write stays under way until released
    async with trio.open_nursery() as nursery:
        for _ in range(32):
            nursery.start_soon(echo, pipeline)
        await trio.testing.wait_all_tasks_blocked()
        stream = transport.streams[0]
        assert [ids(f) for f in stream.sent] == [list(range(1, 17))]
        stream.release()
        await stream.wait_for_frames(2)
        assert ids(stream.sent[1]) == list(range(17, 33))
        stream.release()
        stream.answer(*range(1, 33))


async def test_answers_to_one_half_come_back_while_the_other_is_out_and_leave_as_one_frame(
    wide: Any,
) -> None:
    pipeline, transport = wide
    calls = 0

    async def again() -> None:
        nonlocal calls
        for _ in range(2):
            await echo(pipeline)
            calls += 1

    async with trio.open_nursery() as nursery:
        for _ in range(32):
            nursery.start_soon(again)
        await trio.testing.wait_all_tasks_blocked()
        stream = transport.streams[0]
        await stream.wait_for_frames(2)
        first, second = ids(stream.sent[0]), ids(stream.sent[1])
        assert len(first) == len(second) == 16
        # The server answers the first half while the second is still out: those 16
        # callers call again, 32 in flight, and their 16 calls go as one frame.
        stream.answer(*first)
        await stream.wait_for_frames(3)
        await trio.testing.wait_all_tasks_blocked()
        assert [len(f.calls) for f in stream.sent[2:]] == [16]
        stream.answer(*second, *ids(stream.sent[2]))
        await stream.wait_for_frames(4)
        await trio.testing.wait_all_tasks_blocked()
        stream.answer(*(i for f in stream.sent[3:] for i in ids(f)))
    assert calls == 64


async def test_a_call_past_max_in_flight_waits_for_an_answer(piped: Any) -> None:
    pipeline, transport = piped
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(echo, pipeline)
        await trio.testing.wait_all_tasks_blocked()
        stream = transport.streams[0]
        assert sum(len(f.calls) for f in stream.sent) == 3  # the fourth waits its turn
        stream.answer(1)
        await stream.wait_for_frames(3)
        assert ids(stream.sent[2]) == [4]
        stream.answer(2, 3, 4)


async def test_a_cancelled_sent_call_sends_its_id_to_cancel_and_a_queued_one_never_leaves(
    piped: Any,
) -> None:
    pipeline, transport = piped
    await echo_after_answer(pipeline, transport)  # the stream is open, the writer idle
    stream = transport.streams[0]
    with trio.CancelScope() as sent_scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo, pipeline)
            await stream.wait_for_frames(2)
            sent_scope.cancel()
    await stream.wait_for_frames(3)
    assert stream.sent[2].cancel == [2] and not stream.sent[2].calls
    # Given up while still queued (the writer is busy with another frame): it never
    # leaves, and no cancel is sent for it.
    stream.hold = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo, pipeline, b"busy")
        await stream.wait_for_frames(4)  # the writer is now inside this frame's write
        with trio.CancelScope() as queued_scope:
            nursery.start_soon(cancel_soon, queued_scope)
            await echo(pipeline, b"queued")
        assert queued_scope.cancelled_caught
        stream.release()
        stream.answer(3)
    await trio.testing.wait_all_tasks_blocked()
    assert [ids(f) for f in stream.sent[3:]] == [[3]]  # id 4, cancelled queued, never left
    assert all(not f.cancel for f in stream.sent[3:])
    assert not pipeline._waiters and not pipeline._outbox


async def cancel_soon(scope: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()


async def echo_after_answer(pipeline: Pipeline, transport: ScriptedTransport) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo, pipeline)
        await trio.testing.wait_all_tasks_blocked()
        transport.streams[0].answer(1)


async def test_a_broken_stream_fails_what_it_carried_and_the_next_call_opens_another(
    piped: Any,
) -> None:
    pipeline, transport = piped
    failures: list[grpc.StatusCode] = []

    async def doomed() -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await echo(pipeline)
        failures.append(caught.value.code())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(doomed)
        nursery.start_soon(doomed)
        await trio.testing.wait_all_tasks_blocked()
        transport.streams[0].finish(rpc_error(grpc.StatusCode.UNAVAILABLE, "peer gone"))
    assert failures == [grpc.StatusCode.UNAVAILABLE] * 2
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo, pipeline)
        await trio.testing.wait_all_tasks_blocked()
        assert len(transport.streams) == 2
        transport.streams[1].answer(3)


async def test_a_server_without_the_stream_sends_every_call_unary_and_none_twice(
    piped: Any,
) -> None:
    pipeline, transport = piped
    transport.refuse = rpc_error(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
    with pytest.raises(NotSent):
        await echo(pipeline)
    # Turned down before the handshake: nothing was written, and later calls go unary.
    assert [s.sent for s in transport.streams] == [[]]
    assert not pipeline.available
    with pytest.raises(NotSent):
        await echo(pipeline)
    assert len(transport.streams) == 1


# Guards: a stream that failed before its handshake (nothing listening) failed only the
# calls it carried, none: the queued ones kept it reopening in a hot loop until their deadlines.
async def test_a_stream_ending_before_its_handshake_sends_its_calls_unary_and_is_not_reopened(
    piped: Any, mock_clock: trio.testing.MockClock,
) -> None:
    pipeline, transport = piped
    transport.refuse = rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect")
    outcomes: list[str] = []

    async def queued() -> None:
        try:
            await echo(pipeline)
        except NotSent:
            outcomes.append("unary")

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(queued)
    # Nothing left on it, so all three may go unary; one stream opened for them.
    assert outcomes == ["unary"] * 3
    assert [s.sent for s in transport.streams] == [[]]
    # The next call, at once, goes unary without trying another stream.
    with pytest.raises(NotSent):
        await echo(pipeline)
    assert len(transport.streams) == 1
    assert pipeline.available and not pipeline._waiters and not pipeline._outbox


async def refused_opens(pipeline: Pipeline, transport: ScriptedTransport) -> int:
    """Streams one call opens, with every open turned down before its handshake."""
    before = len(transport.streams)
    with pytest.raises(NotSent):
        await echo(pipeline)
    return len(transport.streams) - before


# Guards: the pause after a stream that ended before its handshake (bug: none at all).
async def test_the_unary_pause_after_unserved_streams_doubles_and_a_handshake_resets_it(
    piped: Any, mock_clock: trio.testing.MockClock,
) -> None:
    pipeline, transport = piped
    transport.refuse = rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect")
    assert await refused_opens(pipeline, transport) == 1
    mock_clock.jump(FIRST_RETRY * 1.5)  # past the first pause: the next call tries again
    assert await refused_opens(pipeline, transport) == 1
    mock_clock.jump(FIRST_RETRY * 1.5)  # within the second, doubled, pause
    assert await refused_opens(pipeline, transport) == 0
    mock_clock.jump(FIRST_RETRY)
    transport.refuse = None  # the server is back: a handshake
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo, pipeline)
        await trio.testing.wait_all_tasks_blocked()
        served = transport.streams[-1]
        served.answer(*ids(served.sent[0]))
    assert len(transport.streams) == 3
    served.finish(rpc_error(grpc.StatusCode.UNAVAILABLE, "peer gone"))
    transport.refuse = rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect")
    assert await refused_opens(pipeline, transport) == 1
    mock_clock.jump(FIRST_RETRY * 1.5)  # the pause is back to the first one
    assert await refused_opens(pipeline, transport) == 1


async def test_an_error_answer_raises_the_status_and_trailers_a_unary_call_would(
    piped: Any,
) -> None:
    pipeline, transport = piped
    async with trio.open_nursery() as nursery:
        async def refused() -> None:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await echo(pipeline)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert caught.value.details() == "no variable 'x'"
            assert dict(caught.value.trailing_metadata()) == {"dspex-error-kind": "not_found"}

        nursery.start_soon(refused)
        await trio.testing.wait_all_tasks_blocked()
        transport.streams[0].inbox.append(cpb.ReplyFrame(replies=[cpb.CallReply(
            id=1, code=grpc.StatusCode.NOT_FOUND.value[0], details="no variable 'x'",
            trailers=[cpb.TrailerPair(key="dspex-error-kind", value="not_found")])]))
        transport.streams[0].arrived.set()


class StepCounter(trio.abc.Instrument):
    """Counts the steps trio runs of each task, by the task's name's last part."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        name = task.name.rsplit(".", 1)[-1]
        self.steps[name] = self.steps.get(name, 0) + 1


async def test_a_call_alone_on_an_idle_stream_is_written_by_its_caller_not_the_writer(
    piped: Any,
) -> None:
    pipeline, transport = piped
    await echo_after_answer(pipeline, transport)  # the stream is open and idle
    stream = transport.streams[0]
    counter = StepCounter()
    trio.lowlevel.add_instrument(counter)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo, pipeline, b"alone")
            await trio.testing.wait_all_tasks_blocked()
            assert [ids(f) for f in stream.sent[1:]] == [[2]]
            stream.answer(2)
    finally:
        trio.lowlevel.remove_instrument(counter)
    # The caller wrote its frame itself: the writer task never woke for it.
    assert counter.steps.get("_write", 0) == 0
    assert counter.steps["echo"] == 2  # its call, and its answer: no other schedule point


async def test_callers_answered_in_one_frame_call_again_packed_not_one_frame_each(
    piped: Any,
) -> None:
    pipeline, transport = piped
    got: list[bytes] = []

    async def twice(n: int) -> None:
        for _ in range(2):
            got.append(await echo(pipeline, str(n).encode()))

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(twice, n)
        await trio.testing.wait_all_tasks_blocked()
        stream = transport.streams[0]
        assert [ids(f) for f in stream.sent] == [[1, 2], [3]]
        stream.answer(1, 2, 3)
        await stream.wait_for_frames(4)
        await trio.testing.wait_all_tasks_blocked()
        # Woken together, they call again together: even the first of them, alone on
        # the stream for a moment, leaves its request to the writer to pack (halves,
        # not a frame per caller).
        assert [sorted(ids(f)) for f in stream.sent[2:]] == [[4, 5], [6]]
        stream.answer(4, 5, 6)
    assert len(got) == 6


# Guards: a first frame that reached the listener before open_stream returned was
# forgotten, and nothing was ever written on that stream.
async def test_a_first_frame_arriving_while_the_stream_opens_still_lets_calls_leave(
    piped: Any,
) -> None:
    pipeline, transport = piped
    transport.early = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo, pipeline, b"early")
        await trio.testing.wait_all_tasks_blocked()
        stream = transport.streams[0]
        assert [ids(f) for f in stream.sent] == [[1]]
        stream.answer(1)
    assert pipeline.frames_sent == 1


# Guards: a call made after its stream ended, before the pipeline noticed, was written on
# the dead stream and failed UNAVAILABLE although it never left.
async def test_a_call_made_as_its_stream_ends_cleanly_goes_on_the_next_stream(
    piped: Any,
) -> None:
    pipeline, transport = piped
    await echo_after_answer(pipeline, transport)
    first = transport.streams[0]
    first.finish(None)  # the server ends it cleanly; the pipeline has not run since
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo, pipeline, b"next")
        await trio.testing.wait_all_tasks_blocked()
        assert len(first.sent) == 1  # only the first call's frame
        second = transport.streams[1]
        assert [ids(f) for f in second.sent] == [[2]]
        second.answer(2)
