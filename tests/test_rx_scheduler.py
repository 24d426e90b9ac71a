"""TrioScheduler, TrioObservable and throttle_latest, all on trio's MockClock (virtual time).

Event times in these tests are dyadic fractions (0.25, 0.125, ...), so sums are exact
floats, and no input event shares a virtual instant with a timer (trio runs tasks woken at
the same instant in an unspecified order), except where a test puts one there on purpose,
before any checkpoint lets the timer run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import reactivex
import trio
import trio.testing
from reactivex import abc
from reactivex import operators as ops
from reactivex.disposable import Disposable
from reactivex.scheduler import HistoricalScheduler
from reactivex.subject import Subject

from dspex_rx.rx import (
    TrioObservable,
    TrioScheduler,
    open_trio_scheduler,
    throttle_latest,
    with_trio_scheduler,
)


class Recorder:
    """Observer that notes each value, the virtual time (relative to t0) and the thread."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.values: list[Any] = []
        self.times: list[float] = []
        self.threads: set[int] = set()
        self.errors: list[Exception] = []
        self.completed_at: float | None = None

    def on_next(self, value: Any) -> None:
        self.values.append(value)
        self.times.append(trio.current_time() - self.t0)
        self.threads.add(threading.get_ident())

    def on_error(self, error: Exception) -> None:
        self.errors.append(error)

    def on_completed(self) -> None:
        self.completed_at = trio.current_time() - self.t0

    def subscribe(
        self, source: reactivex.Observable[Any], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        return source.subscribe(self.on_next, self.on_error, self.on_completed, scheduler=scheduler)


async def feed(
    subject: Subject[Any],
    t0: float,
    events: Sequence[tuple[float, Any]],
    complete_at: float | None = None,
) -> None:
    """Push each value at t0 + its offset from this (the trio) task, then maybe complete."""
    for at, value in events:
        await trio.sleep_until(t0 + at)
        subject.on_next(value)
    if complete_at is not None:
        await trio.sleep_until(t0 + complete_at)
        subject.on_completed()


def recorder_action(log: list[Any], t0: float, name: str) -> Any:
    def action(scheduler: abc.SchedulerBase, state: Any = None) -> None:
        log.append((name, trio.current_time() - t0))

    return action


# -- TrioScheduler ----------------------------------------------------------------------


async def test_schedule_relative_fires_at_exact_virtual_time(autojump_clock: Any) -> None:
    async with open_trio_scheduler() as scheduler:
        t0 = trio.current_time()
        ran: list[Any] = []
        scheduler.schedule_relative(1.5, recorder_action(ran, t0, "float"))
        scheduler.schedule_relative(timedelta(seconds=0.25), recorder_action(ran, t0, "delta"))
        scheduler.schedule_relative(1.5, recorder_action(ran, t0, "same-time-later"))
        await trio.sleep(5)
    assert ran == [("delta", 0.25), ("float", 1.5), ("same-time-later", 1.5)]


async def test_dispose_before_due_prevents_the_action(autojump_clock: Any) -> None:
    async with open_trio_scheduler() as scheduler:
        t0 = trio.current_time()
        ran: list[Any] = []
        cancelled = scheduler.schedule_relative(1.0, recorder_action(ran, t0, "cancelled"))
        scheduler.schedule_relative(2.0, recorder_action(ran, t0, "kept"))
        await trio.sleep(0.5)
        assert scheduler.pending == 2
        cancelled.dispose()
        assert scheduler.pending == 1
        await trio.sleep(5)
        assert ran == [("kept", 2.0)]
        assert scheduler.pending == 0


async def test_disposing_after_it_ran_disposes_what_the_action_returned(
    autojump_clock: Any,
) -> None:
    async with open_trio_scheduler() as scheduler:
        released: list[str] = []

        def action(name: str) -> Any:
            def run(sch: abc.SchedulerBase, state: Any = None) -> abc.DisposableBase:
                return Disposable(lambda: released.append(name))

            return run

        timed = scheduler.schedule_relative(1.0, action("timed"))
        soon = scheduler.schedule(action("soon"))
        await trio.sleep(2)
        assert released == []
        timed.dispose()
        soon.dispose()
        assert released == ["timed", "soon"]


async def test_schedule_absolute(autojump_clock: Any) -> None:
    async with open_trio_scheduler() as scheduler:
        t0 = trio.current_time()
        ran: list[Any] = []
        scheduler.schedule_absolute(
            scheduler.now + timedelta(seconds=2.5), recorder_action(ran, t0, "abs")
        )
        assert scheduler.trio_time(scheduler.now + timedelta(seconds=2.5)) == t0 + 2.5
        scheduler.schedule_absolute(
            scheduler.now - timedelta(seconds=3), recorder_action(ran, t0, "past")
        )
        await trio.sleep(5)
    assert ran == [("past", 0.0), ("abs", 2.5)]


async def test_schedule_runs_soon_in_order_with_state(autojump_clock: Any) -> None:
    async with open_trio_scheduler() as scheduler:
        t0 = trio.current_time()
        calls: list[Any] = []

        def action(sch: abc.SchedulerBase, state: Any = None) -> None:
            calls.append((state, sch is scheduler, trio.current_time() - t0))

        for i in range(5):
            scheduler.schedule(action, state=i)
        scheduler.schedule_relative(0, action, state="zero delay")
        assert calls == []  # soon, not inline
        await trio.testing.wait_all_tasks_blocked()
        assert calls == [(i, True, 0.0) for i in range(5)] + [("zero delay", True, 0.0)]


async def test_now_tracks_trio_time_exactly(autojump_clock: Any) -> None:
    async with open_trio_scheduler() as scheduler:
        t0, n0 = trio.current_time(), scheduler.now
        assert n0.tzinfo is UTC
        for step in (1.25, 0.5, 1000.0, 0.0625):
            await trio.sleep(step)
            elapsed = scheduler.now - n0
            assert elapsed.total_seconds() == trio.current_time() - t0
        assert scheduler.now - n0 == timedelta(seconds=1001.8125)


async def test_schedule_periodic_on_trio_time(autojump_clock: Any) -> None:
    async with open_trio_scheduler() as scheduler:
        t0 = trio.current_time()
        seen: list[tuple[int, float]] = []

        def tick(n: int | None) -> int:
            assert n is not None
            seen.append((n, trio.current_time() - t0))
            return n + 1

        periodic = scheduler.schedule_periodic(0.75, tick, state=0)
        await trio.sleep(2.5)
        periodic.dispose()
        await trio.sleep(5)
        assert seen == [(0, 0.75), (1, 1.5), (2, 2.25)]
        assert scheduler.pending == 0


async def test_failing_action_is_logged_counted_and_others_still_run(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="dspex_rx.rx")
    async with open_trio_scheduler() as scheduler:
        t0 = trio.current_time()
        ran: list[Any] = []

        def boom(sch: abc.SchedulerBase, state: Any = None) -> None:
            raise ZeroDivisionError("boom")

        scheduler.schedule(boom)
        scheduler.schedule(recorder_action(ran, t0, "soon"))
        scheduler.schedule_relative(1.0, boom)
        scheduler.schedule_relative(2.0, recorder_action(ran, t0, "later"))
        await trio.sleep(3)
        assert ran == [("soon", 0.0), ("later", 2.0)]
        assert scheduler.failed_actions == 2
        assert not scheduler.closed
    failures = [r for r in caplog.records if "scheduled_action_failed" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.levelno == logging.ERROR for r in failures)
    assert "ZeroDivisionError" in failures[0].getMessage()
    assert "boom" in failures[0].getMessage()


async def test_leaving_the_block_cancels_pending_timers(autojump_clock: Any) -> None:
    ran: list[Any] = []
    task = trio.lowlevel.current_task()
    nurseries_before = list(task.child_nurseries)
    async with open_trio_scheduler() as scheduler:
        t0 = trio.current_time()
        scheduler.schedule_relative(10.0, recorder_action(ran, t0, "timer"))
        scheduler.schedule_periodic(1.0, lambda state: ran.append("tick"))
        await trio.sleep(0.5)
        [nursery] = [n for n in task.child_nurseries if n not in nurseries_before]
        assert len(nursery.child_tasks) == 1  # one driver task, however many timers
        t_exit = trio.current_time()
    assert trio.current_time() == t_exit  # leaving did not wait for the timers
    assert task.child_nurseries == nurseries_before
    assert scheduler.closed
    assert scheduler.pending == 0
    # late schedules after close are harmless no-ops
    late = scheduler.schedule(recorder_action(ran, t0, "late"))
    scheduler.schedule_relative(1.0, recorder_action(ran, t0, "late timer"))
    late.dispose()
    await trio.sleep(20)
    assert ran == []


async def test_cancelled_nursery_closes_the_scheduler(autojump_clock: Any) -> None:
    ran: list[Any] = []
    async with trio.open_nursery() as nursery:
        scheduler = TrioScheduler(nursery)
        t0 = trio.current_time()
        scheduler.schedule_relative(5.0, recorder_action(ran, t0, "timer"))
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert trio.current_time() - t0 == 1.0
    assert scheduler.closed
    scheduler.schedule(recorder_action(ran, t0, "late"))
    await trio.sleep(10)
    assert ran == []


async def test_driver_exits_when_idle_so_a_user_nursery_can_finish(autojump_clock: Any) -> None:
    ran: list[Any] = []
    async with trio.open_nursery() as nursery:
        scheduler = TrioScheduler(nursery)
        t0 = trio.current_time()
        scheduler.schedule_relative(1.5, recorder_action(ran, t0, "timer"))
    assert ran == [("timer", 1.5)]
    assert trio.current_time() - t0 == 1.5
    assert not scheduler.closed
    scheduler.schedule(recorder_action(ran, t0, "after"))  # the nursery is gone: no-op
    assert scheduler.closed
    await trio.sleep(1)
    assert ran == [("timer", 1.5)]


async def test_close_stops_the_driver_in_a_user_nursery(autojump_clock: Any) -> None:
    ran: list[Any] = []
    async with trio.open_nursery() as nursery:
        scheduler = TrioScheduler(nursery)
        t0 = trio.current_time()
        scheduler.schedule_relative(5.0, recorder_action(ran, t0, "timer"))
        await trio.sleep(1.0)
        scheduler.close()
        scheduler.close()  # idempotent
    assert trio.current_time() - t0 == 1.0
    assert ran == []


async def test_scheduling_from_a_worker_thread_runs_in_the_trio_thread(
    mock_clock: trio.testing.MockClock,
) -> None:
    # mock_clock (no autojump): virtual time moves only when the test jumps it, so it cannot
    # race the worker thread.
    trio_thread = threading.get_ident()
    async with open_trio_scheduler() as scheduler:
        t0, n0 = trio.current_time(), scheduler.now
        ran: list[tuple[str, int, float]] = []
        done = trio.Event()

        def action(name: str) -> Any:
            def run(sch: abc.SchedulerBase, state: Any = None) -> None:
                ran.append((name, threading.get_ident(), trio.current_time() - t0))
                if name == "later":
                    done.set()

            return run

        def from_worker() -> tuple[int, Any]:
            scheduler.schedule(action("soon"))
            scheduler.schedule_relative(1.0, action("later"))
            scheduler.schedule_relative(0.5, action("disposed")).dispose()
            return threading.get_ident(), scheduler.now

        worker, now_in_worker = await trio.to_thread.run_sync(from_worker)
        assert worker != trio_thread
        assert now_in_worker == n0
        await trio.testing.wait_all_tasks_blocked()
        assert ran == [("soon", trio_thread, 0.0)]
        mock_clock.jump(1.0)
        await done.wait()
        assert ran == [("soon", trio_thread, 0.0), ("later", trio_thread, 1.0)]
        assert scheduler.pending == 0


async def test_close_from_a_worker_thread(mock_clock: trio.testing.MockClock) -> None:
    ran: list[Any] = []
    async with open_trio_scheduler() as scheduler:
        t0 = trio.current_time()
        scheduler.schedule_relative(1.0, recorder_action(ran, t0, "timer"))
        await trio.to_thread.run_sync(scheduler.close)
        await trio.testing.wait_all_tasks_blocked()
        assert scheduler.pending == 0
        mock_clock.jump(2.0)
        await trio.testing.wait_all_tasks_blocked()
    assert ran == []


# -- reactivex operators through TrioObservable -------------------------------------------


async def test_debounce_on_trio_time_in_the_trio_thread(autojump_clock: Any) -> None:
    trio_thread = threading.get_ident()
    async with open_trio_scheduler() as scheduler:
        t0 = trio.current_time()
        subject: Subject[int] = Subject()
        rec = Recorder(t0)
        rec.subscribe(with_trio_scheduler(subject, scheduler).pipe(ops.debounce(0.5)))
        events = [(0.25, 1), (0.5, 2), (0.625, 3), (2.0, 4), (3.0, 5), (3.25, 6)]
        await feed(subject, t0, events)
        await trio.sleep(2)
    assert rec.values == [3, 4, 6]
    assert rec.times == [1.125, 2.5, 3.75]
    assert rec.threads == {trio_thread}
    assert threading.current_thread() is threading.main_thread()


async def test_throttle_first_on_trio_time(autojump_clock: Any) -> None:
    async with open_trio_scheduler() as scheduler:
        t0 = trio.current_time()
        subject: Subject[str] = Subject()
        rec = Recorder(t0)
        rec.subscribe(with_trio_scheduler(subject, scheduler).pipe(ops.throttle_first(1.0)))
        events = [(0.25, "a"), (0.5, "b"), (1.0, "c"), (1.5, "d"), (2.5, "e"), (2.75, "f")]
        await feed(subject, t0, events)
    # "e" comes exactly 1.0 after "d": the window boundary is exact on trio time
    assert rec.values == ["a", "d", "e"]
    assert rec.times == [0.25, 1.5, 2.5]


async def test_sample_on_trio_time(autojump_clock: Any) -> None:
    async with open_trio_scheduler() as scheduler:
        t0 = trio.current_time()
        subject: Subject[int] = Subject()
        rec = Recorder(t0)
        rec.subscribe(with_trio_scheduler(subject, scheduler).pipe(ops.sample(1.0)))
        events = [(0.25, 1), (0.5, 2), (1.5, 3), (3.25, 4)]
        await feed(subject, t0, events, complete_at=4.5)
        await trio.sleep(2)
        assert scheduler.pending == 0  # completion disposed the sampling interval
    assert rec.values == [2, 3, 4]
    assert rec.times == [1.0, 2.0, 4.0]
    assert rec.completed_at == 5.0


async def test_chained_pipes_keep_trio_time(autojump_clock: Any) -> None:
    async with open_trio_scheduler() as scheduler:
        t0 = trio.current_time()
        subject: Subject[int] = Subject()

        def times_ten(x: int) -> int:
            return x * 10

        piped = (
            with_trio_scheduler(subject, scheduler)
            .pipe(ops.map(times_ten))
            .pipe(ops.debounce(0.5))
            .pipe(ops.filter(lambda x: x != 20))
        )
        assert isinstance(piped, TrioObservable)
        assert piped.scheduler is scheduler
        rec = Recorder(t0)
        rec.subscribe(piped)
        await feed(subject, t0, [(0.25, 1), (1.0, 2), (2.0, 3), (2.25, 4)])
        await trio.sleep(2)
    assert rec.values == [10, 40]
    assert rec.times == [0.75, 2.75]


async def test_fluent_operator_methods_keep_trio_time(autojump_clock: Any) -> None:
    async with open_trio_scheduler() as scheduler:
        t0 = trio.current_time()
        subject: Subject[int] = Subject()
        fluent = with_trio_scheduler(subject, scheduler).debounce(0.5).map(lambda x: x + 1)
        assert isinstance(fluent, TrioObservable)
        rec = Recorder(t0)
        rec.subscribe(fluent)
        await feed(subject, t0, [(0.25, 1), (0.5, 2)])
        await trio.sleep(2)
    assert rec.values == [3]
    assert rec.times == [1.0]


async def test_explicit_scheduler_overrides_the_trio_scheduler(autojump_clock: Any) -> None:
    async with open_trio_scheduler() as scheduler:
        t0 = trio.current_time()
        subject: Subject[int] = Subject()
        other = HistoricalScheduler()
        rec = Recorder(t0)
        obs = with_trio_scheduler(subject, scheduler).pipe(ops.debounce(0.5))
        rec.subscribe(obs, scheduler=other)
        subject.on_next(7)
        await trio.sleep(5)
        assert rec.values == []  # trio time does not drive it
        assert scheduler.pending == 0
        other.advance_by(0.5)
        assert rec.values == [7]
        assert rec.times == [5.0]


async def test_with_trio_scheduler_reuses_a_bound_observable() -> None:
    async with open_trio_scheduler() as scheduler:
        subject: Subject[int] = Subject()
        bound = with_trio_scheduler(subject, scheduler)
        assert with_trio_scheduler(bound, scheduler) is bound
        assert bound.source is subject
        assert bound.pipe() is bound
        async with open_trio_scheduler() as other:
            rebound = with_trio_scheduler(bound, other)
            assert rebound is not bound
            assert rebound.scheduler is other


# -- throttle_latest ----------------------------------------------------------------------


async def throttled(
    events: Sequence[tuple[float, Any]],
    window_s: float = 1.0,
    complete_at: float | None = None,
    settle: float = 5.0,
) -> Recorder:
    async with open_trio_scheduler() as scheduler:
        t0 = trio.current_time()
        subject: Subject[Any] = Subject()
        rec = Recorder(t0)
        rec.subscribe(with_trio_scheduler(subject, scheduler).pipe(throttle_latest(window_s)))
        await feed(subject, t0, events, complete_at=complete_at)
        await trio.sleep(settle)
        assert scheduler.pending == 0  # the last window closed
    return rec


@asynccontextmanager
async def throttling(
    window_s: float = 1.0,
) -> AsyncIterator[tuple[TrioScheduler, Subject[Any], Recorder]]:
    """A subject throttled by ``throttle_latest(window_s)`` on a trio scheduler, into a
    Recorder whose t0 is now."""
    async with open_trio_scheduler() as scheduler:
        subject: Subject[Any] = Subject()
        rec = Recorder(trio.current_time())
        rec.subscribe(with_trio_scheduler(subject, scheduler).pipe(throttle_latest(window_s)))
        yield scheduler, subject, rec


async def test_throttle_latest_burst_yields_first_and_last(autojump_clock: Any) -> None:
    burst = [(i * 0.0029296875, i) for i in range(100)]  # 100 values within 0.29 s
    rec = await throttled([*burst, (5.0, "after quiet")])
    assert rec.values == [0, 99, "after quiet"]
    assert rec.times == [0.0, 1.0, 5.0]  # the window closed at 2.0, so 5.0 passes at once


async def test_throttle_latest_long_stream_keeps_the_final_value(autojump_clock: Any) -> None:
    events = [(0.125 + 0.3125 * i, i) for i in range(15)]  # up to 4.5 s
    rec = await throttled(events)
    assert rec.values == [0, 3, 6, 9, 12, 14]
    assert rec.times == [0.125, 1.125, 2.125, 3.125, 4.125, 5.125]


async def test_throttle_latest_window_closes_when_quiet(autojump_clock: Any) -> None:
    rec = await throttled([(0.0, "a"), (1.5, "b"), (1.75, "c"), (2.25, "d"), (4.0, "e")])
    # a opens [0,1) which ends empty; b opens [1.5,2.5); d is emitted at 2.5 and opens
    # [2.5,3.5), which ends empty; e passes at once.
    assert rec.values == ["a", "b", "d", "e"]
    assert rec.times == [0.0, 1.5, 2.5, 4.0]


async def test_throttle_latest_flushes_the_held_value_on_completion(
    autojump_clock: Any,
) -> None:
    rec = await throttled([(0.0, "a"), (0.25, "b"), (0.5, "c")], complete_at=0.75)
    assert rec.values == ["a", "c"]
    assert rec.times == [0.0, 0.75]
    assert rec.completed_at == 0.75


async def test_throttle_latest_error_drops_the_held_value(autojump_clock: Any) -> None:
    async with throttling() as (scheduler, subject, rec):
        await feed(subject, rec.t0, [(0.0, "a"), (0.25, "b")])
        failure = RuntimeError("source failed")
        subject.on_error(failure)
        await trio.sleep(5)
        assert scheduler.pending == 0
    assert rec.values == ["a"]
    assert rec.errors == [failure]


async def test_throttle_latest_dispose_cancels_the_pending_window(autojump_clock: Any) -> None:
    async with open_trio_scheduler() as scheduler:
        t0 = trio.current_time()
        subject: Subject[str] = Subject()
        rec = Recorder(t0)
        subscription = rec.subscribe(
            with_trio_scheduler(subject, scheduler).pipe(throttle_latest(1.0))
        )
        await feed(subject, t0, [(0.0, "a"), (0.25, "b")])
        subscription.dispose()
        assert scheduler.pending == 0
        await trio.sleep(5)
    assert rec.values == ["a"]


async def test_throttle_latest_counts_a_value_at_the_windows_end_in_the_next_window(
    mock_clock: trio.testing.MockClock,
) -> None:
    # Guards a bug: a value that arrived at the very instant a window ended, before the
    # window's timer task ran (trio runs tasks woken together in any order; a watch's
    # update and the timer often are), replaced the value the window held, so the
    # window's end emitted the later value (seen as a flaky watch throttle test in CI).
    async with throttling() as (scheduler, subject, rec):
        subject.on_next("a")  # passes, opens [0, 1)
        mock_clock.jump(0.5)
        subject.on_next("b")  # held
        mock_clock.jump(0.5)
        subject.on_next("c")  # t = 1.0, no checkpoint since: the timer has not run
        mock_clock.jump(0.5)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(0.5)  # t = 2.0: the window that "b" opened ends
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(5)
        await trio.testing.wait_all_tasks_blocked()
        assert scheduler.pending == 0
    assert rec.values == ["a", "b", "c"]
    assert rec.times == [0.0, 1.0, 2.0]


def test_throttle_latest_on_a_wall_clock_scheduler_ends_windows_by_its_timer_only() -> None:
    # Guards a bug: the early close above compared the scheduler's ``now``; on a
    # wall-clock scheduler ``now`` may step (NTP) while its timers keep their own clock,
    # and a step closed the window at the next value, two values 0.1 s apart.
    class WallClockTimers(HistoricalScheduler):
        """``now`` is a wall clock the test steps; timers fire when the test says."""

        def __init__(self) -> None:
            super().__init__()
            self.wall = datetime(2026, 1, 1, tzinfo=UTC)
            self.timers: list[tuple[Any, Any]] = []

        @property
        def now(self) -> datetime:
            return self.wall

        def schedule(self, action: Any, state: Any = None) -> abc.DisposableBase:
            return action(self, state) or Disposable()

        def schedule_relative(self, duetime: Any, action: Any,
                              state: Any = None) -> abc.DisposableBase:
            self.timers.append((action, state))
            return Disposable()

        def schedule_absolute(self, duetime: Any, action: Any,
                              state: Any = None) -> abc.DisposableBase:
            raise NotImplementedError

    scheduler = WallClockTimers()
    subject: Subject[str] = Subject()
    seen: list[str] = []
    subject.pipe(throttle_latest(1.0, scheduler)).subscribe(seen.append)
    subject.on_next("a")  # passes; its window's timer is set
    subject.on_next("b")  # held
    scheduler.wall += timedelta(seconds=30)  # the wall clock steps forward
    subject.on_next("c")  # still within the window by its timer's clock: held
    assert seen == ["a"]
    action, state = scheduler.timers.pop(0)
    action(scheduler, state)  # the window's end
    assert seen == ["a", "c"]


async def test_throttle_latest_emits_a_due_window_before_an_error_behind_it(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with throttling() as (scheduler, subject, rec):
        subject.on_next("a")
        mock_clock.jump(0.5)
        subject.on_next("b")
        mock_clock.jump(0.5)
        failure = RuntimeError("source failed")
        subject.on_error(failure)  # t = 1.0, before the window's timer ran
        await trio.testing.wait_all_tasks_blocked()
        assert scheduler.pending == 0
    assert (rec.values, rec.errors) == (["a", "b"], [failure])


def test_throttle_latest_rejects_a_non_positive_window() -> None:
    with pytest.raises(ValueError, match="window_s"):
        throttle_latest(0)
    with pytest.raises(ValueError, match="window_s"):
        throttle_latest(-1.0)


async def test_a_subscription_from_another_thread_runs_in_the_trio_run_without_a_hook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # rx may not import the client; with no asyncio-aware hook registered, a subscription
    # made from a worker thread is made (and disposed) in the trio run, callbacks there too.
    from dspex_rx.rx import observable

    monkeypatch.setattr(observable, "_outside_subscriber", observable._subscribe_in_run)
    seen: list[tuple[int, bool]] = []
    async with open_trio_scheduler() as scheduler:
        subject: Subject[int] = Subject()
        source = TrioObservable(subject, scheduler)
        trio_thread = threading.get_ident()

        def on_next(value: int) -> None:
            seen.append((value, threading.get_ident() == trio_thread))

        disposable = await trio.to_thread.run_sync(source.subscribe, on_next)
        subject.on_next(1)
        await trio.to_thread.run_sync(disposable.dispose)
        subject.on_next(2)
    assert seen == [(1, True)]
