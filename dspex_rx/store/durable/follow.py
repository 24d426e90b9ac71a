"""How a durable backend follows other writers of its storage (replicas): their rows
applied in place as its watch brings them, or a full read when that cannot be done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from dspex_rx.core.identity import RetiredIds
from dspex_rx.errors import StorageError
from dspex_rx.logs import get_logger
from dspex_rx.store.durable.image import Image
from dspex_rx.store.durable.load import Loaded
from dspex_rx.store.durable.replay import Replayed, merge_retired, replay
from dspex_rx.store.memory.backend import _tell
from dspex_rx.store.state import Replicated, Session

log = get_logger("dspex_rx.store")

# After a full read failed (an unreadable row, storage unreachable), the next one waits
# this long, doubled at each failure up to CATCH_UP_MAX: each is a read of the whole
# store that blocks the loop (up to the storage's call timeout when it is slow), and a
# replica behind would otherwise make one at every write its watch brings, or, idle,
# every pause; never giving up, an idle replica left behind catches up once it can.
CATCH_UP_RETRY = 1.0
CATCH_UP_MAX = 60.0


class Following:
    """The part of ``DurableBackend`` that follows other writers of the same storage.

    Example: ``backend.apply_foreign(changes)`` as a replica's watch brings a write.
    """

    if TYPE_CHECKING:  # what it uses of DurableBackend (set in its __init__)
        _closed: bool
        _behind: bool
        _flushing: asyncio.Future[None] | None
        _sessions: dict[str, Session]
        _owners: dict[str, str]
        _image: Image
        _revision: int
        _stored_revision: int
        _next: int
        _retired_ids: RetiredIds | None
        _replicated_hooks: list[Callable[[Replicated], None]]
        _reload_hooks: list[Callable[[], None]]

        @property
        def pending(self) -> bool: ...
        @property
        def where(self) -> str: ...
        def _read(self, *, starting: bool = False) -> Loaded: ...
        def _install(self, loaded: Loaded, *, carry: bool = False,
                     undone_above: int | None = None) -> None: ...

    # When the next full read may be tried after one failed (monotonic seconds), and the
    # timer that tries it then.
    _catch_up_at = 0.0
    _catch_up_timer: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None
    _catch_up_pause = 0.0  # the pause after the next failure (0: CATCH_UP_RETRY)

    def on_replicated(self, hook: Callable[[Replicated], None]) -> None:
        """Call ``hook(replicated)`` after another writer's rows were applied in place.

        Example: ``backend.on_replicated(accounts.resettle)``.
        """
        self._replicated_hooks.append(hook)

    async def _settle_conflict(self) -> None:
        """After a conflict, before the calls it undid run again: wait until the live
        state holds the write that won (a replica hears it through its watch), so they
        do not run against the same old state and conflict again."""

    def apply_foreign(self, changes: list[tuple[bool, bytes, bytes]]) -> None:
        """Apply another writer's row changes ``(is_put, key, value)`` in place and tell
        the watchers its commits, in order (a replica's watch calls it). While this
        process has a change of its own in flight, or the rows cannot be applied, or it
        is behind (a catch-up failed), the full ``catch_up`` runs instead (after the flush).

        Example: ``backend.apply_foreign([(True, key, value)])``.
        """
        if self._closed:
            return
        if self.pending or self._flushing is not None:
            self._behind = True
            return
        if self._behind:  # a catch-up failed: only a full read has what it missed
            self._catch_up_soon()
            return
        out = Replayed()
        revisions = self._revision, self._stored_revision
        try:
            self._apply_rows(changes, out)
        except Exception as exc:
            # A row it cannot read (CorruptRow), or a bug in a hook: only a full read is
            # sure to hold that write, whatever path brought it (the watch, or what it
            # queued during a flush, which must not fail with it).
            log.warning("replay_failed", where=self.where, error=repr(exc))
            self._untold(out, revisions)
            self._fall_behind()
        except BaseException:
            self._untold(out, revisions)
            self._behind = True
            raise

    def _fall_behind(self) -> None:
        # The live state may lack what others stored: a full read, now or once the pause
        # after a failed one is over (or, a flush in flight, after it); never an error
        # for whoever noticed (the watch, a flush's end, a conflict's wait).
        self._behind = True
        try:
            self._catch_up_soon()
        except Exception as exc:
            log.error("catch_up_failed", where=self.where, error=repr(exc))

    def _catch_up_soon(self) -> None:
        # At once, or once the pause after a failed full read is over.
        if time.monotonic() >= self._catch_up_at:
            self.catch_up()
        else:
            self._arm_catch_up()

    def _arm_catch_up(self) -> None:
        # A timer for the end of the pause, so a replica behind catches up even if no
        # other write comes; on the loop this runs on (outside one, the next flush or
        # write reads), made again if an earlier one is on another loop.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        timer = self._catch_up_timer
        if timer is not None and timer[0] is loop:
            return
        if timer is not None:
            timer[1].cancel()
        wait = max(0.0, self._catch_up_at - time.monotonic())
        self._catch_up_timer = (loop, loop.call_later(wait, self._catch_up_timed))

    def _catch_up_timed(self) -> None:
        self._catch_up_timer = None
        if self._behind:
            self._catch_up_soon()

    def _untold(self, out: Replayed, revisions: tuple[int, int]) -> None:
        # Applying failed half-way: the full read that follows tells each session's
        # watchers the commits above what they heard, not above what the replay reached;
        # the store's revisions go back too, so none is shown (a pong, a stream's
        # progress) as reached that its watchers were not told, and a local commit that
        # loses a race before that read is read back to tell them what is stored above.
        # (A local commit meanwhile may take this write's revision: its flush conflicts,
        # as the head did not move, and the full read-back replaces it unseen.)
        self._revision, self._stored_revision = revisions
        for sid, revision in out.told.items():
            session = self._sessions.get(sid)
            if session is not None:
                session.revision = revision
        # A session the replay removed (its watchers not yet told): held again, so the
        # full read tells them it went, or carries them on if it did not.
        for session in out.gone:
            self._sessions[session.id] = session
            for var_id in session.variables:
                self._owners[var_id] = session.id

    def _apply_rows(self, changes: list[tuple[bool, bytes, bytes]], out: Replayed) -> None:
        replay(self._sessions, self._owners, self._image, changes, out)
        if out.revision is not None:
            self._revision = self._stored_revision = out.revision
        if out.next_id is not None:
            self._next = out.next_id
        if out.retired and self._retired_ids is not None:
            merged = merge_retired(self._retired_ids.items(), out.retired)
            self._retired_ids.restore(merged.items())
            self._image.set_retired(merged)
        for session in out.gone:
            _tell(session, None)
            session.listeners.clear()
        replicated = Replicated(
            [self._sessions[sid] for sid in out.touched if sid in self._sessions],
            out.gone, out.fresh, out.history, out.log,
        )
        for hook in self._replicated_hooks:
            hook(replicated)
        for session, commit in out.commits:
            _tell(session, commit)
            out.told[session.id] = commit.revision

    def _after_flush(self) -> None:
        """On the loop after every flush (a replica sorts out what its watch saw)."""

    def catch_up(self) -> None:
        """Bring the live state up to what another writer of the same storage stored (a
        replica's watch calls it): a full read, the watchers told each new commit in order.
        While a change of this process is waiting for its flush, it waits for that flush
        (which will conflict, or already covers it).

        Example: ``backend.catch_up()`` once another replica's write was seen.
        """
        if self._closed:
            return
        if self.pending or self._flushing is not None:
            self._behind = True
            return
        try:
            loaded = self._read()
        except StorageError as exc:
            # Tried again at the next flush, or once the pause is over (a timer).
            self._behind = True
            pause = self._catch_up_pause or CATCH_UP_RETRY
            self._catch_up_at = time.monotonic() + pause
            self._catch_up_pause = min(2 * pause, CATCH_UP_MAX)
            self._arm_catch_up()
            log.warning("catch_up_failed", where=self.where, error=str(exc))
            return
        self._behind = False
        self._catch_up_pause = 0.0
        self._install(loaded, carry=True)
        for hook in self._reload_hooks:
            hook()

    async def _read_after_conflict(self) -> Loaded | None:
        """The stored state after a flush another writer beat; None: read it all (a
        replica reads back only what the live objects cannot give: ``revert.py``)."""
        return None

