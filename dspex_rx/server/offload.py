"""Large values off the server loop: parsing a large request, decoding and validating its
values, and encoding large values into answers run on a small worker pool, while the
store's own step stays on the loop; and the lanes that keep one session's writes in the
order they arrived although their values take different times to check.

The server runs on one asyncio loop, and the store is single-threaded. A write carrying a
million-item list used to hold that loop for seconds (parse, decode, validate, measure,
encode the echo), so every other session and the health check waited. Now, for a request
of ``LARGE_REQUEST_BYTES`` or more, the loop only peeks at its session id (to check the
token and take the session's place in line); the parse (in pieces, ``wire/pieces.py``),
the decode and the validation (``store/checked.py``) run on a worker; the loop then makes
the store call, which takes the checked value without checking it again; and values of
``LARGE_VALUE_BYTES`` or more are written into the answer on a worker after the store
call, and the answer is serialized around them there, in pieces (``wire/spliced.py``;
stored values are immutable, so reading them there is safe).

The workers are a bounded pool (``WORKERS`` threads): Python threads share one
interpreter lock, so more threads would not go faster, they would only make the loop wait
longer for its turn.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from google.protobuf.message import DecodeError

from dspex_rx.core.limits import Limits
from dspex_rx.core.types import check_constraints, infer_type, normalize_type, same_value
from dspex_rx.errors import DspexError
from dspex_rx.store import MemoryStore, VariableSpec
from dspex_rx.store.checked import check_ahead
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import rules_from_pb, type_from_pb
from dspex_rx.wire.pieces import merge_in_pieces, top_level_string
from dspex_rx.wire.spliced import encode_in_pieces, placeholder, serialize_spliced

# A request this big is parsed, decoded and checked on a worker (a parse of this size on
# the loop takes a few milliseconds).
LARGE_REQUEST_BYTES = 256 * 1024
# A stored value this big (its encoded size) is written into an answer on a worker.
LARGE_VALUE_BYTES = 32 * 1024
# Worker threads for that work, shared by every server of the process.
WORKERS = 2

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None


def _workers() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="dspex-values")
    return _pool


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on the value workers and wait for it without holding the loop.

    Example: ``value = await off_loop(codec.decode, request.value)``.
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_workers(), functools.partial(fn, *args))


class Large:
    """A request too large to parse on the loop: its bytes, its message type, and the
    session id peeked from them (the token check and the session's place in line need
    nothing else). ``service.add_service``'s deserializer makes it; ``parse`` finishes it.

    >>> data = pb.GetVariableRequest(session_id="s", ref="x" * 10).SerializeToString()
    >>> large = Large(pb.GetVariableRequest, data)
    >>> large.session_id, large.type_name
    ('s', 'GetVariableRequest')
    """

    __slots__ = ("data", "message_type", "session_id", "type_name")

    def __init__(self, message_type: Any, data: bytes) -> None:
        self.message_type = message_type
        self.data = data
        self.type_name: str = message_type.DESCRIPTOR.name
        # Every request's session id is its field 1 (or it has none).
        field = message_type.DESCRIPTOR.fields_by_number.get(1)
        self.session_id = top_level_string(data, 1) if field and field.name == "session_id" else ""


def parse_large(large: Large) -> Any:
    """Parse a ``Large`` request in pieces (run it on a worker); ``DecodeError`` and
    the like for bytes protobuf refuses.

    >>> data = pb.GetVariableRequest(session_id="s", ref="t").SerializeToString()
    >>> parse_large(Large(pb.GetVariableRequest, data)).ref
    't'
    """
    message = large.message_type()
    merge_in_pieces(message, large.data)
    return message


async def parse(large: Large, malformed: Callable[[str, Exception], Any]) -> Any:
    """The parsed request, or ``malformed(type name, error)`` for bytes protobuf refuses.

    Example: ``request = await parse(request, Malformed)`` in ``rpc.Unary``.
    """
    try:
        return await off_loop(parse_large, large)
    except (DecodeError, RuntimeError, ValueError) as exc:
        return malformed(large.type_name, exc)


class Serialized:
    """An answer already serialized (on a worker, ``Work.answer``): the service's
    response serializer passes its bytes on as they are.

    >>> Serialized(b"\\x10\\x04").data
    b'\\x10\\x04'
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def serialize_response(response: Any) -> bytes:
    """The response serializer of every RPC: a message's bytes, or a ``Serialized``'s.

    >>> serialize_response(pb.GetVariableResponse(revision=4))
    b'\\x10\\x04'
    """
    if isinstance(response, Serialized):
        return response.data
    return response.SerializeToString()  # type: ignore[no-any-return]


