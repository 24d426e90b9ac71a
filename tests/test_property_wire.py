"""Property test: random sequences of valid and hostile requests, sent with the raw grpc.aio
stub (wrong enum numbers, huge and negative numbers, empty and megabyte refs, values
nested past every limit, NaN in constraints, oversized strings, bytes that are not UTF-8,
random bytes), against a server with small limits so every limit and the memory budget
trip often. After every step:

- the server still answers (Echo, and a read of the session);
- a refused request changed nothing (variables, versions, names, dependencies);
- a committed write took a revision above every earlier one;
- the store's invariants hold: versions consecutive in each history, the name index and
  the variables agree, dependencies join existing variables, the log's revisions
  increase, every record, status and logged event can be encoded (a value the codec
  cannot send back would break every read and watch of the session), and the memory
  accounts match a recount (``MemoryStore.check_accounts``) and the budgets.

Hypothesis runs derandomized with a bounded number of examples, so CI sees the same
cases every run; a failure prints the operations that caused it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire import field, nested_list, nested_map

from dspex_rx.core.limits import Limits
from dspex_rx.core.types import same_value, validate_value
from dspex_rx.server import (
    SERVICE_NAME,
    EmbeddedServer,
    event_to_pb,
    grpc_options,
    record_to_pb,
    status_to_pb,
)
from dspex_rx.store import MemoryStore
from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.v1 import value_pb2 as vpb
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.v1 import variables_pb2_grpc as pb_grpc
from dspex_rx.wire import codec
from dspex_rx.wire.convert import type_from_pb
from dspex_rx.wire.security import token_metadata

LIMITS = Limits(
    max_message_bytes=1 << 20, max_value_bytes=20_000, max_metadata_bytes=2_000,
    max_metadata_keys=8, max_description_length=100, max_string_length=100,
    max_pattern_length=64, max_batch_size=6, max_collection_items=300,
    max_array_elements=500, max_variables_per_session=12, history_size=4,
    max_dependencies_per_session=10, max_subscriptions_per_stream=8,
    max_streams_per_session=3, max_clients_per_session=4, max_sessions=200,
    max_session_bytes=120_000, max_store_bytes=10_000_000,
)
# Each name has one type, so valid writes can be generated without knowing the state:
# name -> (wire type, constraints).
TYPED: dict[str, tuple[int, dict[str, Any]]] = {
    "a": (pb.VARIABLE_TYPE_FLOAT, {"min": -10.0, "max": 10.0}),
    "b": (pb.VARIABLE_TYPE_INTEGER, {}),
    "c": (pb.VARIABLE_TYPE_STRING, {"pattern": "[a-z]*"}),
    "d": (pb.VARIABLE_TYPE_LIST, {"item_type": "integer"}),
    "e": (pb.VARIABLE_TYPE_DICT, {}),
    "t": (pb.VARIABLE_TYPE_TENSOR, {"dtype": "float32"}),
}
NAMES = list(TYPED)
INITIAL = {"a": 0.5, "b": 1, "c": "abc", "d": [1, 2], "e": {"k": [1]}, "t": [0.5, 0.25]}
TYPES = [*range(0, 11), -1, 99]  # 0 unspecified, 1..10 valid, then unknown numbers


@pytest.fixture(scope="module")
def hostile() -> Iterator[tuple[EmbeddedServer, asyncio.AbstractEventLoop, Any]]:
    store = MemoryStore(limits=LIMITS, log_size=6)
    with EmbeddedServer(store=store, progress_interval=0.05) as embedded:
        loop = asyncio.new_event_loop()

        async def connect() -> Any:
            # The client may send more than the server accepts: the server must refuse it.
            return grpc.aio.insecure_channel(embedded.target, options=grpc_options(8 << 20))

        channel = loop.run_until_complete(connect())
        try:
            yield embedded, loop, channel
        finally:
            loop.run_until_complete(channel.close())
            loop.close()


# ------------------------------------------------------------------ strategies

REFS = st.sampled_from(NAMES) | st.sampled_from(["nope", "", "x" * 300, "var_a_1", "é"])
SMALL_INT = st.integers(-3, 6)
WILD_INT = SMALL_INT | st.sampled_from([-(2**63), 2**63 - 1, 2**31, -1])
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.5, 1.0, -2.0])
TEXT = st.text(max_size=5) | st.sampled_from(["", "x" * 30_000, "model.a"])

PLAIN = st.recursive(
    st.none() | st.booleans() | WILD_INT | FLOATS | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=3),
    max_leaves=12,
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-1, 1) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=3),
    max_leaves=10,
)
# Valid values per name, some big enough to press on the memory budget and the limits.
VALID: dict[str, st.SearchStrategy[Any]] = {
    "a": st.floats(-10, 10),
    "b": st.integers(-(2**63), 2**63 - 1),
    "c": st.text("abcxyz", max_size=8) | st.sampled_from(["q" * 9000, "z" * 19_000]),
    "d": st.lists(st.integers(-9, 9), max_size=6) | st.sampled_from([[1] * 250, [2] * 400]),
    "e": st.dictionaries(st.text(max_size=3), JSON, max_size=4),
    "t": st.lists(st.floats(-1, 1, width=32), max_size=8) | st.sampled_from([[0.0] * 600]),
}


def _encoded(value: Any) -> bytes:
    return codec.encode(value).SerializeToString()


# Valid first: hypothesis favours the first choice, so most operations are valid ones (a
# session needs variables before hostile writes to them mean anything).
MOSTLY = st.sampled_from([True, True, True, False])


def valid_value(name: str) -> st.SearchStrategy[bytes]:
    return VALID[name].map(_encoded)


def _array(dtype: str, shape: list[int], data: bytes) -> vpb.Value:
    value = vpb.Value()
    value.array_value.dtype = dtype
    value.array_value.shape.extend(shape)
    value.array_value.data = data
    return value


ARRAYS = st.builds(
    _array,
    st.sampled_from(["float32", "float64", "int8", "bool", "object", "", "<f4"]),
    st.lists(st.sampled_from([0, 1, 2, 3, -1, 2**40]), max_size=3),
    st.sampled_from([b"", b"\x00" * 4, b"\x00" * 8, b"\x00" * 12, b"\x00\x00\xc0\x7f" * 3]),
)


@st.composite
def values(draw: st.DrawFn) -> bytes:
    """A wire Value as bytes: plain values, arrays (sound or not), hand-made nesting."""
    kind = draw(st.integers(0, 9))
    if kind <= 5:
        try:
            return codec.encode(draw(PLAIN)).SerializeToString()
        except ValueError:  # a float the codec refuses? (it sends NaN; keep going)
            return codec.encode(None).SerializeToString()
    if kind <= 7:
        return draw(ARRAYS).SerializeToString()
    if kind == 8:  # lists parse up to ~48 levels: past max_depth, within protobuf's reach
        return nested_list(draw(st.sampled_from([33, 34, 40, 32, 60])))
    return nested_map(draw(st.sampled_from([32, 31, 33])))  # maps: protobuf stops at ~32


def maps(draw: st.DrawFn) -> bytes:
    """A MapValue's bytes (constraints, metadata, config, metrics)."""
    entries = draw(st.lists(st.tuples(st.text(max_size=4) | st.sampled_from(
        ["min", "max", "pattern", "choices", "max_length", "dimensions", "shape", "dtype",
         "allow_nan", "item_type", "normalize"]), values()), max_size=3))
    raw = b""
    for key, value in entries:
        raw += field(1, field(1, key.encode()) + field(2, value))
    if not draw(MOSTLY):
        raw += field(1, field(1, b"k") + field(2, nested_map(draw(st.sampled_from([33, 40])))))
    return raw


