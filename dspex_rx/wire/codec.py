"""Python values <-> the wire ``Value`` message; arrays travel as raw little-endian bytes.

Shared by the client and the server's service adapter. Encoding accepts what users hold
(numpy scalars, tuples, torch tensors, dicts with int keys) and sends the plain kind;
decoding returns plain Python values and read-only numpy arrays (decoded straight from the
message bytes, no copy). How a value was written travels with it: an array from torch
carries ``origin: "torch"`` and a dict whose keys were converted to strings carries
``keys_converted``; decoding keeps that as ``types.TorchOriginArray`` /
``types.KeysConvertedDict`` and ``present`` turns it into what a reader asked for.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from dspex_rx.core.limits import HARD_MAX_DEPTH
from dspex_rx.core.types import (
    ARRAY_DTYPES,
    INT64_MAX,
    INT64_MIN,
    KeysConvertedDict,
    TorchOriginArray,
)
from dspex_rx.errors import InvalidValueError, VariableTypeError, install_hint
from dspex_rx.v1 import value_pb2 as pb

Value = pb.Value


def encode(value: Any) -> pb.Value:
    """Encode a Python value as a wire ``Value``.

    >>> encode(3).int_value
    3
    """
    msg = pb.Value()
    fill(msg, value)
    return msg


# The hard ceiling of nesting (protobuf's own decoder limit, with room for the messages
# around a value); the server's limit is Limits.max_depth, at most this.
MAX_DEPTH = HARD_MAX_DEPTH


def fill(msg: pb.Value, value: Any, depth: int = 0, _converted: list[bool] | None = None) -> None:
    """Write ``value`` into an existing (empty) ``Value`` message in place.

    Lists and dicts may nest ``MAX_DEPTH`` levels deep (protobuf's own decoder limit,
    with room for the request messages around the value); a server may allow less
    (``Limits.max_depth``).

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
        if isinstance(value, TorchOriginArray):
            msg.array_value.origin = "torch"
    elif isinstance(value, list | tuple):
        items = msg.list_value.values
        if not value:
            msg.list_value.SetInParent()
        for item in value:
            fill(items.add(), item, depth + 1, _converted)
    elif isinstance(value, Mapping):
        msg.map_value.SetInParent()  # an empty dict is still a dict, not "no value"
        # The outermost dict of a value says whether keys were converted anywhere in it.
        outermost = _converted is None
        converted = [isinstance(value, KeysConvertedDict)] if outermost else _converted
        assert converted is not None
        _fill_map(msg.map_value, value, depth + 1, converted)
        if outermost and converted[0]:
            msg.map_value.keys_converted = True
    elif _is_torch_tensor(value):
        _fill_array(msg.array_value, _torch_to_numpy(value))
        msg.array_value.origin = "torch"
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


# Keys a value's dict may have that become strings (the spec: "Keys converted to
# strings"): scalars, whose str() is a stable name. Others (tuples, objects: their str()
# may hold a memory address) are refused.
_CONVERTIBLE_KEYS = (int, float, np.integer, np.floating, np.bool_, type(None))


def _fill_map(
    msg: pb.MapValue, value: Mapping[Any, Any], depth: int, converted: list[bool] | None = None
) -> None:
    # ``converted`` is None for metadata-like maps (string keys required) and a one-item
    # flag for values, set when a key was converted.
    seen: dict[str, Any] | None = None
    for key, item in value.items():
        if not isinstance(key, str):
            if converted is None or not isinstance(key, _CONVERTIBLE_KEYS):
                raise VariableTypeError(
                    f"dict keys must be strings, got {type(key).__name__} {key!r}"
                    + ("" if converted is None else
                       "; int, float, bool and None keys are converted to strings")
                )
            if seen is None:
                seen = {k if isinstance(k, str) else _key_text(k): k for k in value}
                if len(seen) < len(value):
                    raise InvalidValueError(_collision(value))
            key = _key_text(key)
            converted[0] = True
        entry = msg.entries.add()
        try:
            entry.key = key
        except UnicodeEncodeError as exc:
            raise _not_unicode(exc) from None
        fill(entry.value, item, depth, converted)


def _key_text(key: Any) -> str:
    # bool before int: str(True) is "True"; numpy scalars print as Python's do.
    if isinstance(key, bool | np.bool_):
        return str(bool(key))
    if isinstance(key, int | np.integer):
        return str(int(key))
    if isinstance(key, float | np.floating):
        return repr(float(key))
    return str(key)


