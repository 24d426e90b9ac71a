"""Constraint schemas: which constraint keys each type takes, and ``check_constraints``,
which refuses unknown keys and returns a clean copy of a constraint dict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from dspex_rx.core.patterns import DEFAULT_MAX_PATTERN_LENGTH, compile_regex
from dspex_rx.core.registry import ARRAY_DTYPES, is_number
from dspex_rx.errors import InvalidValueError

__all__ = ["CONSTRAINT_SCHEMAS", "check_constraints"]

_ITEM_TYPES = ("float", "integer", "string", "boolean", "list", "dict")


def _check_bool(name: str, key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise InvalidValueError(f"variable {name!r}: constraint {key!r} must be a boolean")
    return v


def _check_number(name: str, key: str, v: Any) -> float | int:
    if not is_number(v) or (isinstance(v, float) and math.isnan(v)):
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

