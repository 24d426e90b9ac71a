"""The ``throttle_latest`` operator: a throttle with a trailing edge, used by watches."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, SerialDisposable
from reactivex.scheduler import TimeoutScheduler

from dspex_rx.rx.scheduler import TrioScheduler

__all__ = ["throttle_latest"]

_T = TypeVar("_T")


def throttle_latest(
    window_s: float,
    scheduler: abc.SchedulerBase | None = None,
    passthrough: Callable[[_T], bool] | None = None,
) -> Callable[[Observable[_T]], Observable[_T]]:
    """Throttle with a trailing edge: the first value after a quiet period passes at once
    and opens a ``window_s`` window; during the window only the latest value is kept; at
    the window's end a kept value is emitted and opens the next window, else the window
    closes. Completion flushes a kept value before completing, so the last value is never
    dropped; an error drops it and passes the error on.

    Values for which ``passthrough(value)`` is true (a watch's initial value) are emitted
    at once and neither open nor touch a window.

    Uses ``scheduler``, else the subscribe-time scheduler, else reactivex's TimeoutScheduler.

    Values at t=0, 0.1, ..., 0.9 with a 1 s window: 0 passes at t=0, 9 at t=1.0.

    >>> import trio, trio.testing
    >>> from reactivex.subject import Subject
    >>> from dspex_rx.rx.scheduler import open_trio_scheduler
    >>> async def main():
    ...     async with open_trio_scheduler() as scheduler:
    ...         subject, start = Subject(), trio.current_time()
    ...         _ = subject.pipe(throttle_latest(1.0, scheduler)).subscribe(
    ...             lambda value: print(value, round(trio.current_time() - start, 1)))
    ...         for value in range(10):
    ...             subject.on_next(value)
    ...             await trio.sleep(0.1)
    ...         await trio.sleep(0.5)
    >>> trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    0 0.0
    9 1.0
    """

    if not window_s > 0:
        raise ValueError(f"window_s must be positive, got {window_s!r}")

    def operator(source: Observable[_T]) -> Observable[_T]:
        def subscribe(
            observer: abc.ObserverBase[_T], scheduler_: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            timer_scheduler = scheduler or scheduler_ or TimeoutScheduler.singleton()
            lock = threading.RLock()
            timer = SerialDisposable()
            held: list[_T] = []  # the latest value seen during the window (0 or 1 items)
            window_open = False
            stopped = False
            # On a TrioScheduler a value and the window's timer can be woken in one trio
            # batch, run in any order: a value that finds the window over closes it first
            # (below), by the clock the timer runs on. Not on a wall-clock scheduler: its
            # ``now`` may step (NTP) while its timers run on a monotonic clock.
            clock = (timer_scheduler.current_time
                     if isinstance(timer_scheduler, TrioScheduler) else None)
            # The open window's end on that clock, and its number: a window closed early
            # leaves its timer behind, which must not close the next window.
            ends_at, windows = 0.0, 0

            def open_window() -> None:
                nonlocal window_open, ends_at, windows
                window_open, windows = True, windows + 1
                if clock is not None:
                    ends_at = clock() + window_s
                timer.disposable = timer_scheduler.schedule_relative(
                    window_s, window_end, windows)

            def window_over() -> bool:
                return window_open and clock is not None and clock() >= ends_at

            def window_end(_: abc.SchedulerBase | None = None, window: Any = None) -> None:
                nonlocal window_open
                with lock:
                    if stopped or not window_open or window not in (None, windows):
                        return
                    if held:
                        value = held.pop()
                        open_window()
                        observer.on_next(value)
                    else:
                        window_open = False

            def on_next(value: _T) -> None:
                with lock:
                    if stopped:
                        return
                    if window_over():
                        window_end()  # its timer has not run yet: this value is later
                    if passthrough is not None and passthrough(value):
                        observer.on_next(value)
                    elif window_open:
                        held[:] = [value]
                    else:
                        open_window()
                        observer.on_next(value)

            def on_error(error: Exception) -> None:
                nonlocal stopped
                with lock:
                    if window_over():
                        window_end()  # its end came before the error: it emits as due
                    stopped = True
                    held.clear()
                    timer.dispose()
                    observer.on_error(error)

            def on_completed() -> None:
                nonlocal stopped
                with lock:
                    stopped = True
                    timer.dispose()
                    if held:
                        observer.on_next(held.pop())
                    observer.on_completed()

            subscription = source.subscribe(on_next, on_error, on_completed, scheduler=scheduler_)
            return CompositeDisposable(subscription, timer)

        return Observable(subscribe)

    return operator