CONSTRAINTS = st.sampled_from([
    {}, {"min": 0.0, "max": 1.0}, {"min": math.nan}, {"max": math.inf}, {"min": 2, "max": 1},
    {"pattern": "(a+)+$"}, {"pattern": r"(a)\1"}, {"pattern": "a" * 100}, {"pattern": "[a-z]*"},
    {"choices": ["a", "b"]}, {"choices": []}, {"max_length": 3}, {"max_length": -1},
    {"dimensions": 2}, {"shape": [2, None]}, {"dtype": "float32"}, {"unknown": 1},
    {"item_type": "integer"}, {"allow_nan": True}, {"choices": ["x"] * 2},
])


@st.composite
def specs(draw: st.DrawFn) -> bytes:
    if draw(MOSTLY):
        name = draw(st.sampled_from(NAMES))
        kind, constraints = TYPED[name]
        spec = pb.VariableSpec(
            name=name, type=kind,  # type: ignore[arg-type]
            dependencies=draw(st.lists(st.sampled_from(NAMES), max_size=2)),
            description=draw(st.sampled_from(["", "about " + name])),
        )
        spec.constraints.CopyFrom(codec.encode_map(constraints))
        raw = spec.SerializeToString() + field(3, draw(valid_value(name)))
        if draw(st.booleans()):
            metadata = draw(st.dictionaries(st.text(max_size=3), JSON, max_size=3))
            raw += field(5, codec.encode_map(metadata).SerializeToString())
        return raw
    spec = pb.VariableSpec(
        name=draw(REFS | st.sampled_from(["9bad", "a b", "n" * 257])),
        type=draw(st.sampled_from(TYPES)),  # type: ignore[arg-type]
        description=draw(st.sampled_from(["", "d", "d" * 101])),
        dependencies=draw(st.lists(REFS, max_size=3)),
    )
    spec.constraints.CopyFrom(codec.encode_map(draw(CONSTRAINTS)))
    raw = spec.SerializeToString() + field(3, draw(values()))
    if draw(st.booleans()):
        raw += field(5, maps(draw))
    return raw


