"""The in-memory Backend (``MemoryBackend``); also the old ``dspex_rx.store.memory`` names.

The engine that was this module is now ``dspex_rx.store.engine`` and its parts; its names
stay reachable here (imported on first use: the engine imports this package).
"""

from __future__ import annotations

import importlib
from typing import Any

from dspex_rx.store.memory.backend import MemoryBackend

__all__ = ["MemoryBackend"]

# Where each name of the old module lives now.
_MOVED = {
    "MemoryStore": "dspex_rx.store.engine",
    "Session": "dspex_rx.store.state",
    "ClientLease": "dspex_rx.store.state",
    "secrets": "secrets",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        module = importlib.import_module(_MOVED[name])
        return module if name == module.__name__ else getattr(module, name)
    records = importlib.import_module("dspex_rx.store.records")
    if hasattr(records, name):
        return getattr(records, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
