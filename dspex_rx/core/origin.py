"""Marks of how a value was written (from a ``torch.Tensor``; a dict whose keys were made
strings), kept through validation and reported to readers as system metadata.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["KeysConvertedDict", "TorchOriginArray", "keep_origin", "value_system_metadata"]


class TorchOriginArray(np.ndarray):
    """A stored array that was written from a ``torch.Tensor``: numpy everywhere, but the
    wire says ``origin: "torch"`` so a client with torch gives a tensor back.

    >>> np.arange(3).view(TorchOriginArray).tolist()
    [0, 1, 2]
    """


class KeysConvertedDict(dict):  # type: ignore[type-arg]
    """A stored dict whose writer converted non-string keys to strings (here or in a dict
    nested in it); an ordinary dict otherwise, flagged so readers can be told.

    >>> KeysConvertedDict({"1": "a"}) == {"1": "a"}
    True
    """


def value_system_metadata(value: Any) -> dict[str, Any]:
    """What the system knows about how a value was written, apart from the user's
    metadata: ``tensor_origin`` (``'torch'``) and ``keys_converted`` (``True``), each
    present only when it applies.

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

    >>> type(keep_origin(KeysConvertedDict({"1": 2}), {"1": 2})).__name__
    'KeysConvertedDict'
    """
    if isinstance(original, TorchOriginArray) and isinstance(clean, np.ndarray):
        return clean if isinstance(clean, TorchOriginArray) else clean.view(TorchOriginArray)
    if isinstance(original, KeysConvertedDict) and isinstance(clean, dict):
        return clean if isinstance(clean, KeysConvertedDict) else KeysConvertedDict(clean)
    return clean