# An operation is (method, request bytes without the session id, response type): hostile
# values are spliced in as bytes (a message made by protobuf itself could not hold them;
# protobuf merges repeated occurrences of a message field).
Op = tuple[str, bytes, Any]


@st.composite
def operations(draw: st.DrawFn) -> Op:
    op = draw(st.sampled_from([
        "set", "update", "register", "register_many", "set", "update", "delete",
        "add_dependency", "remove_dependency", "rollback", "history", "get_many", "list",
        "optimize", "raw", "stream", "attach",
    ]))
    if op == "attach":
        request = pb.InitializeSessionRequest(
            ttl_seconds=draw(st.sampled_from([0.0, 5.0, -1.0, math.nan, 1e300])),
            client_name=draw(st.sampled_from(["", "n", "n" * 101])),
        ).SerializeToString()
        if draw(st.booleans()):
            request += field(2, maps(draw))
        return "attach", request, None
    if op == "register":
        return "RegisterVariable", field(2, draw(specs())), pb.RegisterVariableResponse
    if op == "register_many":
        batch = b"".join(field(2, s) for s in draw(st.lists(specs(), min_size=1, max_size=7)))
        return "RegisterVariables", batch, pb.RegisterVariablesResponse
    if op == "set" and draw(MOSTLY):
        name = draw(st.sampled_from(NAMES))
        request = pb.SetVariableRequest(ref=name, expected_version=draw(st.sampled_from(
            [0, 0, 0, 1, 2, 3])))
        value = draw(VALID[name])
        raw = request.SerializeToString() + field(3, _encoded(value))
        if draw(st.booleans()):
            metadata = {draw(st.sampled_from("klmnopqrs")): draw(JSON)}
            raw += field(4, codec.encode_map(metadata).SerializeToString())
        # A write that succeeds must store exactly what validation makes of the value.
        return "SetVariable", raw, (pb.SetVariableResponse, name, value)
    if op == "set":
        request = pb.SetVariableRequest(
            ref=draw(REFS), create_if_missing=draw(MOSTLY),
            type_hint=draw(st.sampled_from(TYPES)),  # type: ignore[arg-type]
            expected_version=draw(WILD_INT), source=draw(st.sampled_from(["", "s" * 101])),
            fencing_token=draw(WILD_INT),
        )
        raw = request.SerializeToString() + field(3, draw(values()))
        if draw(st.booleans()):
            raw += field(4, maps(draw))
        return "SetVariable", raw, pb.SetVariableResponse
    if op == "update":
        # Half the batches are atomic and all-valid, so some apply whole (and the check
        # that every entry landed has something to check).
        clean = draw(st.booleans())
        atomic = clean or draw(st.booleans())
        raw = pb.UpdateVariablesRequest(atomic=atomic).SerializeToString()
        for _ in range(draw(st.integers(2 if clean else 0, 7))):
            if clean or draw(MOSTLY):
                name = draw(st.sampled_from(NAMES))
                entry = pb.UpdateVariablesRequest().updates.add(ref=name)
                value = draw(valid_value(name))
            else:
                entry = pb.UpdateVariablesRequest().updates.add(
                    ref=draw(REFS), expected_version=draw(SMALL_INT))
                value = draw(values())
            raw += field(2, entry.SerializeToString() + field(2, value))
        if not clean and draw(st.booleans()):
            raw += field(3, maps(draw))
        return "UpdateVariables", raw, pb.UpdateVariablesResponse
    if op == "delete":
        request = pb.DeleteVariableRequest(ref=draw(st.sampled_from(NAMES) | REFS),
                                           cascade=draw(st.booleans()))
        return "DeleteVariable", request.SerializeToString(), pb.DeleteVariableResponse
    if op == "remove_dependency":
        request = pb.RemoveDependencyRequest(from_ref=draw(st.sampled_from(NAMES)),
                                             to_ref=draw(st.sampled_from(NAMES) | REFS))
        return "RemoveDependency", request.SerializeToString(), pb.RemoveDependencyResponse
    if op == "add_dependency":
        request = pb.AddDependencyRequest(
            from_ref=draw(st.sampled_from(NAMES)), to_ref=draw(st.sampled_from(NAMES) | REFS),
            dependency_type=draw(st.sampled_from([0, 1, 2, 3, 77])),  # type: ignore[arg-type]
        )
        raw = request.SerializeToString()
        if draw(st.booleans()):
            raw += field(5, maps(draw))
        return "AddDependency", raw, pb.AddDependencyResponse
    if op == "rollback":
        request = pb.RollbackRequest(
            ref=draw(st.sampled_from(NAMES)), version=draw(st.integers(1, 6) | WILD_INT),
            reason=draw(st.sampled_from(["", "r" * 101])),
            expected_version=draw(st.sampled_from([0, 0, 0, 2, -1])))
        return "Rollback", request.SerializeToString(), pb.RollbackResponse
    if op == "history":
        request = pb.GetHistoryRequest(
            ref=draw(st.sampled_from(NAMES) | REFS),
            limit=draw(st.sampled_from([0, 1, 3, -5, 2**31 - 1])),
            offset=draw(st.sampled_from([0, 1, -1, 2**31 - 1])), include_metadata=True)
        return "GetHistory", request.SerializeToString(), pb.GetHistoryResponse
    if op == "get_many":
        request = pb.GetVariablesRequest(refs=draw(st.lists(REFS, max_size=8)))
        return "GetVariables", request.SerializeToString(), pb.GetVariablesResponse
    if op == "list":
        request = pb.ListVariablesRequest(pattern=draw(st.sampled_from(
            ["", "*", "a*", "[!a]", "*a*a*a*a*a*a*a*a*b", "*" * 65, "[z-a]"])))
        return "ListVariables", request.SerializeToString(), pb.ListVariablesResponse
    if op == "optimize" and draw(MOSTLY):
        start = pb.StartOptimizationRequest(
            optimizer_type="grid_search", max_iterations=5, client_id="c",
            ttl_seconds=draw(st.sampled_from([0.0, 5.0, 1e-9])),
            minimize=draw(st.booleans())).SerializeToString()
        step = pb.OptimizationStepRequest(
            has_record=True, iteration=1, score=draw(st.floats(-1, 1)), has_write=True,
            write_iteration=2,
        ).SerializeToString() + field(7, _encoded(draw(VALID["a"]))) + field(
            11, _encoded(draw(VALID["a"])))
        finish = pb.FinishOptimizationRequest(
            has_final=draw(st.booleans()), state="completed",
        ).SerializeToString() + field(11, _encoded(draw(VALID["a"])))
        return "optimize", b"", (start, step, finish, draw(st.booleans()), draw(st.booleans()))
    if op == "optimize":
        start = pb.StartOptimizationRequest(
            ref=draw(REFS), optimizer_type=draw(st.sampled_from(
                ["grid_search", "", "bad name", "x" * 300])),
            ttl_seconds=draw(st.sampled_from([0.0, 1e-9, math.nan, 5.0])),
            max_iterations=draw(st.sampled_from([0, 3, -1, 2**40])), client_id="c",
        ).SerializeToString()
        if draw(st.booleans()):
            start += field(4, maps(draw))
        step = pb.OptimizationStepRequest(
            has_record=draw(st.booleans()), iteration=draw(SMALL_INT), score=draw(FLOATS),
            has_write=draw(st.booleans()), write_iteration=draw(WILD_INT),
        ).SerializeToString() + field(7, draw(values())) + field(11, draw(values()))
        if draw(st.booleans()):
            step += field(8, maps(draw))
        finish = pb.FinishOptimizationRequest(
            has_final=draw(st.booleans()), state=draw(st.sampled_from(
                ["completed", "failed", "bogus", ""])),
        ).SerializeToString() + field(11, draw(values()))
        stop = draw(st.booleans())
        return "optimize", b"", (start, step, finish, stop, draw(st.booleans()))
    if op == "raw":
        method = draw(st.sampled_from(["SetVariable", "RegisterVariable", "GetVariable",
                                       "UpdateVariables", "Echo"]))
        junk = draw(st.sampled_from([
            b"\xff\xff\xff", field(2, b"\xff\xfe"), field(1, b"\xc3"), b"\x0a\x80",
            field(3, nested_list(60)), b"",
        ]) | st.binary(max_size=20))
        return "raw", junk, method
    return "stream", b"", (draw(st.lists(REFS, max_size=9)), draw(WILD_INT),
                           draw(st.sampled_from([0.0, 0.001, 0.05, math.nan, 1e300])))


