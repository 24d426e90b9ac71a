"""The in-memory variable store: sessions, variables, names, revisions and versions.

No gRPC here. Methods are synchronous and never yield, so when the server calls them from
its one asyncio loop each call is atomic with respect to every other: a batch is validated
in full, then committed in one step under one new revision. Records are immutable; a write
replaces a record, so a reader's snapshot never changes under it.

Every limit of ``limits.Limits`` that concerns stored state is checked here, before
anything changes, so a refused request leaves no trace. Each session keeps a memory
account (encoded bytes plus a fixed overhead per stored item): current values and
optimization records are *pinned* and must fit ``max_session_bytes``; history and the
replay log are *retention* and are dropped oldest first when the budget needs room.

Each session keeps a secret token, made when the session is created. The store only keeps
and compares it (``authenticate``, and ``initialize_session(..., require_token=True)``
for attaching); who must present it, and how it travels, is the server's business.
"""

from __future__ import annotations

import builtins
import dataclasses
import heapq
import hmac
import itertools
import math
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dspex_rx.core.access import (
    ANY_SESSION,
    TIME_CONDITIONS,
    AccessRule,
    check_permission,
    check_rules,
)
from dspex_rx.core.graph import DEPENDENCY_TYPES, CycleError, DependencyGraph, Edge
from dspex_rx.core.identity import Principals, RetiredIds, is_glob
from dspex_rx.core.limits import (
    DEFAULT_LIMITS,
    Limits,
    check_count,
    check_length,
    measure_map,
    measure_value,
    too_big,
    too_many,
)
from dspex_rx.core.metrics import score_of
from dspex_rx.core.patterns import compile_name_filter
from dspex_rx.core.types import (
    INT64_MAX,
    check_constraints,
    check_metadata,
    infer_type,
    keep_origin,
    normalize_type,
    same_value,
    validate_stored,
    validate_value,
)
from dspex_rx.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    AuthenticationError,
    ConflictError,
    DspexError,
    InvalidValueError,
    OptimizationLockedError,
    SessionNotFoundError,
    VariableNotFoundError,
    VariableTypeError,
)
from dspex_rx.logs import get_logger
from dspex_rx.store.leases import FINISH_STATES, OptimizationEntry, OptimizationLease

log = get_logger("dspex_rx.store")

MAX_TTL = 7 * 24 * 3600.0
MAX_ITERATIONS = 10_000_000
# Ended leases kept per variable, for status by optimization id and for resync.
RECENT_LEASES = 16
MAX_VERSION = INT64_MAX
# The event types a commit can carry per variable; "optimization" events change no value.
OPTIMIZATION_EVENT = "optimization"
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]{0,255}")
# What the memory account charges per stored item beyond its encoded bytes (Python
# objects, dict slots): a history entry, a logged event, a dependency edge, ...
ITEM_OVERHEAD = 200
# Room a batch's answer needs beyond the stored values: per entry (id, name, type,
# timestamps, versions) and for the whole message.
BATCH_ENTRY_FRAMING = 512
BATCH_FRAMING = 64 * 1024
# A dependency_changed event names at most this many of the changed variables it depends on.
MAX_SOURCE_NAMES = 100
# The shape of the ids the store makes (``var_<name>_<n>``). Ids are addressed across
# sessions, so no session may name a variable like one (whether or not that id exists,
# which a check would disclose).
ID_SHAPE_RE = re.compile(r"var_.+_[0-9]+")


def _check_not_id_shaped(name: str) -> None:
    if ID_SHAPE_RE.fullmatch(name):
        raise InvalidValueError(
            f"variable name {name!r} is shaped like a variable id (var_<name>_<n>), which "
            "names a variable in any session; choose another name"
        )


@dataclass(frozen=True, slots=True)
class VariableRecord:
    """One version of a variable, as stored. Never mutated; writes make a new record.

    Example::

        record = store.get(session_id, "temperature"); record.value, record.version
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

    Example::

        entry.version, entry.value, entry.metadata.get("rollback_to")
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

    Example::

        page = store.history(sid, "x", limit=10)
        if page.expired: print("versions", page.expired, "are no longer retained")
    """

    entries: list[HistoryEntry]
    current_version: int
    oldest_retained_version: int
    expired: tuple[int, int] | None  # (first, last) versions of the page not retained
    retention: int


@dataclass(frozen=True, slots=True)
class VariableSpec:
    """What a caller asks to register.

    Example::

        VariableSpec("temperature", "float", 0.7, {"min": 0.0, "max": 2.0})
    """

    name: str
    type: str
    initial_value: Any
    constraints: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] | None = None
    description: str = ""
    dependencies: Sequence[str] = ()
    access_rules: Sequence[Any] = ()


MERGE_STRATEGIES = ("replace", "keep", "merge")
# Graph keys of variables an import is about to create: ':' is never in a name or an id.
_NEW = "import:"


@dataclass(frozen=True, slots=True)
class SnapshotDependency:
    """One edge of an export, seen from the dependent: it depends on ``name``.

    Example::

        SnapshotDependency("base_temperature", "data", {})
    """

    name: str
    type: str = "data"
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SnapshotVariable:
    """One variable of an export (or of an import to apply).

    ``history`` (oldest first) and ``dependencies`` are None when the export left them out.

    Example::

        SnapshotVariable("temperature", "float", 0.7, {"min": 0.0, "max": 2.0})
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

    Example::

        snapshot = store.export_snapshot(sid, include_history=True)
        store.import_snapshot(other_sid, snapshot, strategy="keep")
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

    Example::

        [(o.name, o.action) for o in report.outcomes]
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

    Example::

        report = store.import_snapshot(sid, snapshot, dry_run=True)
        report.applied, report.revision, report.dependencies_added
    """

    outcomes: list[ImportOutcome]
    revision: int
    applied: bool
    dry_run: bool
    dependencies_added: int


