"""What one browser connection reads: the updates of the variables it follows, in order, in
a bounded buffer that drops a variable's older changes (never its latest) when it falls
behind."""

from __future__ import annotations

from collections import deque
from dataclasses import replace

import anyio
import reactivex
from reactivex import abc as rx_abc

from dspex_rx.client.updates import VariableUpdate

DEFAULT_MAX_BUFFER = 256


def conflate(pending: deque[VariableUpdate]) -> deque[VariableUpdate]:
    """Keep each variable's latest update only, in the order those latest ones arrived,
    each marked ``conflated`` when an older one of its variable was dropped.

    Example: ``conflate(deque([a1, b1, a2]))`` keeps ``b1`` then ``a2`` (marked conflated).
    """
    last: dict[str, int] = {}
    dropped: set[str] = set()
    for i, update in enumerate(pending):
        if update.name in last:
            dropped.add(update.name)
        last[update.name] = i
    return deque(
        replace(u, conflated=True) if u.name in dropped and not u.conflated else u
        for i, u in enumerate(pending) if last[u.name] == i
    )


class Feed:
    """Updates from any number of observables, read with ``await feed.next()``.

    Callbacks and the reader run on one thread (the session's trio run, or under asyncio
    the loop the observables call back on), so no lock is needed. The buffer holds at most
    ``max_buffer`` updates: when a reader falls that far behind, each variable keeps only
    its latest pending update (marked ``conflated``), and if the buffer is still full (more
    variables than room) the oldest pending update is dropped and ``dropped`` counts it. A
    browser that cannot keep up sees fewer intermediate values, never a stale last one, and
    the bridge's memory stays bounded.

    Example: ``feed.follow(session.observe("t"))`` then ``await feed.next()`` is t's
    current value.
    """

    def __init__(self, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be at least 1, got {max_buffer}")
        self.max_buffer = max_buffer
        self.pending: deque[VariableUpdate] = deque()
        self.dropped = 0
        self.conflations = 0
        self.following: dict[str, rx_abc.DisposableBase] = {}
        self.error: BaseException | None = None
        self._wake = anyio.Event()

    def push(self, update: VariableUpdate) -> None:
        """Buffer one update (an observer's ``on_next``) and wake the reader.

        Example: ``feed.push(update)`` then ``await feed.next()`` returns it.
        """
        self.pending.append(update)
        if len(self.pending) > self.max_buffer:
            self.pending = conflate(self.pending)
            self.conflations += 1
            while len(self.pending) > self.max_buffer:
                self.pending.popleft()
                self.dropped += 1
        self._wake.set()

    def follow(
        self, observable: reactivex.Observable[VariableUpdate], key: str, fatal: bool = True
    ) -> None:
        """Subscribe to ``observable`` under ``key`` (a variable name); a key already
        followed is left as it is. An error of a ``fatal`` source ends the feed (``next``
        raises it); another one only stops following that key.

        Example: ``feed.follow(session.observe("t"), "t")``.
        """
        if key in self.following:
            return

        ended: list[bool] = []

        def completed() -> None:
            ended.append(True)
            self.following.pop(key, None)  # a deleted variable may come back: follow it then

        def failed(error: Exception) -> None:
            completed()
            if fatal:
                self.error = error
                self._wake.set()

        subscription = observable.subscribe(self.push, failed, completed)
        if not ended:  # a source may end while subscribing: then it is not followed
            self.following[key] = subscription

    async def next(self, timeout: float | None = None) -> VariableUpdate | None:
        """The oldest buffered update, waiting for one (None after ``timeout`` seconds).

        Example: ``update = await feed.next(15)`` is None if nothing came in 15 s.
        """
        with anyio.move_on_after(timeout):
            while not self.pending:
                if self.error is not None:
                    raise self.error
                await self._wake.wait()
                self._wake = anyio.Event()
        if self.pending:
            return self.pending.popleft()
        return None

    def close(self) -> None:
        """Unsubscribe from everything followed.

        Example: ``feed.close()`` when the browser went away.
        """
        for subscription in self.following.values():
            subscription.dispose()
        self.following.clear()

