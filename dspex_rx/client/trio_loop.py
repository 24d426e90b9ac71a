"""A minimal asyncio event loop driven by a trio task on the trio thread: just what grpc.aio
needs (callbacks, timers, tasks, futures, readers), with no thread and no patched asyncio.
"""

# asyncio's BaseEventLoop keeps its ready queue and timer heap; one trio task (``drive``)
# runs what is ready with this loop set as the thread's running loop, then sleeps until a
# call_soon / call_at pokes it or the next timer is due. A file descriptor watched with
# add_reader gets a trio task of its own that waits with ``wait_readable`` and runs the
# callback itself, so gRPC's poller wake-up costs no extra hop through the ready queue.
# The loop's clock is trio's (``trio.current_time``), so asyncio timers follow a MockClock.

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import sys
import threading
from asyncio import events
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import outcome
import trio

from dspex_rx.logs import quiet_closed_loop_events

T = TypeVar("T")
_ROUNDS = 8
# The thread's own running-loop slot, read directly: trio-asyncio, once imported, replaces
# asyncio's getter with one that asks the trio task's context instead, and restoring
# what that returns would leave a loop "running" in the thread after the run ended.
_thread_loop: Callable[[], Any] = (vars(events).get("_c__get_running_loop")
                                   or vars(events)["_py__get_running_loop"])


