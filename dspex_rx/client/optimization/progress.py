"""Following an optimization from the client: its status as an observable or a watch
(current status first, nothing missed), and the proposals a run waits to have evaluated."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import reactivex
import trio
from reactivex import abc as rx_abc
from reactivex import operators as ops
from reactivex.disposable import CompositeDisposable

from dspex_rx.client.actors import VariableObservable, VariableUpdate
from dspex_rx.client.core import SessionCore
from dspex_rx.client.optimization.lease import Proposal
from dspex_rx.client.optimization.status import status_from_event
from dspex_rx.client.watch import Watch
from dspex_rx.client.watching import Watching
from dspex_rx.rx import with_trio_scheduler

if TYPE_CHECKING:
    from dspex_rx.client import SessionContext


def status_of_event(update: VariableUpdate) -> dict[str, Any]:
    """The status dict an optimization event carries.

    Example: ``observable.pipe(ops.map(status_of_event))`` turns events into statuses.
    """
    return status_from_event(update.metadata)


class Progress:
    """Status observables and watches, and proposals, for one session.

    Example: ``progress.watch_optimization("t")`` returns a ``Watch`` of status dicts.
    """

    def __init__(self, core: SessionCore, watching: Watching, session: SessionContext) -> None:
        self.core = core
        self.watching = watching
        self.session = session  # public API only: sync, statuses and values

    def observe_optimization(self, variable: str) -> reactivex.Observable[dict[str, Any]]:
        """A reactivex ``Observable`` of the variable's optimization status dicts (the keys
        of ``get_optimization_status``), one per change: start, every recorded iteration,
        the end. Live changes only; ``watch_optimization`` starts with the current status.

        Example: ``session.observe_optimization("temperature").subscribe(print)``.
        """
        scheduler = self.core.scheduler()
        events = VariableObservable(
            self.core.hub(), variable, False, scheduler, optimization=True
        )
        return with_trio_scheduler(events.pipe(ops.map(status_of_event)), scheduler)

    def watch_optimization(self, variable: str) -> Watch:
        """Watch a variable's optimization progress: an async iterator of status dicts,
        starting with the current status, then one per change, in order. Any session
        that can read the variable can watch.

        Example: ``session.watch_optimization("temperature")`` yields status dicts; stop
        iterating once ``status["state"]`` says the run ended.
        """
        live = self.observe_optimization(variable)
        nursery = self.core.nursery()

        def subscribe(
            observer: rx_abc.ObserverBase[dict[str, Any]],
            scheduler: rx_abc.SchedulerBase | None = None,
        ) -> rx_abc.DisposableBase:
            # Live events are held back until the current status is known, then only
            # those newer than it pass: nothing is missed or shown twice.
            held: list[dict[str, Any]] = []
            floor: list[int] = []
            scope = trio.CancelScope()

            def on_next(status: dict[str, Any]) -> None:
                if not floor:
                    held.append(status)
                elif int(status.get("revision", 0)) > floor[0]:
                    observer.on_next(status)

            subscription = live.subscribe(
                on_next=on_next, on_error=observer.on_error,
                on_completed=observer.on_completed,
            )

            async def fetch_current() -> None:
                with scope:
                    try:
                        await self.session.sync()
                        current = await self.session.get_optimization_status(variable)
                    except Exception as exc:
                        observer.on_error(exc)
                        return
                    floor.append(int(current["revision"]))
                    observer.on_next(current)
                    for status in held:
                        on_next(status)
                    held.clear()

            nursery.start_soon(fetch_current)
            return CompositeDisposable(subscription, reactivex.disposable.Disposable(scope.cancel))

        return self.watching.watch(reactivex.create(subscribe))  # type: ignore[arg-type]

    def proposals(self, variable: str) -> Watch:
        """The proposals of the variable's optimization run (started without
        ``objective=``) that await a report, one per iteration, in order: a proposal
        already waiting when the watch starts comes first, so an evaluator started after
        ``start_optimization`` misses none. Before a run starts the watch waits for one;
        it ends when the run it followed ends.

        Example: ``session.proposals("temperature")`` yields proposals, each answered by
        ``await proposal.report({"accuracy": await evaluate(proposal.value)})``.
        """
        assert self.core.conn.nursery is not None, "the session is not initialized"
        nursery = self.core.conn.nursery

        def subscribe(
            observer: rx_abc.ObserverBase[Proposal],
            scheduler: rx_abc.SchedulerBase | None = None,
        ) -> rx_abc.DisposableBase:
            scope = trio.CancelScope()

            async def pump() -> None:
                with scope:
                    try:
                        await self.pump_proposals(variable, observer.on_next)
                    except Exception as exc:
                        observer.on_error(exc)
                        return
                    observer.on_completed()

            nursery.start_soon(pump)
            return reactivex.disposable.Disposable(scope.cancel)

        return self.watching.watch(reactivex.create(subscribe))  # type: ignore[arg-type]

    async def pump_proposals(
        self, variable: str, emit: Callable[[Proposal], None]
    ) -> None:
        """Emit each proposal of the run the status watch follows, until it ends.

        Example: ``await progress.pump_proposals("t", print)``.
        """
        # The status stream starts with the current status, so a proposal written before
        # this watch began is seen; the run's next proposal needs this one's report, so
        # the value read right after the status is the proposal's (checked by version).
        last, followed = 0, ""
        async with self.watch_optimization(variable) as statuses:
            async for update in statuses:
                status = cast(dict[str, Any], update)  # this watch carries status dicts
                run = str(status.get("optimization_id") or "")
                if status.get("is_optimizing"):
                    if followed and run != followed:
                        return  # the run we followed ended and another began
                    followed = followed or run
                elif followed:
                    return  # the run we followed has ended
                iteration = int(status.get("proposal_iteration") or 0)
                if not (status.get("awaiting_report") and iteration > last):
                    continue
                last = iteration
                read = await self.session.get_variables([variable], include_metadata=True)
                info = read[variable]
                if info["version"] != status.get("proposal_version"):
                    continue  # stopped or superseded meanwhile: nothing to evaluate
                emit(Proposal(self.session, variable, run, iteration, info["version"],
                              info["value"]))