# ---------------------------------------------------------------- the checks


def snapshot(store: MemoryStore, sid: str) -> object:
    session = store.session(sid)
    return (
        sorted((r.id, r.name, r.version) for r in session.variables.values()),
        sorted(session.names.items()),
        sorted((e.dependent, e.dependency, e.type) for e in session.graph.edges()),
    )


def check_invariants(store: MemoryStore) -> None:
    store.check_accounts()
    limits = store.limits
    for sid in store.session_ids():
        session = store.session(sid)
        assert len(session.names) == len(session.variables)
        for name, var_id in session.names.items():
            assert session.variables[var_id].name == name
        for edge in session.graph.edges():
            assert edge.dependent in session.variables and edge.dependency in session.variables
        revisions = [c.revision for c in session.log]
        assert revisions == sorted(set(revisions)), revisions
        assert all(r > session.log_floor for r in revisions)
        assert not revisions or revisions[-1] == session.revision
        for record in session.variables.values():
            assert 1 <= record.create_revision <= record.mod_revision <= session.revision
            assert record_to_pb(record).ByteSize() <= limits.max_message_bytes
        for var_id, lease in session.leases.items():
            status = pb.OptimizationStatus()
            status_to_pb(session.variables[var_id], lease, status)
        for var_id in session.running:
            assert var_id in session.variables
        for commit in session.log:
            for event in commit.events:
                out = spb.VariableEvent()
                event_to_pb(event, None, out, limits.max_value_bytes)
                assert out.ByteSize() <= limits.max_message_bytes
        evictable = session.log or session.graveyard or any(
            len(kept) > 1 for kept in session.history.values())
        assert session.used <= limits.max_session_bytes or not evictable