class TrioDrivenLoop(asyncio.BaseEventLoop):
    """An asyncio loop whose iterations run in a trio task of the current run.

    >>> async def main():
    ...     loop = TrioDrivenLoop()
    ...     async with trio.open_nursery() as nursery:
    ...         await nursery.start(loop.drive)
    ...         answer = await await_future(loop.create_task(asyncio.sleep(0, "done")))
    ...         await loop.shutdown()
    ...     return answer
    >>> trio.run(main)
    'done'
    """

    # BaseEventLoop's own state, which typeshed does not declare.
    _ready: deque[Any]
    _scheduled: list[Any]
    _clock_resolution: float
    _timer_cancelled_count: int
    _stopping: bool
    _check_closed: Callable[[], None]

    def __init__(self) -> None:
        super().__init__()
        quiet_closed_loop_events(self)
        self._token = trio.lowlevel.current_trio_token()
        self._sleeper: trio.lowlevel.Task | None = None
        self._nursery: trio.Nursery | None = None
        self._watchers: dict[tuple[int, str], trio.CancelScope] = {}
        self._finished = trio.Event()
        # Trio tasks awaiting one of this loop's futures (``await_future``): failed when
        # ``drive`` ends, since no callback can wake them any more (a loop that died of an
        # error would otherwise leave them waiting for ever, deaf to cancellation too).
        self._waiting: set[trio.lowlevel.Task] = set()
        # True while a pass over the ready queue runs (``_pass``): callbacks scheduled
        # then run in that pass, so waking the driver for them would only cost it a
        # scheduler round that finds nothing to do.
        self._busy = False

    # -------------------------------------------------------------- asyncio's hooks

    def time(self) -> float:
        """trio's clock, so asyncio timers on this loop follow a ``MockClock``.

        Example: ``loop.time() == trio.current_time()`` inside the run.
        """
        return trio.current_time()

    def call_soon(  # type: ignore[override]
        self, callback: Any, *args: Any, context: Any = None
    ) -> asyncio.Handle:
        """asyncio's ``call_soon``, waking the driver if it sleeps.

        Example: ``loop.call_soon(event.set)`` from trio wakes an asyncio waiter.
        """
        handle = super().call_soon(callback, *args, context=context)
        if not self._busy:
            self._poke()
        return handle

    def call_at(  # type: ignore[override]
        self, when: float, callback: Any, *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        """asyncio's ``call_at`` (``call_later`` too), waking the driver to re-time its sleep.

        Example: ``loop.call_later(5, fn)`` runs ``fn`` five trio seconds later.
        """
        handle = super().call_at(when, callback, *args, context=context)
        self._poke()
        return handle

    def _write_to_self(self) -> None:
        # call_soon_threadsafe from another thread: wake the driver through trio.
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._poke)

    def _process_events(self, event_list: Any) -> None:
        raise NotImplementedError  # never: drive() replaces the selector loop

    def add_reader(self, fd: Any, callback: Any, *args: Any) -> None:  # type: ignore[override]
        """Run ``callback(*args)`` whenever ``fd`` is readable (a trio task waits on it).

        Example: ``loop.add_reader(sock, on_data)``; ``loop.remove_reader(sock)`` stops it.
        """
        self._watch(fd, "read", callback, args)

    def remove_reader(self, fd: Any) -> bool:
        """Stop watching ``fd`` for reading; False if it was not watched.

        Example: ``loop.remove_reader(sock)`` before ``sock.close()``.
        """
        return self._unwatch(fd, "read")

    def add_writer(self, fd: Any, callback: Any, *args: Any) -> None:  # type: ignore[override]
        """Run ``callback(*args)`` whenever ``fd`` is writable.

        Example: ``loop.add_writer(sock, flush)``.
        """
        self._watch(fd, "write", callback, args)

    def remove_writer(self, fd: Any) -> bool:
        """Stop watching ``fd`` for writing; False if it was not watched.

        Example: ``loop.remove_writer(sock)``.
        """
        return self._unwatch(fd, "write")

    # -------------------------------------------------------------- the trio side

    def _poke(self) -> None:
        sleeper, self._sleeper = self._sleeper, None
        if sleeper is not None:
            trio.lowlevel.reschedule(sleeper)

    def _enter(self) -> tuple[Any, Any, Any]:
        # This loop is the running loop while its callbacks run: asyncio's thread-local,
        # and, once a program has imported trio_asyncio (which makes get_running_loop look
        # in the trio task's context instead), trio_asyncio's context variable too. (Not
        # a context manager: this runs several times per call, and a generator-based one
        # cost more than what it guards.) ``_leave`` with what it returns undoes it.
        outer = _thread_loop()
        events._set_running_loop(self)
        patched = sys.modules.get("trio_asyncio._loop")
        token = patched.current_loop.set(self) if patched is not None else None
        return outer, patched, token

    @staticmethod
    def _leave(entered: tuple[Any, Any, Any]) -> None:
        outer, patched, token = entered
        if token is not None:
            patched.current_loop.reset(token)
        events._set_running_loop(outer)

    # KI-protected as the driver and the fd watchers are: the pass runs gRPC's and the
    # reader's callbacks, which a Ctrl-C raised inside would break half-way (a reader
    # would take it for the stream's error); trio delivers it to the main task instead.
    @trio.lowlevel.enable_ki_protection
    def run_now(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` as a callback of this loop right now, on the calling trio task,
        then what it made ready; inside one of the loop's own callbacks, just ``fn()``.

        Example: ``loop.run_now(lambda: loop.create_task(call.write(msg)))`` starts the
        write before returning, with no trip through the driver task.
        """
        self._check_closed()
        self._pass(fn)

    def _pass(self, first: Callable[[], Any] | None = None) -> None:
        # ``first`` (a callback that became due: a watched fd's, or ``run_now``'s), then
        # what is ready, pokes held back meanwhile; what is left after the rounds goes to
        # the driver.
        if self._busy:
            if first is not None:
                # (Running: a callback may have stepped outside it to hand work to trio.)
                entered = self._enter()
                try:
                    first()
                finally:
                    self._leave(entered)
            return
        self._busy = True
        entered = self._enter()
        try:
            if first is not None:
                first()
            self._run_ready()
        finally:
            self._leave(entered)
            self._busy = False
            if self._ready:  # (also when a callback raised: the driver runs the rest)
                self._poke()

    def _run_ready(self) -> None:
        # Within ``_pass``: this loop is the running loop, pokes are held back.
        end = self.time() + self._clock_resolution
        scheduled = self._scheduled
        while scheduled and (scheduled[0]._cancelled or scheduled[0]._when < end):
            timer = heapq.heappop(scheduled)
            timer._scheduled = False
            if timer._cancelled:
                self._timer_cancelled_count -= 1
            else:
                self._ready.append(timer)
        ready = self._ready
        # Callbacks that callbacks schedule (a future's done callbacks, a task's next
        # step) run in the same pass, a few rounds deep, rather than after another trip
        # through trio's scheduler and epoll each.
        for _ in range(_ROUNDS):
            if not ready:
                break
            for _ in range(len(ready)):
                handle = ready.popleft()
                if not handle._cancelled:
                    handle._run()

    # Protected from KeyboardInterrupt, as are the fd watchers: a Ctrl-C arriving while
    # they run a callback would otherwise be raised inside the callback and end the loop,
    # and every task still awaiting the loop (a shielded close) would wait forever. Trio
    # delivers it to the main task instead.
    @trio.lowlevel.enable_ki_protection
    async def drive(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the loop until ``shutdown``: what is ready, then sleep until poked or the
        next timer. Start it with ``nursery.start(loop.drive)``.

        Example: ``await nursery.start(loop.drive)``.
        """
        self._thread_id = threading.get_ident()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while not self._stopping:
                    self._pass()
                    if self._ready:
                        await trio.lowlevel.checkpoint()  # let trio's tasks run too
                        continue
                    when = self._scheduled[0]._when if self._scheduled else math.inf
                    task = trio.lowlevel.current_task()
                    self._sleeper = task

                    def abort(_: Any) -> trio.lowlevel.Abort:
                        self._sleeper = None
                        return trio.lowlevel.Abort.SUCCEEDED

                    with trio.move_on_at(when):
                        await trio.lowlevel.wait_task_rescheduled(abort)
                nursery.cancel_scope.cancel()
        finally:
            self._sleeper = None
            self._nursery = None
            self._thread_id = None  # type: ignore[assignment]
            self._finished.set()
            waiting, self._waiting = self._waiting, set()
            for task in waiting:
                trio.lowlevel.reschedule(task, outcome.Error(RuntimeError(
                    "the hosted asyncio loop stopped before the awaited call finished")))

    async def shutdown(self) -> None:
        """Cancel every task left on the loop, run them to their end, stop ``drive`` and
        close the loop.

        Example: ``await loop.shutdown()`` once no call is wanted any more.
        """
        if self.is_closed():
            return
        tasks = [t for t in asyncio.all_tasks(self) if not t.done()]
        for task in tasks:
            task.cancel()
        with trio.CancelScope(shield=True):
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await await_future(task)
            self._stopping = True
            self._poke()
            await self._finished.wait()
        self.close()

    def _watch(self, fd: Any, kind: str, callback: Any, args: tuple[Any, ...]) -> None:
        self._check_closed()
        if self._nursery is None:
            raise RuntimeError("the loop is not running")
        fileno = fd if isinstance(fd, int) else fd.fileno()
        self._unwatch(fileno, kind)
        scope = trio.CancelScope()
        self._watchers[(fileno, kind)] = scope
        handle = asyncio.Handle(callback, args, self, None)
        wait = trio.lowlevel.wait_readable if kind == "read" else trio.lowlevel.wait_writable

        @trio.lowlevel.enable_ki_protection
        async def watcher() -> None:
            with scope:
                while True:
                    await wait(fileno)
                    # What the callback makes ready (gRPC's completions wake futures and
                    # tasks) runs in the same pass, not after the driver's next wake-up.
                    self._pass(handle._run)

        self._nursery.start_soon(watcher)

    def _unwatch(self, fd: Any, kind: str) -> bool:
        fileno = fd if isinstance(fd, int) else fd.fileno()
        scope = self._watchers.pop((fileno, kind), None)
        if scope is None:
            return False
        # Cancelling takes the fd out of trio's epoll at once, before its owner closes it.
        scope.cancel()
        return True


def outside_loop(fn: Callable[[], T]) -> T:
    """``fn()`` with no asyncio loop as the thread's running loop: code a loop callback
    hands to trio (an observer of a watched variable, say) runs as in a trio task. (With
    trio-asyncio imported, whose patch asks the trio task's context instead, the hosted
    loop stays visible there.) A call, not a ``with`` block: it runs for every message
    the loop hands over, and a generator-based context manager cost more than it guards.

    >>> async def main():
    ...     return outside_loop(asyncio._get_running_loop)
    >>> asyncio.run(main()) is None
    True
    """
    outer = _thread_loop()
    events._set_running_loop(None)
    try:
        return fn()
    finally:
        events._set_running_loop(outer)


async def await_future(future: asyncio.Future[T]) -> T:
    """Await an asyncio future of a ``TrioDrivenLoop`` from trio. Trio cancellation cancels
    the future and waits until it is done; if it then ended cancelled, trio's
    ``Cancelled`` is raised. ``RuntimeError`` if the loop stops first (its driver ended).

    Example: ``await await_future(loop.create_task(coro))``.
    """
    task = trio.lowlevel.current_task()
    raise_cancel: list[Callable[[], Any]] = []
    loop = future.get_loop()
    waiting: set[trio.lowlevel.Task] | None = None
    if isinstance(loop, TrioDrivenLoop):
        if loop._finished.is_set():
            raise RuntimeError("the hosted asyncio loop has stopped")
        waiting = loop._waiting

    def done(f: asyncio.Future[T]) -> None:
        if waiting is not None:
            if task not in waiting:
                return  # the loop's end already failed it
            waiting.discard(task)
        trio.lowlevel.reschedule(task, outcome.capture(f.result))

    future.add_done_callback(done)
    if waiting is not None:
        waiting.add(task)

    def abort(raise_cancel_fn: Callable[[], Any]) -> trio.lowlevel.Abort:
        raise_cancel.append(raise_cancel_fn)
        future.cancel()
        return trio.lowlevel.Abort.FAILED  # keep waiting: the future tells when it ended

    try:
        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result
    except asyncio.CancelledError:
        if raise_cancel:
            raise_cancel[0]()
        raise


async def run_on(loop: TrioDrivenLoop, factory: Callable[[], Awaitable[T]]) -> T:
    """Run ``factory()`` as a task on ``loop`` and await its result from trio.

    Example: ``await run_on(loop, lambda: asyncio.sleep(0, "done"))`` is ``"done"``.
    """
    async def invoke() -> T:
        return await factory()

    return await await_future(loop.create_task(invoke()))