@dataclass(slots=True)
class _ImportPlan:
    # One variable's planned change; ``key`` is its id in the graph (or _NEW + name).
    name: str
    action: str
    key: str
    version: int
    message: str = ""
    existing: VariableRecord | None = None
    type: str = ""
    value: Any = None
    constraints: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    history: list[HistoryEntry] = field(default_factory=list)
    untouched: bool = False
    rules: tuple[AccessRule, ...] = ()
    # Measured for the limits and the memory account: the record's encoded value plus
    # metadata, the metadata's part, and (new variables) the bytes charged once for it.
    size: int = 0
    metadata_size: int = 0
    fixed: int = 0


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One variable's change within a commit, as watchers see it.

    ``record`` is the variable after the change (for a delete, its last record);
    ``update_type`` is ``value_change``, ``deleted``, ``dependency_changed`` (a variable
    it depends on changed; ``metadata`` names which, and the revision) or ``optimization``
    (its optimization status changed; ``metadata`` is the status).

    Example::

        event.record.name, event.old_value, event.record.value
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

    Example::

        for event in commit.events: print(commit.revision, event.record.name)
    """

    revision: int
    events: tuple[ChangeEvent, ...]
    timestamp: float
    # The owner session of everything in the commit, and the variables whose access
    # rules it changed (watchers of those re-check what they may still observe).
    session_id: str = ""
    permissions: tuple[str, ...] = ()


# A checked evaluation: (iteration, value, metrics, score, bytes charged for it).
_Evaluation = tuple[int, Any, dict[str, Any], float, int]

# A listener gets every commit of its session, synchronously, after the state changed;
# None means the session is gone.
Listener = Callable[[Commit | None], None]


@dataclass(slots=True)
class ClientLease:
    """One client attached to a session, alive while it heartbeats within ``ttl``.

    Example::

        lease = session.clients[client_id]; lease.last_seen + lease.ttl
    """

    name: str
    ttl: float
    last_seen: float


@dataclass(slots=True)
class Session:
    """A namespace of variables with one revision counter, shared by attached clients.

    Example::

        session = store.session("sess_1"); session.revision
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

        Example::

            store.session(sid).pinned <= store.limits.max_session_bytes
        """
        return self.current_bytes + self.other_bytes

    @property
    def used(self) -> int:
        """Bytes the session's memory account charges (pinned plus retention).

        Example::

            store.session(sid).used <= store.limits.max_session_bytes
        """
        return self.other_bytes + self.history_bytes + self.log_bytes + self.graveyard_bytes
    # Each variable's access rules (what other sessions may do with it); beside the
    # record, not in it: changing them is not a write of the value.
    rules: dict[str, tuple[AccessRule, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    """The result of one entry of ``update_many``.

    Example::

        outcome.ok, outcome.error, outcome.record
    """

    ref: str
    ok: bool
    error: str = ""
    error_kind: str = ""
    record: VariableRecord | None = None
    current_version: int = 0


def _random_id() -> int:
    # A claim or incarnation number: random (unguessable, unlikely to meet another
    # server's), positive, and within int64 (export files' integers).
    return secrets.randbits(62) + 1


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidValueError(
            f"variable name {_show(name)} is not valid (letters, digits, _ . - /; up to "
            "256 characters, not starting with a digit)"
        )


def _show(text: Any, limit: int = 80) -> str:
    # A user-supplied string as error messages quote it: repr, cut to ``limit`` characters
    # (a megabyte ref must not come back as a megabyte message).
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[: limit - 4]}...{shown[0]}"


def _event_cost(event: ChangeEvent) -> int:
    # The memory account's charge for one logged event beyond the values it shares with
    # history: the objects of its own metadata (a dependency note, a status dict).
    metadata = event.metadata
    if event.update_type == "dependency_changed":
        extra = len(metadata.get("source_variables", ()))
    elif event.update_type == OPTIMIZATION_EVENT:
        extra = len(metadata) + len(metadata.get("best_metrics") or ())
    else:
        extra = 0
    return ITEM_OVERHEAD + 64 * extra


def _commit_cost(commit: Commit) -> int:
    return ITEM_OVERHEAD + sum(_event_cost(e) for e in commit.events)


def _session_cost(session: Session) -> int:
    return ITEM_OVERHEAD + session.metadata_size


def _client_cost(lease: ClientLease) -> int:
    return ITEM_OVERHEAD + len(lease.name)
def _check_token(session: Session, token: str) -> None:
    # The messages say why, never what was sent or expected.
    if not token:
        raise AuthenticationError(
            f"session {session.id!r} needs its session token, and none was presented"
        )
    if not hmac.compare_digest(token.encode("utf-8", "surrogatepass"), session.token.encode()):
        raise AuthenticationError(
            f"the session token presented is not the token of session {session.id!r}"
        )


def _plain_dict(value: Any) -> Any:
    # Mappings become dicts for check_metadata; anything else goes on to be refused there.
    return dict(value) if isinstance(value, Mapping) else value


def _import_note(snapshot: Snapshot, strategy: str) -> dict[str, Any]:
    # The metadata of an import's commit.
    return {
        "imported_from": snapshot.session_id or "unknown",
        "export_revision": snapshot.revision,
        "format_version": snapshot.format_version,
        "merge_strategy": strategy,
    }


def _rules_cost(rules: Iterable[AccessRule]) -> int:
    # What the memory account charges for a variable's access rules (pinned, like
    # constraints): per rule its pattern, permissions and conditions.
    return sum(
        ITEM_OVERHEAD + len(rule.session_pattern) + 16 * len(rule.permissions)
        + 32 * len(rule.conditions)
        for rule in rules
    )


def _failed(ref: str, error: DspexError | None) -> UpdateOutcome:
    if error is None:
        raise AssertionError(f"no outcome for {ref!r}")
    current = error.details.get("current_version")
    return UpdateOutcome(
        ref, False, str(error), error.kind, current_version=int(current or 0)
    )


class MemoryStore:
    """Sessions and variables in memory; the default backend.

    Example::

        store = MemoryStore()
        session, client_id, _ = store.initialize_session()
        store.register(session.id, [VariableSpec("t", "float", 0.5)], actor=session.id)
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        default_ttl: float = 60.0,
        limits: Limits | None = None,
        max_variables_per_session: int | None = None,
        log_size: int = 10_000,
        history_size: int | None = None,
        lease_ttl: float = 30.0,
        optimization_history_size: int = 10_000,
        principals: Principals | Mapping[str, str] | None = None,
    ) -> None:
        self._clock = clock
        self.default_ttl = default_ttl
        self.lease_ttl = lease_ttl
        self.optimization_history_size = optimization_history_size
        if history_size is not None and history_size < 1:
            raise InvalidValueError(f"history_size must be at least 1, got {history_size}")
        # The two limits that were constructor arguments before Limits stay so.
        self.limits = (limits or DEFAULT_LIMITS).replace(
            max_variables_per_session=max_variables_per_session, history_size=history_size
        )
        self.log_size = log_size
        self._sessions: dict[str, Session] = {}
        self._ids = itertools.count(1)
        # The memory accounts of all sessions together (see Session.used / pinned).
        self.used_bytes = 0
        self.pinned_bytes = 0
        # One revision counter for all sessions (a stream can carry several sessions'
        # events in one order), and every variable's owner session, by id.
        self._revision = 0
        self._owners: dict[str, str] = {}
        # Who an id belongs to (identity.py): reserved namespaces, and ended ids that stay
        # claimed by their token, so a rule naming an id keeps naming the same party.
        self.principals = (
            principals if isinstance(principals, Principals) else Principals(principals)
        )
        self._retired = RetiredIds(self.limits.max_retired_sessions)
        # Whether rules must name parties whose identity is checked; a server that checks
        # no tokens (auth="none") turns it off, since there no id is anyone's.
        self.identity_checked = True

    @property
    def history_size(self) -> int:
        """Versions kept per variable (``limits.history_size``).

        Example::

            MemoryStore(history_size=5).history_size
        """
        return self.limits.history_size

    @property
    def max_variables_per_session(self) -> int:
        """``limits.max_variables_per_session``.

        Example::

            MemoryStore().max_variables_per_session
        """
        return self.limits.max_variables_per_session

    @property
    def revision(self) -> int:
        """The newest revision of any commit in the store.

        Example::

            store.revision
        """
        return self._revision

    # ------------------------------------------------------------------ sessions

    def initialize_session(
        self,
        session_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl: float | None = None,
        client_name: str = "",
        *,
        token: str = "",
        require_token: bool = False,
        principal_key: str = "",
    ) -> tuple[Session, str, bool]:
        """Create a session, or attach to an existing one; returns (session, client_id, created).

        A new session gets a fresh secret ``session.token``. With ``require_token``,
        attaching to an existing session needs that ``token``, and so does creating again
        the id of an ended session (which then keeps its token). Creating an id in a
        namespace of ``principals`` needs that principal's ``principal_key``. A refusal is
        ``AuthenticationError``, and nothing changes.

        Example::

            session, client_id, created = store.initialize_session("session_123")
            store.initialize_session("session_123", token=session.token, require_token=True)
        """
        if ttl is not None and not (ttl == 0 or (math.isfinite(ttl) and 0 < ttl <= MAX_TTL)):
            raise InvalidValueError(
                f"session ttl must be between 0 and {MAX_TTL:g} seconds (0 for the server "
                f"default), got {ttl!r}"
            )
        ttl = ttl or self.default_ttl
        now = self._clock()
        created = False
        limits = self.limits
        if session_id:
            if not isinstance(session_id, str) or not NAME_RE.fullmatch(session_id):
                raise InvalidValueError(
                    f"session id {_show(session_id)} is not valid (letters, digits, _ . - /; "
                    "up to 256 characters, not starting with a digit)"
                )
        else:
            session_id = "sess_" + secrets.token_hex(8)
        self._check_reason("client name", client_name)
        client = ClientLease(client_name, ttl, now)
        session = self._sessions.get(session_id)
        if session is None:
            if len(self._sessions) >= limits.max_sessions:
                raise too_many(
                    f"the server already holds {len(self._sessions)} sessions",
                    len(self._sessions) + 1, "max_sessions", limits.max_sessions,
                )
            returning = self._check_claim(session_id, token, require_token, principal_key)
            clean, size = self._clean_metadata(session_id, metadata, "session metadata")
            session = Session(
                session_id, clean, now, metadata_size=size,
                token=token if returning else secrets.token_urlsafe(32),
                claim=self._retired.claim_of(session_id) if returning else _random_id(),
                incarnation=_random_id(),
            )
            self._check_room(session, _session_cost(session) + _client_cost(client))
            self._retired.revive(session_id)
            self._sessions[session_id] = session
            self._charge(session, "other_bytes", _session_cost(session))
            created = True
        else:
            if require_token:
                _check_token(session, token)
            if len(session.clients) >= limits.max_clients_per_session:
                raise too_many(
                    f"session {session_id!r} already has {len(session.clients)} clients "
                    "attached", len(session.clients) + 1, "max_clients_per_session",
                    limits.max_clients_per_session,
                )
            self._check_room(session, _client_cost(client))
        client_id = "cli_" + secrets.token_hex(8)
        session.clients[client_id] = client
        self._charge(session, "other_bytes", _client_cost(client))
        return session, client_id, created

    def _check_claim(
        self, session_id: str, token: str, require_token: bool, principal_key: str
    ) -> bool:
        # May this caller create ``session_id``? True when it is the claimant of a retired
        # id coming back (it keeps its token). Reserved ids need the principal's key
        # whatever the auth mode (Server refuses principals without token auth).
        self.principals.check_key(session_id, principal_key)
        if not self._retired.claims(session_id):
            return False
        if self._retired.token_matches(session_id, token):
            return True
        if not require_token or self.principals.owner(session_id) is not None:
            return False  # the principal's key is the claim; the old token is not needed
        said = "no token was presented" if not token else "the token presented is not its"
        raise AuthenticationError(
            f"session id {session_id!r} belonged to a session that has ended; only that "
            f"session's token can create it again, and {said} (choose another id, or "
            "leave it empty for a fresh one)"
        )

    def claimed(self, session_id: str) -> bool:
        """Whether the id is live, or retired and still claimed by its last session's token.

        Example::

            store.claimed("bob")
        """
        return session_id in self._sessions or self._retired.claims(session_id)

    def claim_of(self, session_id: str) -> int:
        """The claim number of a live or retired id (0: nobody's), see ``identity.py``.

        Example::

            store.claim_of("bob")
        """
        session = self._sessions.get(session_id)
        return session.claim if session is not None else self._retired.claim_of(session_id)

    def _checked_rules(
        self, name: str, type_name: str, rules: Any
    ) -> tuple[AccessRule, ...]:
        return self._bind_rules(name, check_rules(name, type_name, rules))

    def _bind_rules(
        self, name: str, clean: tuple[AccessRule, ...]
    ) -> tuple[AccessRule, ...]:
        # check_rules is the shape; here, whether each rule names who the owner means, and
        # each exact unreserved id bound to its claim (a rule from an export must find the
        # claim it was written for).
        if not self.identity_checked:
            return tuple(dataclasses.replace(rule, claim=0) for rule in clean)
        out = []
        for index, rule in enumerate(clean):
            pattern = rule.session_pattern
            where = f"variable {name!r}: access rule {index}: session_pattern {pattern!r}"
            if pattern == ANY_SESSION or self.principals.covers(pattern):
                if rule.claim:
                    # Bound to an ordinary id's claim where it was written (another
                    # server, or before the namespace was reserved): here a principal
                    # holds it, another party.
                    raise InvalidValueError(
                        f"{where} was written for the party that held an ordinary id, and "
                        "another party holds it now (here it is 'any' or reserved for a "
                        "principal); rewrite the rule to grant the session you mean"
                    )
                out.append(rule)
                continue
            if is_glob(pattern):
                raise InvalidValueError(
                    f"{where} is a glob over ids anyone may create, so it would grant "
                    "whoever names a session to match; a glob must lie in a namespace "
                    f"reserved on the server ({self._reserved()}), or use 'any' to mean "
                    "every session"
                )
            claim = self.claim_of(pattern)
            if not claim:
                raise InvalidValueError(
                    f"{where} names no session this server knows, so whoever creates it "
                    "first would get the grant; name a session that exists or has "
                    f"existed, an id reserved on the server ({self._reserved()}), or 'any'"
                )
            if rule.claim and rule.claim != claim:
                raise InvalidValueError(
                    f"{where} was written for the party that held that id then (on this "
                    "server or another), and another party holds it now; rewrite the rule "
                    "to grant the session you mean"
                )
            out.append(dataclasses.replace(rule, claim=claim))
        return tuple(out)

    def _reserved(self) -> str:
        if not self.principals:
            return "this server reserves none: see principals / --principals"
        return "reserved: " + ", ".join(repr(ns.pattern) for ns in self.principals.namespaces)

    def session(self, session_id: str) -> Session:
        """The live session, or ``SessionNotFoundError``.

        Example::

            store.session("sess_1").revision
        """
        try:
            return self._sessions[session_id]
        except (KeyError, TypeError):
            raise SessionNotFoundError(
                f"no session {_show(session_id)} (never created, closed, or expired)"
            ) from None

    def authenticate(self, session_id: str, token: str) -> Session:
        """The live session if ``token`` is its secret; ``SessionNotFoundError`` if there is
        no such session, ``AuthenticationError`` if the token is missing or not its own.

        The comparison takes the same time wherever the token differs.

        Example::

            session = store.authenticate("session_123", token_from_the_caller)
        """
        session = self.session(session_id)
        _check_token(session, token)
        return session

    def heartbeat(self, session_id: str, client_id: str) -> float:
        """Keep a client attached; returns when it will expire without another heartbeat.

        Example::

            expires_at = store.heartbeat(session.id, client_id)
        """
        session = self.session(session_id)
        lease = session.clients.get(client_id)
        if lease is None:
            raise SessionNotFoundError(
                f"client {_show(client_id)} is not attached to session {session_id!r} "
                "(expired?)",
                detached=True,
            )
        lease.last_seen = self._clock()
        return lease.last_seen + lease.ttl

    def close_session(self, session_id: str, client_id: str) -> bool:
        """Detach a client; the session and its variables go with its last client.

        Example::

            removed = store.close_session(session.id, client_id)
        """
        session = self.session(session_id)
        client = session.clients.pop(client_id, None)
        if client is not None:
            self._charge(session, "other_bytes", -_client_cost(client))
        if not session.clients:
            self._remove(session)
            return True
        # Its optimizations end with it: nothing is left to renew them, and waiting for
        # their TTL would lock the variables for nothing.
        self._release_client_leases(
            session, client_id, "failed", f"its holder ({client_id}) closed its connection"
        )
        return False

    def _release_client_leases(
        self, session: Session, client_id: str, state: str, reason: str
    ) -> None:
        # Its leases on other sessions' variables (held under the optimize permission)
        # end too; they live in the owner session.
        self._end_held_leases(session.id, state, reason, client_id)

    def _end_held_leases(
        self, holder: str, state: str, reason: str, client_id: str | None = None
    ) -> None:
        # End the running leases session ``holder`` holds (those of one of its clients,
        # with ``client_id``) on the variables of every live session.
        for owner in list(self._sessions.values()):
            for lease in [lease for lease in owner.running.values()
                          if lease.holder_session == holder
                          and (client_id is None or lease.holder_client == client_id)]:
                self._end_lease(owner, lease, state, reason)

    def _remove(self, session: Session) -> None:
        del self._sessions[session.id]
        self._retired.retire(session.id, session.token, session.claim)
        self._retired.trim(self._named_ids)
        self.used_bytes -= session.used
        self.pinned_bytes -= session.pinned
        for var_id in session.variables:
            self._owners.pop(var_id, None)
        self._end_held_leases(session.id, "failed", f"its holder session {session.id} went away")
        for listener in list(session.listeners):
            self._notify(listener, None)
        session.listeners.clear()

    def _named_ids(self) -> set[str]:
        # The exact ids some rule names: their retired claims must outlive any cap.
        return {
            rule.session_pattern
            for session in self._sessions.values()
            for rules in session.rules.values()
            for rule in rules
            if rule.session_pattern != ANY_SESSION and not is_glob(rule.session_pattern)
        }

    def expire(self) -> list[str]:
        """Drop clients silent past their TTL, then sessions left with none; returns those ids.

        Example::

            removed = store.expire()
        """
        now = self._clock()
        removed = []
        for session in list(self._sessions.values()):
            self._expire_leases(session)
            for client_id, lease in list(session.clients.items()):
                if now - lease.last_seen > lease.ttl:
                    del session.clients[client_id]
                    self._charge(session, "other_bytes", -_client_cost(lease))
                    if session.clients:
                        self._release_client_leases(
                            session, client_id, "expired",
                            f"its holder ({client_id}) stopped heartbeating",
                        )
            if not session.clients:
                self._remove(session)
                removed.append(session.id)
        return removed

    def session_ids(self) -> list[str]:
        """Ids of the live sessions.

        Example::

            assert "sess_1" in store.session_ids()
        """
        return list(self._sessions)

    # ------------------------------------------------------------------- watching

    def add_listener(
        self, session_id: str, listener: Listener, *, foreign: bool = False
    ) -> Callable[[], None]:
        """Call ``listener`` with every later commit of the session; returns the remover.

        Listeners run synchronously inside the write, after the state changed, so a
        listener added in the same step as a snapshot misses nothing and sees nothing twice.
        A ``foreign`` listener (another session's stream watching this session's shared
        variables) does not count against this session's ``max_streams_per_session``:
        what another session opens must not lock the owner out of its own streams. It
        is bounded by the watching session's own stream limit (one per owner per stream).

        Example::

            stop = store.add_listener(sid, frames.append); ...; stop()
        """
        session = self.session(session_id)
        limit = self.limits.max_streams_per_session
        own = len(session.listeners) - session.foreign_listeners
        if not foreign and own >= limit:
            raise too_many(
                f"session {session_id!r} already has {own} watch streams",
                own + 1, "max_streams_per_session", limit,
            )
        session.listeners.append(listener)
        if foreign:
            session.foreign_listeners += 1

        def remove() -> None:
            if listener in session.listeners:
                session.listeners.remove(listener)
                if foreign:
                    session.foreign_listeners -= 1

        return remove

    def commits_since(self, session_id: str, revision: int) -> list[Commit] | None:
        """The logged commits after ``revision``, or None if the log no longer reaches back.

        Example::

            missed = store.commits_since(sid, 41)   # None -> resync from current values
        """
        session = self.session(session_id)
        if revision < session.log_floor:
            return None
        return [c for c in session.log if c.revision > revision]

    def _notify(self, listener: Listener, commit: Commit | None) -> None:
        try:
            listener(commit)
        except Exception:
            # A broken watcher must not undo or block a committed write.
            log.exception("listener_failed")

    # ----------------------------------------------------------------- variables

    def _resolve(self, session: Session, ref: str) -> VariableRecord:
        if not isinstance(ref, str) or not ref:
            raise InvalidValueError("a variable name or id is required")
        record = session.variables.get(ref)
        if record is None:
            var_id = session.names.get(ref)
            record = session.variables.get(var_id) if var_id else None
        if record is None:
            owner = self._owners.get(ref)
            if owner is not None and owner != session.id and isinstance(ref, str):
                # Another session's variable, which needs a permission: callers that may
                # act on foreign variables go through _locate.
                foreign = self._sessions[owner]
                if self._rights(session.id, foreign, ref):
                    raise InvalidValueError(
                        f"variable {ref!r} belongs to session {owner!r}: this operation "
                        f"works on variables of session {session.id!r} only"
                    )
            raise VariableNotFoundError(f"no variable {_show(ref)} in session {session.id!r}")
        return record

    def _rights(self, caller_id: str, owner: Session, var_id: str) -> set[str]:
        # What a non-owner may do: the union of the matching rules whose time holds.
        caller = self._sessions.get(caller_id)
        claim = caller.claim if caller is not None else 0
        return {p for r in self._live_rules(caller_id, claim, owner, var_id)
                for p in r.permissions}

    def _live_rules(
        self, caller_id: str, claim: int, owner: Session, var_id: str
    ) -> list[AccessRule]:
        # The rules of ``owner``'s variable that name this caller and hold now.
        rules = owner.rules.get(var_id)
        if not rules:
            return []
        now = self._clock()
        return [r for r in rules if r.matches(caller_id, claim) and r.active(now)]

    def _locate(
        self, caller: Session, ref: str, need: str, value: Any = None, check_value: bool = False
    ) -> tuple[Session, VariableRecord]:
        """The owner session and record of ``ref`` for a caller that needs ``need``.

        The caller's own variables (by id or name) come first and allow everything.
        Another session's variable is found by id only; a caller with no permission at
        all on it gets the same ``VariableNotFoundError`` as for a missing variable (it
        cannot learn the variable exists), one with some permission but not ``need``
        gets ``AccessDeniedError``. ``need`` is a permission or ``"owner"`` (delete,
        permissions, dependencies). With ``check_value`` a write must also be within
        the value bounds of a rule that grants it.
        """
        if not isinstance(ref, str) or not ref:
            raise InvalidValueError("a variable name or id is required")
        record = caller.variables.get(ref)
        if record is None:
            var_id = caller.names.get(ref)
            record = caller.variables.get(var_id) if var_id else None
        if record is not None:
            return caller, record
        owner_id = self._owners.get(ref)
        owner = self._sessions.get(owner_id) if owner_id else None
        # One reading of the rules (and the clock) serves the rights and the write bounds.
        live = self._live_rules(caller.id, caller.claim, owner, ref) if owner is not None else []
        granted = {p for r in live for p in r.permissions}
        if owner is None or owner is caller or not granted:
            raise VariableNotFoundError(f"no variable {_show(ref)} in session {caller.id!r}")
        record = owner.variables[ref]
        if need == "owner":
            raise AccessDeniedError(
                f"variable {ref!r} ({record.name!r}) belongs to session {owner.id!r}; only "
                f"its owner may do this (session {caller.id!r} may "
                f"{', '.join(sorted(granted))})",
                variable=ref, permission="owner",
            )
        if need not in granted:
            raise AccessDeniedError(
                f"session {caller.id!r} has no {need!r} permission on variable {ref!r} "
                f"({record.name!r}, owned by session {owner.id!r})",
                variable=ref, permission=need,
            )
        if check_value and need == "write":
            rules = [r for r in live if "write" in r.permissions]
            if not any(r.allows_value(value) for r in rules):
                bounds = "; ".join(
                    f"{r.conditions.get('min_value', '-inf')}.."
                    f"{r.conditions.get('max_value', 'inf')}"
                    for r in rules
                )
                raise AccessDeniedError(
                    f"session {caller.id!r} may write variable {ref!r} ({record.name!r}) "
                    f"only within the bounds of its rule(s) ({bounds}), not {value!r}",
                    variable=ref, permission=need,
                )
        return owner, record

    def may(self, session_id: str, var_id: str, permission: str) -> bool:
        """Whether a session may use ``permission`` on a variable, by id (False when the
        variable is gone). Used to re-check a live watch.

        Example::

            store.may("guest_1", "var_t_1", "observe")
        """
        owner_id = self._owners.get(var_id)
        owner = self._sessions.get(owner_id) if owner_id else None
        if owner is None or var_id not in owner.variables:
            return False
        if owner.id == session_id:
            return True
        return permission in self._rights(session_id, owner, var_id)

    def lookup(self, session_id: str, ref: str, permission: str) -> VariableRecord:
        """The record of ``ref`` if the session may use ``permission`` on it (``KeyError``
        if it cannot see it, ``AccessDeniedError`` if it lacks the permission).

        Example::

            store.lookup("guest_1", "var_t_1", "optimize")
        """
        return self._locate(self.session(session_id), ref, permission)[1]

    def timed_rules(self, session_id: str, var_id: str) -> bool:
        """Whether a rule of another session's variable that names ``session_id`` has a
        time condition (so its rights may have changed without a permissions commit).

        Example::

            store.timed_rules("guest_1", "var_t_1")
        """
        owner = self._sessions.get(self._owners.get(var_id, ""))
        rules = owner.rules.get(var_id, ()) if owner is not None else ()
        claim = self.claim_of(session_id)
        return any(r.matches(session_id, claim)
                   and any(k in r.conditions for k in TIME_CONDITIONS)
                   for r in rules)

    def owner_of(self, var_id: str) -> str | None:
        """The id of the session that owns a variable, or None.

        Example::

            store.owner_of("var_t_1")
        """
        return self._owners.get(var_id)

    def check_access(self, session_id: str, ref: str, permission: str) -> bool:
        """Whether the session may use ``permission`` on the variable: ``False`` for a
        missing permission and for a variable it cannot see at all (the spec: "True if
        access granted, False otherwise"; an unknown variable answers the same, so the
        answer reveals nothing). An unknown permission name raises ``ValueError``.

        Example::

            store.check_access("guest_1", "var_t_1", "write")
        """
        check_permission(permission)
        caller = self.session(session_id)
        try:
            self._locate(caller, ref, permission)
        except (AccessDeniedError, VariableNotFoundError):
            return False
        return True

    def visible(self, session_id: str, ref: str) -> bool:
        """Whether the session can see the variable at all (its own, or another's it has
        some permission on).

        Example::

            store.visible("guest_1", "var_t_1")
        """
        try:
            self._locate(self.session(session_id), ref, "read")
        except AccessDeniedError:
            return True
        except VariableNotFoundError:
            return False
        return True

    def rules(self, session_id: str, ref: str) -> tuple[AccessRule, ...]:
        """A variable's access rules (its owner only).

        Example::

            store.rules(sid, "temperature")
        """
        owner, record = self._locate(self.session(session_id), ref, "owner")
        return owner.rules.get(record.id, ())

    def set_permissions(
        self, session_id: str, ref: str, rules: Any, actor: str = ""
    ) -> int:
        """Replace a variable's access rules (its owner only); returns the revision.

        A commit with no value change: the variable's version stays, and live watches of
        other sessions are checked again (one that lost ``observe`` ends). A running
        optimization of a session that lost ``optimize`` is stopped right after (its own
        commit; the later revision is returned).

        Example::

            store.set_permissions(sid, "t", [{"session_pattern": "any",
                                              "permissions": ["read"]}])
        """
        owner, record = self._locate(self.session(session_id), ref, "owner")
        clean = self._checked_rules(record.name, record.type, rules)
        self._check_room(
            owner, _rules_cost(clean) - _rules_cost(owner.rules.get(record.id, ()))
        )
        revision = self._commit(owner, (), source=actor, rules={record.id: clean})[1]
        # A foreign optimization lives on the optimize permission: without it, it ends
        # (its own commit, right after), so its fencing token no longer lands writes.
        return self._end_unpermitted_leases(owner, "its access rules were changed") or revision

    def _end_unpermitted_leases(self, session: Session, why: str) -> int:
        # Ends the running leases whose holder session (not the owner) no longer has
        # ``optimize`` on the variable; returns the last revision taken, or 0.
        revision = 0
        for lease in list(session.running.values()):
            if lease.holder_session == session.id or "optimize" in self._rights(
                lease.holder_session, session, lease.variable_id
            ):
                continue
            revision = self._end_lease(
                session, lease, "stopped",
                f"session {lease.holder_session!r} may no longer optimize variable "
                f"{lease.variable_id!r}: {why}",
            )
        return revision

    def _commit(
        self,
        session: Session,
        records: Iterable[VariableRecord],
        removed: Iterable[VariableRecord] = (),
        metadata: Mapping[str, Any] | None = None,
        source: str = "",
        notes: Sequence[OptimizationLease] = (),
        metadata_size: int = 0,
        edges: Sequence[Edge] = (),
        restored: Mapping[str, Sequence[HistoryEntry]] | None = None,
        rules: Mapping[str, tuple[AccessRule, ...]] | None = None,
    ) -> tuple[list[VariableRecord], int]:
        # The only place variable state changes: one new revision for the whole write,
        # stamped on every record it writes (and as create_revision on new ones), logged
        # as one commit and handed to the session's listeners. ``notes`` are leases whose
        # status changed in this commit: each becomes an optimization event after the
        # value changes, so a watcher sees a write and the status it led to together.
        # ``edges`` (checked acyclic by the caller) join the graph before propagation;
        # ``restored`` seeds the history of new records (an import) before their own
        # version is remembered, each entry stamped with this revision (its ``size`` set
        # by the caller). ``rules`` sets variables' access rules (on register, or by their
        # owner). The revision counter is the store's, shared by all sessions.
        # Callers have checked every limit (``_check_room`` included): nothing here fails.
        revision = self._revision + 1
        stamped = [
            r
            if r.mod_revision == revision and r.create_revision
            else VariableRecord(
                r.id, r.name, r.type, r.value, r.constraints, r.metadata, r.version, revision,
                r.create_revision or revision, r.created_at, r.updated_at, r.updated_by,
                r.description, r.size, r.metadata_size,
            )
            for r in records
        ]
        events = []
        meta = metadata or {}
        changed: list[VariableRecord] = []
        for record in stamped:
            old = session.variables.get(record.id)
            session.variables[record.id] = record
            session.names[record.name] = record.id
            if old is None:
                self._owners[record.id] = session.id  # an owner never changes
            if restored and record.id in restored:
                self._seed_history(session, record.id, restored[record.id], revision)
            self._remember(session, record, meta, metadata_size)
            if old is not None:
                changed.append(record)
                events.append(ChangeEvent(record, old.value, "value_change", meta, source))
        if edges:
            before = session.graph.bytes
            for edge in edges:
                session.graph.add(edge)
            self._charge(session, "other_bytes", session.graph.bytes - before)
        if changed and len(session.graph):
            # Dependents learn of the change in the same frame, upstream first, each told
            # which of the changed variables it depends on (the first MAX_SOURCE_NAMES).
            downstream = session.graph.downstream_with_sources(
                (r.id for r in changed), MAX_SOURCE_NAMES
            )
            for var_id, source_ids, truncated in downstream:
                dependent = session.variables[var_id]
                names = [session.variables[s].name for s in source_ids]
                note: dict[str, Any] = {
                    "source_variable": names[0],
                    "source_variables": names,
                    "source_revision": revision,
                }
                if truncated:
                    note["source_variables_truncated"] = True
                events.append(ChangeEvent(
                    dependent, dependent.value, "dependency_changed", note, source,
                    tuple(source_ids),
                ))
        for lease in notes:
            lease.revision = revision
            record = session.variables[lease.variable_id]
            events.append(
                ChangeEvent(
                    record, record.value, OPTIMIZATION_EVENT,
                    lease.status(record.name, revision), lease.id,
                )
            )
        for var_id, clean in (rules or {}).items():
            self._set_rules(session, var_id, clean)
        for record in removed:
            del session.variables[record.id]
            del session.names[record.name]
            self._owners.pop(record.id, None)
            before = session.graph.bytes
            session.graph.drop(record.id)
            self._charge(session, "other_bytes", session.graph.bytes - before)
            entries = session.history.pop(record.id, None)
            if entries:
                self._forget_history(session, entries, revision)
            session.leases.pop(record.id, None)
            for ended in session.recent_leases.pop(record.id, ()):
                self._charge(session, "other_bytes", -ended.size)
            evaluations = session.evaluations.pop(record.id, None)
            if evaluations:
                self._charge(session, "other_bytes", -sum(e.size for e in evaluations))
            self._charge(session, "other_bytes", -session.fixed.pop(record.id, 0))
            self._set_rules(session, record.id, ())
            gone = dataclasses.replace(record, mod_revision=revision)
            events.append(ChangeEvent(gone, record.value, "deleted", meta, source))
        session.revision = self._revision = revision
        commit = Commit(
            revision, tuple(events), self._clock(), session.id, tuple(rules or ())
        )
        session.log.append(commit)
        self._charge(session, "log_bytes", _commit_cost(commit))
        if len(session.log) > self.log_size:
            self._trim_log(session, session.log[0].revision)
        self._make_room(session)
        for listener in list(session.listeners):
            self._notify(listener, commit)
        return stamped, revision

    def _remember(
        self,
        session: Session,
        record: VariableRecord,
        metadata: Mapping[str, Any],
        metadata_size: int,
    ) -> None:
        entries = session.history.get(record.id)
        if entries is None:
            entries = session.history[record.id] = deque(maxlen=self.history_size)
        size = ITEM_OVERHEAD + record.size + metadata_size
        # The hot path of every write: the account is updated field by field here (the
        # same arithmetic as _charge).
        added = size
        if entries:
            previous = entries[-1]
            session.current_bytes -= previous.size
            self.pinned_bytes -= previous.size
            session.superseded.append((record.mod_revision, record.id, previous.version))
            if len(entries) == entries.maxlen:
                dropped = entries[0]  # append drops it
                added -= dropped.size
                session.history_entries -= 1
                # The log holds its value up to the commit of the version after it.
                successor = entries[1].revision if len(entries) > 1 else record.mod_revision
                heapq.heappush(session.graveyard, (successor, dropped.size))
                session.graveyard_bytes += dropped.size
                self.used_bytes += dropped.size
        entries.append(
            HistoryEntry(
                record.version, record.value, record.updated_at, record.updated_by,
                metadata, record.mod_revision, size,
            )
        )
        session.history_entries += 1
        session.history_bytes += added
        self.used_bytes += added
        session.current_bytes += size
        self.pinned_bytes += size
        if session.graveyard and session.graveyard[0][0] <= session.log_floor:
            self._release(session)
        if len(session.superseded) > 2 * (session.history_entries - len(session.history)) + 1024:
            self._compact_superseded(session)

    def _seed_history(
        self, session: Session, var_id: str, entries: Sequence[HistoryEntry], revision: int
    ) -> None:
        # An import's restored history (sizes measured by the planner), before the
        # variable's own version is remembered: retention, superseded oldest first; the
        # newest restored entry counts as current until _remember supersedes it.
        kept = deque(
            (dataclasses.replace(entry, revision=revision) for entry in entries),
            maxlen=self.history_size,
        )
        if not kept:
            return
        total = sum(e.size for e in kept)
        session.history[var_id] = kept
        session.history_entries += len(kept)
        self._charge(session, "history_bytes", total)
        self._charge(session, "current_bytes", kept[-1].size)
        for entry in list(kept)[:-1]:
            session.superseded.append((revision, var_id, entry.version))

    def _set_rules(self, session: Session, var_id: str, rules: tuple[AccessRule, ...]) -> None:
        # A variable's access rules, charged to the session's other_bytes (_rules_cost).
        old = session.rules.pop(var_id, ())
        if rules:
            session.rules[var_id] = rules
        self._charge(session, "other_bytes", _rules_cost(rules) - _rules_cost(old))

    # ------------------------------------------------------------- memory account

    def _charge(self, session: Session, kind: str, delta: int) -> None:
        # Every change to a session's account goes through here, so the store's totals
        # follow. ``kind`` names a byte field of Session; current_bytes is a part of
        # history_bytes (so not added to ``used`` again); it and other_bytes are pinned.
        if not delta:
            return
        setattr(session, kind, getattr(session, kind) + delta)
        if kind != "current_bytes":
            self.used_bytes += delta
        if kind in ("current_bytes", "other_bytes"):
            self.pinned_bytes += delta

    def _check_room(self, session: Session, added: int) -> None:
        # Refuse, before anything changes, a write after which the pinned bytes (current
        # records and other state) would not fit the budgets. Retention (history, log) is
        # dropped to make room after the write, so it never refuses one.
        if added <= 0:
            return
        limits = self.limits
        after = session.pinned + added
        if after > limits.max_session_bytes:
            raise too_many(
                f"session {session.id!r} would hold {after} bytes of current values and "
                "records", after, "max_session_bytes", limits.max_session_bytes,
            )
        total = self.pinned_bytes + added
        if total > limits.max_store_bytes:
            raise too_many(
                f"the server would hold {total} bytes of current values and records",
                total, "max_store_bytes", limits.max_store_bytes,
            )

    def _make_room(self, session: Session) -> None:
        limits = self.limits
        self._evict(session, limits.max_session_bytes)
        if self.used_bytes > limits.max_store_bytes:
            # The writer's own retention goes first, then other sessions'.
            for victim in [session, *self._sessions.values()]:
                excess = self.used_bytes - limits.max_store_bytes
                if excess <= 0:
                    break
                self._evict(victim, victim.used - excess)

    def _evict(self, session: Session, target: int) -> None:
        # Drop retention, oldest first, until the session's account is at most ``target``:
        # values already out of history but still held by the log, then superseded
        # history entries, then log commits. Current records are never dropped.
        while session.used > target:
            if session.graveyard:
                self._trim_log(session, session.graveyard[0][0])
            elif not self._drop_oldest_history(session):
                if not session.log:
                    return
                self._trim_log(session, session.log[0].revision)

    def _drop_oldest_history(self, session: Session) -> bool:
        order = session.superseded
        while order:
            superseded_at, var_id, version = order.popleft()
            entries = session.history.get(var_id)
            if entries is None or len(entries) < 2 or entries[0].version != version:
                continue  # already gone
            entry = entries.popleft()
            session.history_entries -= 1
            self._charge(session, "history_bytes", -entry.size)
            self._bury(session, superseded_at, entry.size)
            return True
        return False

    def _compact_superseded(self, session: Session) -> None:
        def retained(item: tuple[int, str, int]) -> bool:
            entries = session.history.get(item[1])
            return entries is not None and entries[0].version <= item[2] < entries[-1].version

        session.superseded = deque(item for item in session.superseded if retained(item))

    def _forget_history(
        self, session: Session, entries: deque[HistoryEntry], revision: int
    ) -> None:
        # A deleted variable's history: the log holds its values until ``revision``.
        total = sum(e.size for e in entries)
        session.history_entries -= len(entries)
        self._charge(session, "current_bytes", -entries[-1].size)
        self._charge(session, "history_bytes", -total)
        self._bury(session, revision, total)

    def _bury(self, session: Session, release_after: int, size: int) -> None:
        heapq.heappush(session.graveyard, (release_after, size))
        self._charge(session, "graveyard_bytes", size)
        self._release(session)

    def _release(self, session: Session) -> None:
        graveyard = session.graveyard
        while graveyard and graveyard[0][0] <= session.log_floor:
            self._charge(session, "graveyard_bytes", -heapq.heappop(graveyard)[1])

    def _trim_log(self, session: Session, through: int) -> None:
        # Drop logged commits up to revision ``through``: a resume from before them gets
        # a resync (the log's contract), and values only they held are released.
        while session.log and session.log[0].revision <= through:
            commit = session.log.popleft()
            self._charge(session, "log_bytes", -_commit_cost(commit))
        session.log_floor = max(session.log_floor, min(through, session.revision))
        self._release(session)

    def check_accounts(self) -> None:
        """Recompute every memory account from the state; ``AssertionError`` on any
        difference. The property test calls it after every step.

        Example::

            store.check_accounts()
        """
        used = pinned = 0
        for session in self._sessions.values():
            current = history = entries = 0
            assert set(session.history) == set(session.variables), session.id
            for var_id, kept in session.history.items():
                versions = [e.version for e in kept]
                assert versions, f"empty history of {var_id}"
                assert versions[-1] == session.variables[var_id].version, (var_id, versions)
                assert versions == list(range(versions[0], versions[-1] + 1)), versions
                current += kept[-1].size
                history += sum(e.size for e in kept)
                entries += len(kept)
            other = (
                _session_cost(session)
                + sum(_client_cost(c) for c in session.clients.values())
                + session.graph.bytes
                + sum(lease.size for kept in session.recent_leases.values() for lease in kept)
                + sum(_rules_cost(rules) for rules in session.rules.values())
                + sum(e.size for kept in session.evaluations.values() for e in kept)
                + sum(session.fixed.values())
            )
            log = sum(_commit_cost(c) for c in session.log)
            grave = sum(size for _, size in session.graveyard)
            actual = (session.current_bytes, session.history_bytes, session.other_bytes,
                      session.log_bytes, session.graveyard_bytes, session.history_entries)
            expected = (current, history, other, log, grave, entries)
            assert actual == expected, (session.id, actual, expected)
            used += session.used
            pinned += session.pinned
        assert (self.used_bytes, self.pinned_bytes) == (used, pinned), (
            (self.used_bytes, self.pinned_bytes), (used, pinned)
        )

    def _declared(
        self, name: str, type_: Any, raw_constraints: Any
    ) -> tuple[str, dict[str, Any], int]:
        # A new variable's type and constraints, checked, and the bytes charged once for
        # it so far (the item, its constraints).
        type_name = normalize_type(type_)
        fixed = ITEM_OVERHEAD
        if raw_constraints is not None:
            if not isinstance(raw_constraints, Mapping):
                raise VariableTypeError(f"variable {name!r}: constraints must be a dict")
            fixed += measure_map(raw_constraints, self.limits, f"variable {name!r}: constraints")
        constraints = check_constraints(
            name, type_name, raw_constraints, max_pattern_length=self.limits.max_pattern_length
        )
        return type_name, constraints, fixed

    def _prepare_new(
        self, session: Session, spec: VariableSpec, actor: str, taken: set[str]
    ) -> tuple[VariableRecord, int]:
        # The record to register and the bytes charged once for it (constraints,
        # description); every limit checked, nothing changed.
        name = spec.name
        _check_name(name)
        if name in session.names or name in taken:
            raise AlreadyExistsError(f"variable {name!r} already exists in session {session.id!r}")
        if name in session.variables:
            raise AlreadyExistsError(
                f"variable name {name!r} already exists as the id of another variable"
            )
        _check_not_id_shaped(name)
        type_name, constraints, fixed = self._declared(name, spec.type, spec.constraints)
        value, value_size = self._validated(name, type_name, spec.initial_value, constraints)
        metadata, metadata_size = self._clean_metadata(
            name, spec.metadata, f"variable {name!r}: metadata"
        )
        fixed += self._description_size(name, spec.description)
        now = self._clock()
        record = VariableRecord(
            id=f"var_{name}_{next(self._ids)}",
            name=name,
            type=type_name,
            value=value,
            constraints=constraints,
            metadata=metadata,
            version=1,
            mod_revision=0,  # both stamped by _commit
            create_revision=0,
            created_at=now,
            updated_at=now,
            updated_by=actor,
            description=spec.description,
            size=value_size + metadata_size,
            metadata_size=metadata_size,
        )
        return record, fixed

    def _description_size(self, name: str, description: Any) -> int:
        if not isinstance(description, str):
            raise VariableTypeError(f"variable {name!r}: description must be a string")
        check_length(f"variable {name!r}: description", description, "max_description_length",
                     self.limits.max_description_length)
        return measure_value(description, self.limits, f"variable {name!r}: description")

    def _validated(
        self, name: str, type_name: str, value: Any, constraints: Mapping[str, Any]
    ) -> tuple[Any, int]:
        # Validate a value and measure what will be stored (the measure checks depth,
        # items and size). Validation recurses through what it was given: a structure
        # deeper than Python's stack (only an in-process caller can make one; protobuf
        # stops the wire's at ~48 levels) is refused as too deep.
        where = f"variable {name!r}: value"
        try:
            clean = keep_origin(value, validate_value(name, type_name, value, constraints))
        except RecursionError:
            raise too_big(f"{where} nests too deep to validate", 0, "max_depth",
                          self.limits.max_depth) from None
        return clean, measure_value(clean, self.limits, where)

    def _clean_metadata(
        self, name: str, metadata: Mapping[str, Any] | None, where: str, depth: int = 1
    ) -> tuple[dict[str, Any], int]:
        # Metadata-like maps (metadata, config, metrics): the limits, then the JSON rules.
        if metadata is None:
            return {}, 0
        if not isinstance(metadata, dict):
            raise VariableTypeError(f"{where} must be a dict")
        size = measure_map(metadata, self.limits, where, depth)
        return check_metadata(name, metadata), size

    def _check_batch_bytes(self, size: int, count: int, what: str) -> None:
        # What one batch stores is echoed in one answer (records, changed values), so it
        # must fit one message with the framing of each entry.
        total = size + count * BATCH_ENTRY_FRAMING
        limit = self.limits.max_message_bytes - BATCH_FRAMING
        if total > limit:
            raise too_big(
                f"{what} would store {total} bytes, more than one message can echo back "
                f"({limit} bytes)", total, "max_message_bytes", self.limits.max_message_bytes,
            )

    def _records_cost(
        self, session: Session, records: Sequence[VariableRecord], metadata_size: int = 0
    ) -> int:
        # How much a commit of these records adds to the pinned bytes: each becomes its
        # variable's newest history entry, replacing the one it has (if any).
        added = 0
        for record in records:
            added += ITEM_OVERHEAD + record.size + metadata_size
            entries = session.history.get(record.id)
            if entries:
                added -= entries[-1].size
        return added

    def register(
        self, session_id: str, specs: Sequence[VariableSpec], actor: str
    ) -> tuple[list[VariableRecord], int]:
        """Register variables atomically: all validated, then all committed under one revision.

        Example::

            records, revision = store.register(sid, [VariableSpec("t", "float", 0.7)], "me")
        """
        session = self.session(session_id)
        limits = self.limits
        if not specs:
            raise InvalidValueError("register needs at least one variable")
        check_count("the registration", len(specs), "max_batch_size", limits.max_batch_size)
        count = len(session.variables) + len(specs)
        if count > limits.max_variables_per_session:
            raise too_many(
                f"session {session_id!r} would hold {count} variables", count,
                "max_variables_per_session", limits.max_variables_per_session,
            )
        taken: set[str] = set()
        prepared = []
        fixed: list[int] = []
        rules: dict[str, tuple[AccessRule, ...]] = {}
        for spec in specs:
            record, cost = self._prepare_new(session, spec, actor, taken)
            prepared.append(record)
            fixed.append(cost)
            rules[record.id] = self._checked_rules(
                record.name, record.type, getattr(spec, "access_rules", ()) or ()
            )
            taken.add(spec.name)
        self._check_batch_bytes(
            sum(r.size for r in prepared) + sum(fixed), len(prepared), "the registration"
        )
        edges = self._new_edges(session, specs, prepared)
        self._check_room(
            session,
            self._records_cost(session, prepared) + sum(fixed) + sum(e.size for e in edges)
            + sum(_rules_cost(r) for r in rules.values()),
        )
        before = session.graph.bytes
        added: list[Edge] = []
        try:
            for edge in edges:
                if session.graph.add(edge):
                    added.append(edge)
        except CycleError as exc:
            for edge in added:  # nothing of a refused batch stays
                session.graph.remove(edge.dependent, edge.dependency)
            names = {r.id: r.name for r in prepared}
            raise self._cycle_error(session, exc, names) from None
        self._charge(session, "other_bytes", session.graph.bytes - before + sum(fixed))
        for record, cost in zip(prepared, fixed, strict=True):
            session.fixed[record.id] = cost
        return self._commit(session, prepared, rules={k: v for k, v in rules.items() if v})

    def _new_edges(
        self, session: Session, specs: Sequence[VariableSpec], prepared: list[VariableRecord]
    ) -> list[Edge]:
        limits = self.limits
        in_batch = {r.name: r.id for r in prepared} | {r.id: r.id for r in prepared}
        edges: dict[tuple[str, str], Edge] = {}
        for spec, record in zip(specs, prepared, strict=True):
            if not isinstance(spec.dependencies, list | tuple):
                raise InvalidValueError(
                    f"variable {spec.name!r}: dependencies must be a list of names or ids"
                )
            check_count(f"variable {spec.name!r}: the dependency list", len(spec.dependencies),
                        "max_batch_size", limits.max_batch_size)
            for ref in spec.dependencies:
                target = in_batch.get(ref) or self._resolve(session, ref).id
                edges[record.id, target] = Edge(record.id, target, "data", {}, ITEM_OVERHEAD)
        count = len(session.graph) + len(edges)
        if count > limits.max_dependencies_per_session:
            raise too_many(
                f"session {session.id!r} would hold {count} dependencies", count,
                "max_dependencies_per_session", limits.max_dependencies_per_session,
            )
        return list(edges.values())

    def _cycle_error(
        self, session: Session, exc: CycleError, names: Mapping[str, str] | None = None
    ) -> InvalidValueError:
        def name(var_id: str) -> str:
            record = session.variables.get(var_id)
            return record.name if record else (names or {}).get(var_id, var_id)

        cycle = " -> ".join(name(v) for v in exc.path)
        return InvalidValueError(f"dependency would create a cycle: {cycle}")

    def get(self, session_id: str, ref: str) -> VariableRecord:
        """The current record of a variable, by id or name.

        Example::

            store.get(sid, "temperature").value
        """
        return self._locate(self.session(session_id), ref, "read")[1]

    def get_many(
        self, session_id: str, refs: Sequence[str], permission: str = "read"
    ) -> tuple[list[VariableRecord], list[str]]:
        """Records for the refs that exist (in order) and the refs that do not (or that
        the session may not see). A visible variable without ``permission`` raises
        ``AccessDeniedError``.

        Example::

            found, missing = store.get_many(sid, ["a", "b"])
        """
        session = self.session(session_id)
        if not isinstance(refs, list | tuple):
            raise InvalidValueError("refs must be a list of variable names or ids")
        check_count("the list of variables", len(refs), "max_batch_size",
                    self.limits.max_batch_size)
        found, missing = [], []
        for ref in refs:
            try:
                found.append(self._locate(session, ref, permission)[1])
            except VariableNotFoundError:
                missing.append(ref)
        return found, missing

    def _prepare_write(
        self,
        record: VariableRecord,
        value: Any,
        metadata: Mapping[str, Any],
        actor: str,
        revision: int = 0,
        validated: bool = False,
    ) -> VariableRecord:
        if validated:
            new_value = value
            value_size = measure_value(value, self.limits, f"variable {record.name!r}: value")
        else:
            new_value, value_size = self._validated(
                record.name, record.type, value, record.constraints
            )
        # Metadata merges into the variable's: the merged map must fit the limits too.
        merged: Mapping[str, Any]
        if metadata:
            merged = {**record.metadata, **metadata}
            metadata_size = measure_map(
                merged, self.limits, f"variable {record.name!r}: metadata (merged)"
            )
        else:
            merged, metadata_size = record.metadata, record.metadata_size
        # Built field by field, not with dataclasses.replace: this is the hot path of every
        # write, and replace costs several times more. ``revision`` is the one the commit
        # will take (0: let _commit stamp it).
        return VariableRecord(
            record.id, record.name, record.type, new_value, record.constraints, merged,
            record.version + 1, revision, record.create_revision, record.created_at,
            self._clock(), actor, record.description, value_size + metadata_size,
            metadata_size,
        )

    def set(
        self,
        session_id: str,
        ref: str,
        value: Any,
        *,
        metadata: Mapping[str, Any] | None = None,
        actor: str,
        create_if_missing: bool = False,
        type_hint: str | None = None,
        expected_version: int | None = None,
        source: str | None = None,
        fencing_token: int | None = None,
    ) -> tuple[VariableRecord, int, bool]:
        """Validate and write one value; returns (new record, revision, created).

        ``expected_version`` makes it a compare-and-set: a variable at another version
        raises ``ConflictError`` (with ``current_version``) and nothing is written.
        ``source`` is who watchers see as the writer (default: ``actor``). A variable
        under an optimization lease takes the write only with the lease's
        ``fencing_token``; otherwise ``OptimizationLockedError``.

        Example::

            record, revision, _ = store.set(sid, "temperature", 0.9, actor="me")
            store.set(sid, "n", 5, actor="me", expected_version=record.version)
        """
        caller = self.session(session_id)
        if source is not None:
            self._check_reason("a write's source", source)
        try:
            session, record = self._locate(caller, ref, "write", value, check_value=True)
        except VariableNotFoundError:
            session = caller
            if not create_if_missing:
                raise
            if expected_version:
                raise ConflictError(
                    f"variable {_show(ref)}: expected version {expected_version}, but it does "
                    "not exist",
                    current_version=0,
                ) from None
            type_name = normalize_type(type_hint) if type_hint else infer_type(ref, value)
            records, revision = self.register(
                session_id, [VariableSpec(ref, type_name, value, None, metadata)], actor
            )
            return records[0], revision, True
        self._expire_leases(session)
        record = session.variables[record.id]
        self._check_lease(session, record, fencing_token, caller_id=session_id)
        self._check_version(record, expected_version)
        clean_metadata, metadata_size = self._clean_metadata(
            record.name, metadata, f"variable {record.name!r}: metadata"
        )
        new = self._prepare_write(record, value, clean_metadata, actor, self._revision + 1)
        self._check_room(session, self._records_cost(session, [new], metadata_size))
        written, revision = self._commit(
            session, [new], metadata=clean_metadata, source=source or actor,
            metadata_size=metadata_size,
        )
        return written[0], revision, False

    @staticmethod
    def _check_version(record: VariableRecord, expected: int | None) -> None:
        if expected and expected != record.version:
            raise ConflictError(
                f"variable {record.name!r}: expected version {expected}, but it is at "
                f"version {record.version}",
                current_version=record.version,
            )

    def update_many(
        self,
        session_id: str,
        updates: Sequence[tuple[str, Any]] | Sequence[tuple[str, Any, int | None]],
        *,
        metadata: Mapping[str, Any] | None = None,
        atomic: bool = True,
        actor: str,
        require_leases: Sequence[tuple[str, str, int]] = (),
    ) -> tuple[list[UpdateOutcome], int, bool]:
        """Write several variables under one revision; returns (outcomes, revision, applied).

        Each update is ``(ref, value)`` or ``(ref, value, expected_version)``. With
        ``atomic`` any bad entry (invalid, unknown, or at another version than expected)
        means nothing is applied: the bad entries carry their error, the rest say they
        were not applied. Without it the valid entries are applied. ``require_leases``
        names ``(ref, optimization_id, fencing_token)`` leases the caller must still hold:
        if one has ended, ``OptimizationLockedError`` and nothing is applied.

        Example::

            outcomes, revision, applied = store.update_many(sid, [("a", 1), ("b", 2)], actor="me")
        """
        caller = self.session(session_id)
        if not isinstance(updates, list | tuple) or not all(
            isinstance(u, tuple | list) and len(u) in (2, 3) for u in updates
        ):
            raise InvalidValueError(
                "updates must be a list of (ref, value) or (ref, value, expected_version)"
            )
        check_count("the batch", len(updates), "max_batch_size", self.limits.max_batch_size)
        if not isinstance(require_leases, list | tuple) or not all(
            isinstance(g, tuple | list) and len(g) == 3 for g in require_leases
        ):
            raise InvalidValueError(
                "require_leases must be a list of (ref, optimization_id, fencing_token)"
            )
        check_count("the required leases", len(require_leases), "max_batch_size",
                    self.limits.max_batch_size)
        clean_metadata, metadata_size = self._clean_metadata(
            "update", metadata, "the batch's metadata"
        )
        self._expire_leases(caller)
        for ref, optimization_id, token in require_leases:
            guard_owner, guarded = self._locate(caller, ref, "optimize")
            self._expire_leases(guard_owner)
            self._holder_lease(guard_owner, guarded, optimization_id, token, caller.id)
        prepared: list[VariableRecord | None] = []
        errors: list[DspexError | None] = []
        seen: set[str] = set()
        refs = [u[0] for u in updates]
        # A batch is one commit in one session: it writes the variables of one owner
        # session (the first entry's), and an entry of another owner is an error.
        session: Session | None = None
        for update in updates:
            ref, value = update[0], update[1]
            expected = update[2] if len(update) > 2 else None
            try:
                owner, record = self._locate(caller, ref, "write", value, check_value=True)
                if session is None:
                    session = owner
                    if owner is not caller:
                        self._expire_leases(owner)
                        record = owner.variables[record.id]
                elif owner is not session:
                    raise InvalidValueError(
                        f"variable {ref!r} belongs to session {owner.id!r}, but the batch "
                        f"writes variables of session {session.id!r}: a batch is one commit "
                        "in one session (send one batch per owner session)"
                    )
                if record.id in seen:
                    raise InvalidValueError(
                        f"variable {record.name!r} appears more than once in the batch"
                    )
                seen.add(record.id)
                self._check_lease(session, record, None)
                self._check_version(record, expected)
                prepared.append(
                    self._prepare_write(
                        record, value, clean_metadata, actor, self._revision + 1
                    )
                )
                errors.append(None)
            except DspexError as exc:
                prepared.append(None)
                errors.append(exc)
        failed = [e for e in errors if e is not None]
        if atomic and failed:
            first_bad = next(ref for ref, e in zip(refs, errors, strict=True) if e)
            outcomes = [
                _failed(ref, e)
                if e
                else UpdateOutcome(
                    ref, False, f"not applied: the atomic batch failed on {first_bad!r}", "aborted"
                )
                for ref, e in zip(refs, errors, strict=True)
            ]
            return outcomes, (session or caller).revision, False
        to_apply = [r for r in prepared if r is not None]
        self._check_batch_bytes(sum(r.size for r in to_apply), len(to_apply), "the batch")
        session = session or caller
        revision = session.revision
        committed: dict[str, VariableRecord] = {}
        if to_apply:
            # A budget refusal is the whole request's, atomic or not: nothing is applied.
            self._check_room(session, self._records_cost(session, to_apply, metadata_size))
            written, revision = self._commit(
                session, to_apply, metadata=clean_metadata, source=actor,
                metadata_size=metadata_size,
            )
            committed = {r.id: r for r in written}
        outcomes = [
            UpdateOutcome(ref, True, record=committed[p.id]) if p is not None else _failed(ref, e)
            for ref, p, e in zip(refs, prepared, errors, strict=True)
        ]
        return outcomes, revision, bool(to_apply)

    def list(self, session_id: str, pattern: str | None = None) -> list[VariableRecord]:
        """Variables whose name matches a regex (all when no pattern), by name.

        The regex is searched in the name (``re.search`` semantics; ``^...$`` for the whole
        name) with RE2 (``patterns.compile_name_filter``), in linear time. Clients send an
        explicit glob already translated (``patterns.glob_as_search``).

        Example::

            [r.name for r in store.list(sid, r"^model\\.")]
        """
        session = self.session(session_id)
        records = sorted(session.variables.values(), key=lambda r: r.name)
        if pattern:
            match = compile_name_filter(pattern, self.limits.max_pattern_length)
            records = [r for r in records if match(r.name)]
        return records

    def delete(
        self, session_id: str, ref: str, actor: str = "", cascade: bool = False
    ) -> tuple[builtins.list[str], int]:
        """Remove a variable; returns (ids deleted, the named one first; the new revision).

        A variable others depend on is refused unless ``cascade``, which deletes every
        variable that depends on it, transitively, in the same commit.

        Example::

            deleted, revision = store.delete(sid, "temperature")
        """
        session, record = self._locate(self.session(session_id), ref, "owner")
        self._expire_leases(session)
        dependents = session.graph.dependents(record.id, transitive=True)
        if dependents and not cascade:
            names = ", ".join(repr(session.variables[d].name) for d, _, _ in dependents)
            raise InvalidValueError(
                f"variable {record.name!r} cannot be deleted: {names} depend(s) on it "
                "(delete with cascade=True to delete them too)"
            )
        doomed = [record, *(session.variables[d] for d, _, _ in dependents)]
        for victim in doomed:
            self._check_lease(session, victim, None, doing="deleted")
        _, revision = self._commit(session, (), removed=doomed, source=actor)
        return [r.id for r in doomed], revision

    # -------------------------------------------------------------- dependencies

    def add_dependency(
        self,
        session_id: str,
        from_ref: str,
        to_ref: str,
        dependency_type: str = "data",
        metadata: Mapping[str, Any] | None = None,
        actor: str = "",
    ) -> int:
        """Record that ``from_ref`` depends on ``to_ref``; returns the new revision.

        A dependency that would close a cycle raises ``ValueError`` naming it
        (``a -> b -> a``); unknown variables raise ``KeyError``.

        Example::

            store.add_dependency(sid, "effective_temperature", "base_temperature")
        """
        session = self.session(session_id)
        dependent = self._resolve(session, from_ref)
        dependency = self._resolve(session, to_ref)
        if dependency_type not in DEPENDENCY_TYPES:
            raise InvalidValueError(
                f"dependency type must be one of {', '.join(DEPENDENCY_TYPES)}, "
                f"got {dependency_type!r}"
            )
        clean, size = self._clean_metadata(
            dependent.name, metadata, f"variable {dependent.name!r}: dependency metadata"
        )
        edge = Edge(dependent.id, dependency.id, dependency_type, clean, ITEM_OVERHEAD + size)
        existing = session.graph.edge(dependent.id, dependency.id)
        if existing is None and len(session.graph) >= self.limits.max_dependencies_per_session:
            raise too_many(
                f"session {session.id!r} already holds {len(session.graph)} dependencies",
                len(session.graph) + 1, "max_dependencies_per_session",
                self.limits.max_dependencies_per_session,
            )
        self._check_room(session, edge.size - (existing.size if existing else 0))
        before = session.graph.bytes
        try:
            changed = session.graph.add(edge)
        except CycleError as exc:
            raise self._cycle_error(session, exc) from None
        if not changed:
            return session.revision  # already there, unchanged: nothing was written
        self._charge(session, "other_bytes", session.graph.bytes - before)
        return self._commit(session, (), source=actor)[1]

    def remove_dependency(
        self, session_id: str, from_ref: str, to_ref: str, actor: str = ""
    ) -> tuple[bool, int]:
        """Forget that ``from_ref`` depends on ``to_ref``; returns (existed, revision).

        Example::

            removed, revision = store.remove_dependency(sid, "eff", "base")
        """
        session = self.session(session_id)
        dependent = self._resolve(session, from_ref)
        dependency = self._resolve(session, to_ref)
        before = session.graph.bytes
        if not session.graph.remove(dependent.id, dependency.id):
            return False, session.revision
        self._charge(session, "other_bytes", session.graph.bytes - before)
        return True, self._commit(session, (), source=actor)[1]

    def dependencies(
        self, session_id: str, ref: str, *, dependents: bool = False, transitive: bool = False
    ) -> builtins.list[tuple[VariableRecord, int, Edge]]:
        """What ``ref`` depends on (or, with ``dependents``, what depends on it):
        (record, depth, the edge that reached it), nearest first.

        Example::

            [r.name for r, _, _ in store.dependencies(sid, "eff", transitive=True)]
        """
        caller = self.session(session_id)
        session, record = self._locate(caller, ref, "read")
        walk = session.graph.dependents if dependents else session.graph.dependencies
        # Of another session's graph, only the variables the caller may read are shown.
        return [
            (session.variables[var_id], depth, edge)
            for var_id, depth, edge in walk(record.id, transitive)
            if session is caller or self.may(caller.id, var_id, "read")
        ]

    # ----------------------------------------------------------------- history

    def history(
        self, session_id: str, ref: str, limit: int = 100, offset: int = 0
    ) -> HistoryPage:
        """A page of a variable's versions, newest first: versions ``current - offset``
        down to ``current - offset - limit + 1``. Versions of that range that fell out of
        retention are reported in ``expired``, never silently left out.

        Example::

            page = store.history(sid, "temperature", limit=10, offset=0)
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InvalidValueError(f"history limit must be a positive integer, got {limit!r}")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise InvalidValueError(f"history offset must be an integer >= 0, got {offset!r}")
        session, record = self._locate(self.session(session_id), ref, "read")
        entries = session.history.get(record.id, deque())
        oldest = entries[0].version if entries else record.version
        newest_wanted = record.version - offset
        oldest_wanted = max(1, newest_wanted - limit + 1)
        page = [e for e in reversed(entries) if oldest_wanted <= e.version <= newest_wanted]
        expired = None
        if newest_wanted >= 1 and oldest_wanted < oldest:
            expired = (oldest_wanted, min(newest_wanted, oldest - 1))
        return HistoryPage(page, record.version, oldest, expired, self.history_size)

    def rollback(
        self,
        session_id: str,
        ref: str,
        version: int,
        *,
        reason: str | None = None,
        actor: str,
        expected_version: int | None = None,
    ) -> tuple[VariableRecord, int]:
        """Write a new version whose value is that of ``version`` (history is appended,
        never rewritten); returns (new record, revision). Unknown or expired versions
        raise ``ValueError``. Another session's variable needs ``read`` as well as
        ``write``: choosing a past value is reading the history.

        Example::

            record, revision = store.rollback(sid, "temperature", 3, reason="bad sweep", actor="me")
        """
        caller = self.session(session_id)
        session, record = self._locate(caller, ref, "write")
        if session is not caller:
            # Rolling back chooses a past value (and the response carries it): that is
            # reading the history, so another session's variable needs read as well.
            self._locate(caller, record.id, "read")
        self._expire_leases(session)
        self._check_lease(session, record, None, doing="rolled back")
        self._check_version(record, expected_version)
        if not isinstance(version, int) or isinstance(version, bool) or not (
            1 <= version <= record.version
        ):
            raise InvalidValueError(
                f"variable {record.name!r} has no version {version!r} (versions 1 to "
                f"{record.version})"
            )
        entries = session.history.get(record.id, deque())
        entry = next((e for e in entries if e.version == version), None)
        if entry is None:
            oldest = entries[0].version if entries else record.version
            raise InvalidValueError(
                f"version {version} of variable {record.name!r} is no longer retained "
                f"(the oldest kept is {oldest}; retention is {self.history_size} versions "
                "within the session's memory budget)"
            )
        if session is not caller:
            self._locate(caller, record.id, "write", entry.value, check_value=True)
        metadata: dict[str, Any] = {"rollback_to": version}
        if reason is not None:
            if not isinstance(reason, str):
                raise VariableTypeError("a rollback reason must be a string")
            check_length("the rollback reason", reason, "max_string_length",
                         self.limits.max_string_length)
            metadata["reason"] = reason
        metadata_size = measure_map(metadata, self.limits, "the rollback's metadata")
        # The stored value, as it was: constraints never change after registration, and
        # validating again is not idempotent (re-normalizing an embedding can move its
        # last bits).
        # The rollback's notes describe this commit (history, watchers), not the variable:
        # they stay out of its user metadata, where they would shadow the user's keys.
        new = self._prepare_write(
            record, entry.value, {}, actor, self._revision + 1, validated=True
        )
        self._check_room(session, self._records_cost(session, [new], metadata_size))
        written, revision = self._commit(
            session, [new], metadata=metadata, source=actor, metadata_size=metadata_size
        )
        return written[0], revision

    # -------------------------------------------------------------- optimization

    def _check_reason(self, what: str, reason: Any) -> None:
        if not isinstance(reason, str):
            raise VariableTypeError(f"{what} must be a string")
        check_length(what, reason, "max_string_length", self.limits.max_string_length)

    def _expire_leases(self, session: Session) -> None:
        # Leases lapse lazily, on the next call that could see them, and in expire();
        # each lapse is its own commit, before whatever the caller does next.
        if not session.running:
            return
        now = self._clock()
        for lease in [lease for lease in session.running.values() if now > lease.expires_at]:
            self._end_lease(
                session, lease, "expired",
                f"the lease lapsed: no renewal from {lease.holder_client or 'its holder'} "
                f"within {lease.ttl:g} s",
            )
        # A rule's time condition may have lapsed since: its optimize grant with it.
        self._end_unpermitted_leases(session, "the rule granting it no longer applies")

    def _end_lease(
        self,
        session: Session,
        lease: OptimizationLease,
        state: str,
        reason: str,
        records: Sequence[VariableRecord] = (),
        metadata: Mapping[str, Any] | None = None,
        actor: str = "",
        metadata_size: int = 0,
    ) -> int:
        lease.end(state, reason, self._clock())
        session.running.pop(lease.variable_id, None)
        log.info("optimization_ended", session_id=session.id, optimization_id=lease.id,
                 state=state, reason=reason, iterations=lease.iteration)
        return self._commit(
            session, records, metadata=metadata, source=actor or lease.id, notes=[lease],
            metadata_size=metadata_size,
        )[1]

    @staticmethod
    def _new_token(session: Session, var_id: str) -> int:
        # A positive int64 (the wire field), unguessable, and unlike every token of the
        # variable's leases the store still remembers (a stale one is told apart by
        # value). Older ones are not kept (that set would grow by one per run, without
        # bound): a repeat of one of them is a 62-bit coincidence, and would still pass
        # only from the session the new lease is held by.
        taken = {lease.token for lease in session.recent_leases.get(var_id, ())}
        while True:
            token = secrets.randbits(62) + 1
            if token not in taken:
                return token

    def _check_lease(
        self,
        session: Session,
        record: VariableRecord,
        token: int | None,
        doing: str = "written",
        caller_id: str = "",
    ) -> OptimizationLease | None:
        # A token passes only for the session that holds the lease (``caller_id``): a
        # token is a fence for its holder's writes, not a password anyone may present.
        lease = session.running.get(record.id)
        if lease is None:
            if token:
                last = session.leases.get(record.id)
                if last is not None and last.token == token and (
                    last.holder_session == caller_id
                ):
                    why = f"optimization {last.id} has {last.state}"
                    why += f" ({last.end_reason})" if last.end_reason else ""
                else:
                    why = "it belongs to no optimization of this variable"
                raise OptimizationLockedError(
                    f"variable {record.name!r}: fencing token {token} is stale: {why}",
                    optimization_id=last.id if last is not None else "",
                )
            return None
        if token != lease.token or doing != "written" or lease.holder_session != caller_id:
            raise OptimizationLockedError(
                f"variable {record.name!r} is locked for optimization by {lease.id} "
                f"({lease.optimizer_type}, session {lease.holder_session}); it cannot be "
                f"{doing} until the optimization ends or is stopped",
                optimization_id=lease.id,
                current_version=record.version,
            )
        return lease

    def _held(
        self,
        session_id: str,
        ref: str,
        optimization_id: str,
        token: int,
        evaluation: tuple[int, Any, Mapping[str, Any] | None, float] | None,
    ) -> tuple[Session, VariableRecord, OptimizationLease, _Evaluation | None]:
        # What a holder's step and finish both start with: the variable (with the optimize
        # right), its lease (held by this caller with this token), the evaluation checked.
        caller = self.session(session_id)
        session, record = self._locate(caller, ref, "optimize")
        self._expire_leases(session)
        lease = self._holder_lease(session, record, optimization_id, token, caller.id)
        clean = self._prepare_evaluation(lease, record, evaluation) if evaluation else None
        return session, record, lease, clean

    def _holder_lease(
        self,
        session: Session,
        record: VariableRecord,
        optimization_id: str,
        token: int,
        caller_id: str,
    ) -> OptimizationLease:
        lease = session.running.get(record.id)
        if (
            lease is None or lease.id != optimization_id or lease.token != token
            or lease.holder_session != caller_id
        ):
            last = session.leases.get(record.id)
            if last is not None and last.id == optimization_id:
                why = f"it has {last.state}" + (f" ({last.end_reason})" if last.end_reason
                                                else "")
                if last.token != token or last.holder_session != caller_id:
                    why = f"fencing token {token} is not the token session {caller_id!r} holds"
            else:
                why = "no such optimization of this variable"
            raise OptimizationLockedError(
                f"variable {record.name!r}: optimization {optimization_id!r} no longer holds "
                f"the lease: {why}",
                optimization_id=optimization_id,
            )
        return lease

    def start_optimization(
        self,
        session_id: str,
        ref: str,
        *,
        optimizer_type: str,
        config: Mapping[str, Any] | None = None,
        max_iterations: int = 100,
        ttl: float | None = None,
        client_id: str = "",
        actor: str = "",
        minimize: bool = False,
        takes_reports: bool = False,
    ) -> tuple[OptimizationLease, int]:
        """Take the variable's optimization lease; returns (lease, revision).

        A variable already under a running lease raises ``OptimizationLockedError`` (a
        ``ValueError``) saying it is "already being optimized" and by which optimization.
        ``takes_reports``: each proposal the holder writes is evaluated elsewhere and
        reported with ``report_metrics``.

        Example::

            lease, revision = store.start_optimization(sid, "t", optimizer_type="bayesian")
            store.set(sid, "t", 0.4, actor="me", fencing_token=lease.token)
        """
        caller = self.session(session_id)
        session, record = self._locate(caller, ref, "optimize")
        self._expire_leases(session)
        if not isinstance(optimizer_type, str) or not NAME_RE.fullmatch(optimizer_type):
            raise InvalidValueError(
                f"variable {record.name!r}: optimizer type {_show(optimizer_type)} is not a "
                "valid name (letters, digits, _ . - /)"
            )
        if not isinstance(client_id, str):
            raise VariableTypeError("client id must be a string")
        check_length("the client id", client_id, "max_string_length",
                     self.limits.max_string_length)
        if (
            not isinstance(max_iterations, int) or isinstance(max_iterations, bool)
            or not 1 <= max_iterations <= MAX_ITERATIONS
        ):
            raise InvalidValueError(
                f"variable {record.name!r}: max_iterations must be an integer from 1 to "
                f"{MAX_ITERATIONS}, got {max_iterations!r}"
            )
        if ttl is not None and not (ttl == 0 or (math.isfinite(ttl) and 0 < ttl <= MAX_TTL)):
            raise InvalidValueError(
                f"variable {record.name!r}: lease ttl must be between 0 and {MAX_TTL:g} "
                f"seconds (0 for the server default), got {ttl!r}"
            )
        clean_config, config_size = self._clean_metadata(
            record.name, config, f"variable {record.name!r}: optimizer config"
        )
        if client_id not in caller.clients:
            # Only an attached client can hold a lease: its close or silence must be able
            # to end it (a made-up or swept client id would hold it for the whole TTL).
            raise SessionNotFoundError(
                f"client {_show(client_id)} is not attached to session {caller.id!r}; only "
                "an attached client can hold an optimization lease",
                detached=True,
            )
        running = session.running.get(record.id)
        if running is not None:
            raise OptimizationLockedError(
                f"variable {record.name!r} is already being optimized by {running.id} "
                f"({running.optimizer_type}, session {running.holder_session}, iteration "
                f"{running.iteration})",
                optimization_id=running.id,
            )
        now = self._clock()
        ttl = ttl or self.lease_ttl
        lease = OptimizationLease(
            id="opt_" + secrets.token_hex(8),
            variable_id=record.id,
            optimizer_type=optimizer_type,
            holder_session=caller.id,
            holder_client=client_id,
            token=self._new_token(session, record.id),
            ttl=ttl,
            config=clean_config,
            max_iterations=max_iterations,
            started_at=now,
            last_update=now,
            expires_at=now + ttl,
            minimize=bool(minimize),
            size=5 * ITEM_OVERHEAD + config_size + len(client_id),
            takes_reports=bool(takes_reports),
        )
        # The account charges each lease while it is one of the variable's recent leases
        # (the latest, in session.leases, is one of them).
        recent = session.recent_leases.get(record.id)
        replaced = recent[0].size if recent and len(recent) >= RECENT_LEASES else 0
        self._check_room(session, lease.size - replaced)
        session.leases[record.id] = lease
        session.running[record.id] = lease
        if recent is None:
            recent = session.recent_leases[record.id] = deque()
        if len(recent) >= RECENT_LEASES:
            recent.popleft()
        recent.append(lease)
        self._charge(session, "other_bytes", lease.size - replaced)
        log.info("optimization_started", session_id=session.id, optimization_id=lease.id,
                 variable=record.name, optimizer=optimizer_type, client_id=client_id)
        revision = self._commit(session, (), source=actor or lease.id, notes=[lease])[1]
        return lease, revision

    def _prepare_evaluation(
        self,
        lease: OptimizationLease,
        record: VariableRecord,
        evaluation: tuple[int, Any, Mapping[str, Any] | None, float],
    ) -> _Evaluation:
        iteration, value, metrics, score = evaluation
        if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 1:
            raise InvalidValueError(
                f"variable {record.name!r}: iteration must be a positive integer, got "
                f"{iteration!r}"
            )
        if iteration <= lease.iteration:
            raise InvalidValueError(
                f"variable {record.name!r}: iteration {iteration} of {lease.id} is already "
                f"recorded (the last was {lease.iteration})"
            )
        if not isinstance(score, int | float) or not math.isfinite(score):
            raise InvalidValueError(
                f"variable {record.name!r}: score of iteration {iteration} must be a finite "
                f"number, got {score!r}"
            )
        clean_value, _ = self._validated(record.name, record.type, value, record.constraints)
        value_size = self._status_value(record, clean_value, "evaluated value")
        clean_metrics, metrics_size = self._clean_metadata(
            record.name, metrics, f"variable {record.name!r}: metrics", depth=2
        )
        size = ITEM_OVERHEAD + value_size + metrics_size
        return iteration, clean_value, clean_metrics, float(score), size

    def _status_value(self, record: VariableRecord, value: Any, what: str) -> int:
        # Values an optimization records travel inside its status (metadata, a level
        # deeper than a value), so they are bounded like metadata.
        where = f"variable {record.name!r}: {what}"
        size = measure_value(value, self.limits, where, depth=1)
        if size > self.limits.max_metadata_bytes:
            raise too_big(f"{where} is {size} bytes encoded", size, "max_metadata_bytes",
                          self.limits.max_metadata_bytes)
        return size

    def _evaluation_cost(self, session: Session, lease: OptimizationLease,
                         evaluation: _Evaluation | None) -> int:
        if evaluation is None:
            return 0
        entries = session.evaluations.get(lease.variable_id)
        dropped = entries[0].size if entries and len(entries) == entries.maxlen else 0
        return evaluation[4] - dropped

    def _record_evaluation(
        self,
        session: Session,
        lease: OptimizationLease,
        evaluation: _Evaluation,
    ) -> None:
        iteration, value, metrics, score, size = evaluation
        lease.record(iteration, value, metrics, score)
        entries = session.evaluations.get(lease.variable_id)
        if entries is None:
            entries = session.evaluations[lease.variable_id] = deque(
                maxlen=self.optimization_history_size
            )
        if len(entries) == entries.maxlen:
            self._charge(session, "other_bytes", -entries[0].size)  # append drops it
        entries.append(
            OptimizationEntry(
                lease.id, lease.optimizer_type, iteration, value, metrics, score,
                # Whole microseconds, as the API's datetimes show it and since= compares.
                round(self._clock() * 1e6) / 1e6, self._revision + 1, size,
            )
        )
        self._charge(session, "other_bytes", size)

    def optimization_step(
        self,
        session_id: str,
        ref: str,
        optimization_id: str,
        fencing_token: int,
        *,
        evaluation: tuple[int, Any, Mapping[str, Any] | None, float] | None = None,
        proposal: tuple[Any, int] | None = None,
        actor: str = "",
    ) -> tuple[OptimizationLease, VariableRecord | None, int]:
        """One step of a running optimization, by its holder: renew the lease, record an
        evaluated ``(iteration, value, metrics, score)`` (better is higher, or lower for a
        lease that minimizes) and/or
        write a ``(value, iteration)`` proposal, in one commit. Returns (lease, the written
        record or None, revision). Everything is validated before anything changes; a
        lease that has ended raises ``OptimizationLockedError``.

        Example::

            store.optimization_step(sid, "t", lease.id, lease.token, proposal=(0.4, 1))
            store.optimization_step(sid, "t", lease.id, lease.token,
                                    evaluation=(1, 0.4, {"acc": 0.8}, 0.8))
        """
        session, record, lease, clean = self._held(
            session_id, ref, optimization_id, fencing_token, evaluation
        )
        written: list[VariableRecord] = []
        metadata: dict[str, Any] = {}
        if proposal is not None:
            value, iteration = proposal
            if not isinstance(iteration, int) or isinstance(iteration, bool):
                raise InvalidValueError(
                    f"variable {record.name!r}: the proposal's iteration must be an integer"
                )
            metadata = {"optimization_id": lease.id, "optimizer": lease.optimizer_type,
                        "iteration": iteration}
            # The bookkeeping goes with the commit (events, history), not into the
            # variable's own metadata, where it would outlive this run.
            written = [self._prepare_write(record, value, {}, actor, self._revision + 1)]
            if lease.takes_reports and iteration <= lease.proposal_iteration:
                # A report names its proposal by iteration: one number, one proposal.
                raise InvalidValueError(
                    f"variable {record.name!r}: iteration {iteration} of {lease.id} is "
                    f"already proposed (the last proposal is {lease.proposal()})"
                )
        metadata_size = measure_map(metadata, self.limits, "the step's metadata")
        self._check_room(
            session,
            self._records_cost(session, written, metadata_size)
            + self._evaluation_cost(session, lease, clean),
        )
        lease.renew(self._clock())
        if clean is None and not written:
            return lease, None, session.revision
        if clean is not None:
            self._record_evaluation(session, lease, clean)
        if written:
            lease.propose(proposal[1] if proposal else 0, written[0].version)
        stamped, revision = self._commit(
            session, written, metadata=metadata, source=lease.id, notes=[lease],
            metadata_size=metadata_size,
        )
        return lease, (stamped[0] if stamped else None), revision

    def report_metrics(
        self,
        session_id: str,
        ref: str,
        metrics: Mapping[str, Any],
        *,
        iteration: int = 0,
        version: int = 0,
        optimization_id: str = "",
        actor: str = "",
    ) -> tuple[OptimizationLease, VariableRecord, int]:
        """Report the evaluation of the running optimization's current proposal, named by
        the variable ``version`` its write made, or by its ``iteration`` together with its
        run's ``optimization_id`` (iterations restart at 1 in each run; versions only grow,
        so a version alone names one proposal for good).
        Any session that may optimize the variable can report. The report becomes an
        optimization event (the status carries it), which is how the holder, waiting
        for it, learns of it. Returns (lease, record, revision).

        Refused with ``InvalidValueError`` (nothing changes): nothing is being optimized,
        the run evaluates in-process (no reports taken), no proposal is written yet, the
        report names no proposal (neither version nor iteration), an iteration without
        its run, another run than the running one, or another proposal than the current
        one (a late report of an earlier proposal, of this run or an earlier one, is never
        credited to a later one), the proposal was reported already
        (the first report counts), or the metrics lack the run's target metric.

        Example::

            store.report_metrics(sid, "t", {"accuracy": 0.81}, version=12)
            store.report_metrics(sid, "t", {"accuracy": 0.81}, iteration=3,
                                 optimization_id=lease.id)
        """
        self._check_reason("the reporter", actor)
        if not isinstance(optimization_id, str):
            raise VariableTypeError(
                f"a report's optimization id must be a string, got {_show(optimization_id)}"
            )
        # Quoted as given in the errors below, but never a megabyte of it.
        run_named = optimization_id if len(optimization_id) <= 80 else _show(optimization_id)
        caller = self.session(session_id)
        session, record = self._locate(caller, ref, "optimize")
        self._expire_leases(session)
        where = f"variable {record.name!r}"
        for label, number in (("iteration", iteration), ("version", version)):
            if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                raise InvalidValueError(
                    f"{where}: a report's {label} must be a positive integer (0: not "
                    f"given), got {number!r}"
                )
        lease = session.running.get(record.id)
        if lease is None:
            last = session.leases.get(record.id)
            ended = (f" (its last optimization {last.id} has {last.state})"
                     if last is not None else "")
            raise InvalidValueError(
                f"{where} is not being optimized{ended}: there is no proposal to report "
                "metrics for"
                + (f" (the report is for optimization {run_named})"
                   if optimization_id and (last is None or last.id != optimization_id)
                   else "")
            )
        if optimization_id and optimization_id != lease.id:
            # A late report of an earlier run must not score this run's proposal of the
            # same iteration number.
            raise InvalidValueError(
                f"{where}: the report is for optimization {run_named}, but the "
                f"running optimization is {lease.id} (its current proposal is "
                f"{lease.proposal()}); a report of another run is never credited to this one"
            )
        if not lease.takes_reports:
            raise InvalidValueError(
                f"{where}: optimization {lease.id} evaluates its proposals in-process (an "
                "objective); it takes no reported metrics"
            )
        if not lease.proposal_iteration:
            raise InvalidValueError(
                f"{where}: optimization {lease.id} has written no proposal yet; nothing to "
                "report metrics for"
            )
        if not iteration and not version:
            raise InvalidValueError(
                f"{where}: a report must name the proposal it evaluates: the version its "
                "write made, or its iteration with the optimization id; the current "
                f"proposal of {lease.id} is {lease.proposal()}"
            )
        if iteration and not version and not optimization_id:
            # Iterations restart at 1 in each run: alone, one could name an earlier run's.
            raise InvalidValueError(
                f"{where}: a report naming iteration {iteration} must name its run too "
                "(optimization_id) or the version the proposal's write made; the current "
                f"proposal of {lease.id} is {lease.proposal()}"
            )
        if (iteration and iteration != lease.proposal_iteration) or (
            version and version != lease.proposal_version
        ):
            named = " ".join(
                f"{label} {number}" for label, number in
                (("iteration", iteration), ("version", version)) if number
            )
            raise InvalidValueError(
                f"{where}: the report is for a stale proposal ({named}); the current "
                f"proposal of {lease.id} is {lease.proposal()}"
            )
        if lease.report is not None:
            raise InvalidValueError(
                f"{where}: the proposal {lease.proposal()} of {lease.id} was already "
                f"reported by {lease.reported_by or 'another reporter'}; the first report "
                "counts"
            )
        clean, _ = self._clean_metadata(record.name, metrics, f"{where}: metrics", depth=2)
        config = lease.config
        metric = config.get("metric") if isinstance(config.get("metric"), str) else None
        score_of(record.name, clean, metric, lease.proposal_iteration, "the report")
        # One report per proposal, bounded like metadata and replaced by the next
        # proposal's: the lease's own footprint, not charged as history is.
        lease.report = clean
        lease.reported_by = actor
        revision = self._commit(session, (), source=actor or lease.id, notes=[lease])[1]
        return lease, record, revision

    def finish_optimization(
        self,
        session_id: str,
        ref: str,
        optimization_id: str,
        fencing_token: int,
        *,
        evaluation: tuple[int, Any, Mapping[str, Any] | None, float] | None = None,
        final_value: Any = None,
        write_final: bool = False,
        state: str = "completed",
        reason: str = "",
        actor: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[OptimizationLease, VariableRecord | None, int]:
        """End a run by its holder: record the last evaluation, write the final value and
        release the lease, in one commit. ``state`` is ``completed`` or ``failed``.

        Example::

            store.finish_optimization(sid, "t", lease.id, lease.token, final_value=0.4,
                                      write_final=True, reason="converged")
        """
        if state not in FINISH_STATES:
            raise InvalidValueError(
                f"an optimization finishes as one of {', '.join(FINISH_STATES)}, not "
                f"{_show(state)}"
            )
        self._check_reason("the end reason", reason)
        session, record, lease, clean = self._held(
            session_id, ref, optimization_id, fencing_token, evaluation
        )
        written: list[VariableRecord] = []
        extra, _ = self._clean_metadata(
            record.name, dict(metadata) if isinstance(metadata, Mapping) else metadata,
            f"variable {record.name!r}: the finish's metadata",
        )
        commit_metadata: dict[str, Any] = {}
        if write_final:
            commit_metadata = {**extra, "optimization_id": lease.id,
                               "optimizer": lease.optimizer_type, "final": True}
            written = [
                self._prepare_write(record, final_value, {}, actor, self._revision + 1)
            ]
            self._status_value(record, written[0].value, "final value")
        metadata_size = measure_map(commit_metadata, self.limits, "the finish's metadata")
        self._check_room(
            session,
            self._records_cost(session, written, metadata_size)
            + self._evaluation_cost(session, lease, clean),
        )
        if clean is not None:
            self._record_evaluation(session, lease, clean)
        if written:
            lease.final_value, lease.has_final = written[0].value, True
        revision = self._end_lease(
            session, lease, state, reason or state, written, commit_metadata, actor=lease.id,
            metadata_size=metadata_size,
        )
        return lease, (session.variables[record.id] if written else None), revision

    def stop_optimization(
        self,
        session_id: str,
        ref: str,
        *,
        reason: str = "",
        optimization_id: str = "",
        apply_best: bool = False,
        actor: str = "",
    ) -> tuple[bool, OptimizationLease | None, int, VariableRecord | None]:
        """Revoke the variable's running lease (any session that may optimize it); returns
        (whether one was stopped, the lease, revision, the record written by
        ``apply_best`` or None). From then on the holder's fencing
        token is refused, so none of its writes lands. ``apply_best`` writes the best value
        recorded so far in the same commit. ``optimization_id`` stops only that run.

        Example::

            stopped, lease, _, _ = store.stop_optimization(sid, "t", reason="budget spent")
        """
        self._check_reason("the stop reason", reason)
        self._check_reason("the stopping actor", actor)
        caller = self.session(session_id)
        session, record = self._locate(caller, ref, "optimize")
        self._expire_leases(session)
        lease = session.running.get(record.id)
        if lease is None or (optimization_id and lease.id != optimization_id):
            return False, session.leases.get(record.id), session.revision, None
        written: list[VariableRecord] = []
        metadata: dict[str, Any] = {}
        if apply_best and lease.best_score is not None and not same_value(
            lease.best_value, record.value
        ):
            metadata = {"optimization_id": lease.id, "optimizer": lease.optimizer_type,
                        "final": True, "stopped": True}
            written = [
                self._prepare_write(
                    record, lease.best_value, {}, actor, self._revision + 1, validated=True,
                )
            ]
        metadata_size = measure_map(metadata, self.limits, "the stop's metadata")
        self._check_room(session, self._records_cost(session, written, metadata_size))
        if apply_best and lease.best_score is not None:
            lease.final_value, lease.has_final = lease.best_value, True
        revision = self._end_lease(
            session, lease, "stopped", reason or f"stopped by {actor or 'a session'}",
            written, metadata, actor=actor, metadata_size=metadata_size,
        )
        return True, lease, revision, (session.variables[record.id] if written else None)

    def optimization_status(
        self, session_id: str, ref: str
    ) -> tuple[VariableRecord, OptimizationLease | None]:
        """The variable and its latest lease (running or ended; None if never optimized).

        Example::

            record, lease = store.optimization_status(sid, "temperature")
        """
        caller = self.session(session_id)
        session, record = self._locate(caller, ref, "read")
        self._expire_leases(session)
        return record, session.leases.get(record.id)

    def status_events(
        self, session_id: str, records: Iterable[VariableRecord], after_revision: int = 0
    ) -> builtins.list[ChangeEvent]:
        """The last status of each recent run of these variables published after
        ``after_revision``, oldest first, each stamped with the revision that published
        it: what a watcher resynced past the log's horizon must hear besides the values
        (how the run it followed ended, and what runs since).

        Example::

            events = store.status_events(sid, [store.get(sid, "temperature")], 41)
        """
        session = self.session(session_id)
        events = []
        for record in records:
            for lease in session.recent_leases.get(record.id, ()):
                if lease.revision > after_revision:
                    events.append(ChangeEvent(
                        record, record.value, OPTIMIZATION_EVENT,
                        lease.status(record.name, lease.revision), lease.id,
                    ))
        return events

    def optimization_by_id(
        self, session_id: str, ref: str, optimization_id: str
    ) -> tuple[VariableRecord, OptimizationLease]:
        """The variable and one of its recent optimizations, by id (``KeyError`` once it is
        no longer kept).

        Example::

            record, lease = store.optimization_by_id(sid, "t", "opt_1f2e")
        """
        caller = self.session(session_id)
        session, record = self._locate(caller, ref, "read")
        self._expire_leases(session)
        lease = next((kept for kept in session.recent_leases.get(record.id, ())
                      if kept.id == optimization_id), None)
        if lease is None:
            raise VariableNotFoundError(
                f"no optimization {optimization_id!r} of variable {record.name!r} is kept "
                f"(the last {RECENT_LEASES} runs of a variable are)"
            )
        return record, lease

    def optimization_history(
        self,
        session_id: str,
        ref: str,
        *,
        limit: int = 100,
        since: float | None = None,
        optimization_id: str = "",
    ) -> builtins.list[OptimizationEntry]:
        """The newest ``limit`` evaluations of the variable (of one optimization, and at or
        after ``since``, to the microsecond, when given), oldest first.

        Example::

            [e.value for e in store.optimization_history(sid, "t", limit=10)]
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InvalidValueError(f"history limit must be a positive integer, got {limit!r}")
        caller = self.session(session_id)
        session, record = self._locate(caller, ref, "read")
        # In whole microseconds, the resolution of the datetimes the API hands out (entry
        # times are whole microseconds): an entry's own timestamp given back as ``since``
        # includes that entry, whatever float error the round trip added.
        floor = None if since is None else round(since * 1e6)
        found = [
            e for e in session.evaluations.get(record.id, ())
            if (not optimization_id or e.optimization_id == optimization_id)
            and (floor is None or round(e.timestamp * 1e6) >= floor)
        ]
        return found[-limit:]

    # ------------------------------------------------------------ export and import

    def export_snapshot(
        self,
        session_id: str,
        *,
        include_history: bool = False,
        include_dependencies: bool = True,
        pattern: str | None = None,
    ) -> Snapshot:
        """The session's variables whose names match ``pattern`` (all when None), by name:
        values, types, constraints, metadata, descriptions, versions, and on request each
        one's retained history (oldest first) and what it depends on (by name).

        Example::

            snapshot = store.export_snapshot(sid, include_history=True, pattern=r".*model.*")
        """
        session = self.session(session_id)
        variables = []
        # store.list is the one place names are matched against patterns.
        for record in self.list(session_id, pattern):
            history = tuple(session.history.get(record.id, ())) if include_history else None
            dependencies = (
                tuple(
                    SnapshotDependency(session.variables[dep].name, edge.type, edge.metadata)
                    for dep, _, edge in session.graph.dependencies(record.id)
                )
                if include_dependencies
                else None
            )
            variables.append(
                SnapshotVariable(
                    record.name, record.type, record.value, record.constraints,
                    record.metadata, record.description, record.version, record.created_at,
                    record.updated_at, record.updated_by, history, dependencies,
                    session.rules.get(record.id, ()),
                )
            )
        return Snapshot(
            tuple(variables), session.id, session.revision, self._clock(),
            include_history, include_dependencies,
        )

    def import_snapshot(
        self,
        session_id: str,
        snapshot: Snapshot,
        *,
        strategy: str = "replace",
        dry_run: bool = False,
        actor: str = "",
    ) -> ImportReport:
        """Import a snapshot: validate everything, then apply it in one commit, or nothing.

        Every variable is checked first (name, type, constraints, value, metadata, a
        well-formed history, dependencies that exist and close no cycle); one bad entry
        means nothing is applied and its outcome names the error. Otherwise every change
        is one commit under one revision, with ``imported_from``, ``export_revision``,
        ``format_version`` and ``merge_strategy`` as the write's metadata.

        - A new variable is created; with a history in the snapshot it keeps its
          exported version and its older versions are restored (their own time, writer
          and metadata; the import's revision). Without one it starts at version 1.
        - An existing one, by ``strategy``: ``replace`` writes the imported value,
          metadata and description as one new version; ``keep`` leaves it alone;
          ``merge`` merges dict values and metadata key-wise (imported keys win), takes
          other values and a non-empty description from the import, and skips it when
          nothing changes. Its history is only appended to, never rewritten; its type
          never changes and its own constraints stay (the value must meet them).
        - Dependencies are added (never removed) for every variable not kept as it was;
          a dependency must name a variable of the snapshot or of the session.

        ``dry_run`` validates and reports what would happen, changing nothing.

        Example::

            report = store.import_snapshot(sid, snapshot, strategy="merge", dry_run=True)
            [(o.name, o.action, o.message) for o in report.outcomes]
        """
        if strategy not in MERGE_STRATEGIES:
            raise InvalidValueError(
                f"merge_strategy must be one of {', '.join(MERGE_STRATEGIES)}, got {strategy!r}"
            )
        session = self.session(session_id)
        if not dry_run:
            self._expire_leases(session)
        entries = snapshot.variables
        check_count("the import", len(entries), "max_batch_size", self.limits.max_batch_size)
        plans: builtins.list[_ImportPlan | None] = []
        errors: dict[int, DspexError] = {}
        keys: dict[str, str] = {}  # every name the import knows -> its graph key
        for index, entry in enumerate(entries):
            try:
                plan = self._plan_import(session, entry, strategy, keys, dry_run)
            except DspexError as exc:
                plan = None
                errors[index] = exc
            plans.append(plan)
            if isinstance(entry.name, str) and entry.name not in keys:
                existing = session.names.get(entry.name)
                keys[entry.name] = existing or _NEW + entry.name
        creates = sum(1 for p in plans if p is not None and p.action == "create")
        count = len(session.variables) + creates
        if creates and count > self.max_variables_per_session:
            raise too_many(
                f"session {session_id!r} would hold {count} variables (the import creates "
                f"{creates})", count, "max_variables_per_session",
                self.max_variables_per_session,
            )
        new_edges = self._plan_import_edges(session, entries, plans, keys, errors)
        count = len(session.graph) + len(new_edges)
        if new_edges and count > self.limits.max_dependencies_per_session:
            raise too_many(
                f"session {session_id!r} would hold {count} dependencies", count,
                "max_dependencies_per_session", self.limits.max_dependencies_per_session,
            )
        if errors:
            first = entries[min(errors)].name
            outcomes = [
                ImportOutcome(entry.name, "error", str(errors[i]), errors[i].kind)
                if i in errors
                else ImportOutcome(
                    entry.name, plan.action if plan else "error",
                    f"not applied: the import failed on {first!r}",
                    version=plan.version if plan else 0,
                )
                for i, (entry, plan) in enumerate(zip(entries, plans, strict=True))
            ]
            return ImportReport(outcomes, session.revision, False, dry_run, 0)
        ready = [p for p in plans if p is not None]
        note = _import_note(snapshot, strategy)  # the metadata every write carries
        note_size = self._check_import_room(session, note, ready, new_edges)
        if dry_run:
            outcomes = [ImportOutcome(p.name, p.action, p.message, version=p.version)
                        for p in ready]
            return ImportReport(outcomes, session.revision, False, True, len(new_edges))
        return self._apply_import(session, note, note_size, strategy, ready, new_edges, actor)

    def _stored(
        self, name: str, type_name: str, value: Any, constraints: Mapping[str, Any]
    ) -> Any:
        # validate_stored, with a structure deeper than Python's stack refused as too deep.
        try:
            return validate_stored(name, type_name, value, constraints)
        except RecursionError:
            raise too_big(f"variable {name!r}: value nests too deep to validate", 0,
                          "max_depth", self.limits.max_depth) from None

    def _check_import_room(
        self,
        session: Session,
        note: dict[str, Any],
        plans: Sequence[_ImportPlan],
        edges: Sequence[Edge],
    ) -> int:
        # The limits of what an applied import stores, checked before anything changes
        # (a dry run reports the refusal too): one answer must echo it, and the pinned
        # bytes (current values, per-variable costs, rules, edges) must fit the budgets.
        # Returns the size of the metadata every write carries.
        writes = [p for p in plans if p.action in ("create", "replace", "merge")]
        self._check_batch_bytes(sum(p.size for p in writes), len(writes), "the import")
        note_size = measure_map(note, self.limits, "the import's metadata")
        added = sum(e.size for e in edges) + sum(p.fixed for p in writes)
        for plan in writes:
            added += ITEM_OVERHEAD + plan.size + note_size
            if plan.existing is not None:
                added -= session.history[plan.existing.id][-1].size
        self._check_room(session, added)
        return note_size

    def _plan_import(
        self,
        session: Session,
        entry: SnapshotVariable,
        strategy: str,
        seen: Mapping[str, str],
        dry_run: bool,
    ) -> _ImportPlan:
        name = entry.name
        _check_name(name)
        if name in seen:
            raise InvalidValueError(f"variable {name!r} appears more than once in the import")
        limits = self.limits
        type_name, constraints, fixed = self._declared(name, entry.type, entry.constraints)
        value = self._stored(name, type_name, entry.value, constraints)
        metadata, metadata_size = self._clean_metadata(
            name, _plain_dict(entry.metadata), f"variable {name!r}: metadata"
        )
        fixed += self._description_size(name, entry.description)
        if not isinstance(entry.version, int) or isinstance(entry.version, bool) or not (
            1 <= entry.version <= MAX_VERSION
        ):
            raise InvalidValueError(
                f"variable {name!r}: version must be an integer from 1 to {MAX_VERSION}, "
                f"got {entry.version!r}"
            )
        history = self._check_history(name, type_name, constraints, entry)
        # The shape of every entry's rules is checked; who they name only for the variables
        # the import creates (an existing variable keeps its own rules).
        rules = check_rules(name, type_name, list(entry.access_rules or ()))
        existing_id = session.names.get(name)
        if existing_id is None:
            rules = self._bind_rules(name, rules)
            if name in session.variables:
                raise AlreadyExistsError(
                    f"variable name {name!r} already exists as the id of another variable"
                )
            _check_not_id_shaped(name)
            # The entry of the current version is the import's own write (remembered by
            # _commit with the import's metadata); the older ones are restored.
            restored = [h for h in history or () if h.version < entry.version]
            version = entry.version if history else 1
            message = "new variable"
            if restored:
                message += f"; history restored from version {restored[0].version}"
            value_size = measure_value(value, limits, f"variable {name!r}: value")
            return _ImportPlan(
                name, "create", _NEW + name, version, message, None, type_name, value,
                constraints, metadata, entry.description, restored, rules=rules,
                size=value_size + metadata_size, metadata_size=metadata_size,
                fixed=fixed + _rules_cost(rules),
            )
        existing = session.variables[existing_id]
        if strategy == "keep":
            return _ImportPlan(
                name, "skip", existing.id, existing.version,
                "exists; kept as it is (merge_strategy 'keep')", existing, untouched=True,
            )
        if existing.type != type_name:
            raise VariableTypeError(
                f"variable {name!r} is a {existing.type} in the session but a {type_name} in "
                "the import; an import never changes a variable's type"
            )
        notes = []
        if dict(existing.constraints) != constraints:
            notes.append("the session's constraints kept (the import's differ)")
        if history:
            notes.append("exported history not restored (an existing variable's history is "
                         "only appended to)")
        if strategy == "merge":
            if type_name == "dict":
                value = {**existing.value, **value}
                notes.append("dict merged key-wise")
            metadata = {**existing.metadata, **metadata}
            description = entry.description or existing.description
        else:
            description = entry.description
        value = self._stored(name, type_name, value, existing.constraints)
        value_size = measure_value(value, limits, f"variable {name!r}: value")
        metadata_size = measure_map(metadata, limits, f"variable {name!r}: metadata (merged)")
        if strategy == "merge" and (
            same_value(value, existing.value)
            and same_value(metadata, dict(existing.metadata))
            and description == existing.description
        ):
            return _ImportPlan(
                name, "skip", existing.id, existing.version, "unchanged", existing,
            )
        lease = session.running.get(existing.id)
        if lease is not None and not (dry_run and self._clock() > lease.expires_at):
            # (A dry run does not sweep leases, so one past its expiry counts as gone.)
            self._check_lease(session, existing, None, doing="overwritten by an import")
        return _ImportPlan(
            name, strategy, existing.id, existing.version + 1, "; ".join(notes), existing,
            type_name, value, existing.constraints, metadata, description,
            size=value_size + metadata_size, metadata_size=metadata_size,
        )

    def _check_history(
        self,
        name: str,
        type_name: str,
        constraints: Mapping[str, Any],
        entry: SnapshotVariable,
    ) -> builtins.list[HistoryEntry] | None:
        # A well-formed history: consecutive versions ending at the variable's version,
        # every value valid for the variable as it is declared.
        if entry.history is None:
            return None
        out: builtins.list[HistoryEntry] = []
        for i, item in enumerate(entry.history):
            where = f"variable {name!r}: history entry {i}"
            version = item.version
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise InvalidValueError(
                    f"{where}: version must be a positive integer, got {version!r}"
                )
            if out and version != out[-1].version + 1:
                raise InvalidValueError(
                    f"{where}: versions must be consecutive, oldest first (version "
                    f"{version} follows {out[-1].version})"
                )
            if not isinstance(item.updated_at, int | float) or isinstance(
                item.updated_at, bool
            ) or not math.isfinite(item.updated_at):
                raise InvalidValueError(f"{where}: updated_at must be a finite number")
            if not isinstance(item.updated_by, str):
                raise VariableTypeError(f"{where}: updated_by must be a string")
            try:
                value = self._stored(name, type_name, item.value, constraints)
                metadata, metadata_size = self._clean_metadata(
                    name, _plain_dict(item.metadata), f"variable {name!r}: metadata"
                )
                size = ITEM_OVERHEAD + metadata_size + measure_value(
                    value, self.limits, f"variable {name!r}: value"
                )
            except DspexError as exc:
                prefix = f"variable {name!r}: "
                text = exc.message[len(prefix):] if exc.message.startswith(prefix) else exc.message
                raise type(exc)(f"{where} (version {version}): {text}") from None
            check_length(f"{where}: updated_by", item.updated_by, "max_string_length",
                         self.limits.max_string_length)
            out.append(
                HistoryEntry(version, value, float(item.updated_at), item.updated_by, metadata, 0,
                             size)
            )
        if out and out[-1].version != entry.version:
            raise InvalidValueError(
                f"variable {name!r}: its history ends at version {out[-1].version} but the "
                f"variable is at version {entry.version}"
            )
        return out

    def _plan_import_edges(
        self,
        session: Session,
        entries: Sequence[SnapshotVariable],
        plans: Sequence[_ImportPlan | None],
        keys: Mapping[str, str],
        errors: dict[int, DspexError],
    ) -> builtins.list[Edge]:
        # Tried on a copy of the graph, so a cycle is found before anything changes.
        trial = session.graph.copy()
        labels = {key: name for name, key in keys.items()}
        added: builtins.list[Edge] = []
        for index, (entry, plan) in enumerate(zip(entries, plans, strict=True)):
            if plan is None or plan.untouched or not entry.dependencies:
                continue
            try:
                for dependency in entry.dependencies:
                    target = keys.get(dependency.name) or session.names.get(dependency.name)
                    if target is None:
                        raise InvalidValueError(
                            f"variable {plan.name!r} depends on {dependency.name!r}, which is "
                            "neither in the import nor in the session"
                        )
                    if dependency.type not in DEPENDENCY_TYPES:
                        raise InvalidValueError(
                            f"variable {plan.name!r}: dependency type must be one of "
                            f"{', '.join(DEPENDENCY_TYPES)}, got {dependency.type!r}"
                        )
                    metadata, size = self._clean_metadata(
                        plan.name, _plain_dict(dependency.metadata),
                        f"variable {plan.name!r}: dependency metadata",
                    )
                    edge = Edge(plan.key, target, dependency.type, metadata,
                                ITEM_OVERHEAD + size)
                    try:
                        if trial.add(edge):
                            added.append(edge)
                    except CycleError as exc:
                        raise self._cycle_error(session, exc, labels) from None
            except DspexError as exc:
                errors[index] = exc
        return added

    def _apply_import(
        self,
        session: Session,
        note: dict[str, Any],
        note_size: int,
        strategy: str,
        plans: Sequence[_ImportPlan],
        edges: Sequence[Edge],
        actor: str,
    ) -> ImportReport:
        now = self._clock()
        ids: dict[str, str] = {}
        records: builtins.list[VariableRecord] = []
        restored: dict[str, builtins.list[HistoryEntry]] = {}
        rules: dict[str, tuple[AccessRule, ...]] = {}
        fixed: dict[str, int] = {}
        for plan in plans:
            if plan.action == "create":
                var_id = ids[plan.key] = f"var_{plan.name}_{next(self._ids)}"
                if plan.rules:
                    rules[var_id] = plan.rules
                records.append(VariableRecord(
                    var_id, plan.name, plan.type, plan.value, plan.constraints, plan.metadata,
                    plan.version, 0, 0, now, now, actor, plan.description, plan.size,
                    plan.metadata_size,
                ))
                fixed[var_id] = plan.fixed - _rules_cost(plan.rules)
                if plan.history:
                    restored[var_id] = plan.history
            elif plan.action in ("replace", "merge"):
                old = plan.existing
                assert old is not None
                records.append(VariableRecord(
                    old.id, old.name, old.type, plan.value, old.constraints, plan.metadata,
                    old.version + 1, 0, old.create_revision, old.created_at, now, actor,
                    plan.description, plan.size, plan.metadata_size,
                ))
        # The edges as planned (sized, for the memory account), with created ids filled in.
        final_edges = [
            dataclasses.replace(e, dependent=ids.get(e.dependent, e.dependent),
                                dependency=ids.get(e.dependency, e.dependency))
            for e in edges
        ]
        written: dict[str, VariableRecord] = {}
        revision = session.revision
        if records or final_edges:
            for var_id, cost in fixed.items():
                session.fixed[var_id] = cost
            self._charge(session, "other_bytes", sum(fixed.values()))
            stamped, revision = self._commit(
                session, records, metadata=note, source=actor, edges=final_edges,
                restored=restored, rules=rules, metadata_size=note_size,
            )
            written = {r.name: r for r in stamped}
            log.info("variables_imported", session_id=session.id, revision=revision,
                     written=len(stamped), edges=len(final_edges), strategy=strategy)
        outcomes = [
            ImportOutcome(
                p.name, p.action, p.message, version=p.version, record=written.get(p.name)
            )
            for p in plans
        ]
        return ImportReport(
            outcomes, revision, bool(records or final_edges), False, len(final_edges)
        )
