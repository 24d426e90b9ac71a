"""The in-memory variable store: sessions, variables, names, revisions and versions.

No gRPC here. Methods are synchronous and never yield, so when the server calls them from
its one asyncio loop each call is atomic with respect to every other: a batch is validated
in full, then committed in one step under one new revision. Records are immutable; a write
replaces a record, so a reader's snapshot never changes under it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import math
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import (
    AlreadyExistsError,
    DspexError,
    InvalidValueError,
    ResourceExhaustedError,
    SessionNotFoundError,
    VariableNotFoundError,
    VariableTypeError,
)
from .logs import get_logger
from .types import check_constraints, check_metadata, infer_type, normalize_type, validate_value

log = get_logger("dspex_rx.store")

MAX_TTL = 7 * 24 * 3600.0
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]{0,255}")


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


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One variable's change within a commit, as watchers see it.

    ``record`` is the variable after the change (for a delete, its last record);
    ``update_type`` is ``value_change`` or ``deleted``.

    Example::

        event.record.name, event.old_value, event.record.value
    """

    record: VariableRecord
    old_value: Any
    update_type: str
    metadata: Mapping[str, Any]
    source: str


@dataclass(frozen=True, slots=True)
class Commit:
    """Everything one write changed, under its one revision (an atomic batch is one commit).

    Example::

        for event in commit.events: print(commit.revision, event.record.name)
    """

    revision: int
    events: tuple[ChangeEvent, ...]
    timestamp: float


# A listener gets every commit of its session, synchronously, after the state changed;
# None means the session is gone.
Listener = Callable[[Commit | None], None]


