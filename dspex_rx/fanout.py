"""Per-stream outgoing queues on the server: which variables a stream watches, the frames and
control notes waiting to be sent, and conflation so a slow stream's memory stays bounded.

No gRPC and no asyncio here: the stream handler drains a ``Subscriber`` when woken.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .limits import too_many
from .store import OPTIMIZATION_EVENT, ChangeEvent, Commit


@dataclass(slots=True)
class PendingFrame:
    """Events for one stream from one commit (or several, once conflated).

    Example::

        PendingFrame(revision=7, events=[event], conflated=False)
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

    Example::

        sub = Subscriber(wake=event.set)
        sub.watch(["var_t_1"]); store.add_listener(sid, sub.on_commit)
        for item in sub.drain(): send(item)
    """

    def __init__(
        self,
        wake: Callable[[], None] = lambda: None,
        max_pending_events: int = 10_000,
        session_id: str = "",
        max_watched: int | None = None,
    ) -> None:
        self.session_id = session_id
        self.watched: set[str] = set()
        self.max_pending_events = max_pending_events
        self.max_watched = max_watched
        self.conflations = 0
        self.closed = False
        self.pending_controls = 0
        self._wake = wake
        self._queue: deque[PendingFrame | Any] = deque()
        self._pending_events = 0

    def check_room(self, variable_ids: Iterable[str]) -> None:
        """Raise ``ResourceExhaustedError`` if watching these too would pass ``max_watched``
        (the limit ``max_subscriptions_per_stream``); changes nothing.

        Example::

            sub.check_room(["var_t_1"]); sub.watch(["var_t_1"])
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

        Example::

            sub.watch(["var_t_1"])
        """
        self.watched.update(variable_ids)

    def unwatch(self, variable_ids: Iterable[str]) -> None:
        """Stop delivering these variables' commits (frames already queued stay).

        Example::

            sub.unwatch(["var_t_1"])
        """
        self.watched.difference_update(variable_ids)

    def on_commit(self, commit: Commit | None) -> None:
        """Store listener: queue the watched part of a commit (None: the session is gone).

        Example::

            store.add_listener(sid, sub.on_commit)
        """
        if commit is None:
            self.closed = True
            self._wake()
            return
        watched = self.watched
        events = [e for e in commit.events if e.record.id in watched]
        if not events:
            return
        for event in events:
            if event.update_type == "deleted":
                watched.discard(event.record.id)
        self.push_frame(PendingFrame(commit.revision, events))

    def push_frame(self, frame: PendingFrame) -> None:
        """Queue a frame (live, initial, replayed or resync) and wake the sender.

        Example::

            sub.push_frame(PendingFrame(5, events, update_type="initial"))
        """
        self._queue.append(frame)
        self._pending_events += len(frame.events)
        if self._pending_events > self.max_pending_events:
            self._conflate()
        self._wake()

    def push_control(self, item: Any) -> None:
        """Queue a control note (ack, pong) in order with the frames and wake the sender.

        Example::

            sub.push_control(pong_message)
        """
        self._queue.append(item)
        self.pending_controls += 1
        self._wake()

    def has_pending(self) -> bool:
        """True while anything waits to be sent.

        Example::

            if not sub.has_pending(): send_progress()
        """
        return bool(self._queue)

    def drain(self) -> list[PendingFrame | Any]:
        """Everything waiting, in order; the queue is empty afterwards.

        Example::

            for item in sub.drain(): ...
        """
        items = list(self._queue)
        self._queue.clear()
        self._pending_events = 0
        self.pending_controls = 0
        return items

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
        if kind != "deleted" and first_type[var_id] in ("initial", "resync"):
            kind = first_type[var_id]
        merged.append(
            ChangeEvent(event.record, first_old[var_id], kind, event.metadata, event.source)
        )
    return PendingFrame(
        max(f.revision for f in frames), merged, conflated=True,
        since=min(f.since for f in frames),
    )
