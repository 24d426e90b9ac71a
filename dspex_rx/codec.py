"""Python values <-> the wire ``Value`` message; arrays travel as raw little-endian bytes.

Shared by the client and the server's service adapter. Encoding accepts what users hold
(numpy scalars, tuples) and sends the plain kind; decoding returns plain Python values and
read-only numpy arrays (decoded straight from the message bytes, no copy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import InvalidValueError, VariableTypeError
from .limits import HARD_MAX_DEPTH
from .types import ARRAY_DTYPES, INT64_MAX, INT64_MIN
from .v1 import value_pb2 as pb

Value = pb.Value


def encode(value: Any) -> pb.Value:
    """Encode a Python value as a wire ``Value``.

    Example::

        >>> encode(3).int_value
        3
    """
    msg = pb.Value()
    fill(msg, value)
    return msg


# The hard ceiling of nesting (protobuf's own decoder limit, with room for the messages
# around a value); the server's limit is Limits.max_depth, at most this.
MAX_DEPTH = HARD_MAX_DEPTH


def fill(msg: pb.Value, value: Any, depth: int = 0) -> None:
    """Write ``value`` into an existing (empty) ``Value`` message in place.

    Lists and dicts may nest ``MAX_DEPTH`` levels deep (protobuf's own decoder limit,
    with room for the request messages around the value); a server may allow less
    (``Limits.max_depth``).

    Example::

        >>> v = pb.Value(); fill(v, "hi"); v.string_value
        'hi'
    """
    if depth > MAX_DEPTH:
        raise InvalidValueError(f"value nests deeper than {MAX_DEPTH} levels")
    # Order matters: bool is an int subclass, numpy scalars are not Python scalars.
    if value is None:
        msg.null_value = pb.NULL_VALUE
    elif isinstance(value, bool | np.bool_):
        msg.bool_value = bool(value)
    elif isinstance(value, int | np.integer):
        number = int(value)
        if not INT64_MIN <= number <= INT64_MAX:
            raise InvalidValueError(f"integer {number} is outside the int64 range")
        msg.int_value = number
    elif isinstance(value, float | np.floating):
        msg.float_value = float(value)
    elif isinstance(value, str):
        try:
            msg.string_value = value
        except UnicodeEncodeError as exc:
            raise _not_unicode(exc) from None
    elif isinstance(value, np.ndarray):
        _fill_array(msg.array_value, value)
    elif isinstance(value, list | tuple):
        items = msg.list_value.values
        if not value:
            msg.list_value.SetInParent()
        for item in value:
            fill(items.add(), item, depth + 1)
    elif isinstance(value, Mapping):
        msg.map_value.SetInParent()  # an empty dict is still a dict, not "no value"
        _fill_map(msg.map_value, value, depth + 1)
    elif _is_torch_tensor(value):
        _fill_array(msg.array_value, value.detach().cpu().numpy())
    else:
        raise VariableTypeError(
            f"cannot send a value of type {type(value).__name__}; supported: None, bool, int, "
            "float, str, list, tuple, dict, numpy arrays and scalars"
        )


def _not_unicode(exc: UnicodeEncodeError) -> InvalidValueError:
    return InvalidValueError(
        f"string is not valid Unicode (cannot be sent as UTF-8): {exc.reason} at "
        f"position {exc.start}"
    )


def _fill_map(msg: pb.MapValue, value: Mapping[str, Any], depth: int) -> None:
    for key, item in value.items():
        if not isinstance(key, str):
            raise VariableTypeError(
                f"dict keys must be strings, got {type(key).__name__} {key!r}"
            )
        entry = msg.entries.add()
        try:
            entry.key = key
        except UnicodeEncodeError as exc:
            raise _not_unicode(exc) from None
        fill(entry.value, item, depth)


def _is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _fill_array(msg: pb.NdArray, array: np.ndarray) -> None:
    name = array.dtype.name
    if name not in ARRAY_DTYPES:
        raise VariableTypeError(
            f"arrays of dtype {array.dtype} cannot be sent; supported: "
            f"{', '.join(sorted(ARRAY_DTYPES))}"
        )
    little = array.dtype.newbyteorder("<")
    msg.dtype = name
    msg.shape.extend(array.shape)
    msg.data = np.ascontiguousarray(array, dtype=little).tobytes()


def decode(msg: pb.Value) -> Any:
    """Decode a wire ``Value``; arrays come back as read-only ``np.ndarray``.

    Example::

        >>> decode(encode([1, "a", None]))
        [1, 'a', None]
    """
    kind = msg.WhichOneof("kind")
    if kind == "float_value":
        return msg.float_value
    if kind == "int_value":
        return msg.int_value
    if kind == "string_value":
        return msg.string_value
    if kind == "bool_value":
        return msg.bool_value
    if kind == "null_value":
        return None
    if kind == "list_value":
        return [decode(item) for item in msg.list_value.values]
    if kind == "map_value":
        return decode_map(msg.map_value)
    if kind == "array_value":
        return _decode_array(msg.array_value)
    raise InvalidValueError("a value is required but none was sent")


def decode_map(msg: pb.MapValue) -> dict[str, Any]:
    """Decode a ``MapValue``; repeated keys are an error (a dict cannot hold them).

    Example::

        >>> decode_map(encode({"a": 1}).map_value)
        {'a': 1}
    """
    out: dict[str, Any] = {}
    for entry in msg.entries:
        if entry.key in out:
            raise InvalidValueError(f"map has the key {entry.key!r} twice")
        out[entry.key] = decode(entry.value)
    return out


def encode_map(value: Mapping[str, Any] | None) -> pb.MapValue:
    """Encode a str-keyed mapping as a ``MapValue`` (None is the empty map).

    Example::

        >>> len(encode_map({"a": 1}).entries)
        1
    """
    msg = pb.MapValue()
    _fill_map(msg, value or {}, 1)
    return msg


def _decode_array(msg: pb.NdArray) -> np.ndarray:
    if msg.dtype not in ARRAY_DTYPES:
        raise VariableTypeError(f"array dtype {msg.dtype!r} is not supported")
    dtype = np.dtype(msg.dtype).newbyteorder("<")
    shape = tuple(msg.shape)
    if any(d < 0 for d in shape):
        raise InvalidValueError(f"array shape {shape} has a negative dimension")
    expected = math.prod(shape) * dtype.itemsize
    if len(msg.data) != expected:
        raise InvalidValueError(
            f"array of dtype {msg.dtype} and shape {shape} needs {expected} bytes, "
            f"got {len(msg.data)}"
        )
    array = np.frombuffer(msg.data, dtype=dtype).reshape(shape)
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
        array.setflags(write=False)
    return array


def array_parts(array: np.ndarray) -> tuple[str, list[int], bytes]:
    """An array as (dtype name, shape, little-endian C-order bytes): the wire's form, for
    file formats that store arrays as raw bytes too.

    Example::

        >>> array_parts(np.array([1, 2], dtype=np.int8))
        ('int8', [2], b'\\x01\\x02')
    """
    msg = pb.NdArray()
    _fill_array(msg, array)
    return msg.dtype, list(msg.shape), msg.data


def array_from_parts(dtype: str, shape: list[int], data: bytes) -> np.ndarray:
    """The read-only array of ``array_parts``; a wrong dtype, shape or byte count raises.

    Example::

        >>> array_from_parts("int8", [2], b"\\x01\\x02").tolist()
        [1, 2]
    """
    try:
        msg = pb.NdArray(dtype=dtype, shape=shape, data=data)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(f"not an array (dtype, shape, bytes): {exc}") from None
    return _decode_array(msg)
