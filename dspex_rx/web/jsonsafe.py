"""Values as JSON can carry them: numpy arrays summarised (or in full as base64), NaN and
infinities as strings, times as ISO 8601, and the event dict each stream sends."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np

from dspex_rx.client.updates import VariableUpdate

ARRAY_MODES = ("summary", "base64")
HEAD = 8  # how many leading elements a summary shows: enough to recognise, not to flood


def array_mode(text: str | None) -> str:
    """The ``?arrays=`` choice checked: ``summary`` (the default) or ``base64``.

    >>> array_mode(None), array_mode("base64")
    ('summary', 'base64')
    """
    mode = text or "summary"
    if mode not in ARRAY_MODES:
        raise ValueError(f"arrays must be one of {', '.join(ARRAY_MODES)}, got {mode!r}")
    return mode


def _array(array: np.ndarray[Any, Any], arrays: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "ndarray", "shape": list(array.shape), "dtype": str(array.dtype)
    }
    if arrays == "base64":
        # Little-endian C order whatever the machine, so a browser's typed array reads it.
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        out["byteorder"] = "little"
        out["base64"] = base64.b64encode(little.tobytes()).decode("ascii")
    else:
        out["head"] = [to_json(x, arrays) for x in array.reshape(-1)[:HEAD].tolist()]
        out["size"] = int(array.size)
    return out


def to_json(value: Any, arrays: str = "summary") -> Any:
    """``value`` as plain JSON types: arrays as ``{type: 'ndarray', shape, dtype, head}``
    (``arrays='base64'``: ``base64`` of the little-endian C-order bytes instead), NaN and
    infinities as the strings ``'NaN'``, ``'Infinity'``, ``'-Infinity'``, bytes as base64,
    datetimes as ISO 8601, tuples and sets as lists.

    >>> to_json({"lr": float("nan"), "w": np.arange(3, dtype=np.int32)})["lr"]
    'NaN'
    >>> to_json(np.arange(3, dtype=np.int32))
    {'type': 'ndarray', 'shape': [3], 'dtype': 'int32', 'head': [0, 1, 2], 'size': 3}
    >>> to_json(np.array([1.0], dtype=np.float32), "base64")["base64"]
    'AACAPw=='
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, np.ndarray):
        return _array(value, arrays)
    if isinstance(value, np.generic):
        return to_json(value.item(), arrays)
    if isinstance(value, Mapping):
        return {str(k): to_json(v, arrays) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_json(v, arrays) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return {"type": "bytes", "base64": base64.b64encode(bytes(value)).decode("ascii")}
    numpy_of = getattr(value, "numpy", None)  # a torch.Tensor, without importing torch
    if callable(numpy_of) and hasattr(value, "detach"):
        return _array(np.asarray(value.detach().cpu().numpy()), arrays)
    return repr(value)


def update_event(update: VariableUpdate, arrays: str = "summary") -> dict[str, Any]:
    """One stream event: ``name``, ``value``, ``version``, ``revision``, ``update_type``,
    ``timestamp`` and ``conflated`` (true when the bridge dropped older changes of this
    variable because the reader fell behind).

    Example: ``update_event(update)["value"]`` is the JSON-safe value of a ``VariableUpdate``.
    """
    return {
        "name": update.name,
        "value": to_json(update.value, arrays),
        "version": update.version,
        "revision": update.revision,
        "update_type": update.update_type,
        "timestamp": update.timestamp.isoformat(),
        "variable_id": update.variable_id,
        "conflated": update.conflated,
    }