class Authed:
    """A channel whose calls present a session token (sessions are authenticated: every
    call for the session, the Session stream included, carries ``x-dspex-session-token``)."""

    def __init__(self, channel: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self.channel = channel
        self.metadata = metadata

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        method = self.channel.unary_unary(*args, **kwargs)
        return lambda request, **options: method(request, metadata=self.metadata, **options)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        method = self.channel.stream_stream(*args, **kwargs)
        return lambda **options: method(metadata=self.metadata, **options)


async def call(
    channel: Any, method: str, request: Any, response_type: Any = None
) -> tuple[Any, grpc.StatusCode]:
    """A call with a message, or with bytes (then ``response_type`` parses the answer).
    Refusals are fine; UNKNOWN, INTERNAL or a timeout are what the test hunts."""
    if isinstance(request, bytes):
        stub = channel.unary_unary(
            f"/{SERVICE_NAME}/{method}", request_serializer=lambda b: b,
            response_deserializer=response_type.FromString if response_type else None,
        )
    else:
        stub = getattr(pb_grpc.VariablesStub(channel), method)
    try:
        return await stub(request, timeout=10), grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        assert exc.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.DEADLINE_EXCEEDED), (method, exc)
        return None, exc.code()


async def run_stream(channel: Any, sid: str, refs: list[str], since: int,
                     interval: float) -> None:
    stream = channel.stream_stream(
        f"/{SERVICE_NAME}/Session", request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=spb.ServerMessage.FromString,
    )()
    # Only `open` goes first: a write racing the server's refusal of it makes grpc report
    # INTERNAL instead of the server's status.
    await stream.write(spb.ClientMessage(open=spb.OpenStream(
        session_id=sid, progress_interval_seconds=interval)))
    try:
        async with asyncio.timeout(10):
            first = await stream.read()
            assert first is not grpc.aio.EOF and first.WhichOneof("control") == "opened"
            await stream.write(spb.ClientMessage(subscribe=spb.Subscribe(
                request_id=1, refs=refs, include_initial=True, from_revision=since)))
            await stream.write(spb.ClientMessage(ping=spb.Ping(nonce=7)))
            while True:
                reply = await stream.read()
                assert reply is not grpc.aio.EOF
                if reply.WhichOneof("control") == "pong":
                    break
    except grpc.aio.AioRpcError as exc:
        # Only a refused open (NaN or tiny interval, the stream limit) may end it.
        assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                              grpc.StatusCode.RESOURCE_EXHAUSTED), exc
    finally:
        stream.cancel()


