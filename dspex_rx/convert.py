"""Mappings between wire messages and plain data shared by client and server: type and
dependency-type enums, access rules, timestamps, and error kinds <-> gRPC status codes."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from . import codec
from .errors import InvalidValueError, error_from_kind
from .graph import DEPENDENCY_TYPES
from .types import TYPES, normalize_type
from .v1 import variables_pb2 as pb

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
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
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

    Example::

        >>> type_to_pb("float") == pb.VARIABLE_TYPE_FLOAT
        True
    """
    return _TYPE_TO_PB[normalize_type(type_name)]


def type_from_pb(number: int) -> str:
    """The type name for a wire enum; unspecified or unknown numbers are refused.

    Example::

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

    Example::

        >>> timestamp(1.5).nanos
        500000000
    """
    ts = Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def seconds(ts: Timestamp) -> float:
    """POSIX seconds for a protobuf Timestamp.

    Example::

        >>> seconds(timestamp(2.25))
        2.25
    """
    return ts.seconds + ts.nanos / 1e9


def map_rpc_error(error: BaseException) -> BaseException:
    """The dspex-rx exception for a status the server sent on purpose; anything else
    (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, non-gRPC errors) comes back unchanged.

    Example::

        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc) from None
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

    Example::

        rules_from_pb(request.rules)
    """
    return [
        {"session_pattern": r.session_pattern, "permissions": list(r.permissions),
         "conditions": codec.decode_map(r.conditions), **({"claim": r.claim} if r.claim else {})}
        for r in rules
    ]
