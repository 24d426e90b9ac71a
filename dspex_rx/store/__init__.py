"""The store: sessions, variables, revisions, history, access and leases; no gRPC.

Import from here; the modules below are the engine's parts.
"""

from dspex_rx.store.engine import MemoryStore
from dspex_rx.store.records import (
    ITEM_OVERHEAD,
    MAX_SOURCE_NAMES,
    OPTIMIZATION_EVENT,
    ChangeEvent,
    Commit,
    HistoryEntry,
    ImportReport,
    Listener,
    Snapshot,
    SnapshotDependency,
    SnapshotVariable,
    VariableRecord,
    VariableSpec,
)

__all__ = [
    "ITEM_OVERHEAD",
    "MAX_SOURCE_NAMES",
    "OPTIMIZATION_EVENT",
    "ChangeEvent",
    "Commit",
    "HistoryEntry",
    "ImportReport",
    "Listener",
    "MemoryStore",
    "Snapshot",
    "SnapshotDependency",
    "SnapshotVariable",
    "VariableRecord",
    "VariableSpec",
]