class Work:
    """One call's work for the workers: the values checked ahead of the store call
    (``checked``, in the order its handler reads them), and the large values of its
    answer, left as placeholders until ``answer`` encodes them and serializes the answer
    around them, in pieces (``wire/spliced.py``), after the store call.

    >>> work = Work()
    >>> response = pb.GetVariableResponse(revision=1)
    >>> work.fill(response.variable.value, list(range(10_000)), 60_000)
    >>> work.take_pending(), bool(work)
    (60006, True)
    >>> data = work.answer(response).data
    >>> len(pb.GetVariableResponse.FromString(data).variable.value.list_value.values)
    10000
    """

    __slots__ = ("checked", "pending", "values")

    def __init__(self) -> None:
        self.checked: list[Any] | None = None
        # Per placeholder: the value to encode, and the value sent if it goes back only
        # when the stored one differs (``fill_if_changed``).
        self.values: list[tuple[Any, Any]] = []
        self.pending = 0

    def __bool__(self) -> bool:
        return bool(self.values)

    def fill(self, msg: Any, value: Any, size: int) -> None:
        """Write ``value`` (of encoded ``size``) into ``msg`` now if small, else later.

        Example: ``work.fill(out.value, record.value, record.size)``.
        """
        if size < LARGE_VALUE_BYTES:
            codec.fill(msg, value)
            return
        self._defer(msg, value, _ALWAYS, size)

    def fill_if_changed(self, msg: Any, sent: Any, stored: Any, size: int) -> None:
        """Write ``stored`` into ``msg`` only if it differs from ``sent`` (an echo the
        client needs only then), now if small, else later.

        Example: ``work.fill_if_changed(result.value, sent, record.value, size)``.
        """
        if size >= LARGE_VALUE_BYTES:
            self._defer(msg, stored, sent, size)
        elif not same_value(sent, stored):
            codec.fill(msg, stored)

    def _defer(self, msg: Any, value: Any, sent: Any, size: int) -> None:
        placeholder(msg, len(self.values))
        self.values.append((value, sent))
        # The value field's tag and length around the value itself.
        self.pending += size + 6

    def take_pending(self) -> int:
        """Bytes deferred since the last call (what an answer's size meter adds).

        Example: ``answer.size += work.take_pending()``.
        """
        pending, self.pending = self.pending, 0
        return pending

    def answer(self, response: Any) -> Serialized:
        """Encode the deferred values and serialize ``response`` with them, in pieces
        (run it on a worker: ``await off_loop(work.answer, response)``).

        Example: ``return await off_loop(call.work.answer, response)``.
        """
        pieces = [
            None if sent is not _ALWAYS and same_value(sent, value) else encode_in_pieces(value)
            for value, sent in self.values
        ]
        return Serialized(serialize_spliced(response, pieces))


# The "sent" of a deferred value that always goes back.
_ALWAYS = object()


class Lane:
    """One caller's place among its session's writes: ``turn`` returns once every write
    of the session that arrived before has made its store call; ``leave`` lets the next
    one go (at once, or when the one before leaves, if this one gave up early).

    Example: ``lane = lanes.enter(sid)``, ``await lane.turn()``, store call, ``lane.leave()``.
    """

    __slots__ = ("_done", "_key", "_lanes", "_prev")

    def __init__(
        self, lanes: Lanes, key: str, prev: asyncio.Future[None] | None,
        done: asyncio.Future[None],
    ) -> None:
        self._lanes = lanes
        self._key = key
        self._prev = prev
        self._done = done

    def ready(self) -> bool:
        """Whether no earlier write is still to make its store call.

        Example: ``lane.ready()`` is ``True`` for a session's only write.
        """
        return self._prev is None or self._prev.done()

    async def turn(self) -> None:
        """Wait for every earlier write of the session (no wait, no yield, if none).

        Example: ``await lane.turn()`` before the store call.
        """
        if not self.ready():
            assert self._prev is not None
            await asyncio.shield(self._prev)

    def leave(self) -> None:
        """Let the next write go; idempotent.

        Example: ``lane.leave()`` once the store call returned or raised.
        """
        done = self._done
        if done.done():
            return
        if self.ready():
            done.set_result(None)
        else:
            # Gave up before its turn: the next write still waits for the one before.
            assert self._prev is not None
            self._prev.add_done_callback(lambda _: _finish(done))
        self._lanes.forget(self._key, done)


