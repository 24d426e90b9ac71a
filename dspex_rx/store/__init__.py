"""The store: sessions, variables, revisions, history, access and leases; no gRPC.

Import from here. The engine's parts (base.py lists them) run over a Backend (backend.py);
memory/ is the in-memory one.
"""

from dspex_rx.store.backend import Backend, ReadTxn, RevisionConflict, WriteTxn
from dspex_rx.store.engine import MemoryStore
from dspex_rx.store.memory import MemoryBackend
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
    "Backend",
    "ChangeEvent",
    "Commit",
    "HistoryEntry",
    "ImportReport",
    "Listener",
    "MemoryBackend",
    "MemoryStore",
    "ReadTxn",
    "RevisionConflict",
    "Snapshot",
    "SnapshotDependency",
    "SnapshotVariable",
    "VariableRecord",
    "VariableSpec",
    "WriteTxn",
]
