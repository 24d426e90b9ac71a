"""Watches as trio async iterators over observables, with a conflating buffer, and the
set-wide debounce operator that ``watch_variables(debounce_ms=...)`` uses. A watch is also
a coroutine object, so ``asyncio.create_task(watch)`` runs it (``Watch.run``)."""

from __future__ import annotations

import collections.abc
import contextlib
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

import reactivex
import trio
from reactivex import abc as rx_abc
from reactivex.disposable import CompositeDisposable, SerialDisposable

from dspex_rx.client.actors import VariableUpdate
from dspex_rx.client.aio import note_driver, portal_aware, undo_when_lost

_ids = itertools.count(1)


@portal_aware(local=("send", "throw", "close"))
class Watch:
    """An async iterator of ``VariableUpdate``s; also an async context manager and awaitable.

    It subscribes when created, so nothing is missed between creating it and iterating.
    A consumer slower than the updates gets, once ``max_buffer`` updates wait, the latest
    update of each variable instead of every one (``skipped`` counts what it lost); the
    last value always arrives. The watch ends when cancelled (``cancel()`` or
    ``session.cancel_watch``), when its variables are deleted, or when the session closes;
    a consumer cancelled while waiting ends it too.

    ``await watch`` waits until the server has registered it and returns the watch. A
    watch is also a coroutine object: a task made from it (``asyncio.create_task(watch)``;
    under trio ``nursery.start_soon(watch.run)``) keeps it running, consuming its updates,
    until it ends, and then returns the last update (see ``run``);
    ``session.cancel_watch(task)`` cancels that task and ends the watch.

    Example: ``session.watch_variable("progress", throttle_ms=500)`` is one: use it in
    ``async with`` and iterate it with ``async for``.
    """

    def __init__(
        self,
        observable: reactivex.Observable[VariableUpdate],
        on_close: Callable[[Watch], None] = lambda w: None,
        max_buffer: int = 1000,
        ready: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.id = f"watch_{next(_ids)}"
        self.max_buffer = max_buffer
        self.skipped = 0
        self._buffer: deque[VariableUpdate] = deque()
        self._wakeup = trio.Event()
        self._closed = False
        self._error: BaseException | None = None
        self._on_close = on_close
        self._ready = ready
        self._driver: Coroutine[Any, Any, VariableUpdate | None] | None = None
        # The trio run the watch lives in: its sync methods run there from other threads.
        self._trio_token: trio.lowlevel.TrioToken | None = None
        with contextlib.suppress(RuntimeError):  # made outside trio: used there as it is
            self._trio_token = trio.lowlevel.current_trio_token()
        self._subscription = observable.subscribe(
            on_next=self._push, on_error=self._fail, on_completed=self._finish
        )

    @property
    def closed(self) -> bool:
        """True once the watch has ended (buffered updates may still be read).

        Example: ``watch.closed`` is True once ``watch.cancel()`` ran.
        """
        return self._closed

    def _push(self, update: VariableUpdate) -> None:
        if self._closed:
            return
        self._buffer.append(update)
        if len(self._buffer) > self.max_buffer:
            self._conflate()
        self._wakeup.set()

    def _conflate(self) -> None:
        latest: dict[str, VariableUpdate] = {}
        for update in self._buffer:
            if isinstance(update, VariableUpdate):
                key = update.variable_id
                kept = keep_latest(latest.pop(key, None), update)
            else:
                # A status dict (watch_optimization): within one run the newest says all
                # the older did; each run keeps its own, so how a run ended is never lost.
                key = f"{update.get('variable', '')}\0{update.get('optimization_id', '')}"
                latest.pop(key, None)
                kept = update
            latest[key] = kept  # re-inserted: arrival order of the latest
        self.skipped += len(self._buffer) - len(latest)
        self._buffer = deque(latest.values())

    def _fail(self, error: Exception) -> None:
        self._error = error
        self._end()

    def _finish(self) -> None:
        self._end()

    def _end(self) -> None:
        if not self._closed:
            self._closed = True
            self._wakeup.set()
            self._on_close(self)

    def cancel(self) -> None:
        """End the watch: unsubscribe now; an iterating consumer stops after what is buffered.

        Example: ``watch.cancel()`` ends it.
        """
        self._subscription.dispose()
        self._end()

    def __aiter__(self) -> Watch:
        return self

    def __anext__(self) -> Awaitable[VariableUpdate]:
        note_driver(self)  # under asyncio: cancel_watch(task) ends what the task iterates
        return self.next()

    # An asyncio caller cancelled just after this returned would lose the update: put it
    # back, so a wait_for(watch.next(), t) timing out at the wrong moment drops nothing.
    @undo_when_lost(lambda watch, update: watch._buffer.appendleft(update))
    async def next(self) -> VariableUpdate:
        """The next update (what ``async for`` takes); ``StopAsyncIteration`` at the end.

        Example: ``update = await watch.next()``.
        """
        while not self._buffer:
            if self._closed:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                raise StopAsyncIteration
            self._wakeup = trio.Event()
            try:
                await self._wakeup.wait()
            except trio.Cancelled:
                self.cancel()  # a watch inside a cancel scope ends with it
                raise
        return self._buffer.popleft()

    async def run(self) -> VariableUpdate | None:
        """Keep the watch running, taking its updates, until it ends (``cancel_watch``,
        deletion, the session closing) or the caller is cancelled (which ends it); returns
        the last update, None if none came. This is what a task made from the watch runs.

        Example: ``session.cancel_watch(asyncio.create_task(session.watch_variable("t")))``
        ends the task's watch.
        """
        last: VariableUpdate | None = None
        async for update in self:
            last = update
        return last

    # The Coroutine protocol, so that asyncio.create_task(watch) accepts a watch: the task
    # drives ``run()``. (``await watch`` is ``started()``, as it always was.)
    def send(self, value: Any) -> Any:
        """Coroutine protocol: step ``run()`` (what an asyncio task does with a watch).

        Example: ``asyncio.create_task(watch)``; the task calls ``watch.send(None)``.
        """
        if self._driver is None:
            self._driver = self.run()
        return self._driver.send(value)

    def throw(self, *exc: Any) -> Any:
        """Coroutine protocol: raise into ``run()`` (a task's cancellation ends the watch).

        Example: ``task.cancel()``; the task calls ``watch.throw(CancelledError())``.
        """
        if self._driver is None:
            self._driver = self.run()
        return self._driver.throw(*exc)

    def close(self) -> None:
        """Coroutine protocol: close ``run()`` if a task started it (``cancel()`` ends the
        watch itself).

        Example: ``watch.close()``.
        """
        if self._driver is not None:
            self._driver.close()

    async def aclose(self) -> None:
        """Same as ``cancel()``, for ``contextlib.aclosing`` and friends.

        Example: ``await watch.aclose()``.
        """
        self.cancel()

    async def started(self) -> Watch:
        """Wait until the server has registered the watch: a change committed after this
        returns is certain to arrive (the subscription itself is sent asynchronously).

        Example: ``watch = await session.watch_variable("x").started()``.
        """
        if self._ready is not None:
            await self._ready()
        return self

    async def __aenter__(self) -> Watch:
        return await self.started()

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()

    def __await__(self) -> Generator[Any, None, Watch]:
        # `watch = await session.watch_variable(...)` waits until the watch is registered.
        return self.started().__await__()


collections.abc.Coroutine.register(Watch)


def commit_revision(update: VariableUpdate) -> int:
    """The revision of the commit an update came from (a ``dependency_changed`` carries the
    dependent's own last revision in ``revision``, the change's in its metadata).

    Example: ``sorted(updates, key=commit_revision)`` orders updates by commit.
    """
    if update.update_type == "dependency_changed":
        source = update.metadata.get("source_revision")
        if isinstance(source, int):
            return source
    return update.revision


def keep_latest(previous: VariableUpdate | None, new: VariableUpdate) -> VariableUpdate:
    """Which update stands for a variable when two are collapsed into one: the newer,
    except that a notification never hides the value change it followed.

    Example: ``keep_latest(held.get(var_id), update)`` is the update to hold.
    """
    if (
        previous is not None
        and new.update_type == "dependency_changed"
        and previous.update_type != "dependency_changed"
        and new.version == previous.version
    ):
        return previous
    return new


def debounce_settled(window_s: float) -> Callable[
    [reactivex.Observable[VariableUpdate]], reactivex.Observable[VariableUpdate]
]:
    """Debounce across a set of variables: when no change has come for ``window_s``, emit
    the latest update of each variable that changed, in revision order. Initial values
    pass at once; completion flushes what is held.

    Example: ``merged.pipe(debounce_settled(0.2)).subscribe(print)``.
    """

    def operator(
        source: reactivex.Observable[VariableUpdate],
    ) -> reactivex.Observable[VariableUpdate]:
        def subscribe(
            observer: rx_abc.ObserverBase[VariableUpdate],
            scheduler: rx_abc.SchedulerBase | None = None,
        ) -> rx_abc.DisposableBase:
            if scheduler is None:
                raise RuntimeError("debounce_settled needs a scheduler (the session's)")
            held: dict[str, VariableUpdate] = {}
            timer = SerialDisposable()

            def flush(*_: Any) -> None:
                # Commit order; within a commit, arrival order (upstream first).
                ready = sorted(held.values(), key=commit_revision)
                held.clear()
                for update in ready:
                    observer.on_next(update)

            def on_next(update: VariableUpdate) -> None:
                if update.update_type == "initial":
                    observer.on_next(update)
                    return
                kept = keep_latest(held.pop(update.variable_id, None), update)
                held[update.variable_id] = kept
                timer.disposable = scheduler.schedule_relative(window_s, flush)

            def on_completed() -> None:
                timer.dispose()
                flush()
                observer.on_completed()

            subscription = source.subscribe(
                on_next, observer.on_error, on_completed, scheduler=scheduler
            )
            return CompositeDisposable(subscription, timer)

        return reactivex.create(subscribe)

    return operator
