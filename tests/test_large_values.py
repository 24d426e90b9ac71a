"""Large values off the server loop (issue #17): a large write is parsed, decoded and
checked on a worker while other sessions are answered; one session's writes still apply
in the order they arrived; a large value's answers and refusals are those of a small one.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import trio
from google.protobuf.message import DecodeError
from wire import field, nested_list

import dspex_rx
from dspex_rx.core.types import KeysConvertedDict, TorchOriginArray
from dspex_rx.server import EmbeddedServer, offload
from dspex_rx.store.checked import Checked
from dspex_rx.v1 import value_pb2 as vpb
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.pieces import merge_in_pieces, top_level_string
from dspex_rx.wire.spliced import encode_in_pieces, placeholder, serialize_spliced

# A list whose SetVariable request is well above offload.LARGE_REQUEST_BYTES.
BIG = list(range(100_000))
GUARD = 30.0  # a bounded hang guard, never a timing assertion


class Gate:
    """Holds ``offload.check_ahead`` (running on a worker) until released, recording the
    order things happen in."""

    def __init__(self, real: Callable[..., Checked]) -> None:
        self.real = real
        self.started = threading.Event()
        self.release = threading.Event()
        self.log: list[str] = []

    def __call__(self, *args: Any) -> Checked:
        self.log.append("check started")
        self.started.set()
        if not self.release.wait(GUARD):
            raise AssertionError("the gate was never released")
        self.log.append("check released")
        return self.real(*args)

    async def wait_started(self) -> None:
        assert await trio.to_thread.run_sync(self.started.wait, GUARD), "no check started"

    def open(self) -> None:
        self.log.append("released by the test")
        self.release.set()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    held = Gate(offload.check_ahead)
    monkeypatch.setattr(offload, "check_ahead", held)
    yield held
    held.release.set()  # never leave a worker blocked


# Guards issue #17: a 1,000,000-item write held the server loop for seconds (every
# session and the health check waited); now its check runs on a worker.
async def test_another_session_is_answered_while_a_large_value_is_checked(
    server: EmbeddedServer, session: dspex_rx.SessionContext, gate: Gate
) -> None:
    await session.register_variable("big", "list", [])
    async with dspex_rx.connect(server.target) as other:
        await other.register_variable("t", "float", 0.5)
        async with trio.open_nursery() as nursery:

            async def write() -> None:
                version = await session.set_variable("big", BIG)
                gate.log.append(f"large write answered (version {version})")

            nursery.start_soon(write)
            await gate.wait_started()
            # The large value is held in its check on a worker: the loop still serves.
            assert await other.get_variable("t", bypass_cache=True) == 0.5
            await other.set_variable("t", 0.25)
            gate.log.append("other session answered")
            gate.open()
    assert gate.log == [
        "check started", "other session answered", "released by the test",
        "check released", "large write answered (version 2)",
    ]
    assert await session.get_variable("big", bypass_cache=True) == BIG


async def test_a_watcher_of_a_large_value_gets_it_encoded_while_others_are_answered(
    server: EmbeddedServer, session: dspex_rx.SessionContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A watched large value was encoded on the loop for every stream's frame (value and
    # old value): seconds per watcher per write.
    from dspex_rx.server import stream

    held = Gate(stream._packed)

    def packed(items: list[Any], limits: Any) -> Any:
        if not stream._carries_large_values(items):
            return held.real(items, limits)
        assert server.call(threading.get_ident) != threading.get_ident()  # not the loop
        return held(items, limits)

    monkeypatch.setattr(stream, "_packed", packed)
    await session.register_variable("big", "list", [])
    async with dspex_rx.connect(server.target) as other, \
            session.watch_variable("big", include_initial=False) as updates:
        await other.register_variable("t", "float", 0.5)
        await session.set_variable("big", BIG)
        await held.wait_started()
        assert await other.get_variable("t", bypass_cache=True) == 0.5
        held.log.append("other session answered")
        held.open()
        with trio.fail_after(GUARD):
            update = await anext(aiter(updates))
    assert update.value == BIG and update.version == 2
    assert held.log[:3] == ["check started", "other session answered", "released by the test"]


async def test_two_writes_of_one_session_apply_in_the_order_they_arrived(
    server: EmbeddedServer, session: dspex_rx.SessionContext, gate: Gate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The second write is small, so it would be checked and committed at once; it must
    # still wait for the large one that arrived before it (held in its check).
    await session.register_variable("x", "list", [])
    entered = threading.Semaphore(0)
    real_enter = offload.Lanes.enter

    def counting_enter(lanes: offload.Lanes, key: str) -> offload.Lane:
        entered.release()
        return real_enter(lanes, key)

    monkeypatch.setattr(offload.Lanes, "enter", counting_enter)
    versions: dict[str, int] = {}
    async with trio.open_nursery() as nursery:

        async def write(label: str, value: list[int]) -> None:
            versions[label] = await session.set_variable("x", value)
            gate.log.append(f"{label} answered")

        nursery.start_soon(write, "large", BIG)
        await gate.wait_started()
        assert await trio.to_thread.run_sync(entered.acquire, True, GUARD)
        nursery.start_soon(write, "small", [1, 2, 3])
        # The small write has arrived and is in line behind the large one.
        assert await trio.to_thread.run_sync(entered.acquire, True, GUARD)
        assert server.call(lambda: server.store.get(session.session_id, "x").version) == 1
        gate.open()
    assert versions == {"large": 2, "small": 3}
    assert gate.log.index("check released") < gate.log.index("small answered")
    history = await session.get_variable_history("x")
    assert [entry["value"] for entry in history][-3:] in ([[], BIG, [1, 2, 3]],
                                                          [[1, 2, 3], BIG, []])
    assert await session.get_variable("x", bypass_cache=True) == [1, 2, 3]


async def test_a_large_value_round_trips_through_set_batch_and_register(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("big", "list", BIG)
    assert await session.get_variable("big", bypass_cache=True) == BIG
    assert await session.set_variable("big", BIG[::-1]) == 2
    assert await session.update_variables({"big": BIG[:60_000] * 2}) == {"big": True}
    assert await session.get_variable("big", bypass_cache=True) == BIG[:60_000] * 2
    floats = np.arange(200_000, dtype=np.float32)
    await session.register_variable(
        "e", "tensor", floats.tolist(), constraints={"dtype": "float32"}
    )
    got = await session.get_variable("e", bypass_cache=True)
    assert got.dtype == np.float32 and np.array_equal(got, floats)
    listed = {v["name"]: v["value"] for v in await session.list_variables()}
    assert listed["big"] == BIG[:60_000] * 2


async def test_a_stored_value_that_differs_from_a_large_one_sent_is_sent_back(
    session: dspex_rx.SessionContext,
) -> None:
    # A list of ints into a float32 tensor is stored cast: the batch answer carries it.
    await session.register_variable("e", "tensor", [0.0], constraints={"dtype": "float32"})
    assert await session.update_variables({"e": BIG}) == {"e": True}
    got = await session.get_variable("e")
    assert got.dtype == np.float32 and got.tolist() == [float(i) for i in BIG]


async def test_a_large_invalid_value_is_refused_as_a_small_one_is(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("x", "list", [], constraints={"max_length": 10})
    with pytest.raises(ValueError, match="variable 'x': list length 100000 is above "
                                         "max_length 10"):
        await session.set_variable("x", BIG)
    with pytest.raises(TypeError, match="variable 'y': item 0 breaks item_type string: expected "
                                        "string, got int 0"):
        await session.register_variable("y", "list", BIG, constraints={"item_type": "string"})
    result = await session.update_variables({"x": BIG}, atomic=False)
    assert "above max_length 10" in str(result["x"])
    assert await session.get_variable("x", bypass_cache=True) == []
    assert await session.list_variables("^y$") == []


async def test_a_large_write_refused_first_for_its_version_says_so(
    session: dspex_rx.SessionContext,
) -> None:
    # Checked ahead, the value is also invalid; the version check comes first, as for a
    # small value, so the answer is the conflict, not the value's fault.
    await session.register_variable("x", "list", [], constraints={"max_length": 10})
    with pytest.raises(dspex_rx.errors.ConflictError, match="expected version 7"):
        await session.set_variable("x", BIG, expected_version=7)


async def test_a_write_only_session_gets_no_large_value_back(server: EmbeddedServer) -> None:
    # The answer's value is written later, on a worker: whether the caller may read it is
    # decided before (it used to be written, then cleared).
    tag = secrets.token_hex(4)
    async with dspex_rx.connect(server.target, session_id=f"owner_{tag}") as owner, \
            dspex_rx.connect(server.target, session_id=f"w_{tag}") as writer:
        var = await owner.register_variable("plan", "list", [], access_rules=[
            {"session_pattern": f"w_{tag}", "permissions": ["write"]}])
        assert await writer.set_variable(var, BIG) == 2
        with pytest.raises(dspex_rx.errors.AccessDeniedError):
            await writer.get_variable(var)
        assert await owner.get_variable("plan", bypass_cache=True) == BIG


async def test_a_large_write_creating_its_variable_infers_the_type(
    session: dspex_rx.SessionContext,
) -> None:
    assert await session.set_variable("new", BIG, create_if_missing=True) == 1
    assert await session.get_variable("new", bypass_cache=True) == BIG
    info = (await session.get_variables(["new"], include_metadata=True))["new"]
    assert info["type"] == "list"


# -------------------------------------------------------------- parsing in pieces


def _value_cases() -> list[Any]:
    return [
        list(range(5000)),
        [[list(range(3000))]],  # one element too big for a piece, inside a repeated field
        {f"k{i}": [i] * 20 for i in range(500)},
        [{"a": list(range(2000)), "b": "x" * 3000}, None, 1.5, [[]]],
        np.arange(50_000, dtype=np.int64),
    ]


@pytest.mark.parametrize("value", _value_cases())
def test_a_message_parsed_in_pieces_is_the_message_parsed_whole(value: Any) -> None:
    whole = pb.SetVariableRequest(session_id="s", ref="t", value=codec.encode(value),
                                  create_if_missing=True)
    data = whole.SerializeToString()
    parsed = pb.SetVariableRequest()
    merge_in_pieces(parsed, data, limit=1000)
    assert parsed == whole
    assert parsed.SerializeToString() == data


def test_an_empty_singular_message_parsed_in_pieces_stays_present() -> None:
    whole = pb.SetVariableRequest(session_id="s" * 50)
    whole.value.list_value.SetInParent()
    whole.metadata.SetInParent()
    parsed = pb.SetVariableRequest()
    merge_in_pieces(parsed, whole.SerializeToString(), limit=10)
    assert parsed.HasField("value") and parsed.value.WhichOneof("kind") == "list_value"


@pytest.mark.parametrize(("data", "error"), [
    (b"\x1a\xff\xff\xff\x0f" + b"\x00" * 200, "runs past the end"),
    (b"\x0b" + b"\x00" * 200, "wire type 3 at byte 0 is not supported"),
    (b"\x12\x05hello" * 5 + b"\x1a\x80", "truncated varint"),
])
def test_bad_bytes_in_pieces_raise_decode_error(data: bytes, error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        merge_in_pieces(pb.SetVariableRequest(), data, limit=10)


def test_a_message_nesting_too_deep_in_pieces_is_refused() -> None:
    # Each level is larger than a piece, so each is followed: protobuf's own depth limit
    # (100) holds in pieces too.
    with pytest.raises(DecodeError, match="nests too deeply"):
        merge_in_pieces(vpb.Value(), nested_list(120, field(4, b"x" * 100)), limit=10)


def test_the_session_id_is_read_without_parsing_the_rest() -> None:
    data = pb.SetVariableRequest(session_id="sess", ref="t", value=codec.encode(BIG))
    assert top_level_string(data.SerializeToString(), 1) == "sess"
    assert top_level_string(b"\x0a\x05ab", 1) == ""  # truncated: no id, refused later


# -------------------------------------------------------------- answers in pieces


def _stored_cases() -> list[Any]:
    return [
        list(range(10_000)),
        [[list(range(3000))], [], {}, "x" * 100, None, True, 2.5],
        {f"k{i}": [i] * 20 for i in range(500)},
        KeysConvertedDict({"1": list(range(5000)), "2": {"a": []}}),
        {"big": list(range(6000)), "small": 1, "deep": [[[[1]]]]},
        [np.arange(100, dtype=np.float32), np.zeros((2, 3), dtype=np.int8)] * 3000,
        [np.arange(10, dtype=np.float64).view(TorchOriginArray)] * 5000,
    ]


@pytest.mark.parametrize("value", _stored_cases())
def test_a_value_encoded_in_pieces_parses_to_the_value_encoded_whole(value: Any) -> None:
    data = encode_in_pieces(value, leaves=100)
    assert vpb.Value.FromString(data) == codec.encode(value)


def test_an_answer_serialized_around_placeholders_is_the_answer_serialized_whole() -> None:
    whole = pb.GetVariablesResponse(revision=9, missing=["gone"])
    spliced = pb.GetVariablesResponse(revision=9, missing=["gone"])
    values = [list(range(3000)), "small", list(range(2000)), None]
    pieces: list[bytes | None] = []
    for i, value in enumerate(values):
        for response in (whole, spliced):
            variable = response.variables.add(name=f"v{i}", version=i + 1)
            variable.metadata.SetInParent()
        if value is None:
            placeholder(spliced.variables[i].value, len(pieces))
            pieces.append(None)  # left out, as an echo equal to what was sent
            continue
        codec.fill(whole.variables[i].value, value)
        placeholder(spliced.variables[i].value, len(pieces))
        pieces.append(encode_in_pieces(value, leaves=100))
    parsed = pb.GetVariablesResponse.FromString(serialize_spliced(spliced, pieces))
    assert parsed == whole
    assert not parsed.variables[3].HasField("value")
    assert parsed.variables[0].HasField("metadata")
