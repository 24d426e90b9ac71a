"""The trio scheduler: a reactivex scheduler whose actions run in the trio thread, timed by
trio's clock, and ``open_trio_scheduler`` for a scheduler that lives for one block.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import trio
from reactivex import abc, typing
from reactivex.disposable import (
    Disposable,
    MultipleAssignmentDisposable,
    SingleAssignmentDisposable,
)
from reactivex.scheduler.periodicscheduler import PeriodicScheduler

from dspex_rx.logs import get_logger

__all__ = ["TrioScheduler", "open_trio_scheduler"]

log = get_logger(__name__)

_TState = TypeVar("_TState")


class _Item:
    """One pending action: what to run, when (trio time; ``None`` = soon) and its disposable."""

    __slots__ = ("action", "cancelled", "deadline", "disposable", "state")

    def __init__(
        self, action: abc.ScheduledAction[Any], state: Any, deadline: float | None
    ) -> None:
        self.action = action
        self.state = state
        self.deadline = deadline
        self.cancelled = False
        self.disposable = SingleAssignmentDisposable()  # holds what the action returned


class TrioScheduler(PeriodicScheduler):
    """A reactivex scheduler whose actions run in the trio thread, timed by trio's clock.

    Timers are kept in one heap and run by a single driver task in ``nursery``; the driver
    sleeps in a ``trio.CancelScope`` whose deadline is the earliest due time, and exits when
    nothing is pending (so a caller's nursery can finish on its own). Actions due at the same
    time run in the order they were scheduled. ``now`` follows ``trio.current_time()``, so
    under ``trio.testing.MockClock`` debounce, throttle and sample run in virtual time.
    Construct it in the trio thread; it may be used from any thread afterwards (other
    threads hop through ``token.run_sync_soon``). After ``close()``, or once the nursery is
    cancelled, new schedules are silent no-ops.

    >>> import trio.testing
    >>> async def main():
    ...     async with trio.open_nursery() as nursery:
    ...         scheduler = TrioScheduler(nursery)
    ...         _ = scheduler.schedule_relative(0.5, lambda sch, state: print("half a second"))
    >>> trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    half a second
    """

    def __init__(self, nursery: trio.Nursery, token: trio.lowlevel.TrioToken | None = None) -> None:
        """Use ``nursery`` for the driver task and ``token`` (default: the current run's).

        Example: ``TrioScheduler(nursery, trio.lowlevel.current_trio_token())`` in a trio task.
        """
        super().__init__()
        self._nursery = nursery
        self._token = token if token is not None else trio.lowlevel.current_trio_token()
        self._clock = trio.lowlevel.current_clock()
        self._thread_id = threading.get_ident()
        # now == anchor + trio time: wall-clock UTC at construction, then trio's clock.
        self._anchor = datetime.now(UTC) - timedelta(seconds=self._clock.current_time())
        self._heap: list[tuple[float, int, _Item]] = []
        self._ready: deque[_Item] = deque()
        self._seq = itertools.count()
        self._closed = False
        self._driver_scope: trio.CancelScope | None = None
        self._wake: trio.CancelScope | None = None
        self.failed_actions = 0
        """How many scheduled actions raised (each one is logged as ``scheduled_action_failed``)."""

    @property
    def token(self) -> trio.lowlevel.TrioToken:
        """The token of the trio run the scheduler belongs to.

        Example: ``trio.from_thread.run_sync(fn, trio_token=scheduler.token)`` from a thread.
        """
        return self._token

    # -- time ---------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        """The current time as an aware UTC ``datetime`` that advances with trio's clock.

        Differences of ``now`` equal differences of ``trio.current_time()`` to the
        microsecond (``datetime``'s resolution); exactly so for whole microseconds.

        Example: under MockClock, ``await trio.sleep(1.5)`` moves ``scheduler.now`` by 1.5 s.
        """
        return self._anchor + timedelta(seconds=self._clock.current_time())

    def current_time(self) -> float:
        """The trio clock's reading: the time base of this scheduler's timers (``now`` is
        it as a ``datetime``, rounded to the microsecond).

        Example: under MockClock, ``scheduler.current_time()`` is ``trio.current_time()``.
        """
        return self._clock.current_time()

    def trio_time(self, duetime: typing.AbsoluteTime) -> float:
        """The trio clock reading at which the absolute ``duetime`` falls.

        A ``datetime`` is read on this scheduler's ``now`` scale (naive means UTC); a float
        is a POSIX timestamp, as everywhere in reactivex.

        Example: ``scheduler.trio_time(scheduler.now + timedelta(seconds=2))`` is now + 2.
        """
        when = self.to_datetime(duetime)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return (when - self._anchor).total_seconds()

    # -- state --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called or the nursery was cancelled or closed.

        Example: after ``scheduler.close()``, ``scheduler.closed`` is True.
        """
        return self._closed

    @property
    def pending(self) -> int:
        """How many scheduled actions have not run and were not disposed (trio thread).

        Example: after ``scheduler.schedule_relative(10.0, action)``, ``scheduler.pending`` is 1.
        """
        live = sum(1 for item in self._ready if not item.cancelled)
        return live + sum(1 for _, _, item in self._heap if not item.cancelled)

    def close(self) -> None:
        """Drop every pending action, stop the driver task, and ignore later schedules.

        Idempotent; callable from any thread. The nursery itself is not cancelled.

        Example: ``scheduler.close()``; a later ``scheduler.schedule(action)`` does nothing.
        """
        if self._closed:
            return
        self._closed = True
        if self._in_trio_thread():
            self._shutdown()
        else:
            self._call_soon(self._shutdown)

    # -- scheduling ---------------------------------------------------------------------

    def schedule(
        self, action: abc.ScheduledAction[_TState], state: _TState | None = None
    ) -> abc.DisposableBase:
        """Run ``action(scheduler, state)`` soon in the trio thread (FIFO with other soons).

        Example: ``scheduler.schedule(lambda sch, state: print(state), state="hello")`` prints soon.
        """
        return self._submit(_Item(action, state, None))

    def schedule_relative(
        self,
        duetime: typing.RelativeTime,
        action: abc.ScheduledAction[_TState],
        state: _TState | None = None,
    ) -> abc.DisposableBase:
        """Run ``action`` in the trio thread ``duetime`` (seconds or timedelta) from now.

        Disposing the result before it fires means it never runs; disposing it afterwards
        disposes whatever the action returned.

        Example: ``scheduler.schedule_relative(0.5, action).dispose()`` cancels it: it never runs.
        """
        seconds = self.to_seconds(duetime)
        if seconds <= 0:
            return self.schedule(action, state)
        return self._submit(_Item(action, state, self._clock.current_time() + seconds))

    def schedule_absolute(
        self,
        duetime: typing.AbsoluteTime,
        action: abc.ScheduledAction[_TState],
        state: _TState | None = None,
    ) -> abc.DisposableBase:
        """Run ``action`` in the trio thread at ``duetime`` (on ``now``'s scale).

        Example: ``scheduler.schedule_absolute(scheduler.now + timedelta(seconds=2), action)``.
        """
        deadline = self.trio_time(duetime)
        if deadline <= self._clock.current_time():
            return self.schedule(action, state)
        return self._submit(_Item(action, state, deadline))

    def schedule_periodic(
        self,
        period: typing.RelativeTime,
        action: typing.ScheduledPeriodicAction[_TState],
        state: _TState | None = None,
    ) -> abc.DisposableBase:
        """Run ``state = action(state)`` every ``period``, on a drift-free grid of trio time.

        The n-th run is due at ``start + n * period``; runs missed because the trio thread
        was busy are skipped, not replayed. An action that raises stops the series.

        >>> import trio.testing
        >>> async def main():
        ...     async with open_trio_scheduler() as scheduler:
        ...         _ = scheduler.schedule_periodic(1.0, lambda n: print(n) or n + 1, state=0)
        ...         await trio.sleep(2.5)
        >>> trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        0
        1
        """
        seconds = self.to_seconds(period)
        if seconds <= 0:
            raise ValueError(f"period must be positive, got {seconds!r}")
        disposable = MultipleAssignmentDisposable()
        start = self._clock.current_time()
        index = 1
        current: _TState | None = state

        def tick(_: abc.SchedulerBase, __: Any = None) -> None:
            nonlocal index, current
            if disposable.is_disposed:
                return
            try:
                current = action(current)
            except Exception:
                disposable.dispose()
                raise
            now = self._clock.current_time()
            index += 1
            if start + index * seconds <= now:  # fell behind: skip to the next future slot
                index = max(index, int((now - start) // seconds) + 1)
                while start + index * seconds <= now:
                    index += 1
            disposable.disposable = self._submit(_Item(tick, None, start + index * seconds))

        disposable.disposable = self._submit(_Item(tick, None, start + seconds))
        return disposable

    # -- internals: any thread -------------------------------------------------------------

    def _in_trio_thread(self) -> bool:
        return threading.get_ident() == self._thread_id

    def _call_soon(self, fn: Callable[..., None], *args: Any) -> bool:
        """Run ``fn(*args)`` in the trio thread; False when the run is over."""
        try:
            self._token.run_sync_soon(self._guarded, fn, *args)
        except trio.RunFinishedError:
            self._closed = True
            return False
        return True

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        # run_sync_soon callbacks must never raise: that would crash the trio run.
        try:
            fn(*args)
        except Exception:
            log.exception("trio_scheduler_callback_failed", callback=getattr(fn, "__name__", fn))

    def _submit(self, item: _Item) -> abc.DisposableBase:
        if self._closed:
            return Disposable()
        if self._in_trio_thread():
            self._enqueue(item)
            if self._closed:
                return Disposable()
        elif not self._call_soon(self._enqueue, item):
            return Disposable()
        return Disposable(lambda: self._cancel(item))

    def _cancel(self, item: _Item) -> None:
        if item.cancelled:
            item.disposable.dispose()
            return
        item.cancelled = True
        item.disposable.dispose()
        if self._in_trio_thread():
            self._poke()
        else:
            self._call_soon(self._poke)

    # -- internals: trio thread only ------------------------------------------------------

    def _accepting(self) -> bool:
        if self._closed:
            return False
        if self._nursery.cancel_scope.cancel_called:
            self._shutdown()
            return False
        return True

    def _enqueue(self, item: _Item) -> None:
        if item.cancelled or not self._accepting():
            return
        if item.deadline is None:
            self._ready.append(item)
        else:
            heapq.heappush(self._heap, (item.deadline, next(self._seq), item))
        self._poke()

    def _next_deadline(self) -> float | None:
        """-inf if something is ready, the earliest live timer, or None when idle."""
        if self._ready:
            return -math.inf
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _poke(self) -> None:
        """Make the driver notice a change: start it, wake it, or move its deadline."""
        if self._closed:
            return
        deadline = self._next_deadline()
        if self._driver_scope is None:
            if deadline is not None:
                self._start_driver()
            return
        wake = self._wake
        if wake is None:  # the driver is running actions; it re-reads the queues after
            return
        if deadline is None or deadline == -math.inf:
            wake.cancel()  # run now, or nothing left: let the driver go idle
        else:
            wake.deadline = deadline

    def _start_driver(self) -> None:
        scope = trio.CancelScope()
        try:
            self._nursery.start_soon(self._drive, scope, name="dspex_rx.rx.TrioScheduler")
        except RuntimeError:  # the nursery is closed to new tasks
            self._shutdown()
            return
        self._driver_scope = scope

    async def _drive(self, scope: trio.CancelScope) -> None:
        idle = False
        try:
            with scope:
                while not self._closed:
                    self._run_due()
                    deadline = self._next_deadline()
                    if deadline is None:
                        idle = True
                        return
                    if deadline == -math.inf:
                        await trio.lowlevel.checkpoint()  # let other tasks run between passes
                        continue
                    with trio.CancelScope(deadline=deadline) as wake:
                        self._wake = wake
                        await trio.sleep_forever()
                    self._wake = None
        finally:
            self._wake = None
            self._driver_scope = None
            if not idle:  # closed, or cancelled from outside (nursery shutting down)
                self._shutdown()

    def _run_due(self) -> None:
        now = self._clock.current_time()
        heap, ready = self._heap, self._ready
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)[2]
            if not item.cancelled:
                ready.append(item)
        for _ in range(len(ready)):  # only what is ready now; later soons wait a pass
            if self._closed:
                return
            self._invoke(ready.popleft())

    def _invoke(self, item: _Item) -> None:
        if item.cancelled:
            return
        try:
            result = self.invoke_action(item.action, item.state)
        except Exception as exc:
            self.failed_actions += 1
            log.exception(
                "scheduled_action_failed",
                action=getattr(item.action, "__qualname__", repr(item.action)),
                error=repr(exc),
            )
            return
        item.disposable.disposable = result

    def _shutdown(self) -> None:
        self._closed = True
        for _, _, item in self._heap:
            item.cancelled = True
        for item in self._ready:
            item.cancelled = True
        self._heap.clear()
        self._ready.clear()
        if self._driver_scope is not None:
            self._driver_scope.cancel()


@asynccontextmanager
async def open_trio_scheduler() -> AsyncIterator[TrioScheduler]:
    """A ``TrioScheduler`` on a nursery that lives for the block; leaving the block closes
    it, so pending timers are cancelled (never run) and no task is left behind.

    >>> import trio.testing
    >>> async def main():
    ...     async with open_trio_scheduler() as scheduler:
    ...         _ = scheduler.schedule_relative(10.0, lambda sch, state: print("never"))
    ...     print("closed:", scheduler.closed, "pending:", scheduler.pending)
    >>> trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    closed: True pending: 0
    """

    async with trio.open_nursery() as nursery:
        scheduler = TrioScheduler(nursery)
        try:
            yield scheduler
        finally:
            scheduler.close()
