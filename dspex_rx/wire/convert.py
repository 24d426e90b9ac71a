"""Mappings between wire messages and plain data shared by client and server: type and
dependency-type enums, access rules, timestamps, and error kinds <-> gRPC status codes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from dspex_rx.core.graph import DEPENDENCY_TYPES
from dspex_rx.core.types import TYPES, normalize_type
from dspex_rx.errors import InvalidValueError, error_from_kind
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec

_TYPE_TO_PB: dict[str, int] = {
    name: pb.VariableType.Value("VARIABLE_TYPE_" + name.upper()) for name in TYPES
}
_PB_TO_TYPE: dict[int, str] = {number: name for name, number in _TYPE_TO_PB.items()}

# Dependency type name <-> wire enum, in graph.DEPENDENCY_TYPES order (error messages list
# the names in this order).
DEPENDENCY_TO_PB: dict[str, int] = {
    name: pb.DependencyType.Value("DEPENDENCY_TYPE_" + name.upper()) for name in DEPENDENCY_TYPES
}
DEPENDENCY_FROM_PB: dict[int, str] = {number: name for name, number in DEPENDENCY_TO_PB.items()}

# Error kind -> status code. Kinds travel in trailing metadata so the client can rebuild
# the precise exception (TypeError vs ValueError share INVALID_ARGUMENT).
STATUS_BY_KIND: dict[str, grpc.StatusCode] = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "session_not_found": grpc.StatusCode.NOT_FOUND,
    "invalid_value": grpc.StatusCode.INVALID_ARGUMENT,
    "type_error": grpc.StatusCode.INVALID_ARGUMENT,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "conflict": grpc.StatusCode.FAILED_PRECONDITION,
    "locked": grpc.StatusCode.FAILED_PRECONDITION,
    "fenced": grpc.StatusCode.FAILED_PRECONDITION,
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "storage_unavailable": grpc.StatusCode.UNAVAILABLE,
    "internal": grpc.StatusCode.INTERNAL,
}

# For statuses that arrive without a kind (raised by gRPC itself or a foreign server).
KIND_BY_STATUS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.NOT_FOUND: "not_found",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_value",
    grpc.StatusCode.ALREADY_EXISTS: "already_exists",
    grpc.StatusCode.FAILED_PRECONDITION: "conflict",
    grpc.StatusCode.ABORTED: "conflict",
    grpc.StatusCode.PERMISSION_DENIED: "permission_denied",
    grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "resource_exhausted",
}

ERROR_KIND_KEY = "dspex-error-kind"
ERROR_DETAIL_PREFIX = "dspex-error-"


def type_to_pb(type_name: str) -> int:
    """The wire enum for a type name (aliases accepted).

    >>> type_to_pb("float") == pb.VARIABLE_TYPE_FLOAT
    True
    """
    return _TYPE_TO_PB[normalize_type(type_name)]


def type_from_pb(number: int) -> str:
    """The type name for a wire enum; unspecified or unknown numbers are refused.

    >>> type_from_pb(pb.VARIABLE_TYPE_TENSOR)
    'tensor'
    """
    try:
        return _PB_TO_TYPE[number]
    except KeyError:
        raise InvalidValueError(
            f"variable type is missing or unknown (wire value {number})"
        ) from None


def timestamp(seconds: float) -> Timestamp:
    """A protobuf Timestamp for POSIX seconds.

    >>> timestamp(1.5).nanos
    500000000
    """
    ts = Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def seconds(ts: Timestamp) -> float:
    """POSIX seconds for a protobuf Timestamp.

    >>> seconds(timestamp(2.25))
    2.25
    """
    return ts.seconds + ts.nanos / 1e9


def utc_datetime(ts: Timestamp) -> datetime:
    """A timezone-aware UTC ``datetime`` for a protobuf Timestamp (what the API returns).

    >>> utc_datetime(timestamp(0.5)).isoformat()
    '1970-01-01T00:00:00.500000+00:00'
    """
    return datetime.fromtimestamp(seconds(ts), tz=UTC)


def since_seconds(what: str, since: datetime | float) -> float:
    """POSIX seconds for a ``since=`` argument given as a ``datetime`` or POSIX seconds.

    A naive ``datetime`` is taken as UTC (the API returns aware UTC datetimes, so a naive
    one is most likely a UTC value that lost its zone). ``what`` names the call's subject
    in the error.

    >>> since_seconds("x", datetime(1970, 1, 1, 0, 0, 2, tzinfo=UTC))
    2.0
    >>> since_seconds("x", 2.5)
    2.5
    """
    if isinstance(since, datetime):
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        value = since.timestamp()
    elif isinstance(since, int | float) and not isinstance(since, bool):
        value = float(since)
    else:
        raise InvalidValueError(
            f"{what}: since must be a datetime or POSIX seconds, got {since!r}"
        )
    if not 0 <= value < 253402300800:  # the Timestamp range: up to year 9999
        raise InvalidValueError(
            f"{what}: since must lie between 1970 and the year 9999, got {since!r}"
        )
    return value


def map_rpc_error(error: BaseException) -> BaseException:
    """The dspex-rx exception for a status the server sent on purpose; anything else
    (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, non-gRPC errors) comes back unchanged.

    >>> map_rpc_error(KeyError("not a gRPC error"))
    KeyError('not a gRPC error')

    Example: ``raise map_rpc_error(exc) from None`` in ``except grpc.aio.AioRpcError as exc:``.
    """
    original = error
    if not isinstance(error, grpc.aio.AioRpcError):
        return original
    trailing = error.trailing_metadata() or ()
    metadata = {key: value for key, value in trailing if isinstance(value, str)}
    kind = metadata.get(ERROR_KIND_KEY) or KIND_BY_STATUS.get(error.code())
    if kind is None:
        return original
    details = {
        key[len(ERROR_DETAIL_PREFIX) :].replace("-", "_"): value
        for key, value in metadata.items()
        if key.startswith(ERROR_DETAIL_PREFIX) and key != ERROR_KIND_KEY
    }
    message: str = error.details() or error.code().name
    return error_from_kind(kind, message, **details)


def rules_from_pb(rules: Any) -> list[dict[str, Any]]:
    """Wire ``AccessRule``s as the spec's rule dicts, with ``claim`` when a rule is bound
    to one (identity.py); the store validates them.

    >>> from dspex_rx.v1 import variables_pb2 as pb
    >>> rules_from_pb([pb.AccessRule(session_pattern="bob", permissions=["read"], claim=2)])
    [{'session_pattern': 'bob', 'permissions': ['read'], 'conditions': {}, 'claim': 2}]
    """

    return [
        {"session_pattern": r.session_pattern, "permissions": list(r.permissions),
         "conditions": codec.decode_map(r.conditions), **({"claim": r.claim} if r.claim else {})}
        for r in rules
    ]
