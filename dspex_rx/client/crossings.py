"""Crossings into a trio run from elsewhere: sync calls from other threads, subscriptions
made from asyncio threads, and the asyncio tasks that drive watches (to cancel them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import sniffio
import trio

from dspex_rx.logs import get_logger
from dspex_rx.rx.observable import register_outside_subscriber

log = get_logger("dspex_rx.aio")

T = TypeVar("T")


def _library() -> str | None:
    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return None


def call_in_run(token: trio.lowlevel.TrioToken | None, fn: Callable[..., T],
                *args: Any, **kwargs: Any) -> T:
    """Call the sync ``fn`` in the trio run of ``token``, blocking this thread until it
    returns; called directly when this thread is in that run already (or it has ended).

    >>> call_in_run(None, max, 1, 2)   # no run to hop into: called here
    2
    """
    if token is None:
        return fn(*args, **kwargs)
    try:
        if trio.lowlevel.current_trio_token() is token:
            return fn(*args, **kwargs)
    except RuntimeError:
        pass
    try:
        return trio.from_thread.run_sync(
            functools.partial(fn, *args, **kwargs), trio_token=token
        )
    except trio.RunFinishedError:
        return fn(*args, **kwargs)  # the run is over: let the object say it is closed


# --------------------------------------------------------- tasks that drive watches

# asyncio task -> the watches it has iterated (cancel_watch(task) ends them too).
_driven: weakref.WeakKeyDictionary[asyncio.Future[Any], weakref.WeakSet[Any]] = (
    weakref.WeakKeyDictionary()
)


def note_driver(watch: Any) -> None:
    """Remember that the current asyncio task iterates ``watch`` (a no-op under trio).

    Example: ``note_driver(self)`` in ``Watch.__anext__`` ties the watch to the asyncio task.
    """
    if _library() != "asyncio":
        return
    task = asyncio.current_task()
    if task is not None:
        _driven.setdefault(task, weakref.WeakSet()).add(watch)


def cancel_task(task: asyncio.Future[Any]) -> list[Any]:
    """Cancel an asyncio task (from any thread) and return the watches it drives: the
    one it runs (``asyncio.create_task(watch)``) and every one it has iterated.

    Example: ``cancel_task(task)`` cancels ``task`` and returns the watches it drives.
    """
    watches = list(_driven.pop(task, ()))
    from dspex_rx.client.watch import Watch

    coro = task.get_coro() if isinstance(task, asyncio.Task) else None
    if isinstance(coro, Watch):
        watches.append(coro)  # the task runs the watch itself
    loop = task.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        task.cancel()
    else:
        with contextlib.suppress(RuntimeError):  # its loop has closed: nothing to cancel
            loop.call_soon_threadsafe(task.cancel)
    return watches



def subscribe_from_outside(
    subscribe: Callable[..., Any],
    token: trio.lowlevel.TrioToken,
    on_next: Any,
    on_error: Any,
    on_completed: Any,
    scheduler: Any,
) -> Any:
    """Subscribe to a trio-bound observable from another thread: the subscription (and its
    disposal) is made in the trio run; on a thread running an asyncio loop, the callbacks
    are posted to that loop in order (``call_soon_threadsafe``).

    Example: ``subscribe_from_outside(obs.subscribe, token, print, None, None, scheduler)``.
    """
    from reactivex import abc as rx_abc
    from reactivex.disposable import Disposable

    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        if isinstance(on_next, rx_abc.ObserverBase):
            observer = on_next
            on_next, on_error, on_completed = (
                observer.on_next, observer.on_error, observer.on_completed
            )
        target = loop
        holder: list[Any] = []

        def orphaned() -> None:
            # The subscriber's loop has closed: nobody will see another value, so stop
            # the subscription (in the trio run, where this runs) and say so once.
            if holder and holder[0] is not None:
                inner, holder[0] = holder[0], None
                log.warning("observer_loop_closed",
                            reason="the asyncio loop that subscribed has closed; "
                                   "its subscription ended")
                inner.dispose()

        def post(fn: Callable[..., Any] | None) -> Callable[..., Any] | None:
            if fn is None:
                return None

            def posted(*args: Any) -> None:
                try:
                    target.call_soon_threadsafe(fn, *args)
                except RuntimeError:  # the asyncio loop has closed
                    orphaned()

            return posted

        on_next, on_error, on_completed = post(on_next), post(on_error), post(on_completed)
        inner = call_in_run(
            token, subscribe, on_next, on_error, on_completed, scheduler=scheduler
        )
        holder.append(inner)
        return Disposable(lambda: call_in_run(token, inner.dispose))
    inner = call_in_run(
        token, subscribe, on_next, on_error, on_completed, scheduler=scheduler
    )
    return Disposable(lambda: call_in_run(token, inner.dispose))


# TrioObservable (rx, a layer below) carries subscriptions from other threads through
# this; registered here so rx needs no import of the client.
register_outside_subscriber(subscribe_from_outside)
