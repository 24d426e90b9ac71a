"""Server limits: how big, how many and how deep anything a client sends may be.

One frozen ``Limits`` holds them all; ``MemoryStore``, ``Server`` and ``EmbeddedServer``
take it (``limits=``) and ``dspex-rx serve`` has a flag for each field
(``--max-value-bytes`` ...). A request over a limit is refused before anything changes,
with a message naming the limit and the value that broke it:

- limits on what one request carries (sizes, counts, depth of one value or one batch)
  raise ``InvalidValueError`` (gRPC INVALID_ARGUMENT): the request is wrong whatever
  the server's state;
- limits on what the server holds (sessions, variables, streams, subscriptions, the
  session's memory budget) raise ``ResourceExhaustedError`` (RESOURCE_EXHAUSTED), as
  does gRPC itself for a message above ``max_message_bytes``;
- rate limits (the ``*_per_minute_*`` fields) are token buckets the server keeps per peer
  address and per session id (``server/ratelimit.py``): over one, ``RateLimitedError``
  (RESOURCE_EXHAUSTED, with a retry-after). Like every limit they have no "off" value.

``measure_value`` and ``measure_map`` compute the exact encoded size of a plain value
(as ``codec`` would send it, without gRPC) while checking depth, collection items and
array elements. No gRPC here: the store calls this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dspex_rx.core.registry import INT64_MAX, INT64_MIN
from dspex_rx.errors import InvalidValueError, ResourceExhaustedError, VariableTypeError

MiB = 1024 * 1024
# The deepest nesting protobuf's decoder accepts for a value inside the messages that
# carry it (a map level is three messages deep); ``codec.MAX_DEPTH`` is the same number.
HARD_MAX_DEPTH = 32


def _limit(default: int, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, slots=True)
class Limits:
    """Every limit of a server, with its default. Pass one to ``MemoryStore``, ``Server``
    or ``EmbeddedServer`` (``limits=``); ``dspex-rx serve`` has a flag per field.

    >>> limits = Limits(max_value_bytes=1024 * 1024, max_sessions=100)
    >>> limits.max_depth
    32
    """

    max_message_bytes: int = _limit(
        64 * MiB, "largest gRPC message received or sent, in bytes (RESOURCE_EXHAUSTED)"
    )
    max_value_bytes: int = _limit(
        48 * MiB, "largest value, in encoded bytes (what the wire carries)"
    )
    max_array_elements: int = _limit(16 * MiB, "most elements in one numpy array value")
    max_collection_items: int = _limit(
        1_000_000, "most list items plus dict entries in one value, all levels together"
    )
    max_depth: int = _limit(
        HARD_MAX_DEPTH, f"deepest nesting of lists and dicts (at most {HARD_MAX_DEPTH})"
    )
    max_metadata_bytes: int = _limit(
        64 * 1024,
        "largest metadata-like map, in encoded bytes: a variable's metadata (after a "
        "merge), a write's, a session's, a dependency's, constraints, an optimization's "
        "config and metrics; also the largest value an optimization records (evaluated, "
        "best, final), since the optimization status carries them",
    )
    max_metadata_keys: int = _limit(256, "most top-level keys in one metadata map")
    max_description_length: int = _limit(4096, "longest variable description, in characters")
    max_string_length: int = _limit(
        4096,
        "longest free-form string field (client name, write source, reason), in characters",
    )
    max_pattern_length: int = _limit(
        4096, "longest regex constraint or glob pattern, in characters"
    )
    max_batch_size: int = _limit(
        10_000,
        "most entries in one request: variables registered or updated, refs read or "
        "subscribed, dependencies of one variable",
    )
    max_variables_per_session: int = _limit(100_000, "most variables in one session")
    history_size: int = _limit(1_000, "versions kept per variable")
    max_dependencies_per_session: int = _limit(
        1_000_000, "most dependency edges in one session"
    )
    max_subscriptions_per_stream: int = _limit(
        100_000, "most variables one watch stream may watch"
    )
    max_streams_per_session: int = _limit(1_000, "most open watch streams per session")
    max_clients_per_session: int = _limit(1_000, "most clients attached to one session")
    max_sessions: int = _limit(10_000, "most live sessions on the server")
    max_retired_sessions: int = _limit(
        100_000,
        "ended session ids kept claimed by their token (identity.RetiredIds); past it the "
        "oldest ids no access rule names are forgotten",
    )
    max_session_bytes: int = _limit(
        1024 * MiB,
        "memory budget of one session: encoded bytes of its values, history, replay log, "
        "metadata, dependencies and optimization records, plus 200 bytes per item; old "
        "history and log entries are dropped to make room, current values never are",
    )
    max_store_bytes: int = _limit(
        4096 * MiB, "memory budget of the whole server, counted like max_session_bytes"
    )

    max_session_ttl: int = _limit(
        3600,
        "longest client TTL a session may ask for, in seconds (how long a client that "
        "stops heartbeating stays attached); a longer ask is granted this, and the answer "
        "says so",
    )
    max_sessions_per_peer: int = _limit(
        1000,
        "most sessions one peer address (an IPv6 /64) may have created that still have a "
        "client attached; past it InitializeSession creating one is RESOURCE_EXHAUSTED",
    )
    inits_per_minute_per_peer: int = _limit(
        3000,
        "InitializeSession calls one peer address may make per minute (a token bucket: "
        "bursts up to this many, refilled evenly over the minute); past it "
        "RESOURCE_EXHAUSTED with a retry-after",
    )
    inits_per_minute_per_session: int = _limit(
        120, "InitializeSession calls naming one session id per minute (a token bucket)"
    )
    auth_failures_per_minute_per_peer: int = _limit(
        120,
        "failed authentications (a missing or wrong token, a wrong principal key) one "
        "peer address may make per minute (a token bucket); with none left, every call "
        "from it that needs authentication is RESOURCE_EXHAUSTED until one refills",
    )
    auth_failures_per_minute_per_session: int = _limit(
        30,
        "failed authentications naming one session id per minute (a token bucket); with "
        "none left, InitializeSession for that id is RESOURCE_EXHAUSTED until one refills",
    )

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidValueError(
                    f"limit {spec.name} must be a positive integer, got {value!r}"
                )
        if self.max_depth > HARD_MAX_DEPTH:
            raise InvalidValueError(
                f"limit max_depth is at most {HARD_MAX_DEPTH} (protobuf's decoder limit), "
                f"got {self.max_depth}"
            )
        # The largest single thing the server sends must fit in one message: a variable
        # (value, metadata, constraints, description) with an optimization status (best
        # and final values, metrics, config). A watch event's old value is left out when
        # it does not fit beside the value (server.event_to_pb).
        needed = (
            self.max_value_bytes + 6 * self.max_metadata_bytes
            + 4 * self.max_description_length + 64 * 1024
        )
        if needed > self.max_message_bytes:
            raise InvalidValueError(
                f"limit max_message_bytes ({self.max_message_bytes}) must hold a value, six "
                "metadata maps, a description and 64 KiB of framing: "
                f"{needed} bytes with max_value_bytes {self.max_value_bytes}, "
                f"max_metadata_bytes {self.max_metadata_bytes} and max_description_length "
                f"{self.max_description_length}"
            )

    def replace(self, **changes: Any) -> Limits:
        """A copy with some limits changed (None values are ignored).

        >>> Limits().replace(history_size=5, max_sessions=None).history_size
        5
        """
        given = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self


DEFAULT_LIMITS = Limits()


def too_many(what: str, count: int, limit_name: str, limit: int) -> ResourceExhaustedError:
    """The error for a server-held resource over its limit.

    >>> str(too_many("session 's' would hold 11 variables", 11, "max_variables", 10))
    "session 's' would hold 11 variables, above the max_variables limit of 10"
    """
    return ResourceExhaustedError(
        f"{what}, above the {limit_name} limit of {limit}", limit=limit_name, value=count
    )


def too_big(what: str, value: int, limit_name: str, limit: int) -> InvalidValueError:
    """The error for one request's part over a limit.

    >>> str(too_big("variable 'x': value is 20 bytes", 20, "max_value_bytes", 10))
    "variable 'x': value is 20 bytes, above the max_value_bytes limit of 10"
    """
    return InvalidValueError(
        f"{what}, above the {limit_name} limit of {limit}", limit=limit_name, value=value
    )


def check_count(what: str, count: int, limit_name: str, limit: int) -> None:
    """Refuse a request carrying more than ``limit`` of something (INVALID_ARGUMENT).

    >>> check_count("the batch", 3, "max_batch_size", 10)
    """
    if count > limit:
        raise too_big(f"{what} has {count} entries", count, limit_name, limit)


def check_length(what: str, text: str, limit_name: str, limit: int) -> str:
    """Refuse a string longer than ``limit`` characters (INVALID_ARGUMENT).

    >>> check_length("reason", "ok", "max_string_length", 10)
    'ok'
    """
    if len(text) > limit:
        raise too_big(f"{what} is {len(text)} characters long", len(text), limit_name, limit)
    return text


# --------------------------------------------------------------- encoded sizes


def _varint(n: int) -> int:
    # Bytes of a base-128 varint of a non-negative integer below 2**64.
    if n < 0x80:
        return 1
    if n < 0x4000:
        return 2
    return (n.bit_length() + 6) // 7


def _field(body: int) -> int:
    # A length-delimited field (tag < 16): tag byte, length varint, body.
    return body + (2 if body < 0x80 else 1 + _varint(body))


def _utf8(text: str, where: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidValueError(
            f"{where} is not valid Unicode (cannot be sent as UTF-8): {exc.reason} at "
            f"position {exc.start}"
        ) from None


class _Walk:
    __slots__ = ("items", "limits", "where")

    def __init__(self, limits: Limits, where: str) -> None:
        self.limits = limits
        self.where = where
        self.items = 0

    def value(self, value: Any, depth: int) -> int:
        # The encoded size of the Value message body for ``value`` at ``depth``
        # enclosing lists/dicts (what codec.fill writes). Exact built-in types first:
        # this runs on every write, once per item of a list.
        kind = type(value)
        if kind is float:
            return 9
        if kind is int:
            if not INT64_MIN <= value <= INT64_MAX:
                raise InvalidValueError(f"{self.where}: integer {value} is outside int64")
            return 1 + _varint((value << 1) ^ (value >> 63))  # sint64: zigzag
        if kind is str:
            return _field(_utf8(value, f"{self.where}: a string"))
        if value is None or kind is bool:
            return 2
        if kind is list:
            return _field(self.items_of(value, depth + 1))
        if kind is dict:
            return _field(self.entries(value, depth + 1))
        return self.other(value, depth)

    def other(self, value: Any, depth: int) -> int:
        if isinstance(value, bool | np.bool_):
            return 2
        if isinstance(value, int | np.integer):
            return self.value(int(value), depth)
        if isinstance(value, float | np.floating):
            return 9
        if isinstance(value, str):
            return self.value(str(value), depth)
        if isinstance(value, np.ndarray):
            return _field(self.array(value))
        if isinstance(value, list | tuple):
            return _field(self.items_of(value, depth + 1))
        if isinstance(value, Mapping):
            return _field(self.entries(value, depth + 1))
        raise VariableTypeError(
            f"{self.where}: a value of type {type(value).__name__} cannot be stored"
        )

    def enter(self, depth: int, count: int) -> None:
        limits = self.limits
        if depth > limits.max_depth:
            raise too_big(
                f"{self.where} nests {depth} levels deep", depth, "max_depth", limits.max_depth
            )
        self.items += count
        if self.items > limits.max_collection_items:
            raise too_big(
                f"{self.where} has {self.items} or more list items and dict entries",
                self.items, "max_collection_items", limits.max_collection_items,
            )

    def items_of(self, items: list[Any] | tuple[Any, ...], depth: int) -> int:
        self.enter(depth, len(items))
        size = 0
        value = self.value
        for item in items:
            body = value(item, depth)
            size += body + (2 if body < 0x80 else 1 + _varint(body))  # tag, length, body
        return size

    def entries(self, mapping: Mapping[Any, Any], depth: int) -> int:
        self.enter(depth, len(mapping))
        size = 0
        for key, item in mapping.items():
            if not isinstance(key, str):
                raise VariableTypeError(
                    f"{self.where}: dict keys must be strings, got {type(key).__name__}"
                )
            key_bytes = _utf8(key, f"{self.where}: a key")
            entry = (_field(key_bytes) if key_bytes else 0) + _field(self.value(item, depth))
            size += _field(entry)
        return size

    def array(self, array: np.ndarray) -> int:
        limits = self.limits
        if array.size > limits.max_array_elements:
            raise too_big(
                f"{self.where}: array has {array.size} elements", int(array.size),
                "max_array_elements", limits.max_array_elements,
            )
        size = _field(len(array.dtype.name))
        shape = sum(_varint(d) for d in array.shape)
        if shape:
            size += _field(shape)
        if array.nbytes:
            size += _field(int(array.nbytes))
        return size


def measure_value(value: Any, limits: Limits, where: str, depth: int = 0) -> int:
    """The encoded size of a value (a ``Value`` message), checking ``max_value_bytes``,
    ``max_depth``, ``max_collection_items`` and ``max_array_elements``.

    ``where`` starts each error message (``"variable 'x': value"``); ``depth`` is how
    deep the value itself sits where it travels (1 inside an optimization status).

    >>> measure_value([1, "ab", None], DEFAULT_LIMITS, "value")
    16
    >>> try:
    ...     measure_value([[[]]], Limits(max_depth=2), "variable 'x': value")
    ... except ValueError as exc:
    ...     print(exc)
    variable 'x': value nests 3 levels deep, above the max_depth limit of 2
    """
    size = _Walk(limits, where).value(value, depth)
    if size > limits.max_value_bytes:
        raise too_big(f"{where} is {size} bytes encoded", size, "max_value_bytes",
                      limits.max_value_bytes)
    return size


def measure_map(
    mapping: Mapping[str, Any] | None, limits: Limits, where: str, depth: int = 1
) -> int:
    """The encoded size of a metadata-like map (a ``MapValue`` message), checking
    ``max_metadata_keys``, ``max_metadata_bytes`` and the value limits. ``depth`` is the
    nesting of its entries where it travels (1 for a map sent as such; more when it is
    carried inside another map, as an optimization's metrics are inside its status).

    >>> measure_map({"owner": "me"}, DEFAULT_LIMITS, "metadata")
    15
    """
    if not mapping:
        return 0
    if len(mapping) > limits.max_metadata_keys:
        raise too_big(f"{where} has {len(mapping)} keys", len(mapping), "max_metadata_keys",
                      limits.max_metadata_keys)
    size = _Walk(limits, where).entries(mapping, depth)
    if size > limits.max_metadata_bytes:
        raise too_big(f"{where} is {size} bytes encoded", size, "max_metadata_bytes",
                      limits.max_metadata_bytes)
    return size
