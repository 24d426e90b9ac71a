"""Hostile requests over the wire: each is answered with a precise status, the server
keeps answering, and nothing is stored half-way. Each test here is the regression test of
a defect that was found (the property test in test_property_wire.py found several)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator

import grpc
import numpy as np
import pytest
import trio
from helpers import drain, settle
from wire import Raw, field, flag, nested_list, nested_map, raw_unary

import dspex_rx
import dspex_rx.wire.codec
from dspex_rx.client.transport import Transport
from dspex_rx.core.limits import Limits
from dspex_rx.server import MAX_PENDING_CONTROLS, SERVICE_NAME, EmbeddedServer, grpc_options
from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire.security import token_metadata

SMALL = Limits(max_message_bytes=1 << 20, max_value_bytes=200_000, max_metadata_bytes=4096,
               max_subscriptions_per_stream=12, max_streams_per_session=4)


@pytest.fixture(scope="module")
def small() -> Iterator[EmbeddedServer]:
    with EmbeddedServer(limits=SMALL) as embedded:
        yield embedded


class TokenTransport(Transport):
    """A raw transport that presents the token of the last session ``new_session`` made
    (sessions are authenticated: a call without the token would be UNAUTHENTICATED)."""

    metadata: tuple[tuple[str, str], ...] = ()

    async def unary(self, path: str, request: object, response_type: type,  # type: ignore[override]
                    timeout: float | None = None, metadata: object = ()) -> object:
        return await super().unary(path, request, response_type, timeout,  # type: ignore[arg-type]
                                   metadata or self.metadata)  # type: ignore[arg-type]

    async def open_stream(self, path: str, response_type: type,  # type: ignore[override]
                          metadata: object = ()) -> object:
        return await super().open_stream(path, response_type,  # type: ignore[arg-type]
                                         metadata or self.metadata)  # type: ignore[arg-type]


@pytest.fixture
async def transport(server: EmbeddedServer) -> AsyncIterator[Transport]:
    wire = TokenTransport(server.target, options=grpc_options(256 << 20))
    await wire.open()
    try:
        yield wire
    finally:
        await wire.close()


async def new_session(wire: Transport) -> str:
    reply = await wire.unary(f"/{SERVICE_NAME}/InitializeSession",
                             pb.InitializeSessionRequest(), pb.InitializeSessionResponse)
    if isinstance(wire, TokenTransport):
        wire.metadata = token_metadata(reply.session_token)
    return reply.session_id


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


async def still_answers(wire: Transport) -> None:
    reply = await wire.unary(f"/{SERVICE_NAME}/Echo", pb.EchoRequest(payload=b"ok"),
                             pb.EchoResponse)
    assert reply.payload == b"ok"


async def test_an_oversized_request_is_resource_exhausted(transport: Transport) -> None:
    error = await refused(transport.unary(
        f"/{SERVICE_NAME}/Echo", pb.EchoRequest(payload=b"x" * (65 << 20)), pb.EchoResponse))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (error.details() or "")
    await still_answers(transport)


async def test_bytes_protobuf_refuses_are_invalid_argument_not_unknown(
    transport: Transport,
) -> None:
    # A string field holding bad UTF-8 made gRPC answer UNKNOWN ("Unexpected DecodeError").
    sid = await new_session(transport)
    bad = field(1, sid.encode()) + field(2, b"\xff\xfe")
    error = await refused(raw_unary(transport, "GetVariable", bad, pb.GetVariableResponse))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed GetVariableRequest" in (error.details() or "")
    truncated = field(1, sid.encode())[:-3]
    error = await refused(raw_unary(transport, "GetVariable", truncated, pb.GetVariableResponse))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    await still_answers(transport)


async def test_a_malformed_stream_message_ends_only_that_stream(transport: Transport) -> None:
    stream = await transport.open_stream(f"/{SERVICE_NAME}/Session", spb.ServerMessage)
    await stream.send(Raw(field(1, field(1, b"\xff")))) # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as info, trio.fail_after(10):
        while await stream.receive_batch() is not None:
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed ClientMessage" in (info.value.details() or "")
    await stream.close()
    await still_answers(transport)


async def test_a_megabyte_ref_is_quoted_back_short(transport: Transport) -> None:
    # The error quoted the whole ref; a message that long does not fit in a header, so
    # the client got RESOURCE_EXHAUSTED "Stream removed" instead of NOT_FOUND.
    sid = await new_session(transport)
    for request in (pb.GetVariableRequest(session_id=sid, ref="x" * (1 << 20)),
                    pb.GetVariableRequest(session_id="s" * 100_000, ref="x")):
        error = await refused(transport.unary(f"/{SERVICE_NAME}/GetVariable", request,
                                              pb.GetVariableResponse))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert len(error.details() or "") < 300


@pytest.mark.parametrize("nest", [nested_list, nested_map], ids=["lists", "maps"])
async def test_a_value_too_deep_to_send_back_is_never_stored(
    transport: Transport, nest: object,
) -> None:
    # A dict 33 levels deep parsed fine, was stored, and then every read, listing and
    # watch of the session failed: the codec cannot encode it back.
    sid = await new_session(transport)
    request = (field(1, sid.encode()) + field(2, b"deep") + field(3, nest(33))  # type: ignore[operator]
               + flag(5))  # create_if_missing
    error = await refused(raw_unary(transport, "SetVariable", request, pb.SetVariableResponse))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nests 33 levels deep, above the max_depth limit of 32" in (error.details() or "")
    listed = await transport.unary(f"/{SERVICE_NAME}/ListVariables",
                                   pb.ListVariablesRequest(session_id=sid),
                                   pb.ListVariablesResponse)
    assert list(listed.variables) == []


async def test_an_unknown_dependency_type_is_refused(transport: Transport) -> None:
    # Unknown enum numbers silently became "data".
    sid = await new_session(transport)
    for name in ("a", "b"):
        await transport.unary(f"/{SERVICE_NAME}/SetVariable", pb.SetVariableRequest(
            session_id=sid, ref=name, value=dspex_rx.wire.codec.encode(1), create_if_missing=True),
            pb.SetVariableResponse)
    error = await refused(transport.unary(
        f"/{SERVICE_NAME}/AddDependency",
        pb.AddDependencyRequest(session_id=sid, from_ref="a", to_ref="b",
                                dependency_type=77),  # type: ignore[arg-type]
        pb.AddDependencyResponse))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dependency type is unknown (wire value 77)" in (error.details() or "")


async def test_an_answer_too_big_for_a_message_is_refused_before_it_is_built(
    transport: Transport,
) -> None:
    # 200 refs to one 1 MiB variable asked for a 200 MiB answer: built whole in memory,
    # then refused by gRPC's send, as an INTERNAL-looking failure.
    sid = await new_session(transport)
    await transport.unary(f"/{SERVICE_NAME}/SetVariable", pb.SetVariableRequest(
        session_id=sid, ref="big", value=dspex_rx.wire.codec.encode("x" * (1 << 20)),
        create_if_missing=True), pb.SetVariableResponse)
    error = await refused(transport.unary(
        f"/{SERVICE_NAME}/GetVariables", pb.GetVariablesRequest(session_id=sid, refs=["big"] * 200),
        pb.GetVariablesResponse))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "above the max_message_bytes limit" in (error.details() or "")
    await still_answers(transport)


async def test_limits_reach_the_client_as_precise_exceptions(small: EmbeddedServer) -> None:
    async with dspex_rx.connect(small.target) as session:
        with pytest.raises(ValueError, match="above the max_value_bytes limit of 200000"):
            await session.register_variable("t", "tensor", np.zeros(30_000))
        await session.register_variable("t", "tensor", np.zeros(10))
        assert await session.list_variables() != []
        errors: list[Exception] = []
        for i in range(13):
            await session.register_variable(f"w{i}", "integer", 0)
            session.observe(f"w{i}").subscribe(on_error=errors.append)  # type: ignore[arg-type]
            await settle(session)
        assert [type(e) for e in errors] == [dspex_rx.errors.ResourceExhaustedError]
        assert "would watch 13 variables, above the max_subscriptions_per_stream limit of 12" in (
            str(errors[0]))
        await session.set_variable("w0", 1)  # the stream and its other watches go on
        assert await session.get_variable("w0") == 1


async def test_a_frame_too_big_for_one_message_is_split_not_fatal(small: EmbeddedServer) -> None:
    # A write to `src` tells its 8 dependents, each event carrying the dependent's 190 KB
    # value: one 1.5 MB frame, above the 1 MiB message limit. It killed the watch stream
    # (and the client reconnected into the same wall, forever).
    async with dspex_rx.connect(small.target) as writer, dspex_rx.connect(
        small.target, session_id=writer.session_id, token=writer.token
    ) as watcher:
        await writer.register_variable("src", "integer", 0)
        names = [f"v{i}" for i in range(8)]
        for name in names:
            await writer.register_variable(name, "string", name + "x" * 190_000,
                                           dependencies=["src"])
        watch = await watcher.watch_variables(["src", *names], include_initial=False)
        for value in (1, 2):
            await writer.set_variable("src", value)
        with trio.fail_after(10):
            await settle(watcher)
        seen = [(u.name, u.update_type) for u in drain(watch)]
        assert not watch.closed
        expected = [("src", "value_change")] + [(n, "dependency_changed") for n in names]
        assert seen == expected * 2


async def test_a_client_that_only_writes_cannot_grow_the_server_queue(
    server: EmbeddedServer, transport: Transport,
) -> None:
    # Each subscribe queues an ack and a 20 KB initial frame; a client that sends
    # thousands and reads nothing stalls the server's sends (flow control) while the
    # server went on reading and queueing, without bound. Now it stops reading.
    sid = await new_session(transport)
    await transport.unary(f"/{SERVICE_NAME}/SetVariable", pb.SetVariableRequest(
        session_id=sid, ref="v", value=dspex_rx.wire.codec.encode("x" * 20_000),
        create_if_missing=True), pb.SetVariableResponse)
    stream = await transport.open_stream(f"/{SERVICE_NAME}/Session", spb.ServerMessage)
    await stream.send(spb.ClientMessage(open=spb.OpenStream(session_id=sid)))
    sends = 3 * MAX_PENDING_CONTROLS

    def queued() -> int:
        return server.call(lambda: max(
            s.pending_controls for s in server.service.subscribers if s.session_id == sid))

    async def flood() -> None:
        for n in range(sends):
            await stream.send(spb.ClientMessage(subscribe=spb.Subscribe(
                request_id=n + 1, refs=["v"], include_initial=True)))

    acks = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        for _ in range(20):  # not a timing assertion: give the reader time to run ahead
            await trio.sleep(0.05)
            assert queued() <= MAX_PENDING_CONTROLS
        with trio.fail_after(30):
            while acks < sends:
                batch = await stream.receive_batch()
                assert batch is not None
                acks += sum(1 for m in batch if m.WhichOneof("control") == "subscribed")
    await stream.close()


async def test_connect_passes_limits_to_its_embedded_server_and_its_own_channel() -> None:
    # connect() with no target used to start its server with the default limits, and
    # the client's channel took at most 64 MiB whatever the server allowed.
    small = Limits(max_value_bytes=1024, max_message_bytes=256 * 1024,
                   max_metadata_bytes=4096, max_description_length=1024)
    async with dspex_rx.connect(limits=small) as session:
        assert session.max_message_bytes == 256 * 1024
        with pytest.raises(ValueError, match="max_value_bytes"):
            await session.register_variable("big", "string", "x" * 2000)
        await session.register_variable("ok", "string", "x" * 500)
    with pytest.raises(ValueError, match="limits configure the embedded server"):
        dspex_rx.SessionContext(target="127.0.0.1:1", limits=small)
    with pytest.raises(ValueError, match="max_message_bytes must be a positive integer"):
        dspex_rx.SessionContext(max_message_bytes=0)


async def test_the_clients_message_limit_applies_to_what_it_receives(
    server: EmbeddedServer,
) -> None:
    async with dspex_rx.connect(server.target) as writer, dspex_rx.connect(
        server.target, session_id=writer.session_id, token=writer.token,
        max_message_bytes=64 * 1024,
    ) as reader:
        await writer.register_variable("blob", "string", "x" * 100_000)
        with pytest.raises(dspex_rx.ResourceExhaustedError):
            await reader.get_variable("blob", bypass_cache=True)
        assert await writer.get_variable("blob", bypass_cache=True) == "x" * 100_000


# --------------------------------------------------------------------- session parameters


# Guards: a NaN ttl passed `ttl <= 0`, and the session could never expire.
async def test_initialize_session_refuses_a_nan_ttl(
    server: EmbeddedServer,
) -> None:
    # A NaN ttl once slipped past `not ttl or ttl <= 0`; `now - last_seen > NaN` is never
    # true, so the session could never expire. It must be refused.
    transport = Transport(server.target)
    await transport.open()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await transport.unary(
                f"/{SERVICE_NAME}/InitializeSession",
                pb.InitializeSessionRequest(ttl_seconds=math.nan),
                pb.InitializeSessionResponse,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ttl" in (refused.value.details() or "")
    finally:
        await transport.close()


# --------------------------------------------------------- what the wire cannot send back


# Guards: metadata 33 lists deep was committed, then every ListVariables of the session failed.
async def test_write_metadata_too_deep_to_send_back_is_never_stored(
    server: EmbeddedServer,
) -> None:
    # Found by the wire property test: an UpdateVariables whose metadata nests 33 lists
    # deep committed (the metadata merges into the variable's), then ListVariables of
    # the session failed with "value nests deeper than 32 levels" for good.
    async with dspex_rx.connect(server.target) as session:
        await session.register_variable("a", "float", 0.5)
        wire = Transport(server.target)
        await wire.open()
        try:
            entry = pb.UpdateVariablesRequest().updates.add(ref="a")
            entry.value.CopyFrom(dspex_rx.wire.codec.encode(0.25))
            deep = field(1, field(1, b"k") + field(2, nested_list(33)))
            request = (field(1, session.session_id.encode()) + field(2, entry.SerializeToString())
                       + field(3, deep))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await raw_unary(wire, "UpdateVariables", request, pb.UpdateVariablesResponse,
                                metadata=token_metadata(session.token))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "metadata nests 33 levels deep" in (refused.value.details() or "")
            listed = await wire.unary(f"/{SERVICE_NAME}/ListVariables",
                                      pb.ListVariablesRequest(session_id=session.session_id),
                                      pb.ListVariablesResponse,
                                      metadata=token_metadata(session.token))
            assert [v.name for v in listed.variables] == ["a"]
        finally:
            await wire.close()
        assert await session.get_variable("a", bypass_cache=True) == 0.5
