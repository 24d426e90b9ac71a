"""Per-stream outgoing queues on the server: which variables a stream watches, the frames and
control notes waiting to be sent, and conflation so a slow stream's memory stays bounded.

No gRPC and no asyncio here: the stream handler drains a ``Subscriber`` when woken.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dspex_rx.core.limits import too_many
from dspex_rx.server.failpoints import FAILPOINTS
from dspex_rx.store import OPTIMIZATION_EVENT, ChangeEvent, Commit, Listener, VariableRecord


@dataclass(slots=True)
class PendingFrame:
    """Events for one stream from one commit (or several, once conflated).

    Example:

    >>> PendingFrame(revision=7, events=[]).since
    6
    """

    revision: int
    events: list[ChangeEvent]
    update_type: str | None = None  # overrides each event's type: "initial", "resync"
    conflated: bool = False
    # The revision before the first commit it holds (revision - 1 unless conflated): a
    # resume point that replays all of it.
    since: int = -1

    def __post_init__(self) -> None:
        if self.since < 0:
            self.since = self.revision - 1


class Subscriber:
    """The watch state and send queue of one stream.

    Items are ``PendingFrame``s and opaque control objects, in the order they must be
    sent. When more than ``max_pending_events`` events wait, all waiting frames collapse
    into one conflated frame holding each variable's latest event, so memory is bounded by
    the number of watched variables and the latest value always gets through.

    Example:

    >>> sub = Subscriber()
    >>> sub.watch(["var_t_1"])
    >>> sub.push_frame(PendingFrame(5, []))
    >>> sub.drain()
    [PendingFrame(revision=5, events=[], update_type=None, conflated=False, since=4)]
    """

    def __init__(
        self,
        wake: Callable[[], None] = lambda: None,
        max_pending_events: int = 10_000,
        session_id: str = "",
        max_watched: int | None = None,
        may_observe: Callable[[str], bool] = lambda _: True,
        listen: Callable[[str, Listener], Callable[[], None]] | None = None,
        revision: Callable[[], int] = lambda: 0,
        may_read: Callable[[str], bool] | None = None,
    ) -> None:
        self.session_id = session_id
        self.watched: set[str] = set()
        # Other sessions' variables this stream watches (by id -> owner session), their
        # last records (to report them deleted if the owner goes), and one store listener
        # per owner session, removed with its last watched variable.
        self.owners: dict[str, str] = {}
        self._records: dict[str, VariableRecord] = {}
        self._foreign: dict[str, Callable[[], None]] = {}
        self._may_observe = may_observe
        # Of another session's variables a stream gets optimization status and the names
        # of changed inputs only where its session may read (None: nowhere).
        self._may_read = may_read or (lambda _: False)
        self._listen = listen
        self._revision = revision
        self.max_pending_events = max_pending_events
        self.max_watched = max_watched
        self.conflations = 0
        self.closed = False
        # The store undid commits (another replica wrote first) that this stream could
        # not drop from its queue (``undo_above``): it must end, its client resume.
        self.undone = False
        self.pending_controls = 0
        self._wake = wake
        self._queue: deque[PendingFrame | Any] = deque()
        # Taken to be sent once the store made it durable (the stream's sender).
        self._taken: list[PendingFrame | Any] = []
        self._pending_events = 0

    def check_room(self, variable_ids: Iterable[str]) -> None:
        """Raise ``ResourceExhaustedError`` if watching these too would pass ``max_watched``
        (the limit ``max_subscriptions_per_stream``); changes nothing.

        Example:

        >>> Subscriber(max_watched=1).check_room(["var_a_1", "var_b_2"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        dspex_rx.errors.ResourceExhaustedError: this stream would watch 2 variables...
        """
        if self.max_watched is None:
            return
        watched = self.watched
        count = len(watched) + len({i for i in variable_ids if i not in watched})
        if count > self.max_watched:
            raise too_many(
                f"this stream would watch {count} variables", count,
                "max_subscriptions_per_stream", self.max_watched,
            )

    def watch(self, variable_ids: Iterable[str]) -> None:
        """Start delivering these variables' commits.

        Example:

        >>> sub = Subscriber()
        >>> sub.watch(["var_t_1"])
        >>> sub.watched
        {'var_t_1'}
        """
        self.watched.update(variable_ids)

    def watch_foreign(self, owner: str, records: Iterable[VariableRecord]) -> None:
        """Start delivering another session's variables (the caller checked ``observe``);
        the first one of an owner session adds a listener to that session.

        Example: ``subscriber.watch_foreign("session_2", [record])`` watches its variable.
        """
        records = list(records)
        if owner not in self._foreign and records:
            if self._listen is None:
                raise RuntimeError("this subscriber cannot watch other sessions")
            self._foreign[owner] = self._listen(
                owner, lambda commit: self._on_foreign(owner, commit)
            )
        for record in records:
            self.owners[record.id] = owner
            self._records[record.id] = record
            self.watched.add(record.id)

    def unwatch(self, variable_ids: Iterable[str]) -> None:
        """Stop delivering these variables' commits (frames already queued stay).

        Example:

        >>> sub = Subscriber()
        >>> sub.watch(["var_t_1", "var_u_2"])
        >>> sub.unwatch(["var_t_1"])
        >>> sub.watched
        {'var_u_2'}
        """
        ids = set(variable_ids)
        self.watched.difference_update(ids)
        dropped = False
        for var_id in ids:
            if self.owners.pop(var_id, None) is not None:
                self._records.pop(var_id, None)
                dropped = True
        if dropped:
            still = set(self.owners.values())
            for owner in [o for o in self._foreign if o not in still]:
                self._foreign.pop(owner)()

    def wake(self) -> None:
        """Wake the stream's sender (it checks the store before sending anything).

        >>> Subscriber().wake()
        """
        self._wake()

    def close(self) -> None:
        """Remove the listeners on other sessions (the stream ended).

        Example: ``subscriber.close()`` when the stream ends.
        """
        for remove in self._foreign.values():
            remove()
        self._foreign.clear()
        self.owners.clear()
        self._records.clear()

    def on_commit(self, commit: Commit | None) -> None:
        """Store listener: queue the watched part of a commit (None: the session is gone).

        Example:

        >>> sub = Subscriber()
        >>> sub.on_commit(None)
        >>> sub.closed
        True
        """
        if commit is None:
            self.closed = True
            self._wake()
            return
        self._deliver(commit, foreign=False)

    def _on_foreign(self, owner: str, commit: Commit | None) -> None:
        if commit is not None:
            self._deliver(commit, foreign=True)
            return
        # The owner session went away: its variables went with it. Only those watches
        # end (as deleted), not the stream.
        ids = [var_id for var_id, o in self.owners.items() if o == owner]
        events = [
            ChangeEvent(self._records[i], self._records[i].value, "deleted",
                        {"reason": f"its session {owner!r} ended"}, owner)
            for i in ids if i in self._records
        ]
        self._foreign.pop(owner, None)  # the session dropped its listeners itself
        self.unwatch(ids)
        if events:
            self.push_frame(PendingFrame(self._revision(), events))

    def _deliver(self, commit: Commit, foreign: bool) -> None:
        watched = self.watched
        events = [e for e in commit.events if e.record.id in watched]
        denied: list[VariableRecord] = []
        if foreign:
            # Another session's variables: the stream must still may observe each one
            # (its owner may have changed the rules in this commit, or a rule expired).
            gone = {e.record.id for e in events if e.update_type == "deleted"}
            touched = {e.record.id: e.record for e in events if e.record.id not in gone}
            for var_id in commit.permissions:
                if var_id in watched and var_id not in gone and var_id in self._records:
                    touched.setdefault(var_id, self._records[var_id])
            denied = [r for i, r in touched.items() if not self._may_observe(i)]
            if denied:
                no = {r.id for r in denied}
                events = [e for e in events if e.record.id not in no]
            for event in events:
                self._records[event.record.id] = event.record
            events = self.redact(events)
        deleted = [e.record.id for e in events if e.update_type == "deleted"]
        if events and FAILPOINTS.armed and FAILPOINTS.fire("skip_frame"):
            events = []  # a planted bug (failpoints.py): the chaos checker must see a gap
        if events:
            self.push_frame(PendingFrame(commit.revision, events))
        if denied:
            self.push_frame(PendingFrame(commit.revision, [
                ChangeEvent(r, None, "revoked",
                            {"reason": f"session {self.session_id!r} may no longer observe "
                                       f"variable {r.id!r}"}, commit.session_id)
                for r in denied
            ]))
        if deleted or denied:
            self.unwatch([*deleted, *(r.id for r in denied)])

    def redact(self, events: Iterable[ChangeEvent]) -> list[ChangeEvent]:
        """Another session's events as this stream may see them: an optimization event
        (its metadata is the run's status: best value, metrics, holder) only where the
        session may read the variable, and a ``dependency_changed`` note naming only the
        changed inputs it may read (observe alone shows that the inputs changed).

        Example: ``subscriber.redact(commit.events)`` is what the stream may be sent.
        """
        out = []
        for event in events:
            if event.update_type == OPTIMIZATION_EVENT:
                if self._may_read(event.record.id):
                    out.append(event)
                continue
            if event.update_type == "dependency_changed" and event.sources:
                names = event.metadata.get("source_variables") or []
                readable = [self._may_read(i) for i in event.sources]  # one rule check each
                kept = [n for ok, n in zip(readable, names, strict=False) if ok]
                if len(kept) != len(event.sources):
                    note = {k: v for k, v in event.metadata.items()
                            if k not in ("source_variable", "source_variables")}
                    note["source_variables"] = kept
                    if kept:
                        note["source_variable"] = kept[0]
                    event = ChangeEvent(event.record, event.old_value, event.update_type,
                                        note, event.source,
                                        tuple(i for ok, i in zip(readable, event.sources,
                                                                 strict=True) if ok))
            out.append(event)
        return out

    def push_frame(self, frame: PendingFrame) -> None:
        """Queue a frame (live, initial, replayed or resync) and wake the sender.

        Example:

        >>> sub = Subscriber()
        >>> sub.push_frame(PendingFrame(5, [], update_type="initial"))
        >>> sub.has_pending()
        True
        """
        self._queue.append(frame)
        self._pending_events += len(frame.events)
        if self._pending_events > self.max_pending_events:
            self._conflate()
        _queued[0] += 1
        self._wake()

    def push_control(self, item: Any) -> None:
        """Queue a control note (ack, pong) in order with the frames and wake the sender.

        Example:

        >>> sub = Subscriber()
        >>> sub.push_control("pong")
        >>> sub.pending_controls
        1
        """
        self._queue.append(item)
        self.pending_controls += 1
        self._wake()

    @property
    def queued(self) -> int:
        """How many items (frames and control notes) wait to be sent.

        >>> sub = Subscriber()
        >>> sub.push_control("pong")
        >>> sub.queued
        1
        """
        return len(self._queue)

    @property
    def pending_events(self) -> int:
        """How many change events the waiting frames hold (conflation keeps it bounded).

        >>> Subscriber().pending_events
        0
        """
        return self._pending_events

    def has_pending(self) -> bool:
        """True while anything waits to be sent.

        Example:

        >>> Subscriber().has_pending()
        False
        """
        return bool(self._queue)

    def drain(self) -> list[PendingFrame | Any]:
        """Everything waiting, in order; the queue is empty afterwards.

        Example:

        >>> sub = Subscriber()
        >>> sub.push_control("pong")
        >>> sub.drain(), sub.has_pending()
        (['pong'], False)
        """
        self.take()
        return self.hand_over()

    def take(self) -> None:
        """Take what waits into hand, to be sent once durable (``hand_over``); what is
        queued after waits for the next round. Taken items still count for
        ``undo_above``.

        Example:

        >>> sub = Subscriber()
        >>> sub.push_control("pong")
        >>> sub.take(); sub.push_control("later")
        >>> sub.hand_over(), sub.drain()
        (['pong'], ['later'])
        """
        self._taken.extend(self._queue)
        self._queue.clear()
        self._pending_events = 0
        self.pending_controls = 0

    def hand_over(self) -> list[PendingFrame | Any]:
        """What was taken, in order, now to be sent; the hand is empty afterwards.

        Example: ``items = subscriber.hand_over()`` once the store synced.
        """
        items, self._taken = self._taken, []
        return items

    def undo_above(self, revision: int) -> bool:
        """Forget the queued commits above ``revision``, which the store undid (another
        replica wrote first); False, changing nothing, if this stream cannot go on
        without them: an item above it is not one commit's plain events (an ack, an
        initial or conflated frame, a deletion or revocation that ended a watch), the
        stream keeps another session's record that came from an undone commit, or it
        was told its session went. Its stream must then end, and its client resume from
        the last revision it got.

        Example:

        >>> sub = Subscriber()
        >>> sub.push_frame(PendingFrame(5, []))
        >>> sub.push_frame(PendingFrame(6, []))
        >>> sub.undo_above(5), [f.revision for f in sub.drain()]
        (True, [5])
        """
        if self.closed:
            return False  # told its session went: an undone closing, as far as it knows
        for item in itertools.chain(self._taken, self._queue):
            if _revision_of(item) > revision and not (
                    isinstance(item, PendingFrame) and item.update_type is None
                    and item.since >= revision
                    and not any(e.update_type in _ENDS_A_WATCH for e in item.events)):
                return False
        if any(r.mod_revision > revision for r in self._records.values()):
            return False
        self._taken = [i for i in self._taken if _revision_of(i) <= revision]
        self._queue = deque(i for i in self._queue if _revision_of(i) <= revision)
        self._recount()
        return True

    def _recount(self) -> None:
        self._pending_events = sum(
            len(i.events) for i in self._queue if isinstance(i, PendingFrame))
        self.pending_controls = sum(
            1 for i in self._queue if not isinstance(i, PendingFrame))

    def _conflate(self) -> None:
        # Merge each run of consecutive frames into one frame, in place. Frames never move
        # past a control note: an initial frame must stay after its Subscribed ack (the
        # client learns the variable's id from the ack), and a pong after what preceded it.
        # Per variable the latest event wins, with the old value from before the gap;
        # initial/resync types are kept so a new watcher still sees its first value as such.
        items: list[PendingFrame | Any] = []
        run: list[PendingFrame] = []
        for item in self._queue:
            if isinstance(item, PendingFrame):
                run.append(item)
                continue
            if run:
                items.append(_merge(run))
                run = []
            items.append(item)
        if run:
            items.append(_merge(run))
        self._queue = deque(items)
        self._pending_events = sum(
            len(i.events) for i in items if isinstance(i, PendingFrame)
        )
        self.conflations += 1


# Frames queued by every stream of this process (a plain int in a list: shared, cheap).
_queued = [0]
# Events after which a stream no longer watches the variable (``_deliver`` unwatches it).
_ENDS_A_WATCH = ("deleted", "revoked")


def _revision_of(item: PendingFrame | Any) -> int:
    # The store revision an item shows the client: a frame's, an ack's or a pong's
    # ``revision`` (the client may resume from it); 0 for a note that shows none.
    return int(getattr(item, "revision", 0))


def frames_queued() -> int:
    """How many frames the streams of this process have queued so far: a writer that sees
    it move during its store call knows the commit woke a stream's sender.

    Example:

    >>> before = frames_queued()
    >>> Subscriber().push_frame(PendingFrame(5, []))
    >>> frames_queued() - before
    1
    """
    return _queued[0]


def _merge(frames: list[PendingFrame]) -> PendingFrame:
    if len(frames) == 1 and frames[0].conflated:
        return frames[0]
    # Keyed by variable and channel: an optimization status event never stands in for a
    # value change (or the reverse), and one run's status never for another run's (a
    # watcher must still learn how the previous run ended).
    latest: dict[tuple[str, str], ChangeEvent] = {}
    first_old: dict[str, Any] = {}
    first_type: dict[str, str] = {}
    value_changed: set[str] = set()
    for frame in frames:
        for event in frame.events:
            var_id = event.record.id
            kind = frame.update_type or event.update_type
            optimization = kind == OPTIMIZATION_EVENT
            key = (var_id, event.source if optimization else "")
            if not optimization:
                first_old.setdefault(var_id, event.old_value)
                first_type.setdefault(var_id, kind)
            if kind == "value_change":
                value_changed.add(var_id)
            # Re-inserted, so the merged order is that of each variable's latest event:
            # commits in order, and within a commit upstream before dependents.
            latest.pop(key, None)
            latest[key] = event
    merged = []
    for (var_id, run), event in latest.items():
        if run:
            merged.append(event)
            continue
        kind = event.update_type
        if kind == "dependency_changed" and var_id in value_changed:
            kind = "value_change"  # a notification after a change must not hide the change
        if kind not in ("deleted", "revoked") and first_type[var_id] in ("initial", "resync"):
            kind = first_type[var_id]
        merged.append(
            ChangeEvent(event.record, first_old[var_id], kind, event.metadata, event.source,
                        event.sources)
        )
    return PendingFrame(
        max(f.revision for f in frames), merged, conflated=True,
        since=min(f.since for f in frames),
    )
