"""DurableBackend: the memory backend's live state, made durable as rows by group commit
(every change waiting when a flush starts goes in its one write); a subclass says where
the rows live (``SqliteBackend``: one file).

Like etcd's in-memory index over bbolt: reads and the engine's checks run on the live
state; ``sync`` returns once the storage holds everything changed before the call. A
flush the storage refuses reverts the live state to the stored rows and fails every waiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dspex_rx.core.identity import RetiredIds
from dspex_rx.errors import DspexError, ResourceExhaustedError, StorageError
from dspex_rx.logs import get_logger
from dspex_rx.store.backend import RevisionConflict, WriteTxn
from dspex_rx.store.durable.budget import FlushBudget
from dspex_rx.store.durable.carry import carry_watchers
from dspex_rx.store.durable.follow import Following
from dspex_rx.store.durable.image import Dirty, Image
from dspex_rx.store.durable.load import CorruptRow, Loaded, load
from dspex_rx.store.durable.refusal import refusal
from dspex_rx.store.durable.rows import Op
from dspex_rx.store.memory.backend import MemoryBackend
from dspex_rx.store.memory.txn import _MemoryWrite
from dspex_rx.store.records import ChangeEvent, Commit, HistoryEntry
from dspex_rx.store.state import Replicated, Session

log = get_logger("dspex_rx.store")

# How long writes are refused at once after the disk refused one, before the next write
# tries the disk again (each try reloads the state from the file).
RETRY_AFTER = 1.0


class DurableBackend(Following, MemoryBackend):
    """The live state of ``MemoryBackend``, kept as rows where a subclass stores them.

    A subclass opens its storage, then calls ``_start()``; it implements ``_rows`` (every
    stored row, on the loop), ``_write`` (one batch of row writes, atomically, on the
    writer thread; or ``_store``, the same awaited on the loop, for a storage reached by
    network I/O), ``_release`` and ``where``; ``storage_errors`` are the exceptions that
    mean the storage refused a write.

    Example: ``SqliteBackend(data_dir)`` is one.
    """

    storage_errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._clock = clock
        self._next = 1
        self._image = Image()
        self._retired_ids: RetiredIds | None = None
        self._stored_retired: dict[str, tuple[bytes, int]] = {}
        # What changed since the last flush began; ``_epoch`` counts changes, and
        # ``_durable`` is the count the storage holds.
        self._dirty: dict[str, Dirty] = {}
        self._gone: list[str] = []
        self._retired_dirty = False
        self._epoch = self._durable = 0
        self._flushing: asyncio.Future[None] | None = None
        self._recovering: asyncio.Future[None] | None = None
        # What the next flush will write, against the largest write the storage takes
        # at once: a subclass over etcd sets limits, and writes then wait for ``room``.
        self._budget = FlushBudget()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="dspex-rx-durable")
        self._refusing_until = 0.0
        self._refusal = ""
        # Bumped each time the live state is reloaded from storage and a watcher cannot
        # simply forget what was undone: what was shown from an older generation and not
        # yet durable must not be sent any more. ``_resets`` counts every reset (a sync
        # in flight across one had its changes undone).
        self._generation = 0
        self._resets = 0
        self._conflicts = 0
        # The store revision the storage holds, as far as this process knows: after a
        # conflict every commit above it was undone (``on_undo``).
        self._stored_revision = 0
        self._reload_hooks: list[Callable[[], None]] = []
        self._undo_hooks: list[Callable[[int], None]] = []
        self._replicated_hooks: list[Callable[[Replicated], None]] = []
        # Whether the last reset was a conflict (another writer first), and whether a
        # catch-up with another writer waits for this process's flush.
        self._conflicted = False
        self._behind = False
        self._broken = False
        self._closed = False

    @property
    @abstractmethod
    def where(self) -> str:
        """Where the rows live, for messages ("the data file x", "etcd at y").

        Example: ``backend.where`` is ``"the data file dspex-rx-data/dspex-rx.sqlite3"``.
        """

    @abstractmethod
    def _rows(self) -> Iterable[tuple[bytes, bytes]]:
        """Every stored row, in key order, as one consistent state."""

    def _write(self, ops: list[Op]) -> None:
        """Apply one batch of row writes atomically and durably (the writer thread)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither _write nor _store")

    async def _store(self, ops: list[Op]) -> None:
        """Apply one flush's row writes: ``_write`` on the writer thread, so a blocking
        storage (a file's fsync) never stalls the loop."""
        await asyncio.get_running_loop().run_in_executor(self._writer, self._write, ops)

    @abstractmethod
    def _release(self) -> None:
        """Close the storage (after the writer stopped)."""

    # -- loading -------------------------------------------------------------------

    def _start(self) -> None:
        # The subclass opened its storage: read it into the live state.
        self._install(self._read(starting=True))

    def _read(self, *, starting: bool = False) -> Loaded:
        return self._load(self._rows(), starting=starting)

    async def _read_back(self) -> Loaded:
        """The stored state, read while serving (a reset): a subclass whose storage is
        across a network awaits it, so the loop serves on meanwhile."""
        return self._read()

    def _load(self, rows: Iterable[tuple[bytes, bytes]], *, starting: bool = False,
              ) -> Loaded:
        # At start every client gets a fresh heartbeat window (the time the server was
        # down does not count); a re-read while serving keeps their stored heartbeats.
        try:
            return load(rows, self._clock() if starting else None)
        except CorruptRow as exc:
            raise StorageError(
                f"{self.where} holds a row this server cannot read "
                f"({', '.join(map(str, exc.args))}); refusing to start rather than serve "
                "it half-read (restore a backup, or move it away to start afresh)",
            ) from exc

    def _install(self, loaded: Loaded, *, carry: bool = False,
                 undone_above: int | None = None) -> None:
        # The engine holds ``self._sessions`` itself: refill it, never replace it. With
        # ``carry`` (catching up with another writer, or going back after a conflict)
        # each session keeps its watchers, who then hear every commit they had not, in
        # order, and None if it went. After a conflict (``undone_above``) the watchers
        # already forgot the commits above it, so they hear the stored ones above it; a
        # session that went (its creation was undone) ends every stream instead.
        before = dict(self._sessions) if carry else {}
        self._sessions.clear()
        self._sessions.update(loaded.sessions)
        self._owners.clear()
        self._owners.update(loaded.owners)
        for session in self._sessions.values():
            if session.log and session.log[-1].revision > session.revision:
                session.revision = session.log[-1].revision
        self._revision = self._stored_revision = loaded.revision
        self._next = loaded.next_id
        self._image = loaded.image
        self._stored_retired = loaded.retired
        if self._retired_ids is not None:
            self._retired_ids.restore(loaded.retired.items())
        if carry_watchers(before, self._sessions, undone_above):
            # A watcher cannot follow (commits it missed are no longer in the log): its
            # stream must end and resume (the server answers RESYNC past its horizon).
            self._generation += 1

    def keep_retired(self, retired: RetiredIds) -> None:
        """Load the stored retired ids into the engine's ``retired``; write its changes.

        Example: ``backend.keep_retired(store_retired)`` as the engine starts.
        """
        self._retired_ids = retired
        retired.restore(self._stored_retired.items())

    @property
    def conflicts(self) -> int:
        """How many flushes lost their race to another writer (undone, calls rerun).

        Example: ``backend.conflicts`` counts up under writes from several replicas.
        """
        return self._conflicts

    @property
    def generation(self) -> int:
        """How many times a refused flush reloaded the live state from storage.

        Example: ``backend.generation`` is 0 until the disk refused a flush.
        """
        return self._generation

    def on_reload(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` after the live state was reloaded from storage (a flush failed).

        Example: ``backend.on_reload(accounts.rebuild)``.
        """
        self._reload_hooks.append(hook)

    def on_undo(self, hook: Callable[[int], None]) -> None:
        """Call ``hook(revision)`` when every commit above ``revision`` made here was undone
        because another writer of the same storage wrote first; the watchers keep
        listening, so whoever queued those commits to send must drop them (before the
        commits that won are told).

        Example: ``backend.on_undo(lambda revision: print("undone above", revision))``.
        """
        self._undo_hooks.append(hook)

    # -- what changed ----------------------------------------------------------------

    def _mark(self, session_id: str) -> Dirty:
        self._epoch += 1
        dirty = self._dirty.get(session_id)
        if dirty is None:
            dirty = self._dirty[session_id] = Dirty()
        return dirty

    @property
    def pending(self) -> bool:
        """Whether a change is not yet in the file.

        Example: ``backend.pending`` is True between a commit and its ``sync``.
        """
        return self._broken or self._epoch != self._durable

    def write(self) -> WriteTxn:
        """Open the write txn; refused (``StorageError``) for a moment after the disk
        refused a flush.

        Example: ``txn = backend.write()``.
        """
        if self._refusing_until and time.monotonic() < self._refusing_until:
            raise StorageError(self._refusal)
        return super().write()

    def next_id(self) -> int:
        """The next variable id number (the counter is stored with the next flush).

        Example: ``backend.next_id()`` returns 1, then 2, ...
        """
        # ``_next`` alone counts here: it is what is stored, and what a reload or another
        # replica's write sets.
        number = self._next
        self._next += 1
        self._epoch += 1
        return number

    def add_session(self, session: Session) -> None:
        """Hold a new session; its rows are written with the next flush.

        Example: ``backend.add_session(Session("s", {}, 0.0))``.
        """
        super().add_session(session)
        dirty = self._mark(session.id)
        dirty.header = dirty.graph = True
        self._retired_dirty = True  # creating an id may revive a retired one

    def remove_session(
        self, session_id: str, *, settle: Callable[[Session], None] | None = None
    ) -> Session:
        """Drop a session; its rows are deleted with the next flush.

        Example: ``backend.remove_session("s")``.
        """
        gone = super().remove_session(session_id, settle=settle)
        self._epoch += 1
        self._dirty.pop(session_id, None)
        self._gone.append(session_id)
        self._retired_dirty = True
        return gone

    def touch(self, session_id: str, var_id: str = "") -> None:
        """Write a session's header (or, with ``var_id``, that variable) with the next flush.

        Example: ``backend.touch("s")`` after a client attached.
        """
        if session_id not in self._sessions:
            return
        dirty = self._mark(session_id)
        if var_id:
            dirty.variables.add(var_id)
        else:
            dirty.header = True

    def compact(self, session_id: str, through: int) -> list[Commit]:
        """Drop logged commits up to ``through`` (in the file with the next flush).

        Example: ``backend.compact("s", 10)``.
        """
        floor = self._sessions[session_id].log_floor
        dropped = super().compact(session_id, through)
        if dropped or self._sessions[session_id].log_floor != floor:
            dirty = self._mark(session_id)
            dirty.header = dirty.log = True
        return dropped

    def _apply(self, txn: _MemoryWrite, session_id: str, events: Sequence[ChangeEvent],
               timestamp: float, permissions: Sequence[str],
               settle: Callable[[Commit], None] | None) -> Commit:
        commit = super()._apply(txn, session_id, events, timestamp, permissions, settle)
        # A value is written three times (record, history, log); a row per change, the
        # log's, and a trim of each.
        table_ops = txn.table_ops or ()
        values = sum(c.size for _, _, c in table_ops if type(c) is HistoryEntry)
        ops = len(txn.staged) + len(txn.staged_rules) + 2 * len(table_ops) + 2
        self._budget.charge(values, ops)
        dirty = self._mark(session_id)
        dirty.log = True
        changed = dirty.variables
        changed.update(txn.staged)
        changed.update(txn.staged_rules)
        for _, var_id, _ in txn.table_ops or ():
            changed.add(var_id)
        if txn.graph_ops:
            dirty.graph = True
        return commit

    # -- group commit ----------------------------------------------------------------

    @property
    def flush_limited(self) -> bool:
        """Whether the storage takes writes of a bounded size (writes wait for ``room``).

        Example: ``EtcdBackend(...).flush_limited`` is True; SQLite's is False.
        """
        return self._budget.limited

    async def room(self, nbytes: int) -> None:
        """Return once a write of a request of ``nbytes`` fits in the next flush with what
        waits for it already; until then flush what waits. Writes arriving together thus
        go out in several flushes, each within the storage's limits, instead of in one it
        refuses (failing all of them). A write alone in its flush is let through: if it is
        too large by itself, its flush refuses it, naming the limit.

        Example: ``await backend.room(len(request_bytes))`` before applying the write.
        """
        budget = self._budget
        while not budget.empty and not budget.fits(nbytes):
            try:
                await self.sync(self._revision)
            except (StorageError, RevisionConflict, ResourceExhaustedError):
                # The write meets the same refusal, or runs on the state reloaded (another
                # call's write was too large: not this one's refusal).
                return
            if not self.pending:
                budget.clear()

    async def sync(self, revision: int) -> None:
        """Return once the file holds ``revision`` and every change made before the call;
        concurrent callers share one flush (one fsync). ``StorageError`` if the disk
        refused it: the change is gone, and the live state is the file's again.

        Example: ``await backend.sync(commit.revision)``.
        """
        if revision > self._revision:
            raise ValueError(f"revision {revision} is not committed (newest {self._revision})")
        if self._broken:
            await self._recover()
        target, resets = self._epoch, self._resets
        while self._durable < target:
            flushing = self._flushing
            if flushing is None:
                flushing = self._flushing = asyncio.ensure_future(self._flush())
                flushing.add_done_callback(_retrieve)
            try:
                await asyncio.shield(flushing)
            except RevisionConflict:
                await self._settle_conflict()
                raise
            except ResourceExhaustedError as exc:
                if getattr(exc, "batch_epoch", target) < target:
                    # Another call's write was too large; this one, made while that was
                    # undone (its read-back is awaited), went with it: run it again.
                    raise RevisionConflict(f"a write too large for {self.where} was undone "
                                           "with this call's; it is run again") from exc
                raise
            if self._resets != resets:
                error = self._reset_error()
                if isinstance(error, RevisionConflict):
                    await self._settle_conflict()
                raise error

    def _reset_error(self) -> StorageError | RevisionConflict:
        # Why the live state went back to the stored one: the storage refused a write, or
        # another writer of the same storage (a replica) moved it on first.
        if self._conflicted:
            return RevisionConflict(f"{self.where} moved on (another replica wrote first); "
                                    "the call is run again against the new state")
        return StorageError(self._refusal)

    async def _flush(self) -> None:
        try:
            if self._closed:
                raise StorageError(f"{self.where} is closed: nothing more is stored")
            epoch, revision = self._epoch, self._revision
            batch = self._collect()
            try:
                await self._store(batch)
            except RevisionConflict as exc:
                try:
                    await self._reset_read(conflicted=True, partial=True)
                except StorageError:
                    self._refusal = f"{self.where} cannot be read back after a conflict"
                    raise StorageError(self._refusal) from exc
                raise self._reset_error() from exc
            except ResourceExhaustedError as exc:
                # The storage would not take a write this large (nothing was sent): undo
                # it, but the storage is fine, so other writes go on at once.
                self._refusal = str(exc)
                exc.batch_epoch = epoch  # type: ignore[attr-defined]  # (sync: whose it was)
                with contextlib.suppress(StorageError):  # unreadable: broken, as below
                    await self._reset_read(conflicted=False)
                raise
            except self.storage_errors as exc:
                await self._refuse(exc)
            self._durable = max(self._durable, epoch)
            self._stored_revision = max(self._stored_revision, revision)
            self._refusing_until = 0.0
        except DspexError:
            raise  # refused, too large or lost a race: the live state says so already
        except BaseException:
            # Cancelled (a loop ending; in a conflict's read-back too) or failed otherwise,
            # the batch perhaps sent: its changes are unmarked and maybe stored, so nothing
            # more is shown until the storage is read back.
            self._broken = True
            self._refusal = (f"a write to {self.where} was interrupted before it was known "
                             "to be stored; the state was read back from it")
            raise
        finally:
            self._flushing = None
            self._after_flush()
            if self._behind:
                self.catch_up()

    def _collect(self) -> list[Op]:
        # On the loop: what changed, serialised now (the live objects change after).
        self._budget.clear()
        dirty, self._dirty = self._dirty, {}
        gone, self._gone = self._gone, []
        retired = None
        if self._retired_dirty and self._retired_ids is not None:
            retired = dict(self._retired_ids.items())
        self._retired_dirty = False
        return self._image.batch(self._sessions, dirty, gone, self._revision, self._next,
                                 retired)

    async def _refuse(self, exc: BaseException) -> None:
        # The storage did not take the flush (or did not say): every change since the
        # last good one is undone (the live state is the stored one again, which holds
        # the flush if it was taken after all), and writes are refused for a moment.
        self._refusal = refusal(exc, self.where, self.refusal_hint)
        log.error("storage_refused", where=self.where, error=str(exc))
        self._refusing_until = time.monotonic() + RETRY_AFTER
        with contextlib.suppress(StorageError):  # unreadable too: broken, said below
            await self._reset_read(conflicted=False)
        raise StorageError(self._refusal) from exc

    async def _recover(self) -> None:
        # The live state holds changes the storage never took, and reading it back failed
        # too: nothing may be shown until it can be read (every answer syncs first).
        # Callers meanwhile share the one read-back.
        if self._closed:
            raise StorageError(f"{self.where} is closed: nothing more is stored")
        recovering = self._recovering
        if recovering is None:
            recovering = self._recovering = asyncio.ensure_future(self._read_again())
            recovering.add_done_callback(self._recovered)
        try:
            await asyncio.shield(recovering)
        except StorageError:
            raise StorageError(self._refusal) from None
        raise StorageError(self._refusal)  # this caller's change, if any, was undone

    async def _read_again(self) -> None:
        await self._reset_read(conflicted=False)
        # In the same step as the reset: what the watch brought while the state was
        # unreadable (a write it brings next would be applied first, and these skipped).
        self._after_flush()
        if self._behind:
            self._catch_up_soon()

    def _recovered(self, recovering: asyncio.Future[None]) -> None:
        self._recovering = None
        _retrieve(recovering)

    async def _reset_read(self, *, conflicted: bool, partial: bool = False) -> None:
        # ``_reset`` with the storage read back through ``_read_back`` (without blocking
        # the loop, where the subclass can; ``partial``: what the live objects cannot give
        # first); unreadable: broken (``pending``) until a sync reads it. Not behind once
        # read, unless marked so while the read was awaited (it may not cover that).
        behind, self._behind = self._behind, False
        try:
            # Behind (a catch-up failed), the live objects lack others' writes that the
            # watch will not bring again: only a full read has them.
            loaded = await self._read_after_conflict() if partial and not behind else None
            if loaded is None:
                loaded = await self._read_back()
        except StorageError:
            self._broken = True
            raise
        self._catch_up_pause = 0.0  # a read succeeded: the next failure pauses briefly
        self._reset(conflicted=conflicted, loaded=loaded)

    def _reset(self, *, conflicted: bool, loaded: Loaded) -> None:
        # Every change since the last durable one is undone: the live state is ``loaded``,
        # what the storage holds. After a refusal the server ends every stream (its queue
        # may hold undone commits; clients resume from what the storage holds); after a
        # conflict the ``on_undo`` hooks drop the undone commits from the queues first,
        # then the watchers hear the stored ones.
        self._conflicted = conflicted
        self._broken = False
        self._resets += 1
        if conflicted:
            self._conflicts += 1
            undone_above = self._stored_revision
            for undo in self._undo_hooks:
                undo(undone_above)
            self._install(loaded, carry=True, undone_above=undone_above)
        else:
            self._install(loaded)
            self._generation += 1
        self._dirty.clear()
        self._gone.clear()
        self._budget.clear()
        self._retired_dirty = False
        self._durable = self._epoch
        for hook in self._reload_hooks:
            hook()

    # What to do about a refusal, after the message (a subclass names its remedy).
    refusal_hint = ""

    def close(self) -> None:
        """Wait for the writer, then release the storage; idempotent.

        Example: ``backend.close()`` as the server stops.
        """
        if self._closed:
            return
        self._closed = True
        self._writer.shutdown(wait=True)
        self._release()


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A flush whose every waiter was cancelled still had its error seen (no warning).
    _ = future.cancelled() or future.exception()

