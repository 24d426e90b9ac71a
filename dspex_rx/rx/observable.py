"""The trio-aware observable: ``TrioObservable`` carries its ``TrioScheduler`` through
``.pipe()``. Also re-exports the scheduler and ``throttle_latest`` (their old home).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

import trio
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from dspex_rx.rx.operators.throttle_latest import throttle_latest
from dspex_rx.rx.scheduler import TrioScheduler, open_trio_scheduler

__all__ = [
    "TrioObservable",
    "TrioScheduler",
    "open_trio_scheduler",
    "register_outside_subscriber",
    "throttle_latest",
]

# How a subscription made from another thread is carried into the trio run:
# (subscribe, trio token, on_next, on_error, on_completed, scheduler) -> disposable.
OutsideSubscriber = Callable[..., abc.DisposableBase]


def _subscribe_in_run(
    subscribe: Callable[..., abc.DisposableBase], token: trio.lowlevel.TrioToken,
    on_next: Any, on_error: Any, on_completed: Any, scheduler: abc.SchedulerBase,
) -> abc.DisposableBase:
    # Without an asyncio-aware hook (client/crossings.py registers one), subscribing and
    # disposing happen in the trio run and the callbacks run there too.
    inner = trio.from_thread.run_sync(
        lambda: subscribe(on_next, on_error, on_completed, scheduler=scheduler),
        trio_token=token,
    )
    return Disposable(lambda: trio.from_thread.run_sync(inner.dispose, trio_token=token))


_outside_subscriber: OutsideSubscriber = _subscribe_in_run


def register_outside_subscriber(subscriber: OutsideSubscriber) -> None:
    """Say how subscriptions from other threads reach the trio run (the client's asyncio
    support registers one that posts callbacks to the subscriber's loop).

    >>> from dspex_rx.rx import observable
    >>> previous = observable._outside_subscriber
    >>> register_outside_subscriber(previous)
    >>> observable._outside_subscriber is previous
    True
    """
    global _outside_subscriber
    _outside_subscriber = subscriber

_T = TypeVar("_T")
_A = TypeVar("_A")
_B = TypeVar("_B")
_C = TypeVar("_C")
_D = TypeVar("_D")
_E = TypeVar("_E")


class TrioObservable(Observable[_T]):
    """An observable bound to a ``TrioScheduler``: subscribing without a scheduler uses it,
    and ``.pipe(...)`` returns a ``TrioObservable`` again, so time operators anywhere in the
    chain run on trio time. An explicit ``subscribe(..., scheduler=...)`` still wins.

    Fluent operator methods that reactivex routes through ``pipe`` (``.map``,
    ``.debounce``, ...) keep the binding too. Applying an operator by hand
    (``ops.debounce(0.5)(obs)``) returns a plain Observable, which does not.

    >>> import reactivex, trio, trio.testing
    >>> from reactivex import operators as ops
    >>> async def main():
    ...     async with open_trio_scheduler() as scheduler:
    ...         obs = TrioObservable(reactivex.of(1, 2, 3), scheduler)
    ...         _ = obs.pipe(ops.debounce(0.5)).pipe(ops.map(str)).subscribe(print)
    ...         await trio.sleep(1)
    >>> trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    3
    """

    def __init__(self, source: abc.ObservableBase[_T], scheduler: TrioScheduler) -> None:
        """Wrap ``source`` so its subscriptions default to ``scheduler``.

        Example: ``TrioObservable(reactivex.of(1, 2, 3), scheduler)``.
        """
        super().__init__()
        self._source = source
        self._trio_scheduler = scheduler

    @property
    def scheduler(self) -> TrioScheduler:
        """The scheduler subscriptions use when none is given.

        Example: ``obs.pipe(ops.map(str)).scheduler is obs.scheduler`` holds.
        """
        return self._trio_scheduler

    @property
    def source(self) -> abc.ObservableBase[_T]:
        """The wrapped observable.

        Example: ``TrioObservable(subject, scheduler).source is subject`` holds.
        """
        return self._source

    def _subscribe_core(
        self, observer: abc.ObserverBase[_T], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        return self._source.subscribe(observer, scheduler=scheduler or self._trio_scheduler)

    def subscribe(
        self,
        on_next: abc.ObserverBase[_T] | abc.OnNext[_T] | None = None,
        on_error: abc.OnError | None = None,
        on_completed: abc.OnCompleted | None = None,
        *,
        scheduler: abc.SchedulerBase | None = None,
    ) -> abc.DisposableBase:
        """Subscribe like ``Observable.subscribe``, with the trio scheduler as the default.

        Example: ``obs.subscribe(print)`` runs on trio time; ``scheduler=other`` wins.

        From another thread (an asyncio program), the subscription is made in the trio
        thread, and so is disposing it; the callbacks then run on the subscribing thread's
        asyncio loop if it has one (in order), else in the trio thread.
        """
        if not self._trio_scheduler._in_trio_thread():
            disposable: abc.DisposableBase = _outside_subscriber(
                super().subscribe, self._trio_scheduler.token, on_next, on_error,
                on_completed, scheduler or self._trio_scheduler,
            )
            return disposable
        return super().subscribe(
            on_next, on_error, on_completed, scheduler=scheduler or self._trio_scheduler
        )

    # mypy cannot match these overloads against Observable.pipe's (``op -> _A``), though
    # every call the base accepts is accepted here and returns the base type or a subtype.
    @overload  # type: ignore[override]
    def pipe(self) -> TrioObservable[_T]: ...

    @overload
    def pipe(self, op1: Callable[[Observable[_T]], Observable[_A]], /) -> TrioObservable[_A]: ...

    @overload
    def pipe(
        self,
        op1: Callable[[Observable[_T]], Observable[_A]],
        op2: Callable[[Observable[_A]], Observable[_B]],
        /,
    ) -> TrioObservable[_B]: ...

    @overload
    def pipe(
        self,
        op1: Callable[[Observable[_T]], Observable[_A]],
        op2: Callable[[Observable[_A]], Observable[_B]],
        op3: Callable[[Observable[_B]], Observable[_C]],
        /,
    ) -> TrioObservable[_C]: ...

    @overload
    def pipe(
        self,
        op1: Callable[[Observable[_T]], Observable[_A]],
        op2: Callable[[Observable[_A]], Observable[_B]],
        op3: Callable[[Observable[_B]], Observable[_C]],
        op4: Callable[[Observable[_C]], Observable[_D]],
        /,
    ) -> TrioObservable[_D]: ...

    @overload
    def pipe(
        self,
        op1: Callable[[Observable[_T]], Observable[_A]],
        op2: Callable[[Observable[_A]], Observable[_B]],
        op3: Callable[[Observable[_B]], Observable[_C]],
        op4: Callable[[Observable[_C]], Observable[_D]],
        op5: Callable[[Observable[_D]], Observable[_E]],
        /,
    ) -> TrioObservable[_E]: ...

    @overload
    def pipe(self, *operators: Callable[[Any], Any]) -> Any: ...

    def pipe(self, *operators: Callable[[Any], Any]) -> Any:
        """Compose operators left to right; an Observable result stays on this scheduler.

        Example: ``obs.pipe(ops.debounce(0.5), ops.map(str))`` is a ``TrioObservable``.
        """

        result: Any = self
        for operator in operators:
            result = operator(result)
        if isinstance(result, TrioObservable) or not isinstance(result, Observable):
            return result
        return TrioObservable(result, self._trio_scheduler)

