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
    HistoryPage,
    ImportOutcome,
    ImportReport,
    Listener,
    Snapshot,
    SnapshotDependency,
    SnapshotVariable,
    UpdateOutcome,
    VariableRecord,
    VariableSpec,
)
from dspex_rx.store.state import ClientLease, Session

__all__ = [
    "ITEM_OVERHEAD",
    "MAX_SOURCE_NAMES",
    "OPTIMIZATION_EVENT",
    "Backend",
    "ChangeEvent",
    "ClientLease",
    "Commit",
    "HistoryEntry",
    "HistoryPage",
    "ImportOutcome",
    "ImportReport",
    "Listener",
    "MemoryBackend",
    "MemoryStore",
    "ReadTxn",
    "RevisionConflict",
    "Session",
    "Snapshot",
    "SnapshotDependency",
    "SnapshotVariable",
    "UpdateOutcome",
    "VariableRecord",
    "VariableSpec",
    "WriteTxn",
]
