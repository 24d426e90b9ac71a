"""The type registry: the variable type names and their aliases, the int64 range, the array
dtypes that travel, and ``infer_type`` for a value given without a type.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dspex_rx.errors import InvalidValueError, VariableTypeError

__all__ = [
    "ARRAY_DTYPES",
    "INT64_MAX",
    "INT64_MIN",
    "TYPES",
    "describe_value",
    "infer_type",
    "is_number",
    "normalize_type",
]

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



def normalize_type(type_name: str) -> str:
    """The canonical type name for ``type_name`` (aliases like ``int`` accepted).

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


def is_number(v: Any) -> bool:
    """True for an int or float that is not a bool (a bool is an int in Python).

    >>> is_number(1), is_number(2.5), is_number(True)
    (True, True, False)
    """
    return isinstance(v, int | float) and not isinstance(v, bool)


def describe_value(value: Any) -> str:
    """A short text for a value in an error message: arrays by dtype and shape, the rest
    by a ``repr`` cut to 60 characters.

    >>> describe_value(np.zeros((2, 3), dtype=np.float32))
    'ndarray(dtype=float32, shape=(2, 3))'
    """
    if isinstance(value, np.ndarray):
        return f"ndarray(dtype={value.dtype}, shape={value.shape})"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def infer_type(name: str, value: Any) -> str:
    """The type for a value with no type hint; ambiguous values raise ``TypeError``.

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
        f"{describe_value(value)}; pass type_hint"
    )