def _collision(value: Mapping[Any, Any]) -> str:
    groups: dict[str, list[Any]] = {}
    for key in value:
        groups.setdefault(key if isinstance(key, str) else _key_text(key), []).append(key)
    clashes = "; ".join(
        f"{' and '.join(repr(k) for k in keys)} become the same key {text!r}"
        for text, keys in groups.items() if len(keys) > 1
    )
    return f"dict keys collide when converted to strings: {clashes}"


def _is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _torch_to_numpy(tensor: Any) -> np.ndarray:
    # torch's own error for dtypes numpy lacks ("unsupported ScalarType BFloat16") names
    # neither the value nor the fix.
    try:
        array: np.ndarray = tensor.detach().cpu().numpy()
    except TypeError as exc:
        raise VariableTypeError(
            f"a torch tensor of dtype {str(tensor.dtype).removeprefix('torch.')} has no numpy "
            f"equivalent to travel as; convert it first (for example tensor.float()): {exc}"
        ) from None
    return array


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
        out = decode_map(msg.map_value)
        return KeysConvertedDict(out) if msg.map_value.keys_converted else out
    if kind == "array_value":
        array = _decode_array(msg.array_value)
        return array.view(TorchOriginArray) if msg.array_value.origin == "torch" else array
    raise InvalidValueError("a value is required but none was sent")


TENSOR_KINDS = ("numpy", "torch")


def check_tensor_kind(as_tensor: Any) -> str | None:
    """Check an ``as_tensor=`` argument: ``None`` (each array as it was written),
    ``"numpy"`` or ``"torch"``.

    >>> check_tensor_kind("numpy")
    'numpy'
    """
    if as_tensor is None or as_tensor in TENSOR_KINDS:
        return as_tensor  # type: ignore[no-any-return]
    raise InvalidValueError(
        f"as_tensor must be None, 'numpy' or 'torch', got {as_tensor!r}"
    )


def present(value: Any, as_tensor: str | None) -> Any:
    """A decoded value as a reader gets it. Arrays: ``as_tensor=None`` gives a
    ``torch.Tensor`` for one written from torch when torch is installed, else a read-only
    ``np.ndarray``; ``"numpy"`` always an ``np.ndarray``; ``"torch"`` always a tensor
    (``ImportError`` without torch). Dicts whose keys were converted come back as plain
    dicts. Anything else is returned as it is.

    >>> type(present(decode(encode(np.zeros(2))), None)).__name__
    'ndarray'
    """
    if isinstance(value, np.ndarray):
        if as_tensor == "torch" or (
            as_tensor is None and isinstance(value, TorchOriginArray) and _torch() is not None
        ):
            return _to_torch(value)
        return value.view(np.ndarray) if isinstance(value, TorchOriginArray) else value
    if isinstance(value, KeysConvertedDict):
        return dict(value)
    if as_tensor == "numpy" and _is_torch_tensor(value):
        array = value.detach().cpu().numpy()
        array.setflags(write=False)
        return array
    return value


def _torch() -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError:
        return None


def _to_torch(array: np.ndarray) -> Any:
    torch = _torch()
    if torch is None:
        raise ImportError(
            "as_tensor='torch' needs PyTorch, which is not installed "
            f"({install_hint('torch')}, or pip install torch)"
        )
    # A copy: stored arrays are read-only and shared, a tensor is writable.
    return torch.from_numpy(np.array(array.view(np.ndarray), copy=True))


def value_flags(msg: pb.Value) -> dict[str, Any]:
    """The system metadata a wire value carries about how it was written
    (``tensor_origin``, ``keys_converted``), each present only when it applies.

    >>> value_flags(encode({1: "a"}))
    {'keys_converted': True}
    """
    kind = msg.WhichOneof("kind")
    if kind == "array_value" and msg.array_value.origin == "torch":
        return {"tensor_origin": "torch"}
    if kind == "map_value" and msg.map_value.keys_converted:
        return {"keys_converted": True}
    return {}



def decode_map(msg: pb.MapValue) -> dict[str, Any]:
    """Decode a ``MapValue``; repeated keys are an error (a dict cannot hold them).

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

    >>> array_parts(np.array([1, 2], dtype=np.int8))
    ('int8', [2], b'\\x01\\x02')
    """
    msg = pb.NdArray()
    _fill_array(msg, array)
    return msg.dtype, list(msg.shape), msg.data


def array_from_parts(dtype: str, shape: list[int], data: bytes) -> np.ndarray:
    """The read-only array of ``array_parts``; a wrong dtype, shape or byte count raises.

    >>> array_from_parts("int8", [2], b"\\x01\\x02").tolist()
    [1, 2]
    """
    try:
        msg = pb.NdArray(dtype=dtype, shape=shape, data=data)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(f"not an array (dtype, shape, bytes): {exc}") from None
    return _decode_array(msg)
