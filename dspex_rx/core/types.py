"""The variable type system: type names, constraint schemas, and authoritative validation.

Pure Python over plain values (None, bool, int, float, str, list, dict, numpy arrays);
no gRPC. The server's store validates every write here before applying anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from dspex_rx.core.patterns import DEFAULT_MAX_PATTERN_LENGTH, compile_regex
from dspex_rx.errors import InvalidValueError, VariableTypeError

TYPES: tuple[str, ...] = (
    "float",
    "integer",
    "string",
    "boolean",
    "choice",
    "module",
    "embedding",
    "tensor",
    "list",
    "dict",
)

_ALIASES = {"int": "integer", "str": "string", "bool": "boolean", "number": "float"}

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# dtypes that travel as raw little-endian bytes; object/str/void dtypes never do.
ARRAY_DTYPES: frozenset[str] = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    }
)

_ITEM_TYPES = ("float", "integer", "string", "boolean", "list", "dict")


def normalize_type(type_name: str) -> str:
    """The canonical type name for ``type_name`` (aliases like ``int`` accepted).

    Example::

        >>> normalize_type("int")
        'integer'
    """
    if not isinstance(type_name, str):
        raise VariableTypeError(f"variable type must be a string, got {type(type_name).__name__}")
    canonical = _ALIASES.get(type_name, type_name)
    if canonical not in TYPES:
        raise InvalidValueError(
            f"unknown variable type {type_name!r}; expected one of {', '.join(TYPES)}"
        )
    return canonical


# ---------------------------------------------------------------- constraints


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_bool(name: str, key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise InvalidValueError(f"variable {name!r}: constraint {key!r} must be a boolean")
    return v


def _check_number(name: str, key: str, v: Any) -> float | int:
    if not _is_number(v) or (isinstance(v, float) and math.isnan(v)):
        raise InvalidValueError(f"variable {name!r}: constraint {key!r} must be a number")
    return v  # type: ignore[no-any-return]


def _check_int(name: str, key: str, v: Any, minimum: int = 0) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise InvalidValueError(
            f"variable {name!r}: constraint {key!r} must be an integer >= {minimum}"
        )
    return v


def _check_integer_bound(name: str, key: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise InvalidValueError(f"variable {name!r}: constraint {key!r} must be an integer")
    return v


def _check_choices(name: str, key: str, v: Any) -> list[str]:
    if not isinstance(v, list) or not v or not all(isinstance(c, str) for c in v):
        raise InvalidValueError(
            f"variable {name!r}: constraint {key!r} must be a non-empty list of strings"
        )
    if len(set(v)) != len(v):
        raise InvalidValueError(f"variable {name!r}: constraint {key!r} has duplicate entries")
    return list(v)


def _check_pattern(
    name: str, key: str, v: Any, max_length: int = DEFAULT_MAX_PATTERN_LENGTH
) -> str:
    if not isinstance(v, str):
        raise InvalidValueError(f"variable {name!r}: constraint {key!r} must be a string")
    try:
        compile_regex(v, max_length)
    except InvalidValueError as exc:
        reason = exc.details.get("reason", exc)
        raise InvalidValueError(
            f"variable {name!r}: constraint {key!r} is not a valid regex (RE2 syntax): "
            f"{reason}"
        ) from None
    return v


def _check_dtype(name: str, key: str, v: Any) -> str:
    if not isinstance(v, str) or v not in ARRAY_DTYPES:
        raise InvalidValueError(
            f"variable {name!r}: constraint {key!r} must be one of {sorted(ARRAY_DTYPES)}"
        )
    return v


def _check_float_dtype(name: str, key: str, v: Any) -> str:
    dtype = _check_dtype(name, key, v)
    if np.dtype(dtype).kind != "f":
        raise InvalidValueError(
            f"variable {name!r}: constraint {key!r} must be a floating dtype, got {dtype!r}"
        )
    return dtype


def _check_shape(name: str, key: str, v: Any) -> list[int | None]:
    ok = isinstance(v, list) and all(
        d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= -1) for d in v
    )
    if not ok:
        raise InvalidValueError(
            f"variable {name!r}: constraint {key!r} must be a list of dimension sizes "
            "(None or -1 for any size)"
        )
    return [None if d is None or d == -1 else d for d in v]


def _check_item_type(name: str, key: str, v: Any) -> str:
    if v not in _ITEM_TYPES:
        raise InvalidValueError(
            f"variable {name!r}: constraint {key!r} must be one of {', '.join(_ITEM_TYPES)}"
        )
    return str(v)


_Check = Callable[[str, str, Any], Any]
_FINITE: dict[str, _Check] = {"allow_nan": _check_bool, "allow_inf": _check_bool}
_LENGTHS: dict[str, _Check] = {"min_length": _check_int, "max_length": _check_int}

CONSTRAINT_SCHEMAS: dict[str, dict[str, _Check]] = {
    "float": {"min": _check_number, "max": _check_number, **_FINITE},
    "integer": {"min": _check_integer_bound, "max": _check_integer_bound},
    "string": {**_LENGTHS, "pattern": _check_pattern},
    "boolean": {},
    "choice": {"choices": _check_choices},
    "module": {"choices": _check_choices},
    "embedding": {
        "dimensions": lambda n, k, v: _check_int(n, k, v, minimum=1),
        "normalize": _check_bool,
        "dtype": _check_float_dtype,
        **_FINITE,
    },
    "tensor": {"shape": _check_shape, "dtype": _check_dtype, **_FINITE},
    "list": {**_LENGTHS, "item_type": _check_item_type},
    "dict": {},
}

_REQUIRED: dict[str, tuple[str, ...]] = {"choice": ("choices",)}


def check_constraints(
    name: str,
    type_name: str,
    constraints: Mapping[str, Any] | None,
    max_pattern_length: int = DEFAULT_MAX_PATTERN_LENGTH,
) -> dict[str, Any]:
    """Validate a constraint dict for a type; unknown keys are refused. Returns a clean copy.

    A ``pattern`` must be a regex RE2 supports, at most ``max_pattern_length`` long.

    Example::

        >>> check_constraints("t", "float", {"min": 0.0, "max": 2.0})
        {'min': 0.0, 'max': 2.0}
    """
    schema = CONSTRAINT_SCHEMAS[type_name]
    given = dict(constraints or {})
    unknown = sorted(set(given) - set(schema))
    if unknown:
        allowed = ", ".join(sorted(schema)) or "none"
        raise InvalidValueError(
            f"variable {name!r}: unknown constraint(s) {', '.join(map(repr, unknown))} "
            f"for type {type_name} (allowed: {allowed})"
        )
    missing = [k for k in _REQUIRED.get(type_name, ()) if k not in given]
    if missing:
        raise InvalidValueError(
            f"variable {name!r}: type {type_name} requires constraint(s) {', '.join(missing)}"
        )
    clean = {
        key: _check_pattern(name, key, value, max_pattern_length)
        if key == "pattern" else schema[key](name, key, value)
        for key, value in given.items()
    }
    for low, high in (("min", "max"), ("min_length", "max_length")):
        if low in clean and high in clean and clean[low] > clean[high]:
            raise InvalidValueError(
                f"variable {name!r}: constraint {low} {clean[low]!r} is greater than "
                f"{high} {clean[high]!r}"
            )
    return clean


# ---------------------------------------------------------------------- values


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"ndarray(dtype={value.dtype}, shape={value.shape})"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_error(name: str, expected: str, value: Any) -> VariableTypeError:
    return VariableTypeError(
        f"variable {name!r}: expected {expected}, got {type(value).__name__} {_describe(value)}"
    )


def _check_finite_float(name: str, value: float, constraints: Mapping[str, Any]) -> None:
    if math.isnan(value) and not constraints.get("allow_nan", False):
        raise InvalidValueError(f"variable {name!r}: NaN is not allowed (constraint allow_nan)")
    if math.isinf(value) and not constraints.get("allow_inf", False):
        raise InvalidValueError(
            f"variable {name!r}: infinity is not allowed (constraint allow_inf)"
        )


def _check_range(name: str, value: float | int, constraints: Mapping[str, Any]) -> None:
    if "min" in constraints and value < constraints["min"]:
        raise InvalidValueError(f"variable {name!r}: {value!r} is below min {constraints['min']!r}")
    if "max" in constraints and value > constraints["max"]:
        raise InvalidValueError(f"variable {name!r}: {value!r} is above max {constraints['max']!r}")


def _check_length(name: str, what: str, length: int, constraints: Mapping[str, Any]) -> None:
    if "min_length" in constraints and length < constraints["min_length"]:
        raise InvalidValueError(
            f"variable {name!r}: {what} length {length} is below min_length "
            f"{constraints['min_length']}"
        )
    if "max_length" in constraints and length > constraints["max_length"]:
        raise InvalidValueError(
            f"variable {name!r}: {what} length {length} is above max_length "
            f"{constraints['max_length']}"
        )


def _validate_float(name: str, value: Any, c: Mapping[str, Any]) -> float:
    if not _is_number(value):
        raise _type_error(name, "float", value)
    result = float(value)
    _check_finite_float(name, result, c)
    _check_range(name, result, c)
    return result


def _validate_integer(name: str, value: Any, c: Mapping[str, Any]) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _type_error(name, "integer", value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidValueError(f"variable {name!r}: {value} is outside the int64 range")
    _check_range(name, value, c)
    return value


def _validate_string(name: str, value: Any, c: Mapping[str, Any]) -> str:
    if not isinstance(value, str):
        raise _type_error(name, "string", value)
    _check_length(name, "string", len(value), c)
    # RE2, full match (as re.fullmatch did): linear time whatever the pattern; the
    # pattern's length was bounded when the constraint was registered.
    if "pattern" in c and not compile_regex(c["pattern"], max_length=None).fullmatch(value):
        raise InvalidValueError(
            f"variable {name!r}: {value!r} does not match pattern {c['pattern']!r}"
        )
    return value


def _validate_boolean(name: str, value: Any, c: Mapping[str, Any]) -> bool:
    if not isinstance(value, bool):
        raise _type_error(name, "boolean", value)
    return value


def _validate_choice(name: str, value: Any, c: Mapping[str, Any]) -> str:
    if not isinstance(value, str):
        raise _type_error(name, "string (one of the choices)", value)
    choices = c.get("choices")
    if choices is not None and value not in choices:
        raise InvalidValueError(
            f"variable {name!r}: {value!r} is not one of the choices {choices!r}"
        )
    return value


def _validate_module(name: str, value: Any, c: Mapping[str, Any]) -> str:
    module = _validate_choice(name, value, c)
    if not module:
        raise InvalidValueError(f"variable {name!r}: module name must not be empty")
    return module


def _as_array(
    name: str, value: Any, dtype: str | None, type_name: str, list_dtype: str | None = None
) -> np.ndarray:
    from_list = isinstance(value, list)
    if isinstance(value, np.ndarray):
        array = value
    elif from_list:
        try:
            array = np.asarray(value, dtype=None if dtype else list_dtype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise VariableTypeError(
                f"variable {name!r}: cannot make a {type_name} from that list: {exc}"
            ) from None
    else:
        raise _type_error(name, f"{type_name} (numpy array or list of numbers)", value)
    if array.dtype.name not in ARRAY_DTYPES:
        raise VariableTypeError(
            f"variable {name!r}: dtype {array.dtype} is not supported for {type_name} "
            f"(supported: {', '.join(sorted(ARRAY_DTYPES))})"
        )
    if dtype is not None and array.dtype.name != dtype:
        # Python numbers carry no dtype: a list of ints may go into int8 if every value
        # fits. An array's dtype is a promise, so only casts that are always safe apply.
        if from_list and np.can_cast(array.dtype, dtype, casting="same_kind"):
            cast = array.astype(dtype)
            if not np.array_equal(cast.astype(array.dtype), array):
                raise InvalidValueError(
                    f"variable {name!r}: a value of the list does not fit dtype {dtype}"
                )
            return cast
        if not np.can_cast(array.dtype, dtype, casting="safe"):
            raise VariableTypeError(
                f"variable {name!r}: dtype {array.dtype} cannot be converted to the "
                f"required dtype {dtype} without loss"
            )
        array = array.astype(dtype)
    return array


def _check_finite_array(name: str, array: np.ndarray, c: Mapping[str, Any]) -> None:
    if array.dtype.kind not in "fc" or array.size == 0:
        return
    if not c.get("allow_nan", False) and bool(np.isnan(array).any()):
        raise InvalidValueError(f"variable {name!r}: NaN is not allowed (constraint allow_nan)")
    if not c.get("allow_inf", False) and bool(np.isinf(array).any()):
        raise InvalidValueError(
            f"variable {name!r}: infinity is not allowed (constraint allow_inf)"
        )


def _frozen(array: np.ndarray) -> np.ndarray:
    # Stored arrays are shared by every reader; a read-only flag makes accidental
    # in-place edits fail loudly instead of changing history.
    if array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, order="C", copy=True)  # keeps 0-d arrays 0-d
    array.setflags(write=False)
    return array


def _validate_embedding(name: str, value: Any, c: Mapping[str, Any]) -> np.ndarray:
    # A list of numbers becomes float64, the dtype of the Python floats it holds.
    array = _as_array(name, value, c.get("dtype"), "embedding", list_dtype="float64")
    if array.ndim != 1:
        raise InvalidValueError(
            f"variable {name!r}: an embedding must be 1-d, got shape {array.shape}"
        )
    if array.dtype.kind != "f":
        raise VariableTypeError(
            f"variable {name!r}: an embedding needs a floating dtype, got {array.dtype}"
        )
    if "dimensions" in c and array.shape[0] != c["dimensions"]:
        raise InvalidValueError(
            f"variable {name!r}: embedding has {array.shape[0]} dimensions, "
            f"constraint dimensions is {c['dimensions']}"
        )
    _check_finite_array(name, array, c)
    if c.get("normalize", False):
        norm = float(np.linalg.norm(array.astype(np.float64)))
        if norm == 0.0 or not math.isfinite(norm):
            raise InvalidValueError(
                f"variable {name!r}: cannot normalize a vector of norm {norm} "
                "(constraint normalize)"
            )
        array = (array.astype(np.float64) / norm).astype(array.dtype)
    return _frozen(array)


def _validate_tensor(name: str, value: Any, c: Mapping[str, Any]) -> np.ndarray:
    array = _as_array(name, value, c.get("dtype"), "tensor")
    shape = c.get("shape")
    if shape is not None and (
        len(shape) != array.ndim
        or any(
            want is not None and want != got for want, got in zip(shape, array.shape, strict=False)
        )
    ):
        wanted = tuple("*" if d is None else d for d in shape)
        raise InvalidValueError(
            f"variable {name!r}: tensor shape {array.shape} does not match constraint "
            f"shape {wanted}"
        )
    _check_finite_array(name, array, c)
    return _frozen(array)


def check_plain(name: str, value: Any, path: str = "value") -> Any:
    """Check a JSON-like tree (None, bool, int64, finite float, str, list, str-keyed dict).

    Example::

        >>> check_plain("cfg", {"a": [1, 2.5, None]})
        {'a': [1, 2.5, None]}
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidValueError(f"variable {name!r}: {path} {value} is outside the int64 range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValueError(f"variable {name!r}: {path} must be finite, got {value!r}")
        return value
    if isinstance(value, list):
        return [check_plain(name, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise VariableTypeError(
                    f"variable {name!r}: {path} has a non-string key {key!r}; dict keys "
                    "must be strings"
                )
            out[key] = check_plain(name, item, f"{path}[{key!r}]")
        return out
    raise VariableTypeError(
        f"variable {name!r}: {path} holds {type(value).__name__} {_describe(value)}; only "
        "None, bool, int, float, str, list and dict may nest here"
    )


def _validate_list(name: str, value: Any, c: Mapping[str, Any]) -> list[Any]:
    if not isinstance(value, list):
        raise _type_error(name, "list", value)
    _check_length(name, "list", len(value), c)
    item_type = c.get("item_type")
    items = []
    for i, item in enumerate(value):
        if item_type is not None:
            try:
                item = _VALIDATORS[item_type](name, item, {})
            except (InvalidValueError, VariableTypeError) as exc:
                raise type(exc)(
                    f"variable {name!r}: item {i} breaks item_type {item_type}: "
                    + exc.message.split(": ", 1)[-1]
                ) from None
        items.append(check_plain(name, item, f"item {i}"))
    return items


def _validate_dict(name: str, value: Any, c: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _type_error(name, "dict", value)
    return check_plain(name, value)  # type: ignore[no-any-return]


_VALIDATORS: dict[str, Callable[[str, Any, Mapping[str, Any]], Any]] = {
    "float": _validate_float,
    "integer": _validate_integer,
    "string": _validate_string,
    "boolean": _validate_boolean,
    "choice": _validate_choice,
    "module": _validate_module,
    "embedding": _validate_embedding,
    "tensor": _validate_tensor,
    "list": _validate_list,
    "dict": _validate_dict,
}


class TorchOriginArray(np.ndarray):
    """A stored array that was written from a ``torch.Tensor``: numpy everywhere, but the
    wire says ``origin: "torch"`` so a client with torch gives a tensor back.

    Example::

        >>> np.arange(3).view(TorchOriginArray).tolist()
        [0, 1, 2]
    """


class KeysConvertedDict(dict):  # type: ignore[type-arg]
    """A stored dict whose writer converted non-string keys to strings (here or in a dict
    nested in it); an ordinary dict otherwise, flagged so readers can be told.

    Example::

        >>> KeysConvertedDict({"1": "a"}) == {"1": "a"}
        True
    """


def value_system_metadata(value: Any) -> dict[str, Any]:
    """What the system knows about how a value was written, apart from the user's
    metadata: ``tensor_origin`` (``'torch'``) and ``keys_converted`` (``True``), each
    present only when it applies.

    Example::

        >>> value_system_metadata(KeysConvertedDict({"1": 2}))
        {'keys_converted': True}
        >>> value_system_metadata([1, 2])
        {}
    """
    if isinstance(value, TorchOriginArray):
        return {"tensor_origin": "torch"}
    if isinstance(value, KeysConvertedDict):
        return {"keys_converted": True}
    return {}


def keep_origin(original: Any, clean: Any) -> Any:
    """``clean`` (what validation made of ``original``) with ``original``'s marks of how
    it was written (``TorchOriginArray``, ``KeysConvertedDict``): validation rebuilds
    values, and the marks must survive it to reach readers.

    Example::

        >>> type(keep_origin(KeysConvertedDict({"1": 2}), {"1": 2})).__name__
        'KeysConvertedDict'
    """
    if isinstance(original, TorchOriginArray) and isinstance(clean, np.ndarray):
        return clean if isinstance(clean, TorchOriginArray) else clean.view(TorchOriginArray)
    if isinstance(original, KeysConvertedDict) and isinstance(clean, dict):
        return clean if isinstance(clean, KeysConvertedDict) else KeysConvertedDict(clean)
    return clean


def validate_value(name: str, type_name: str, value: Any, constraints: Mapping[str, Any]) -> Any:
    """Check ``value`` against the type and constraints; return the value to store.

    Raises ``VariableTypeError`` (a ``TypeError``) for the wrong kind of value and
    ``InvalidValueError`` (a ``ValueError``) for a broken constraint, naming the rule.

    Example::

        >>> validate_value("t", "float", 1, {"max": 2.0})
        1.0
    """
    return _VALIDATORS[type_name](name, value, constraints)


def validate_stored(name: str, type_name: str, value: Any, constraints: Mapping[str, Any]) -> Any:
    """``validate_value`` for a value that was stored before (an import of an export):
    every rule is checked, but an embedding that is already a unit vector is kept bit for
    bit. Normalizing again is not idempotent in float64 (the last bit can move), and a
    restored value must be the value that was exported.

    Example::

        >>> unit = validate_value("e", "embedding", [3.0, 4.0], {"normalize": True})
        >>> validate_stored("e", "embedding", unit, {"normalize": True}).tolist()
        [0.6, 0.8]
    """
    clean = validate_value(name, type_name, value, constraints)
    if (
        type_name == "embedding"
        and constraints.get("normalize", False)
        and isinstance(value, np.ndarray)
        and value.dtype == clean.dtype
        and value.shape == clean.shape
    ):
        given = value.astype(np.float64)
        # Dividing by a norm that is 1 within rounding moves each element by a few ulps at
        # most; anything more means the value was not a unit vector, and ``clean`` stands.
        tolerance = 4 * float(np.finfo(value.dtype).eps) * np.abs(given)
        if bool(np.all(np.abs(clean.astype(np.float64) - given) <= tolerance)):
            return _frozen(value)
    return clean


def infer_type(name: str, value: Any) -> str:
    """The type for a value with no type hint; ambiguous values raise ``TypeError``.

    Example::

        >>> infer_type("x", 3)
        'integer'
    """
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, np.ndarray):
        raise VariableTypeError(
            f"variable {name!r}: an array could be an embedding or a tensor; pass "
            "type_hint='embedding' or type_hint='tensor'"
        )
    raise VariableTypeError(
        f"variable {name!r}: cannot infer a type from {type(value).__name__} "
        f"{_describe(value)}; pass type_hint"
    )


def check_metadata(name: str, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Metadata is a JSON-like dict with string keys.

    Example::

        >>> check_metadata("t", {"owner": "me"})
        {'owner': 'me'}
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise VariableTypeError(f"variable {name!r}: metadata must be a dict")
    return check_plain(name, metadata, "metadata")  # type: ignore[no-any-return]


def same_value(a: Any, b: Any) -> bool:
    """Equality of stored values: same Python type and value, arrays with the same dtype,
    shape and elements.

    Example::

        >>> same_value(np.ones(2), np.ones(2)), same_value(1, 1.0)
        (True, False)
    """
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b))
        )
    if type(a) is not type(b):
        return False
    # Containers compare item by item: [1, 2] == [1.0, 2.0] in Python, not here.
    if isinstance(a, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_value(a[k], b[k]) for k in a)
    return bool(a == b)
