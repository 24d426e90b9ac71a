"""Value validation: ``validate_value`` checks a value against its type and constraints and
returns what the store keeps; also plain JSON-like trees, metadata and stored-value equality.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from dspex_rx.core.patterns import compile_regex
from dspex_rx.core.registry import ARRAY_DTYPES, INT64_MAX, INT64_MIN, describe_value, is_number
from dspex_rx.errors import InvalidValueError, VariableTypeError

__all__ = ["check_metadata", "check_plain", "same_value", "validate_stored", "validate_value"]


def _type_error(name: str, expected: str, value: Any) -> VariableTypeError:
    return VariableTypeError(
        f"variable {name!r}: expected {expected}, got {type(value).__name__} "
        f"{describe_value(value)}"
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
    if not is_number(value):
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
        f"variable {name!r}: {path} holds {type(value).__name__} {describe_value(value)}; only "
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

def validate_value(name: str, type_name: str, value: Any, constraints: Mapping[str, Any]) -> Any:
    """Check ``value`` against the type and constraints; return the value to store.

    Raises ``VariableTypeError`` (a ``TypeError``) for the wrong kind of value and
    ``InvalidValueError`` (a ``ValueError``) for a broken constraint, naming the rule.

    >>> validate_value("t", "float", 1, {"max": 2.0})
    1.0
    """
    return _VALIDATORS[type_name](name, value, constraints)


def validate_stored(name: str, type_name: str, value: Any, constraints: Mapping[str, Any]) -> Any:
    """``validate_value`` for a value that was stored before (an import of an export):
    every rule is checked, but an embedding that is already a unit vector is kept bit for
    bit. Normalizing again is not idempotent in float64 (the last bit can move), and a
    restored value must be the value that was exported.

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


def check_metadata(name: str, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Metadata is a JSON-like dict with string keys.

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
