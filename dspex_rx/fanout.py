"""Per-stream outgoing queues on the server: which variables a stream watches, the frames and
control notes waiting to be sent, and conflation so a slow stream's memory stays bounded.

No gRPC and no asyncio here: the stream handler drains a ``Subscriber`` when woken.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .store import ChangeEvent, Commit


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
    ) -> None:
        self.session_id = session_id
        self.watched: set[str] = set()
        self.max_pending_events = max_pending_events
        self.conflations = 0
        self.closed = False
        self._wake = wake
        self._queue: deque[PendingFrame | Any] = deque()
        self._pending_events = 0

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
        return items

    def _conflate(self) -> None:
        # Merge every waiting frame into one, at the first frame's place. Per variable the
        # latest event wins, with the old value the watcher last saw before the gap.
        latest: dict[str, ChangeEvent] = {}
        first_old: dict[str, Any] = {}
        items: list[PendingFrame | Any] = []
        slot = -1
        revision = 0
        for item in self._queue:
            if isinstance(item, PendingFrame):
                if slot < 0:
                    slot = len(items)
                    items.append(None)
                revision = max(revision, item.revision)
                for event in item.events:
                    first_old.setdefault(event.record.id, event.old_value)
                    if item.update_type is not None and item.update_type != event.update_type:
                        event = ChangeEvent(
                            event.record, event.old_value, item.update_type, event.metadata,
                            event.source,
                        )
                    latest[event.record.id] = event
            else:
                items.append(item)
        merged = sorted(latest.values(), key=lambda e: e.record.mod_revision)
        items[slot] = PendingFrame(
            revision,
            [
                ChangeEvent(e.record, first_old[e.record.id], e.update_type, e.metadata, e.source)
                for e in merged
            ],
            conflated=True,
        )
        self._queue = deque(items)
        self._pending_events = len(merged)
        self.conflations += 1