@dataclass(slots=True)
class ClientLease:
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
    variables: dict[str, VariableRecord] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    clients: dict[str, ClientLease] = field(default_factory=dict)
    # The bounded event log: commits newer than log_floor, oldest first.
    log: deque[Commit] = field(default_factory=deque)
    log_floor: int = 0
    listeners: list[Listener] = field(default_factory=list)


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
        max_variables_per_session: int = 100_000,
        log_size: int = 10_000,
    ) -> None:
        self._clock = clock
        self.default_ttl = default_ttl
        self.max_variables_per_session = max_variables_per_session
        self.log_size = log_size
        self._sessions: dict[str, Session] = {}
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ sessions

    def initialize_session(
        self,
        session_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl: float | None = None,
        client_name: str = "",
    ) -> tuple[Session, str, bool]:
        """Create a session, or attach to an existing one; returns (session, client_id, created).

        Example::

            session, client_id, created = store.initialize_session("session_123")
        """
        if ttl is not None and not (ttl == 0 or (math.isfinite(ttl) and 0 < ttl <= MAX_TTL)):
            raise InvalidValueError(
                f"session ttl must be between 0 and {MAX_TTL:g} seconds (0 for the server "
                f"default), got {ttl!r}"
            )
        ttl = ttl or self.default_ttl
        now = self._clock()
        created = False
        if session_id:
            if not NAME_RE.fullmatch(session_id):
                raise InvalidValueError(
                    f"session id {session_id!r} is not valid (letters, digits, _ . - /; "
                    "up to 256 characters, not starting with a digit)"
                )
        else:
            session_id = "sess_" + secrets.token_hex(8)
        session = self._sessions.get(session_id)
        if session is None:
            session = Session(session_id, check_metadata(session_id, metadata), now)
            self._sessions[session_id] = session
            created = True
        client_id = "cli_" + secrets.token_hex(8)
        session.clients[client_id] = ClientLease(client_name, ttl, now)
        return session, client_id, created

    def session(self, session_id: str) -> Session:
        """The live session, or ``SessionNotFoundError``.

        Example::

            store.session("sess_1").revision
        """
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFoundError(
                f"no session {session_id!r} (never created, closed, or expired)"
            ) from None

    def heartbeat(self, session_id: str, client_id: str) -> float:
        """Keep a client attached; returns when it will expire without another heartbeat.

        Example::

            expires_at = store.heartbeat(session.id, client_id)
        """
        session = self.session(session_id)
        lease = session.clients.get(client_id)
        if lease is None:
            raise SessionNotFoundError(
                f"client {client_id!r} is not attached to session {session_id!r} (expired?)"
            )
        lease.last_seen = self._clock()
        return lease.last_seen + lease.ttl

    def close_session(self, session_id: str, client_id: str) -> bool:
        """Detach a client; the session and its variables go with its last client.

        Example::

            removed = store.close_session(session.id, client_id)
        """
        session = self.session(session_id)
        session.clients.pop(client_id, None)
        if not session.clients:
            self._remove(session)
            return True
        return False

    def _remove(self, session: Session) -> None:
        del self._sessions[session.id]
        for listener in list(session.listeners):
            self._notify(listener, None)
        session.listeners.clear()

    def expire(self) -> list[str]:
        """Drop clients silent past their TTL, then sessions left with none; returns those ids.

        Example::

            removed = store.expire()
        """
        now = self._clock()
        removed = []
        for session in list(self._sessions.values()):
            for client_id, lease in list(session.clients.items()):
                if now - lease.last_seen > lease.ttl:
                    del session.clients[client_id]
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

    def add_listener(self, session_id: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every later commit of the session; returns the remover.

        Listeners run synchronously inside the write, after the state changed, so a
        listener added in the same step as a snapshot misses nothing and sees nothing twice.

        Example::

            stop = store.add_listener(sid, frames.append); ...; stop()
        """
        session = self.session(session_id)
        session.listeners.append(listener)

        def remove() -> None:
            if listener in session.listeners:
                session.listeners.remove(listener)

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
            raise VariableNotFoundError(f"no variable {ref!r} in session {session.id!r}")
        return record

    def _commit(
        self,
        session: Session,
        records: Iterable[VariableRecord],
        removed: Iterable[VariableRecord] = (),
        metadata: Mapping[str, Any] | None = None,
        source: str = "",
    ) -> tuple[list[VariableRecord], int]:
        # The only place variable state changes: one new revision for the whole write,
        # stamped on every record it writes (and as create_revision on new ones), logged
        # as one commit and handed to the session's listeners.
        revision = session.revision + 1
        stamped = [
            dataclasses.replace(
                r,
                mod_revision=revision,
                create_revision=r.create_revision or revision,
            )
            for r in records
        ]
        events = []
        meta = metadata or {}
        for record in stamped:
            old = session.variables.get(record.id)
            session.variables[record.id] = record
            session.names[record.name] = record.id
            if old is not None:
                events.append(ChangeEvent(record, old.value, "value_change", meta, source))
        for record in removed:
            del session.variables[record.id]
            del session.names[record.name]
            gone = dataclasses.replace(record, mod_revision=revision)
            events.append(ChangeEvent(gone, record.value, "deleted", meta, source))
        session.revision = revision
        commit = Commit(revision, tuple(events), self._clock())
        if len(session.log) >= self.log_size:
            session.log_floor = session.log.popleft().revision
        session.log.append(commit)
        for listener in list(session.listeners):
            self._notify(listener, commit)
        return stamped, revision

    def _prepare_new(
        self, session: Session, spec: VariableSpec, actor: str, taken: set[str]
    ) -> VariableRecord:
        name = spec.name
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise InvalidValueError(
                f"variable name {name!r} is not valid (letters, digits, _ . - /; up to 256 "
                "characters, not starting with a digit)"
            )
        if name in session.names or name in taken:
            raise AlreadyExistsError(f"variable {name!r} already exists in session {session.id!r}")
        if name in session.variables:
            raise AlreadyExistsError(
                f"variable name {name!r} already exists as the id of another variable"
            )
        type_name = normalize_type(spec.type)
        constraints = check_constraints(name, type_name, spec.constraints)
        value = validate_value(name, type_name, spec.initial_value, constraints)
        metadata = check_metadata(name, spec.metadata)
        if not isinstance(spec.description, str):
            raise VariableTypeError(f"variable {name!r}: description must be a string")
        now = self._clock()
        return VariableRecord(
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
        )

    def register(
        self, session_id: str, specs: Sequence[VariableSpec], actor: str
    ) -> tuple[list[VariableRecord], int]:
        """Register variables atomically: all validated, then all committed under one revision.

        Example::

            records, revision = store.register(sid, [VariableSpec("t", "float", 0.7)], "me")
        """
        session = self.session(session_id)
        if not specs:
            raise InvalidValueError("register needs at least one variable")
        if len(session.variables) + len(specs) > self.max_variables_per_session:
            raise ResourceExhaustedError(
                f"session {session_id!r} would exceed {self.max_variables_per_session} variables"
            )
        taken: set[str] = set()
        prepared = []
        for spec in specs:
            prepared.append(self._prepare_new(session, spec, actor, taken))
            taken.add(spec.name)
        return self._commit(session, prepared)

    def get(self, session_id: str, ref: str) -> VariableRecord:
        """The current record of a variable, by id or name.

        Example::

            store.get(sid, "temperature").value
        """
        return self._resolve(self.session(session_id), ref)

    def get_many(
        self, session_id: str, refs: Sequence[str]
    ) -> tuple[list[VariableRecord], list[str]]:
        """Records for the refs that exist (in order) and the refs that do not.

        Example::

            found, missing = store.get_many(sid, ["a", "b"])
        """
        session = self.session(session_id)
        found, missing = [], []
        for ref in refs:
            try:
                found.append(self._resolve(session, ref))
            except VariableNotFoundError:
                missing.append(ref)
        return found, missing

    def _prepare_write(
        self,
        record: VariableRecord,
        value: Any,
        metadata: Mapping[str, Any],
        actor: str,
    ) -> VariableRecord:
        new_value = validate_value(record.name, record.type, value, record.constraints)
        merged = {**record.metadata, **metadata} if metadata else record.metadata
        return dataclasses.replace(
            record,
            value=new_value,
            metadata=merged,
            version=record.version + 1,
            updated_at=self._clock(),
            updated_by=actor,
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
    ) -> tuple[VariableRecord, int, bool]:
        """Validate and write one value; returns (new record, revision, created).

        Example::

            record, revision, _ = store.set(sid, "temperature", 0.9, actor="me")
        """
        session = self.session(session_id)
        try:
            record = self._resolve(session, ref)
        except VariableNotFoundError:
            if not create_if_missing:
                raise
            type_name = normalize_type(type_hint) if type_hint else infer_type(ref, value)
            records, revision = self.register(
                session_id, [VariableSpec(ref, type_name, value, None, metadata)], actor
            )
            return records[0], revision, True
        clean_metadata = check_metadata(record.name, metadata)
        written, revision = self._commit(
            session,
            [self._prepare_write(record, value, clean_metadata, actor)],
            metadata=clean_metadata,
            source=actor,
        )
        return written[0], revision, False

    def update_many(
        self,
        session_id: str,
        updates: Sequence[tuple[str, Any]],
        *,
        metadata: Mapping[str, Any] | None = None,
        atomic: bool = True,
        actor: str,
    ) -> tuple[list[UpdateOutcome], int, bool]:
        """Write several variables under one revision; returns (outcomes, revision, applied).

        With ``atomic`` any bad entry means nothing is applied: the bad entries carry their
        error, the rest say they were not applied. Without it the valid entries are applied.

        Example::

            outcomes, revision, applied = store.update_many(sid, [("a", 1), ("b", 2)], actor="me")
        """
        session = self.session(session_id)
        clean_metadata = check_metadata("update", metadata)
        prepared: list[VariableRecord | None] = []
        errors: list[DspexError | None] = []
        seen: set[str] = set()
        for ref, value in updates:
            try:
                record = self._resolve(session, ref)
                if record.id in seen:
                    raise InvalidValueError(
                        f"variable {record.name!r} appears more than once in the batch"
                    )
                seen.add(record.id)
                prepared.append(self._prepare_write(record, value, clean_metadata, actor))
                errors.append(None)
            except DspexError as exc:
                prepared.append(None)
                errors.append(exc)
        failed = [e for e in errors if e is not None]
        if atomic and failed:
            first_bad = next(ref for (ref, _), e in zip(updates, errors, strict=True) if e)
            outcomes = [
                UpdateOutcome(ref, False, str(e), e.kind)
                if e
                else UpdateOutcome(
                    ref, False, f"not applied: the atomic batch failed on {first_bad!r}", "aborted"
                )
                for (ref, _), e in zip(updates, errors, strict=True)
            ]
            return outcomes, session.revision, False
        to_apply = [r for r in prepared if r is not None]
        revision = session.revision
        committed: dict[str, VariableRecord] = {}
        if to_apply:
            written, revision = self._commit(
                session, to_apply, metadata=clean_metadata, source=actor
            )
            committed = {r.id: r for r in written}
        outcomes = [
            UpdateOutcome(ref, True, record=committed[p.id])
            if p is not None
            else UpdateOutcome(ref, False, str(e), e.kind if e else "")
            for (ref, _), p, e in zip(updates, prepared, errors, strict=True)
        ]
        return outcomes, revision, bool(to_apply)

    def list(self, session_id: str, pattern: str | None = None) -> list[VariableRecord]:
        """Variables whose name matches an fnmatch glob (all when no pattern), by name.

        Example::

            [r.name for r in store.list(sid, "model.*")]
        """
        session = self.session(session_id)
        records = sorted(session.variables.values(), key=lambda r: r.name)
        if pattern:
            records = [r for r in records if fnmatch.fnmatchcase(r.name, pattern)]
        return records

    def delete(self, session_id: str, ref: str, actor: str = "") -> tuple[str, int]:
        """Remove a variable; returns (its id, the new revision).

        Example::

            var_id, revision = store.delete(sid, "temperature")
        """
        session = self.session(session_id)
        record = self._resolve(session, ref)
        return record.id, self._commit(session, (), removed=[record], source=actor)[1]
