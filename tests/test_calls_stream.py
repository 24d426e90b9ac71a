"""The Calls stream at the protocol level (raw frames over a plain grpc.aio stub): requests
run in order and are answered by id, per-call auth and errors as their unary RPCs give
them, cancellation of one request, the in-flight bound, and what ends the stream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import trio
from calls_gate import Gate

import dspex_rx
from dspex_rx.server import EmbeddedServer
from dspex_rx.server import calls as server_calls
from dspex_rx.v1 import calls_pb2 as cpb
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.v1 import variables_pb2_grpc as pb_grpc
from dspex_rx.wire import codec
from dspex_rx.wire.security import token_metadata


async def raw(target: str, fn: Callable[[Any], Any], *, channel: bool = False) -> Any:
    """Run ``fn(stub)`` (or ``fn(channel)``) on a fresh grpc.aio channel, own loop, own thread."""
    async def main() -> Any:
        async with grpc.aio.insecure_channel(target) as ch:
            return await fn(ch if channel else pb_grpc.VariablesStub(ch))

    return await trio.to_thread.run_sync(asyncio.run, main())


def request(call_id: int, method: str, message: Any) -> cpb.CallRequest:
    return cpb.CallRequest(id=call_id, method=method, request=message.SerializeToString())


async def replies(call: Any, count: int) -> dict[int, cpb.CallReply]:
    """Read frames until ``count`` answers came; by id."""
    out: dict[int, cpb.CallReply] = {}
    while len(out) < count:
        frame = await call.read()
        assert frame is not grpc.aio.EOF, f"stream ended with {len(out)} of {count} answers"
        for reply in frame.replies:
            assert reply.id not in out, f"answered twice: {reply.id}"
            out[reply.id] = reply
    return out


async def test_a_frames_requests_run_in_order_and_are_answered_by_id(
    server: EmbeddedServer, session: dspex_rx.SessionContext
) -> None:
    await session.register_variable("t", "float", 0.5)
    sid = session.session_id

    async def run(stub: pb_grpc.VariablesStub) -> dict[int, cpb.CallReply]:
        call = stub.Calls(metadata=token_metadata(session.token))
        await call.write(cpb.CallFrame(calls=[
            request(7, "SetVariable", pb.SetVariableRequest(
                session_id=sid, ref="t", value=codec.encode(1.0))),
            request(8, "SetVariable", pb.SetVariableRequest(
                session_id=sid, ref="t", value=codec.encode(1.5))),
            request(9, "GetVariable", pb.GetVariableRequest(session_id=sid, ref="t")),
        ]))
        got = await replies(call, 3)
        call.cancel()
        return got

    got = await raw(server.target, run)
    assert [got[i].code for i in (7, 8, 9)] == [0, 0, 0]
    first = pb.SetVariableResponse.FromString(got[7].response)
    second = pb.SetVariableResponse.FromString(got[8].response)
    read = pb.GetVariableResponse.FromString(got[9].response)
    assert (first.variable.version, second.variable.version) == (2, 3)
    assert codec.decode(read.variable.value) == 1.5 and read.variable.version == 3


async def test_each_request_is_refused_as_its_unary_rpc_would_be(
    server: EmbeddedServer, session: dspex_rx.SessionContext
) -> None:
    await session.register_variable("t", "float", 0.5, constraints={"min": 0, "max": 1})
    sid = session.session_id
    set_high = pb.SetVariableRequest(session_id=sid, ref="t", value=codec.encode(5.0))

    async def run(stub: pb_grpc.VariablesStub) -> tuple[dict[int, cpb.CallReply], Any]:
        call = stub.Calls(metadata=token_metadata(session.token))
        await call.write(cpb.CallFrame(calls=[
            request(1, "SetVariable", set_high),
            request(2, "GetVariable", pb.GetVariableRequest(session_id=sid, ref="gone")),
            request(3, "NoSuchRpc", pb.EchoRequest()),
        ]))
        got = await replies(call, 3)
        call.cancel()
        try:
            await stub.SetVariable(set_high, metadata=token_metadata(session.token))
        except grpc.aio.AioRpcError as exc:
            unary = exc
        return got, unary

    got, unary = await raw(server.target, run)
    trailers = {pair.key: pair.value for pair in got[1].trailers}
    assert got[1].code == unary.code().value[0] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert got[1].details == unary.details() and "above max 1" in got[1].details
    assert trailers == dict(unary.trailing_metadata())
    assert got[2].code == grpc.StatusCode.NOT_FOUND.value[0] and "gone" in got[2].details
    assert got[3].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "no unary RPC named 'NoSuchRpc'" in got[3].details
    assert got[1].response == got[2].response == b""


async def test_a_request_without_the_sessions_token_is_refused_and_writes_nothing(
    server: EmbeddedServer, session: dspex_rx.SessionContext
) -> None:
    await session.register_variable("t", "float", 0.5)
    sid = session.session_id

    async def run(stub: pb_grpc.VariablesStub) -> dict[int, cpb.CallReply]:
        call = stub.Calls(metadata=token_metadata("B" * 43))
        await call.write(cpb.CallFrame(calls=[
            request(1, "SetVariable", pb.SetVariableRequest(
                session_id=sid, ref="t", value=codec.encode(0.9))),
            request(2, "GetVariable", pb.GetVariableRequest(session_id=sid, ref="t")),
        ]))
        got = await replies(call, 2)
        call.cancel()
        return got

    got = await raw(server.target, run)
    for reply in got.values():
        assert reply.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert {p.key: p.value for p in reply.trailers}["dspex-error-kind"] == "unauthenticated"
    assert await session.get_variable("t", bypass_cache=True) == 0.5
    assert [v["version"] for v in await session.list_variables("^t$")] == [1]


async def test_a_cancelled_request_is_never_answered_and_its_handler_is_cancelled(
    server: EmbeddedServer, session: dspex_rx.SessionContext, gate: Gate
) -> None:
    sid = session.session_id

    async def run(stub: pb_grpc.VariablesStub) -> dict[int, cpb.CallReply]:
        call = stub.Calls(metadata=token_metadata(session.token))
        await call.write(cpb.CallFrame(calls=[
            request(1, "GetVariable", pb.GetVariableRequest(session_id=sid, ref="slow"))]))
        await asyncio.to_thread(gate.until, lambda g: g.waiting == 1)
        await call.write(cpb.CallFrame(cancel=[1], calls=[request(2, "Echo", pb.EchoRequest(
            payload=b"still here"))]))
        got = await replies(call, 1)
        call.cancel()
        return got

    got = await raw(server.target, run)
    assert list(got) == [2]
    assert pb.EchoResponse.FromString(got[2].response).payload == b"still here"
    assert gate.read(lambda g: (g.cancelled, g.waiting)) == (1, 0)


async def test_the_server_runs_at_most_max_in_flight_requests_of_a_stream(
    server: EmbeddedServer, session: dspex_rx.SessionContext, gate: Gate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server_calls, "MAX_IN_FLIGHT", 2)
    sid = session.session_id
    slow = pb.GetVariableRequest(session_id=sid, ref="slow")

    async def run(stub: pb_grpc.VariablesStub) -> dict[int, cpb.CallReply]:
        call = stub.Calls(metadata=token_metadata(session.token))
        await call.write(cpb.CallFrame(calls=[request(i, "GetVariable", slow)
                                              for i in range(1, 6)]))
        await asyncio.to_thread(gate.until, lambda g: g.waiting == 2)
        gate.open()
        got = await replies(call, 5)
        call.cancel()
        return got

    got = await raw(server.target, run)
    assert sorted(got) == [1, 2, 3, 4, 5]
    assert {r.code for r in got.values()} == {grpc.StatusCode.NOT_FOUND.value[0]}
    assert gate.read(lambda g: g.most) == 2


@pytest.mark.parametrize(("frame", "message"), [
    # Two requests with one id, in flight together.
    (cpb.CallFrame(calls=[cpb.CallRequest(id=4, method="Echo"),
                          cpb.CallRequest(id=4, method="Echo")]),
     "request id 4 is already in flight"),
    # A method name that is not UTF-8: bytes protobuf refuses.
    (cpb.ReplyFrame(replies=[cpb.CallReply(response=b"\xff\xfe")]), "malformed CallFrame"),
])
async def test_a_frame_the_server_cannot_take_ends_the_stream_invalid_argument(
    server: EmbeddedServer, frame: Any, message: str
) -> None:
    async def run(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
        # Serialized as it is, so a frame of another type reaches the server's parser.
        call = channel.stream_stream(
            "/dspex_rx.v1.Variables/Calls", request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=cpb.ReplyFrame.FromString)()
        await call.write(frame)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while await call.read() is not grpc.aio.EOF:
                pass
        return caught.value

    error = await raw(server.target, run, channel=True)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.details() or "")
