"""The client's watch machinery under one import path: updates, variable actors and the
hub re-exported, and ``VariableObservable``, a variable's updates as an observable.
"""

from __future__ import annotations

from typing import Any

import reactivex
from reactivex import abc as rx_abc

from dspex_rx.client.updates import VariableUpdate, update_from_pb
from dspex_rx.client.variable_actor import ActorStats, VariableActor
from dspex_rx.client.watch_hub import WatchHub
from dspex_rx.rx import TrioObservable, TrioScheduler

__all__ = [
    "ActorStats",
    "VariableActor",
    "VariableObservable",
    "VariableUpdate",
    "WatchHub",
    "update_from_pb",
]


class VariableObservable(TrioObservable[VariableUpdate]):
    """A variable's updates: subscribing attaches the observer to the variable's actor
    directly (one reactivex subscribe layer, not two), on the session's trio scheduler.

    Example: ``VariableObservable(hub, "t", True, scheduler).subscribe(print)`` prints t's updates.
    """

    def __init__(
        self,
        hub: WatchHub,
        ref: str,
        include_initial: bool,
        scheduler: TrioScheduler,
        optimization: bool = False,
    ) -> None:
        super().__init__(_NEVER, scheduler)
        self._hub = hub
        self._ref = ref
        self._include_initial = include_initial
        self._optimization = optimization

    def _subscribe_core(
        self,
        observer: rx_abc.ObserverBase[VariableUpdate],
        scheduler: rx_abc.SchedulerBase | None = None,
    ) -> rx_abc.DisposableBase:
        return self._hub.actor(self._ref).attach(
            observer, self._include_initial, self._ref, self._optimization
        )


_NEVER: reactivex.Observable[Any] = reactivex.never()
