"""Positions on the Calls stream (over replicas): a call that says what its replica must
hold first carries it only to a stream not told as much, and again to every new stream
(perhaps another replica, after a failover). Against a scripted stream, no server."""

from __future__ import annotations

from typing import Any

import grpc
import trio
import trio.testing
from test_calls_pipeline import ScriptedStream, ScriptedTransport, ids, piped  # noqa: F401

from dspex_rx.client.calls import Pipeline, rpc_error
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire.channel import AFTER_KEY, POSITION_KEY


def sent_afters(stream: ScriptedStream) -> list[str | None]:
    """Each request's position as it left (None: it carried no metadata of its own)."""
    out: list[str | None] = []
    for frame in stream.sent:
        for request in frame.calls:
            metadata = {pair.key: pair.value for pair in request.metadata}
            # Metadata of its own replaces the stream's: the token must go with it.
            assert not metadata or metadata["k"] == "v"
            out.append(metadata.get(AFTER_KEY))
    return out


async def answered(pipeline: Pipeline, transport: ScriptedTransport, after: int,
                   position: int = 0) -> None:
    """One call with ``after``, answered on the current stream (with ``position``)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: pipeline.call(
            "Echo", pb.EchoRequest(), pb.EchoResponse, 30, after))
        await trio.testing.wait_all_tasks_blocked()
        stream = transport.streams[-1]
        trailers = ((POSITION_KEY, str(position)),) if position else ()
        stream.answer(ids(stream.sent[-1])[-1], trailers=trailers)


async def test_a_position_goes_once_to_a_stream_and_again_to_the_next_one(
    piped: Any,  # noqa: F811
) -> None:
    pipeline, transport = piped
    for after in (0, 40, 40, 55, 55):
        await answered(pipeline, transport, after)
    assert sent_afters(transport.streams[0]) == [None, "40", None, "55", None]
    # The stream breaks; the next one may be another replica's, told nothing yet.
    transport.streams[0].finish(rpc_error(grpc.StatusCode.UNAVAILABLE, "replica gone"))
    for after in (55, 55):
        await answered(pipeline, transport, after)
    assert sent_afters(transport.streams[1]) == ["55", None]


async def test_a_write_answered_with_its_position_needs_no_position_after_it(
    piped: Any,  # noqa: F811
) -> None:
    pipeline, transport = piped
    await answered(pipeline, transport, 0, position=70)  # a write this replica made
    await answered(pipeline, transport, 70)
    assert sent_afters(transport.streams[0]) == [None, None]


# Guards: a replica whose wait for a position ran out (it answered with less) was taken
# to hold it, and the session's later calls there were told nothing.
async def test_a_replica_that_answers_below_what_it_was_told_is_told_it_again(
    piped: Any,  # noqa: F811
) -> None:
    pipeline, transport = piped
    await answered(pipeline, transport, 40, position=30)
    await answered(pipeline, transport, 40, position=60)
    await answered(pipeline, transport, 60)
    assert sent_afters(transport.streams[0]) == ["40", "40", None]


# Guards: the position was decided as a call was made, so a request queued while its stream
# broke left on the next stream (perhaps another replica, behind) without it.
async def test_a_request_queued_as_its_stream_broke_carries_its_position_on_the_next_one(
    piped: Any,  # noqa: F811
) -> None:
    pipeline, transport = piped
    await answered(pipeline, transport, 40)
    first = transport.streams[0]
    first.hold = True  # the next write stays under way: what follows it queues
    got: list[str] = []

    async def call(after: int) -> None:
        try:
            await pipeline.call("Echo", pb.EchoRequest(), pb.EchoResponse, 30, after)
            got.append("answered")
        except grpc.aio.AioRpcError as exc:
            got.append(exc.code().name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, 0)
        await first.wait_for_frames(2)
        nursery.start_soon(call, 40)  # queued behind the write under way
        await trio.testing.wait_all_tasks_blocked()
        assert len(first.sent) == 2
        first.finish(rpc_error(grpc.StatusCode.UNAVAILABLE, "replica gone"))
        await trio.testing.wait_all_tasks_blocked()
        second = transport.streams[1]
        assert sent_afters(second) == ["40"]
        second.answer(*ids(second.sent[0]))
    assert got == ["UNAVAILABLE", "answered"]


# Guards: a call that told a position and was given up before its answer (which says
# whether that replica's wait ran out) left the stream taken to hold it.
async def test_a_call_given_up_after_telling_a_position_has_the_stream_told_again(
    piped: Any,  # noqa: F811
) -> None:
    pipeline, transport = piped
    await answered(pipeline, transport, 40, position=40)
    stream = transport.streams[0]
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pipeline.call(
                "Echo", pb.EchoRequest(), pb.EchoResponse, 30, 55))
            await stream.wait_for_frames(2)
            scope.cancel()
    await answered(pipeline, transport, 55)
    assert sent_afters(stream) == ["40", "55", "55"]
