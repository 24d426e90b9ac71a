"""The engine's foundation: configuration, the Backend it runs over, session lookup and the
value and metadata checks every part uses.

The engine is one class (``MemoryStore``) built as a linear chain of parts (mixins) over
one shared state, the session tables: base -> permissions -> commit -> leasing ->
sessions -> registration -> variables -> dependencies -> history -> optimization ->
reports -> import_plan -> exchange; each part calls only the parts below it. Two concerns
are components with narrow interfaces instead: the memory account (accounts.py) and
access (access.py); the storage is the Backend (backend.py).
Methods are synchronous and never yield, so a call is atomic on the server's one loop: a
request is validated in full, then committed in one step (commit.py), and a refused
request leaves no trace.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from dspex_rx.core.identity import Principals, RetiredIds
from dspex_rx.core.limits import (
    DEFAULT_LIMITS,
    Limits,
    check_length,
    measure_map,
    measure_value,
    too_big,
)
from dspex_rx.core.types import (
    check_constraints,
    check_metadata,
    normalize_type,
    validate_stored,
)
from dspex_rx.errors import InvalidValueError, SessionNotFoundError, VariableTypeError
from dspex_rx.logs import get_logger
from dspex_rx.store.access import Access
from dspex_rx.store.accounts import Accounts
from dspex_rx.store.backend import Backend, Election
from dspex_rx.store.checked import Checked, validated
from dspex_rx.store.checks import BATCH_ENTRY_FRAMING, BATCH_FRAMING, _show
from dspex_rx.store.memory.backend import MemoryBackend
from dspex_rx.store.records import ITEM_OVERHEAD
from dspex_rx.store.state import Session
from dspex_rx.store.waits import RevisionWaits

log = get_logger("dspex_rx.store")




class StoreBase:
    """Configuration and shared checks of the engine (the bottom of its chain).

    >>> from dspex_rx.store import MemoryStore
    >>> MemoryStore(log_size=100).log_size
    100
    >>> MemoryStore(session_ttl=86400).session_ttl
    86400.0
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
        backend: Backend | None = None,
        session_ttl: float = 0.0,
    ) -> None:
        # Checked first: a bad setting is refused before anything is made.
        if (
            isinstance(session_ttl, bool)
            or not isinstance(session_ttl, (int, float))
            or not math.isfinite(session_ttl)
            or session_ttl < 0
        ):
            raise InvalidValueError(
                f"session_ttl must be a finite number of seconds >= 0 (0: a session ends "
                f"with its last client), got {session_ttl!r}"
            )
        # Where the state lives (backend.py): records, revisions, commit logs, watchers.
        self._backend: Backend = backend if backend is not None else MemoryBackend()
        # The backend's live sessions (the same mapping for its whole life).
        self._sessions: Mapping[str, Session] = self._backend.sessions
        self._clock = clock
        self.default_ttl = default_ttl
        # How long a session with no client left is kept (sessions.py); 0: not at all.
        self.session_ttl = float(session_ttl)
        self.lease_ttl = lease_ttl
        self.optimization_history_size = optimization_history_size
        if history_size is not None and history_size < 1:
            raise InvalidValueError(f"history_size must be at least 1, got {history_size}")
        # The two limits that were constructor arguments before Limits stay so.
        self.limits = (limits or DEFAULT_LIMITS).replace(
            max_variables_per_session=max_variables_per_session, history_size=history_size
        )
        self.log_size = log_size
        # Who an id belongs to (identity.py): reserved namespaces, and ended ids that stay
        # claimed by their token, so a rule naming an id keeps naming the same party.
        # The memory accounts of every session (accounts.py), checked before each write.
        # Ended ids still claimed by their token (identity.py), and who may do what; the
        # accounts charge them to the store's budget.
        self._retired = RetiredIds(self.limits.max_retired_sessions)
        self._accounts = Accounts(self.limits, self._backend, self._retired)
        # A durable backend loads the retired ids it stored, and its sessions: their
        # accounts are derived state, computed again (and after any reload).
        self._backend.keep_retired(self._retired)
        self._backend.on_reload(self._accounts.rebuild)
        self._backend.on_replicated(self._accounts.resettle)
        # Who waits in ``reached`` for another replica's writes.
        self._reaching = RevisionWaits()
        if self._backend.shared:
            self._backend.on_replicated(lambda _: self._reaching.reached(self.revision))
            self._backend.on_reload(lambda: self._reaching.reached(self.revision))
        if self._sessions:
            self._accounts.rebuild()
        self._access = Access(
            self._backend, clock,
            principals if isinstance(principals, Principals) else Principals(principals),
            self._retired,
        )

    @property
    def history_size(self) -> int:
        """Versions kept per variable (``limits.history_size``).

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> MemoryStore(history_size=5).history_size
        5
        """
        return self.limits.history_size

    @property
    def max_variables_per_session(self) -> int:
        """``limits.max_variables_per_session``.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> MemoryStore(max_variables_per_session=50).max_variables_per_session
        50
        """
        return self.limits.max_variables_per_session

    @property
    def revision(self) -> int:
        """The newest revision of any commit in the store.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> store.revision
        1
        """
        return self._backend.revision

    async def sync(self, revision: int) -> None:
        """Return once ``revision`` is durable in the backend (at once for memory); the
        server awaits it before acknowledging a write, so a durable backend can make many
        writes durable together.

        >>> import asyncio
        >>> from dspex_rx.store import MemoryStore
        >>> asyncio.run(MemoryStore().sync(0))
        """
        await self._backend.sync(revision)

    async def reached(self, revision: int, wait: float) -> bool:
        """Whether the store holds ``revision``: at once if it does; over a backend other
        replicas share, once their writes up to it arrived here, waiting at most ``wait``
        seconds. False means it does not (a backup restored, an in-memory server
        restarted, or a replica that stayed behind): a resume from there must resync.

        >>> import asyncio
        >>> from dspex_rx.store import MemoryStore
        >>> asyncio.run(MemoryStore().reached(5, wait=10.0))  # alone: it never will
        False
        """
        if self.revision < revision and self._backend.shared:
            await self._reaching.until(revision, wait)
        return self.revision >= revision

    @property
    def flush_limited(self) -> bool:
        """Whether the backend's durable writes have a size limit (``room`` then waits).

        >>> from dspex_rx.store import MemoryStore
        >>> MemoryStore().flush_limited
        False
        """
        return self._backend.flush_limited

    async def room(self, nbytes: int) -> None:
        """Return once a write of a request of ``nbytes`` fits the backend's next durable
        write (an etcd txn has a size limit): the server awaits it before each write, so
        writes arriving together wait for room instead of failing together.

        >>> import asyncio
        >>> from dspex_rx.store import MemoryStore
        >>> asyncio.run(MemoryStore().room(1_000_000))
        """
        await self._backend.room(nbytes)

    @property
    def pending(self) -> bool:
        """Whether a change is not yet durable: the server syncs before it answers.

        >>> from dspex_rx.store import MemoryStore
        >>> MemoryStore().pending
        False
        """
        return self._backend.pending

    @property
    def conflicts(self) -> int:
        """How many of this server's flushes another replica's write beat (each undone,
        its calls run again): how contended the replicas' writes are.

        >>> from dspex_rx.store import MemoryStore
        >>> MemoryStore().conflicts
        0
        """
        return self._backend.conflicts

    @property
    def generation(self) -> int:
        """How many times the backend reloaded its state from storage in a way a watcher
        cannot follow (a refused flush); a stream opened in an older generation must end
        (its queue may hold undone commits).

        >>> from dspex_rx.store import MemoryStore
        >>> MemoryStore().generation
        0
        """
        return self._backend.generation

    def on_reload(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` whenever the backend reloads its state from storage.

        Example: ``store.on_reload(end_every_stream)`` in the server.
        """
        self._backend.on_reload(hook)

    def on_undo(self, hook: Callable[[int], None]) -> None:
        """Call ``hook(revision)`` when the backend undid every commit above ``revision``
        (another replica wrote first); the store's watchers keep listening.

        Example: ``store.on_undo(drop_queued_commits_above)`` in the server.
        """
        self._backend.on_undo(hook)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tell the backend which loop the store is used from (a replicated backend
        applies other replicas' writes there); the server calls it as it starts.

        Example: ``store.bind_loop(asyncio.get_running_loop())``.
        """
        self._backend.bind_loop(loop)

    @property
    def position(self) -> int:
        """How far into the shared storage's history this store is (``Backend.position``):
        what a replica passes to another so that it acts only once it holds as much.

        >>> from dspex_rx.store import MemoryStore
        >>> MemoryStore().position
        0
        """
        return self._backend.position

    async def holds(self, position: int, wait: float) -> bool:
        """Whether this store is at ``position`` or past it, waiting at most ``wait``
        seconds for other replicas' writes (``Backend.holds``).

        Example: ``await store.holds(position_from_another_replica, wait=5.0)``.
        """
        return await self._backend.holds(position, wait)

    def write_leader(self, address: str) -> Election | None:
        """The backend's election of a write leader among replicas, with this one
        standing as ``address``; None for a store with one writer.

        >>> from dspex_rx.store import MemoryStore
        >>> MemoryStore().write_leader("127.0.0.1:50051") is None
        True
        """
        return self._backend.write_leader(address)

    def close(self) -> None:
        """Release the backend's files and threads (a durable backend's data dir lock).

        >>> from dspex_rx.store import MemoryStore
        >>> MemoryStore().close()
        """
        self._backend.close()

    @property
    def used_bytes(self) -> int:
        """Bytes every session's memory account charges together.

        >>> from dspex_rx.store import MemoryStore
        >>> MemoryStore().used_bytes
        0
        """
        return self._accounts.used_bytes

    @property
    def retired_bytes(self) -> int:
        """Bytes the ids of ended sessions cost (``accounts.retired_cost``): not in
        ``used_bytes``, but ``max_store_bytes`` holds both.

        >>> from dspex_rx.store import MemoryStore
        >>> store = MemoryStore()
        >>> _, client_id, _ = store.initialize_session("bob")
        >>> before = store.retired_bytes
        >>> _ = store.close_session("bob", client_id)
        >>> before, store.retired_bytes
        (0, 243)
        """
        return self._accounts.retired_bytes

    @property
    def pinned_bytes(self) -> int:
        """The pinned part of ``used_bytes`` (current values and records).

        >>> from dspex_rx.store import MemoryStore
        >>> MemoryStore().pinned_bytes
        0
        """
        return self._accounts.pinned_bytes

    def check_accounts(self) -> None:
        """Recompute every memory account from the state; ``AssertionError`` on any
        difference. The property test calls it after every step.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> store.check_accounts()
        """
        self._accounts.check()

    @property
    def _revision(self) -> int:
        # One revision counter for all sessions (a stream can carry several sessions'
        # events in one order): the backend's.
        return self._backend.revision

    @property
    def principals(self) -> Principals:
        """The reserved namespaces (identity.py); the server may replace them.

        >>> from dspex_rx.store import MemoryStore
        >>> bool(MemoryStore().principals)
        False
        """
        return self._access.principals

    @principals.setter
    def principals(self, principals: Principals) -> None:
        self._access.principals = principals

    @property
    def identity_checked(self) -> bool:
        """Whether rules must name parties whose identity is checked; a server that checks
        no tokens (auth="none") turns it off, since there no id is anyone's.

        >>> from dspex_rx.store import MemoryStore
        >>> MemoryStore().identity_checked
        True
        """
        return self._access.identity_checked

    @identity_checked.setter
    def identity_checked(self, checked: bool) -> None:
        self._access.identity_checked = checked

    def session(self, session_id: str) -> Session:
        """The live session, or ``SessionNotFoundError``.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> store.session("s").revision
        1
        """
        try:
            return self._sessions[session_id]
        except (KeyError, TypeError):
            raise SessionNotFoundError(
                f"no session {_show(session_id)} (never created, closed, or expired)"
            ) from None

    def session_ids(self) -> list[str]:
        """Ids of the live sessions.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> store.session_ids()
        ['s']
        """
        return list(self._sessions)

    def _check_reason(self, what: str, reason: Any) -> None:
        if not isinstance(reason, str):
            raise VariableTypeError(f"{what} must be a string")
        check_length(what, reason, "max_string_length", self.limits.max_string_length)

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
        # items and size). A value checked ahead (checked.py, off the server's loop) for
        # this very write is not checked again; one checked for something else is.
        if isinstance(value, Checked):
            if value.fits(name, type_name, constraints, self.limits):
                return value.result()
            value = value.raw
        return validated(name, type_name, value, constraints, self.limits)

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

    def _stored(
        self, name: str, type_name: str, value: Any, constraints: Mapping[str, Any]
    ) -> Any:
        # validate_stored, with a structure deeper than Python's stack refused as too deep.
        try:
            return validate_stored(name, type_name, value, constraints)
        except RecursionError:
            raise too_big(f"variable {name!r}: value nests too deep to validate", 0,
                          "max_depth", self.limits.max_depth) from None
