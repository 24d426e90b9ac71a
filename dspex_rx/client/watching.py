"""Watches from the client: ``observe`` (one shared wire subscription per variable), the
watch iterators built on it with filters, throttling and set-wide debounce, and ending them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import reactivex
import trio
from reactivex import abc as rx_abc
from reactivex import operators as ops
from reactivex.disposable import CompositeDisposable

from dspex_rx.client.actors import VariableObservable, VariableUpdate
from dspex_rx.client.aio import cancel_task
from dspex_rx.client.core import SessionCore
from dspex_rx.client.watch import Watch, debounce_settled
from dspex_rx.errors import InvalidValueError
from dspex_rx.rx import throttle_latest, with_trio_scheduler


def is_initial(update: VariableUpdate) -> bool:
    """Whether the update is a watch's first value (throttles let it through at once).

    Example: ``is_initial(update)`` is True for ``update.update_type == "initial"``.
    """
    return update.update_type == "initial"


# Updates a watch's filter never sees: ``initial`` and ``resync`` (after a gap the server
# could not replay) state the current value and have no old one; ``deleted`` has no new
# one, and ends the watch.
_UNFILTERED = frozenset({"initial", "resync", "deleted"})


def merge_now(
    sources: Sequence[reactivex.Observable[VariableUpdate]],
) -> reactivex.Observable[VariableUpdate]:
    """Merge that subscribes to every source at once (``reactivex.merge`` schedules the
    inner subscriptions, which would let a change slip in before the watch is registered).
    Completes when every source has completed.

    Example: ``merge_now([session.observe("a"), session.observe("b")])`` merges both.
    """

    def subscribe(
        observer: rx_abc.ObserverBase[VariableUpdate],
        scheduler: rx_abc.SchedulerBase | None = None,
    ) -> rx_abc.DisposableBase:
        remaining = len(sources)

        def completed() -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                observer.on_completed()

        if not sources:
            observer.on_completed()
        return CompositeDisposable(
            [s.subscribe(observer.on_next, observer.on_error, completed, scheduler=scheduler)
             for s in sources]
        )

    return reactivex.create(subscribe)


def name_filter(
    filter_fn: Callable[[str, Any, Any], bool],
) -> Callable[[VariableUpdate], bool]:
    """A ``watch_variables`` filter as an update predicate (initial values and resyncs
    always pass: they state the current value and have no old one; so do deletions).

    Example: ``ops.filter(name_filter(lambda name, old, new: new != old))``.
    """
    def keep(update: VariableUpdate) -> bool:
        return update.update_type in _UNFILTERED or filter_fn(update.name, update.old_value,
                                                           update.value)

    return keep


class Watching:
    """The session's watches and the registry of those still open (``cancel_watch`` by id
    finds them there; ``close`` ends them all).

    Example: ``watching.watch_variable("t")`` returns a ``Watch``, as the session's does.
    """

    def __init__(self, core: SessionCore) -> None:
        self.core = core
        self.watches: dict[str, Watch] = {}

    def observe(
        self, name: str, include_initial: bool = True
    ) -> reactivex.Observable[VariableUpdate]:
        """A reactivex ``Observable`` of one variable's ``VariableUpdate``s, on trio time.

        Operators that need a clock (``debounce``, ``throttle_first``, ``sample``...) use
        the session's trio scheduler through any number of ``.pipe()`` calls; callbacks run
        in the trio thread. Every local observer of a variable shares one subscription on
        the connection's stream; disposing the last one unsubscribes. Subscribe from the
        trio thread. The wire subscription is sent in the background: ``await
        session.sync()`` after subscribing waits until it is in force.

        Example: ``session.observe("temperature").pipe(ops.debounce(0.5)).subscribe(print)``.
        """
        scheduler = self.core.scheduler()
        return VariableObservable(self.core.hub(), name, include_initial, scheduler)

    def watch(self, observable: reactivex.Observable[VariableUpdate]) -> Watch:
        """Wrap an observable as a registered ``Watch`` (forgotten when it closes).

        Example: ``watching.watch(watching.observe("t"))``.
        """
        def forget(w: Watch) -> None:
            self.watches.pop(w.id, None)

        watch = Watch(observable, on_close=forget, ready=self.sync)
        if not watch.closed:
            self.watches[watch.id] = watch
        return watch

    def watch_variable(
        self,
        name: str,
        include_initial: bool = True,
        filter_fn: Callable[[Any, Any], bool] | None = None,
        throttle_ms: float = 0,
    ) -> Watch:
        """Watch one variable: an async iterator of ``VariableUpdate`` (built on ``observe``).

        ``filter_fn(old, new)`` keeps the changes it returns true for (the initial value is
        never filtered, nor is a ``resync``: the current value after a gap the server could
        not replay, which has no old value; nor a deletion, which ends the watch).
        ``throttle_ms`` passes the first change at once and then at most one per window,
        always ending with the latest value. The watch starts when this is called; end it
        with ``cancel_watch(watch)``, ``async with``, or by cancelling the task that
        iterates it.

        Example: ``session.watch_variable("progress", throttle_ms=500)`` is a watch to use in
        ``async with`` and iterate with ``async for``.
        """
        observable = self.observe(name, include_initial)
        if filter_fn is not None:
            keep = filter_fn

            def changed(u: VariableUpdate) -> bool:
                return u.update_type in _UNFILTERED or keep(u.old_value, u.value)

            observable = observable.pipe(ops.filter(changed))
        if throttle_ms:
            observable = observable.pipe(
                throttle_latest(throttle_ms / 1000.0, passthrough=is_initial)
            )
        return self.watch(observable)

    def watch_variables(
        self,
        names: Sequence[str],
        include_initial: bool = True,
        filter_fn: Callable[[str, Any, Any], bool] | None = None,
        throttle_ms: float = 0,
        debounce_ms: float = 0,
    ) -> Watch:
        """Watch several variables through one async iterator.

        ``filter_fn(name, old, new)`` as in ``watch_variable``; ``throttle_ms`` applies per
        variable; ``debounce_ms`` applies across the set: once no change has come for that
        long, the latest update of each variable that changed arrives, in revision order.

        Example: ``session.watch_variables(["a", "b"], debounce_ms=200)`` yields both variables'
        updates.
        """
        if isinstance(names, str):
            raise InvalidValueError("watch_variables takes a list of names, not one string")
        streams = []
        for name in names:
            observable = self.observe(name, include_initial)
            if filter_fn is not None:
                observable = observable.pipe(ops.filter(name_filter(filter_fn)))
            if throttle_ms:
                observable = observable.pipe(
                throttle_latest(throttle_ms / 1000.0, passthrough=is_initial)
            )
            streams.append(observable)
        merged = merge_now(streams)
        if debounce_ms:
            merged = merged.pipe(debounce_settled(debounce_ms / 1000.0))
        return self.watch(with_trio_scheduler(merged, self.core.scheduler()))

    def cancel_watch(
        self, watch: Watch | str | asyncio.Future[Any] | trio.CancelScope
    ) -> bool:
        """End a watch: by its ``Watch`` or its id; or by the task that runs it (an asyncio
        task: the task is cancelled and every watch it runs or has iterated ends); or, under
        trio, by the ``trio.CancelScope`` the consuming task runs in (cancelled: a watch
        it is iterating ends with it, as any watch whose consumer is cancelled does).

        Returns True if it ended something still running (a watch, a task not yet done, a
        scope not yet cancelled), False if there was nothing to end.

        Example: ``session.cancel_watch(asyncio.create_task(session.watch_variable("t")))``
        (also ``session.cancel_watch(watch)``).
        """
        if isinstance(watch, trio.CancelScope):
            was_running = not watch.cancel_called
            watch.cancel()
            return was_running
        if isinstance(watch, asyncio.Future):
            ended = not watch.done()
            for driven in cancel_task(watch):
                ended = self.cancel_watch(driven) or ended
            return ended
        key = watch if isinstance(watch, str) else watch.id
        found = self.watches.get(key)
        if found is None or found.closed:
            return False
        found.cancel()
        return True

    async def sync(self) -> int:
        """Wait until every change committed before this call reached this client.

        Example: ``await watching.sync()`` returns the revision reached.
        """
        return await self.core.hub().sync()

    def cancel_all(self) -> None:
        """End every open watch (the session is closing).

        Example: ``watching.cancel_all()``; ``watching.watches`` is then empty.
        """
        for watch in list(self.watches.values()):
            watch.cancel()
