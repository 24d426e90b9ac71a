"""The mutable state of one session (Session, ClientLease), held by a Backend, and what
another writer changed in it (Replicated), which the engine's accounts follow.

Its records, names, log and watchers, and the tables the engine keeps beside them
(history, graph, leases, the memory account).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dspex_rx.core.access import AccessRule
from dspex_rx.core.graph import DependencyGraph
from dspex_rx.store.derivations import Derivation
from dspex_rx.store.leases import OptimizationEntry, OptimizationLease
from dspex_rx.store.records import Commit, HistoryEntry, Listener, VariableRecord


@dataclass(slots=True)
class ClientLease:
    """One client attached to a session, alive while it heartbeats within ``ttl``.

    Example: ``store.session(sid).clients[client_id].ttl`` is that client's heartbeat TTL.
    """

    name: str
    ttl: float
    last_seen: float


@dataclass(slots=True)
class Session:
    """A namespace of variables with one revision counter, shared by attached clients.

    Example: ``store.session("sess_1").revision`` is the revision of its newest commit.
    """

    id: str
    metadata: dict[str, Any]
    created_at: float
    revision: int = 0
    metadata_size: int = 0
    # The secret that proves a caller may act for this session; kept out of reprs so no
    # log line or error message can carry it.
    token: str = field(default="", repr=False)
    # Random numbers (identity.py): ``claim`` is the same for every session that holds
    # this id under this token (a rule naming the id is bound to it); ``incarnation`` is
    # new with each creation (a client re-attaching can tell a later session from its own).
    claim: int = 0
    incarnation: int = 0
    variables: dict[str, VariableRecord] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    clients: dict[str, ClientLease] = field(default_factory=dict)
    # When its last client left, while the store keeps it for ``session_ttl``; None while
    # a client is attached (sessions.py).
    idle_since: float | None = None
    # The bounded event log: commits newer than log_floor, oldest first.
    log: deque[Commit] = field(default_factory=deque)
    log_floor: int = 0
    listeners: list[Listener] = field(default_factory=list)
    graph: DependencyGraph = field(default_factory=DependencyGraph)
    history: dict[str, deque[HistoryEntry]] = field(default_factory=dict)
    # The latest optimization lease of each variable (running or ended), the running ones
    # again by variable id (so a write checks one dict), and each variable's evaluations.
    leases: dict[str, OptimizationLease] = field(default_factory=dict)
    running: dict[str, OptimizationLease] = field(default_factory=dict)
    # Listeners of other sessions' streams (not counted against this session's limit).
    foreign_listeners: int = 0
    # Recent leases of each variable (oldest first, at most RECENT_LEASES), so a run's
    # own status can be told after others started, and a resync can tell how runs ended.
    recent_leases: dict[str, deque[OptimizationLease]] = field(default_factory=dict)
    evaluations: dict[str, deque[OptimizationEntry]] = field(default_factory=dict)
    # Per variable, the bytes charged once for it: constraints, description, overhead.
    fixed: dict[str, int] = field(default_factory=dict)
    # The memory account, in bytes (``MemoryStore.check_accounts`` states the invariants).
    # ``other_bytes``: evaluations, leases, dependency edges, the session itself.
    # ``history_bytes``: every retained history entry, each variable's newest (its
    # current record) included; ``current_bytes`` is the part that is newest entries.
    # ``log_bytes``: the replay log. ``graveyard``: dropped history whose values the log
    # may still hold, as (the revision after which the log no longer holds it, bytes),
    # released once the log is trimmed past it.
    other_bytes: int = 0
    current_bytes: int = 0
    history_bytes: int = 0
    history_entries: int = 0
    log_bytes: int = 0
    graveyard: list[tuple[int, int]] = field(default_factory=list)
    graveyard_bytes: int = 0
    # Superseded history entries, least recently superseded first, as (the revision that
    # superseded it, variable id, version): the order in which the budget drops them.
    # Entries already gone (dropped by count, deleted) are skipped when met.
    superseded: deque[tuple[int, str, int]] = field(default_factory=deque)

    @property
    def pinned(self) -> int:
        """Bytes that no retention policy can drop: current records and other state.

        Example: ``store.session(sid).pinned`` never exceeds ``max_session_bytes``: a write
        that would is refused first.
        """
        return self.current_bytes + self.other_bytes

    @property
    def used(self) -> int:
        """Bytes the session's memory account charges (pinned plus retention).

        Example: ``store.session(sid).used`` is what eviction brings back under the budget.
        """
        return self.other_bytes + self.history_bytes + self.log_bytes + self.graveyard_bytes
    # Each variable's access rules (what other sessions may do with it); beside the
    # record, not in it: changing them is not a write of the value.
    rules: dict[str, tuple[AccessRule, ...]] = field(default_factory=dict)
    # Each derived variable's derivation lease (owner, standbys, stale), by variable id;
    # kept with its variable's row by a durable backend.
    derivations: dict[str, Derivation] = field(default_factory=dict)



@dataclass(slots=True)
class TailChange:
    """How another writer changed one tail (a variable's history, or the log): the items
    trimmed from its front and appended at its end, and what it held before.

    >>> TailChange(before_len=0, before_last=None).appended
    []
    """

    before_len: int
    before_last: Any
    popped: list[Any] = field(default_factory=list)
    appended: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class Replicated:
    """Another writer's changes, applied in place: the sessions changed, those that went,
    those new, and per session the tails that moved (the accounts follow them instead of
    recounting a whole session, which costs its whole history and log).

    >>> Replicated().changed
    []
    """

    changed: list[Session] = field(default_factory=list)
    gone: list[Session] = field(default_factory=list)
    fresh: set[str] = field(default_factory=set)
    history: dict[str, dict[str, TailChange]] = field(default_factory=dict)
    log: dict[str, TailChange] = field(default_factory=dict)