async def optimize(channel: Any, sid: str, ref: str, parts: tuple[Any, ...]) -> None:
    start, step, finish, stop, apply_best = parts
    head = field(1, sid.encode()) + field(2, ref.encode())
    started, _ = await call(channel, "StartOptimization", head + start,
                            pb.StartOptimizationResponse)
    token = started.fencing_token if started else 7
    opt_id = started.status.optimization_id if started else "opt_x"
    lease = field(3, opt_id.encode()) + pb.OptimizationStepRequest(
        fencing_token=token).SerializeToString()
    await call(channel, "OptimizationStep", head + lease + step, pb.OptimizationStepResponse)
    if stop:
        await call(channel, "StopOptimization", pb.StopOptimizationRequest(
            session_id=sid, ref=ref, apply_best=apply_best, reason="r"))
    else:
        await call(channel, "FinishOptimization", head + lease + finish,
                   pb.FinishOptimizationResponse)


async def run_case(embedded: EmbeddedServer, channel: Any, ops: list[Op]) -> None:
    store = embedded.store
    opened, _ = await call(channel, "InitializeSession", pb.InitializeSessionRequest())
    sid = opened.session_id
    channel = Authed(channel, token_metadata(opened.session_token))
    setup = pb.RegisterVariablesRequest(session_id=sid)
    for name, (kind, constraints) in TYPED.items():
        spec = setup.specs.add(name=name, type=kind)  # type: ignore[arg-type]
        spec.constraints.CopyFrom(codec.encode_map(constraints))
        spec.initial_value.CopyFrom(codec.encode(INITIAL[name]))
    registered, status = await call(channel, "RegisterVariables", setup)
    assert status == grpc.StatusCode.OK, status
    last_revision = registered.revision
    try:
        for method, body, extra in ops:
            before = embedded.call(lambda: snapshot(store, sid))
            applied_batch: tuple[Any, Any] | None = None
            code = grpc.StatusCode.OK
            expect = None
            if isinstance(extra, tuple) and method == "SetVariable":
                extra, *expect = extra
            if method == "attach":
                attached, code = await call(channel, "InitializeSession",
                                            field(1, sid.encode()) + body,
                                            pb.InitializeSessionResponse)
                await call(channel, "Heartbeat", pb.HeartbeatRequest(
                    session_id=sid, client_id="cli_nobody"))
                if attached is not None:
                    await call(channel, "CloseSession", pb.CloseSessionRequest(
                        session_id=sid, client_id=attached.client_id))
                code = grpc.StatusCode.UNKNOWN  # attaching changes no variable anyway
            elif method == "raw":
                _, code = await call(channel, extra, body)
            elif method == "stream":
                await run_stream(channel, sid, *extra)
            elif method == "optimize":
                await optimize(channel, sid, "a", extra)
                code = grpc.StatusCode.UNKNOWN  # several calls: no unchanged-state claim
            else:
                response, code = await call(channel, method, field(1, sid.encode()) + body,
                                            extra)
                if response is not None and "revision" in response.DESCRIPTOR.fields_by_name:
                    # An answer's revision is never older than one seen before it.
                    assert response.revision >= last_revision, (method, response.revision)
                    revision = response.revision
                if expect and response is not None:
                    name, value = expect
                    kind, constraints = TYPED[name]
                    stored = validate_value(name, type_from_pb(kind), value, constraints)
                    assert same_value(codec.decode(response.variable.value), stored), expect
                if method == "UpdateVariables" and response is not None:
                    if not response.applied:
                        code = grpc.StatusCode.ABORTED  # nothing applied: nothing may change
                    else:
                        assert revision > last_revision  # a commit takes a new revision
                        applied_batch = (response, pb.UpdateVariablesRequest.FromString(body))
            # The server still answers, and a refused request left no trace.
            echo, _ = await call(channel, "Echo", pb.EchoRequest(payload=b"ping"))
            assert echo.payload == b"ping"
            listed, status = await call(channel, "ListVariables",
                                        pb.ListVariablesRequest(session_id=sid))
            assert status == grpc.StatusCode.OK
            after = embedded.call(lambda: snapshot(store, sid))
            if code not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN):
                assert after == before, (method, code)
            if applied_batch is not None:
                # No half-applied batch: an applied atomic one applied every entry, and
                # every entry reported applied is in the store at (at least) its version.
                answer, asked = applied_batch
                assert not asked.atomic or all(r.ok for r in answer.results), answer
                stored = {var_id: version for var_id, _, version in after[0]}  # type: ignore[index]
                for result in answer.results:
                    if result.ok:
                        assert stored.get(result.variable_id, 0) >= result.version, result
            current = embedded.call(lambda: store.session(sid).revision)
            assert current >= last_revision
            last_revision = current
            embedded.call(lambda: check_invariants(store))
            assert len(listed.variables) == len(after[0])  # type: ignore[index]
    finally:
        await call(channel, "CloseSession",
                   pb.CloseSessionRequest(session_id=sid, client_id=opened.client_id))


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(st.lists(operations(), min_size=1, max_size=18))
def test_random_hostile_requests_keep_the_server_and_store_sound(
    hostile: tuple[EmbeddedServer, asyncio.AbstractEventLoop, Any],
    ops: list[Op],
) -> None:
    embedded, loop, channel = hostile
    loop.run_until_complete(run_case(embedded, channel, ops))
    leftovers = embedded.call(lambda: embedded.store.session_ids())
    assert leftovers == [], leftovers
