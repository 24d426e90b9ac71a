"""The store's immutable values: records, history entries, specs, snapshots, reports, and the
ChangeEvent/Commit a write publishes. No behaviour here but how they pickle.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

# The event types a commit can carry per variable; "optimization" events change no value.
OPTIMIZATION_EVENT = "optimization"


# What the memory account charges per stored item beyond its encoded bytes (Python
# objects, dict slots): a history entry, a logged event, a dependency edge, ...
ITEM_OVERHEAD = 200


# A dependency_changed event names at most this many of the changed variables it depends on.
MAX_SOURCE_NAMES = 100


@dataclass(frozen=True, slots=True)
class VariableRecord:
    """One version of a variable, as stored. Never mutated; writes make a new record.

    >>> from dspex_rx.store import MemoryStore, VariableSpec
    >>> store = MemoryStore()
    >>> session, client_id, created = store.initialize_session("s")
    >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
    >>> record = store.get("s", "t")
    >>> record.value, record.version, record.mod_revision
    (0.7, 1, 1)
    """

    id: str
    name: str
    type: str
    value: Any
    constraints: Mapping[str, Any]
    metadata: Mapping[str, Any]
    version: int
    mod_revision: int
    create_revision: int
    created_at: float
    updated_at: float
    updated_by: str
    description: str = ""
    # Encoded bytes of value and metadata: what the memory account charges per version
    # (constraints and description are charged once per variable); the metadata's part.
    size: int = 0
    metadata_size: int = 0


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One version a variable held.

    Example: ``store.history(sid, "t").entries[0].value`` is the newest version's value.
    """

    version: int
    value: Any
    updated_at: float
    updated_by: str
    metadata: Mapping[str, Any]
    revision: int
    size: int = 0  # what the memory account charges for it


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A page of history, newest first, and what fell out of retention within it.

    Example: ``store.history(sid, "x", limit=10).expired``
    is ``(first, last)`` of the versions no longer retained, or None.
    """

    entries: list[HistoryEntry]
    current_version: int
    oldest_retained_version: int
    expired: tuple[int, int] | None  # (first, last) versions of the page not retained
    retention: int


@dataclass(frozen=True, slots=True)
class VariableSpec:
    """What a caller asks to register.

    >>> VariableSpec("temperature", "float", 0.7, {"min": 0.0, "max": 2.0}).constraints
    {'min': 0.0, 'max': 2.0}
    """

    name: str
    type: str
    initial_value: Any
    constraints: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] | None = None
    description: str = ""
    dependencies: Sequence[str] = ()
    access_rules: Sequence[Any] = ()


@dataclass(frozen=True, slots=True)
class SnapshotDependency:
    """One edge of an export, seen from the dependent: it depends on ``name``.

    >>> SnapshotDependency("base_temperature").type
    'data'
    """

    name: str
    type: str = "data"
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SnapshotVariable:
    """One variable of an export (or of an import to apply).

    ``history`` (oldest first) and ``dependencies`` are None when the export left them out.

    >>> SnapshotVariable("temperature", "float", 0.7).version
    1
    """

    name: str
    type: str
    value: Any
    constraints: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    version: int = 1
    created_at: float = 0.0
    updated_at: float = 0.0
    updated_by: str = ""
    history: tuple[HistoryEntry, ...] | None = None
    dependencies: tuple[SnapshotDependency, ...] | None = None
    access_rules: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What ``export_snapshot`` returns and ``import_snapshot`` applies: variables plus
    where they came from (session, revision, time) and the export's format version.

    Example: ``store.import_snapshot(other_sid, store.export_snapshot(sid), strategy="keep")``
    copies the variables across.
    """

    variables: tuple[SnapshotVariable, ...]
    session_id: str = ""
    revision: int = 0
    exported_at: float = 0.0
    include_history: bool = False
    include_dependencies: bool = False
    format_version: int = 1


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """What an import did (or, dry or refused, would do) with one variable.

    ``action`` is ``create``, ``replace``, ``merge``, ``skip`` or ``error``; ``version``
    is the variable's version after the import; ``record`` is set for applied writes.

    Example: ``store.import_snapshot(sid, snapshot).outcomes[0].action``
    is "create" for a new variable.
    """

    name: str
    action: str
    message: str = ""
    error_kind: str = ""
    version: int = 0
    record: VariableRecord | None = None


@dataclass(frozen=True, slots=True)
class ImportReport:
    """The result of ``import_snapshot``: one outcome per variable, in the snapshot's order.

    Example: ``store.import_snapshot(sid, snapshot, dry_run=True).applied``
    is False: a dry run changes nothing.
    """

    outcomes: list[ImportOutcome]
    revision: int
    applied: bool
    dry_run: bool
    dependencies_added: int


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One variable's change within a commit, as watchers see it.

    ``record`` is the variable after the change (for a delete, its last record);
    ``update_type`` is ``value_change``, ``deleted``, ``dependency_changed`` (a variable
    it depends on changed; ``metadata`` names which, and the revision) or ``optimization``
    (its optimization status changed; ``metadata`` is the status).

    Example: ``commit.events[0].update_type`` is "value_change" for a plain write.
    """

    record: VariableRecord
    old_value: Any
    update_type: str
    metadata: Mapping[str, Any]
    source: str
    # For ``dependency_changed``: the ids of the changed variables ``metadata`` names, so
    # a stream of another session can leave out those it may not read.
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Commit:
    """Everything one write changed, under its one revision (an atomic batch is one commit).

    Example: ``store.commits_since(sid, 0)[0].revision`` is the session's first commit's revision.
    """

    revision: int
    events: tuple[ChangeEvent, ...]
    timestamp: float
    # The owner session of everything in the commit, and the variables whose access
    # rules it changed (watchers of those re-check what they may still observe).
    session_id: str = ""
    permissions: tuple[str, ...] = ()


# A listener gets every commit of its session, synchronously, after the state changed;
# None means the session is gone.
Listener = Callable[[Commit | None], None]


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    """The result of one entry of ``update_many``.

    Example: ``store.update_many(sid, [("t", 0.1)], actor="me")[0][0].ok`` is True when applied.
    """

    ref: str
    ok: bool
    error: str = ""
    error_kind: str = ""
    record: VariableRecord | None = None
    current_version: int = 0


def _pickled_by_field_list(cls: type) -> None:
    # Durable rows and etcd's watch carry these as pickles, a few per write, and every
    # replica unpickles each: dataclasses' own state functions walk ``fields()`` per
    # object (about a third of a follower's unpickling time). Same state, so rows stored
    # either way load either way: the field values, as a list, in field order.
    names = tuple(f.name for f in fields(cls))
    get = operator.attrgetter(*names)
    setter = object.__setattr__

    def __getstate__(self: Any) -> list[Any]:
        return list(get(self))

    def __setstate__(self: Any, state: Sequence[Any]) -> None:
        # Not strict, as dataclasses' own: a row with fields a later version added still
        # loads in this one (replicas of two versions over one etcd, mid-upgrade).
        for name, value in zip(names, state):  # noqa: B905
            setter(self, name, value)

    setattr(cls, "__getstate__", __getstate__)  # noqa: B010 (mypy refuses cls.__getstate__ = ...)
    setattr(cls, "__setstate__", __setstate__)  # noqa: B010


for _stored in (VariableRecord, HistoryEntry, ChangeEvent, Commit):
    _pickled_by_field_list(_stored)