def _finish(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class Lanes:
    """Every session's line of writes (one per service).

    >>> async def demo():
    ...     lanes = Lanes()
    ...     first, second = lanes.enter("s"), lanes.enter("s")
    ...     ready = second.ready()
    ...     first.leave()
    ...     return ready, second.ready()
    >>> asyncio.run(demo())
    (False, True)
    """

    def __init__(self) -> None:
        self._tails: dict[str, asyncio.Future[None]] = {}

    def enter(self, key: str) -> Lane:
        """Take the next place in ``key``'s line.

        Example: ``lane = lanes.enter(call.session_id)`` as the write arrives.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        prev = self._tails.get(key)
        self._tails[key] = done
        return Lane(self, key, prev, done)

    def forget(self, key: str, done: asyncio.Future[None]) -> None:
        """Drop ``key``'s line if ``done`` is still its last place (no write waits).

        Example: called by ``Lane.leave``.
        """
        if self._tails.get(key) is done:
            del self._tails[key]

    def __len__(self) -> int:
        return len(self._tails)


_lanes: weakref.WeakKeyDictionary[Any, Lanes] = weakref.WeakKeyDictionary()


def lanes_of(service: Any) -> Lanes:
    """The lanes of one service (made on first use).

    Example: ``lanes_of(service).enter(session_id)``.
    """
    lanes = _lanes.get(service)
    if lanes is None:
        lanes = _lanes[service] = Lanes()
    return lanes


# ----------------------------------------------------------------- checks ahead


def _ahead_for_set(
    request: pb.SetVariableRequest, target: tuple[str, str, Any] | None, limits: Limits
) -> Any:
    # Decode (as the handler would, first), then check against what the write will
    # meet; a write refused before validation (no such variable...) keeps its raw value.
    value = codec.decode(request.value)
    if target is None:
        if not request.create_if_missing:
            return value
        try:
            type_name = (
                normalize_type(type_from_pb(request.type_hint)) if request.type_hint
                else infer_type(request.ref, value)
            )
            constraints = check_constraints(
                request.ref, type_name, None, max_pattern_length=limits.max_pattern_length
            )
        except (DspexError, ValueError, TypeError):
            return value
        target = (request.ref, type_name, constraints)
    name, type_name, constraints = target
    return check_ahead(name, type_name, value, constraints, limits)


async def check_set(call: Any, request: pb.SetVariableRequest) -> None:
    """``SetVariable``'s value, decoded and checked on a worker (``call.work.checked``).

    Example: ``Unary(set_variable, ahead=check_set)``.
    """
    store: MemoryStore = call.store
    target = store.write_target(call.session_id, request.ref)
    call.work.checked = [await off_loop(_ahead_for_set, request, target, store.limits)]


def _ahead_for_updates(
    request: pb.UpdateVariablesRequest, targets: list[Any], limits: Limits
) -> list[Any]:
    values = [codec.decode(update.value) for update in request.updates]
    return [
        value if target is None else check_ahead(target[0], target[1], value, target[2], limits)
        for value, target in zip(values, targets, strict=True)
    ]


async def check_updates(call: Any, request: pb.UpdateVariablesRequest) -> None:
    """``UpdateVariables``' values, decoded and checked on a worker, in order.

    Example: ``Unary(update_variables, ahead=check_updates)``.
    """
    store: MemoryStore = call.store
    targets = [store.write_target(call.session_id, u.ref) for u in request.updates]
    call.work.checked = await off_loop(_ahead_for_updates, request, targets, store.limits)


def spec_ahead(spec: pb.VariableSpec, limits: Limits) -> VariableSpec:
    """A store ``VariableSpec`` from a wire one, its initial value checked against its
    own type and constraints when they are valid (else left for the store to refuse).

    >>> from dspex_rx.core.limits import DEFAULT_LIMITS
    >>> wire = pb.VariableSpec(name="t", type=pb.VARIABLE_TYPE_FLOAT)
    >>> wire.initial_value.CopyFrom(codec.encode(0.5))
    >>> spec_ahead(wire, DEFAULT_LIMITS).initial_value.result()
    (0.5, 9)
    """
    value = codec.decode(spec.initial_value)
    constraints = codec.decode_map(spec.constraints)
    type_ = type_from_pb(spec.type)
    initial: Any = value
    try:
        type_name = normalize_type(type_)
        clean = check_constraints(
            spec.name, type_name, constraints, max_pattern_length=limits.max_pattern_length
        )
    except (DspexError, ValueError, TypeError):
        pass
    else:
        initial = check_ahead(spec.name, type_name, value, clean, limits)
    return VariableSpec(
        name=spec.name, type=type_, initial_value=initial, constraints=constraints,
        metadata=codec.decode_map(spec.metadata), description=spec.description,
        dependencies=list(spec.dependencies), access_rules=rules_from_pb(spec.access_rules),
    )


def _specs_ahead(specs: list[pb.VariableSpec], limits: Limits) -> list[VariableSpec]:
    return [spec_ahead(spec, limits) for spec in specs]


async def check_register(call: Any, request: pb.RegisterVariableRequest) -> None:
    """``RegisterVariable``'s spec, decoded and checked on a worker.

    Example: ``Unary(register_variable, ahead=check_register)``.
    """
    call.work.checked = await off_loop(_specs_ahead, [request.spec], call.store.limits)


async def check_registers(call: Any, request: pb.RegisterVariablesRequest) -> None:
    """``RegisterVariables``' specs, decoded and checked on a worker.

    Example: ``Unary(register_variables, ahead=check_registers)``.
    """
    call.work.checked = await off_loop(_specs_ahead, list(request.specs), call.store.limits)


Ahead = Callable[[Any, Any], Awaitable[None]]
__all__ = [
    "LARGE_REQUEST_BYTES", "LARGE_VALUE_BYTES", "WORKERS", "Ahead", "Lane",
    "Lanes", "Large", "Serialized", "Work", "check_register", "check_registers", "check_set",
    "check_updates", "lanes_of", "off_loop", "parse", "parse_large", "serialize_response",
    "spec_ahead",
]
