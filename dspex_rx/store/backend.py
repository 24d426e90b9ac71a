"""The Backend seam: what the store engine needs from storage (read txn, write txn, revisions,
a watchable commit log), and the decisions every backend implements.

The engine (validation, access, leases, history, quotas, identity checks) runs once, above
this protocol; ``dspex_rx.store.memory.MemoryBackend`` is today's state behind it, and a
durable (``store/sqlite/``) or remote (etcd, #15) backend implements the same class. The
model is etcd's mvcc ``KV`` (Range, Put/DeleteRange inside a txn, one revision per txn, a
watchable stream) and httpcore's ``_backends`` (one documented base, several implementations).

Decisions (issue #13):

- **Atomicity.** The engine's methods are synchronous and never yield (the server calls
  them on its one asyncio loop), so validation and commit happen in one step and at most
  one write transaction is open per backend. ``write()`` opens it; the engine stages its
  changes (``put``/``delete``/``set_rules``); ``commit()`` applies them all under ONE new revision,
  appends one ``Commit`` to the session's log and notifies its watchers. An exception
  before ``commit()`` (or ``abort()``) leaves no trace. A second ``write()`` while one is
  open is a programming error: ``RuntimeError``.
- **Durability is separate from atomicity.** ``await sync(revision)`` returns once that
  revision, and every change before the call, is durable. MemoryBackend returns at once;
  SqliteBackend (``store/sqlite/``) group-commits there. The server awaits
  ``MemoryStore.sync`` before any answer or stream message that could show a change
  still ``pending`` (``server/rpc.py``, ``server/stream.py``).
- **Conflicts.** A remote backend reads at a revision and commits with a compare: the txn
  carries the revision it read (``base_revision``), and ``commit()`` may raise
  ``RevisionConflict`` (a ``ConflictError``) when the backend moved on. The engine then
  re-runs the whole method, boundedly, validating again against the new state
  (``dspex_rx.store.commit.rerun_on_conflict`` is the hook; it is applied with the first
  backend that can conflict, once the session tables it changes roll back with the txn).
  MemoryBackend never raises it, because its writes are serialised.
- **Watchers** run synchronously inside ``commit()``, after the state changed and after
  the engine's ``settle`` step (its accounting of what the commit retained), so a watcher
  added in the same step as a snapshot misses nothing and sees nothing twice. A failing
  watcher is logged, never undoes a commit.
- **Sessions** are created and removed outside revisioned commits (``add_session``,
  ``remove_session``): a session is not a change any watcher is told about, and removing
  one tells its watchers ``None``.

Behind the seam now: the sessions table; variable records and their names; the owner of
every variable id; variables' access rules; the dependency graph (``add_edge``,
``drop_edge``, ``drop_edges``: registration, add/remove_dependency, import and delete
change it only in the commit; cycles are checked before, against the graph plus the
txn's edges, which ``graph()`` reads); history entries (``append_history``,
``drop_history``); optimization leases as the variables' latest, running and recent ones
(``put_lease``, start_optimization included; the engine changes a copy of a lease, which
the commit writes back into the lease object) and evaluations (``append_evaluation``;
``drop_leases`` on delete); the variable id sequence; the revision counter; each
session's commit log (``commits_since``, ``compact``) and its watchers. The memory
account of what a commit stages (history, edges, rules, leases, evaluations, fixed
costs) is charged in the engine's ``settle``, so an aborted txn leaves it untouched too.

Not yet behind the seam (SqliteBackend does without: it marks what each change touched,
through ``touch`` for what changes in place, and writes the live state; a remote backend
needs them as staged writes): the engine reads ``Session.variables``/``names``,
``graph``, ``history`` and the lease tables directly in validation instead of through a
``ReadTxn``; a step that only renews a lease changes it in place (a heartbeat, no
commit); retention (``settle``: history beyond ``history_size`` and evicted for the
budget, recent leases beyond ``RECENT_LEASES``, evaluations beyond
``optimization_history_size``, the log, the graveyard and superseded queues) changes the
session in place after the commit applied; attached clients and the session's own
account change in place; the retired ids and their claims (``RetiredIds``) live in the
engine (``keep_retired`` hands them over).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Protocol

from dspex_rx.core.access import AccessRule
from dspex_rx.core.graph import DependencyGraph, Edge
from dspex_rx.core.identity import RetiredIds
from dspex_rx.errors import ConflictError
from dspex_rx.store.leases import OptimizationEntry, OptimizationLease
from dspex_rx.store.records import ChangeEvent, Commit, HistoryEntry, Listener, VariableRecord
from dspex_rx.store.state import Replicated, Session


class RevisionConflict(ConflictError):
    """The backend moved past a write txn's ``base_revision``: re-run the method.

    Distinct from a caller's compare-and-set ``ConflictError`` (``expected_version``), which
    the engine never retries.

    >>> issubclass(RevisionConflict, ConflictError)
    True
    """


class ReadTxn(ABC):
    """A consistent view of the store at one ``revision``.

    Example: ``backend.read().get("sess_1", "var_t_1")`` returns that record or None.
    """

    @property
    @abstractmethod
    def revision(self) -> int:
        """The revision this view reads at.

        Example: ``backend.read().revision`` is the newest committed revision.
        """

    @abstractmethod
    def session(self, session_id: str) -> Session | None:
        """The session's state, or None.

        Example: ``backend.read().session("sess_1")`` returns the session or None.
        """

    @abstractmethod
    def get(self, session_id: str, var_id: str) -> VariableRecord | None:
        """A variable's record by id, or None.

        Example: ``backend.read().get("sess_1", "var_t_1")`` returns the record or None.
        """

    @abstractmethod
    def find(self, session_id: str, name: str) -> VariableRecord | None:
        """A variable's record by name, or None.

        Example: ``backend.read().find("sess_1", "t")`` returns the record or None.
        """

    @abstractmethod
    def records(self, session_id: str) -> list[VariableRecord]:
        """Every record of the session (the Range of the session), by name.

        Example: ``backend.read().records("sess_1")`` lists its records by name.
        """

    @abstractmethod
    def owner(self, var_id: str) -> str | None:
        """The id of the session that owns a variable id, or None.

        Example: ``backend.read().owner("var_t_1")`` returns "sess_1".
        """

    @abstractmethod
    def rules(self, session_id: str, var_id: str) -> tuple[AccessRule, ...]:
        """A variable's access rules (empty when it has none).

        Example: ``backend.read().rules("sess_1", "var_t_1")`` returns its rules.
        """

    @abstractmethod
    def history(self, session_id: str, var_id: str) -> Sequence[HistoryEntry]:
        """A variable's retained history entries, oldest first (empty when it has none).

        Example: ``backend.read().history("sess_1", "var_t_1")[-1]`` is its newest version.
        """

    @abstractmethod
    def lease(self, session_id: str, var_id: str) -> OptimizationLease | None:
        """A variable's latest optimization lease (running or ended), or None.

        Example: ``backend.read().lease("sess_1", "var_t_1").state`` is "running" or how it ended.
        """

    @abstractmethod
    def evaluations(self, session_id: str, var_id: str) -> Sequence[OptimizationEntry]:
        """A variable's retained evaluations, oldest first.

        Example: ``backend.read().evaluations("sess_1", "var_t_1")[-1].score`` is the newest.
        """

    @abstractmethod
    def graph(self, session_id: str) -> DependencyGraph:
        """The session's dependency graph as this view sees it (read it, never change it).

        Example: ``backend.read().graph("sess_1").edge("var_b_2", "var_a_1")`` is the edge.
        """


class WriteTxn(ReadTxn):
    """The one open write: staged puts and deletes, applied together by ``commit()``.

    Its reads see the state at ``base_revision`` plus its own staged changes. Used as a
    context manager it aborts when left without a commit.

    Example: ``txn = backend.write()`` opens it; ``txn.put("sess_1", record)`` stages a record.
    """

    @property
    @abstractmethod
    def base_revision(self) -> int:
        """The revision the txn read at (what a remote backend's commit compares).

        Example: ``backend.write().base_revision == backend.revision``.
        """

    @property
    def revision(self) -> int:
        """The revision ``commit()`` will take: ``base_revision + 1``.

        Example: records are stamped with ``txn.revision`` before the commit.
        """
        return self.base_revision + 1

    @abstractmethod
    def put(self, session_id: str, record: VariableRecord) -> None:
        """Stage a record (new or a new version; its name maps to its id).

        Example: ``txn.put("sess_1", record)`` stages the record.
        """

    @abstractmethod
    def set_rules(self, session_id: str, var_id: str, rules: tuple[AccessRule, ...]) -> None:
        """Stage a variable's access rules (empty: it has none).

        Example: ``txn.set_rules("sess_1", "var_t_1", ())`` stages their removal.
        """

    @abstractmethod
    def append_history(self, session_id: str, var_id: str, entry: HistoryEntry) -> None:
        """Stage a history entry, appended after the variable's newest (retention by count
        and by budget is the engine's ``settle``, after the commit applied it).

        Example: ``txn.append_history("sess_1", "var_t_1", entry)`` stages the entry.
        """

    @abstractmethod
    def drop_history(self, session_id: str, var_id: str) -> None:
        """Stage dropping every history entry of a variable (it is deleted).

        Example: ``txn.drop_history("sess_1", "var_t_1")`` as the variable is deleted.
        """

    @abstractmethod
    def put_lease(self, session_id: str, lease: OptimizationLease) -> None:
        """Stage a variable's latest optimization lease (new, or its status changed): the
        commit makes it the latest, running while ``lease.active``, and one of the recent
        ones (trimming them to ``RECENT_LEASES`` is the engine's ``settle``). A copy of
        the latest lease (same id, ``staged_copy``) is written back into that object.

        Example: ``txn.put_lease("sess_1", lease)`` as the lease starts or ends.
        """

    @abstractmethod
    def append_evaluation(self, session_id: str, var_id: str, entry: OptimizationEntry) -> None:
        """Stage an evaluated iteration of a variable's optimization.

        Example: ``txn.append_evaluation("sess_1", "var_t_1", entry)`` stages it.
        """

    @abstractmethod
    def drop_leases(self, session_id: str, var_id: str) -> None:
        """Stage dropping a variable's leases and evaluations (it is deleted).

        Example: ``txn.drop_leases("sess_1", "var_t_1")`` as the variable is deleted.
        """

    @abstractmethod
    def add_edge(self, session_id: str, edge: Edge) -> None:
        """Stage a dependency edge (new, or replacing the type/metadata of one); the engine
        has checked it closes no cycle with the graph plus what the txn stages.

        Example: ``txn.add_edge("sess_1", Edge("var_b_2", "var_a_1"))`` stages b -> a.
        """

    @abstractmethod
    def drop_edge(self, session_id: str, dependent: str, dependency: str) -> None:
        """Stage the removal of one dependency edge (nothing if there is none).

        Example: ``txn.drop_edge("sess_1", "var_b_2", "var_a_1")`` stages its removal.
        """

    @abstractmethod
    def drop_edges(self, session_id: str, var_id: str) -> None:
        """Stage the removal of every edge touching a variable (both ways).

        Example: ``txn.drop_edges("sess_1", "var_a_1")`` as the variable is deleted.
        """

    @abstractmethod
    def delete(self, session_id: str, var_id: str) -> None:
        """Stage a variable's removal (record, name and owner).

        Example: ``txn.delete("sess_1", "var_t_1")`` stages the removal.
        """

    @abstractmethod
    def commit(
        self,
        session_id: str,
        events: Sequence[ChangeEvent],
        *,
        timestamp: float,
        permissions: Sequence[str] = (),
        settle: Callable[[Commit], None] | None = None,
    ) -> Commit:
        """Apply the staged changes under one new revision, log one Commit, then call
        ``settle`` (the engine's accounting; it must not fail) and notify the watchers.

        May raise ``RevisionConflict`` (nothing applied). Example:
        ``txn.commit("sess_1", events, timestamp=now)`` returns the logged Commit.
        """

    @abstractmethod
    def abort(self) -> None:
        """Drop the staged changes; the txn ends and leaves no trace.

        Example: ``txn.abort()`` ends the txn with nothing applied.
        """

    @property
    @abstractmethod
    def done(self) -> bool:
        """Whether the txn was committed or aborted.

        Example: ``txn.done`` is True after ``commit()``.
        """

    def __enter__(self) -> WriteTxn:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if not self.done:
            self.abort()


class Election(Protocol):
    """Which replica of a shared store takes the writes (the others forward theirs to
    it): ``leader`` is its address ("" while none is known), ``on_change`` tells of a new
    one, ``run`` takes part until cancelled.

    Example: ``election.on_change(print)``; ``await election.run()``.
    """

    leader: str
    leading: bool

    def on_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(address)`` whenever the leader changes.

        Example: ``election.on_change(forwarder.set_leader)``.
        """

    async def run(self) -> None:
        """Stand (or follow) until cancelled.

        Example: ``task = asyncio.create_task(election.run())``.
        """


class Backend(ABC):
    """Where the store's state lives: sessions, records, revisions and the commit log.

    Example: ``MemoryStore(backend=MemoryBackend())`` runs the engine over it.
    """

    # Other writers (replicas) share this storage: the live state may lag behind what
    # they stored, and catches up as their writes arrive (``on_replicated``).
    shared = False

    @property
    @abstractmethod
    def revision(self) -> int:
        """The newest committed revision (0 before any commit).

        Example: ``backend.revision`` grows by one per commit.
        """

    @property
    @abstractmethod
    def sessions(self) -> Mapping[str, Session]:
        """The live sessions by id: the same live mapping for the backend's whole life.

        Example: ``"sess_1" in backend.sessions`` tells whether it is live.
        """

    @abstractmethod
    def read(self) -> ReadTxn:
        """A read txn at the newest revision.

        Example: ``backend.read().records("sess_1")`` lists its records.
        """

    @abstractmethod
    def write(self) -> WriteTxn:
        """Open the write txn (``RuntimeError`` while another is open).

        Example: ``txn = backend.write()`` opens it; a second ``backend.write()`` raises.
        """

    @abstractmethod
    def next_id(self) -> int:
        """A number for a new variable id (``var_<name>_<n>``), never handed out before.

        Not part of a txn: a number a refused write took is skipped, never reused.
        Example: ``backend.next_id()`` returns 1, then 2, ...
        """

    @abstractmethod
    def add_session(self, session: Session) -> None:
        """Hold a new session (not a revisioned commit).

        Example: ``backend.add_session(Session("sess_1", {}, 0.0))`` makes it live.
        """

    @abstractmethod
    def remove_session(
        self, session_id: str, *, settle: Callable[[Session], None] | None = None
    ) -> Session:
        """Drop a session and its variables, call ``settle`` with it (the engine's
        clean-up), then tell its watchers ``None``.

        Example: ``backend.remove_session("sess_1")`` returns the removed session.
        """

    @abstractmethod
    def commits_since(self, session_id: str, revision: int) -> list[Commit] | None:
        """The session's logged commits after ``revision``, oldest first, or None when the
        log no longer reaches back (the watcher must resync from current values).

        Example: ``backend.commits_since("sess_1", 41)`` returns the later commits or None.
        """

    @abstractmethod
    def compact(self, session_id: str, through: int) -> list[Commit]:
        """Drop the session's logged commits up to revision ``through``; returns them.

        Example: ``backend.compact("sess_1", 10)`` returns the commits it dropped.
        """

    @abstractmethod
    def watch(
        self, session_id: str, listener: Listener, *, foreign: bool = False
    ) -> Callable[[], None]:
        """Call ``listener`` with every later commit of the session; returns the remover.

        Example: ``stop = backend.watch("sess_1", seen.append)`` and later ``stop()``.
        """

    @abstractmethod
    async def sync(self, revision: int) -> None:
        """Return once ``revision``, and every change made before this call (sessions
        added or removed, clients attached), is durable (``ValueError`` if ``revision``
        is not yet committed; ``StorageError`` if the storage refused the write).

        Example: ``await backend.sync(txn_commit.revision)`` returns once it is durable.
        """

    @property
    def pending(self) -> bool:
        """Whether some change is not yet durable (a reply must ``sync`` first).

        Example: ``if backend.pending: await backend.sync(backend.revision)``.
        """
        return False

    @property
    def conflicts(self) -> int:
        """How many flushes lost their race to another writer of the same storage (a
        replica), each undone and its calls run again (never, in memory).

        Example: ``backend.conflicts`` is 0 on one server.
        """
        return 0

    def touch(self, session_id: str, var_id: str = "") -> None:  # noqa: B027 - optional, a no-op here
        """Say that the engine changed a session's state in place, outside a commit (a
        client attached or left; with ``var_id``, retention dropped that variable's
        history), so a durable backend writes it with the next sync.

        Example: ``backend.touch("sess_1")`` after a client attached.
        """

    def keep_retired(self, retired: RetiredIds) -> None:  # noqa: B027 - optional, a no-op here
        """Keep the engine's retired ids: a durable backend loads the stored ones into
        ``retired`` and writes its changes with each sync.

        Example: ``backend.keep_retired(RetiredIds(1000))`` once, as the engine starts.
        """

    @property
    def generation(self) -> int:
        """How many times the live state was reloaded from storage in a way its watchers
        cannot follow (a durable backend reloads when a flush fails): what was queued for
        a watcher before is void.

        Example: ``backend.generation`` is 0 until a flush failed.
        """
        return 0

    def on_reload(self, hook: Callable[[], None]) -> None:  # noqa: B027 - optional, a no-op here
        """Call ``hook`` each time the live state is reloaded from storage (never, in
        memory): the engine rebuilds its accounts, the server ends its streams.

        Example: ``backend.on_reload(accounts.rebuild)``.
        """

    def on_undo(self, hook: Callable[[int], None]) -> None:  # noqa: B027 - optional, a no-op here
        """Call ``hook(revision)`` when every commit above ``revision`` made here was
        undone because another writer of the same storage wrote first (never, in memory);
        the watchers keep listening, so the server drops those commits from its queues.

        Example: ``backend.on_undo(drop_queued_commits_above)``.
        """

    def on_replicated(  # noqa: B027 - optional, a no-op here
        self, hook: Callable[[Replicated], None]
    ) -> None:
        """Call ``hook(replicated)`` after another writer's changes were applied to the
        sessions in place (a replica catching up; never, in memory).

        Example: ``backend.on_replicated(accounts.resettle)``.
        """

    @property
    def flush_limited(self) -> bool:
        """Whether a durable write has a size limit, so writes must wait for ``room``.

        >>> from dspex_rx.store.memory import MemoryBackend
        >>> MemoryBackend().flush_limited
        False
        """
        return False

    async def room(self, nbytes: int) -> None:  # noqa: B027 - optional, a no-op here
        """Return once a write of a request of ``nbytes`` may be applied without making
        the next durable write larger than the storage takes (a remote backend's request
        limit); the server awaits it before each write. At once in memory.

        >>> import asyncio
        >>> from dspex_rx.store.memory import MemoryBackend
        >>> asyncio.run(MemoryBackend().room(1_000_000))
        """

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:  # noqa: B027 - optional
        """Run background work of the backend (a replica's watch of the others' writes)
        on ``loop``, the loop the store is used from; the server calls it as it starts.

        Example: ``backend.bind_loop(asyncio.get_running_loop())``.
        """

    @property
    def position(self) -> int:
        """How far into the storage's history the live state is: a number that only
        grows, comparable between replicas of one shared store (over etcd, its
        revision, which every write moves, a session's creation too); the revision here.

        >>> from dspex_rx.store.memory import MemoryBackend
        >>> MemoryBackend().position
        0
        """
        return self.revision

    async def holds(self, position: int, wait: float) -> bool:
        """Whether the live state is at ``position`` or past it, waiting at most
        ``wait`` seconds for other replicas' writes to arrive.

        >>> import asyncio
        >>> from dspex_rx.store.memory import MemoryBackend
        >>> asyncio.run(MemoryBackend().holds(0, wait=1.0))
        True
        """
        return self.position >= position

    def write_leader(self, address: str) -> Election | None:
        """The election of the replica that takes the writes, with this replica
        standing as ``address`` ("": only follow); None where there is nothing to elect
        (one writer: an unshared backend).

        >>> from dspex_rx.store.memory import MemoryBackend
        >>> MemoryBackend().write_leader("127.0.0.1:50051") is None
        True
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional, a no-op here
        """Release what the backend holds open (files, threads); idempotent.

        Example: ``backend.close()`` as the server stops.
        """
