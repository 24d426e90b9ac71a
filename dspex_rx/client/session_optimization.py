"""The optimization calls of ``SessionContext``: each delegates to the session's
``Optimizations`` (start, leases, stop, reports, status, history) or ``Progress`` (status
watches, proposals). A mixin, not a component: these are facade methods over the same
state as the rest of the facade (its components), kept in their own file for size."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import reactivex

from dspex_rx.client.aio import portal_aware
from dspex_rx.client.optimization.control import Optimizations
from dspex_rx.client.optimization.lease import HeldLease
from dspex_rx.client.optimization.optimizers import BaseOptimizer
from dspex_rx.client.optimization.progress import Progress
from dspex_rx.client.watch import Watch


@portal_aware
class OptimizationCalls:
    """``SessionContext``'s optimization methods (see the module docstring).

    Example: ``await session.start_optimization("t", "random", objective=score)`` starts a
    run; ``await session.wait_for_optimization("t")`` returns its final status.
    """

    # Set by SessionContext.__init__.
    _optimizations: Optimizations
    _progress: Progress

    async def register_python_optimizer(
        self, name: str, optimizer_class: type[BaseOptimizer]
    ) -> None:
        """Make a ``BaseOptimizer`` subclass usable as ``start_optimization(...,
        optimizer_type=name)`` in this session.

        Example: ``await session.register_python_optimizer("halving", Halving)`` with
        ``Halving`` a ``BaseOptimizer`` subclass defining ``ask`` and ``tell``.
        """
        await self._optimizations.register_python_optimizer(name, optimizer_class)

    async def start_optimization(
        self, variable: str, optimizer_type: str, optimizer_config: Mapping[str, Any] | None = None,
        max_iterations: int = 100, convergence_threshold: float = 0.001,
        callback: Callable[[int, Any, dict[str, Any]], Any] | None = None,
        objective: Callable[[Any], Any] | None = None, *, lease_ttl: float | None = None,
    ) -> str:
        """Optimize one variable under a server lease; returns the optimization id at once
        while the run goes on in the background (in this connection's nursery).

        Example: ``await session.start_optimization("temperature", "bayesian", {"seed": 7},
        max_iterations=20)`` starts a run; each proposal of ``session.proposals("temperature")``
        is answered by ``await proposal.report(score)``.
        """
        return await self._optimizations.start_optimization(
            variable, optimizer_type, optimizer_config, max_iterations, convergence_threshold,
            callback, objective, lease_ttl=lease_ttl,
        )

    @asynccontextmanager
    async def optimization_lease(
        self, variable: str, optimizer_type: str = "manual",
        optimizer_config: Mapping[str, Any] | None = None, *, max_iterations: int = 100,
        lease_ttl: float | None = None,
    ) -> AsyncIterator[HeldLease]:
        """Hold the variable's optimization lease for a block (an optimization driven by hand
        or by another library); leaving the block releases it.

        Example: ``session.optimization_lease("temperature", "my_sweep")`` is the
        ``async with`` block in which ``await lease.write(0.2, iteration=1)`` and
        ``await lease.record(1, 0.2, {"accuracy": 0.9})`` run.
        """
        async with self._optimizations.optimization_lease(
            variable, optimizer_type, optimizer_config, max_iterations=max_iterations,
            lease_ttl=lease_ttl,
        ) as lease:
            yield lease

    async def stop_optimization(
        self, variable: str, reason: str | None = None, apply_best: bool = False
    ) -> None:
        """Revoke the variable's optimization lease, from any connection of the session;
        ``apply_best`` writes the best value so far in the same commit.

        Example: ``await session.stop_optimization("temperature", reason="budget spent")``.
        """
        await self._optimizations.stop_optimization(variable, reason, apply_best)

    async def report_metrics(
        self, variable: str, metrics: Mapping[str, Any] | float, *, iteration: int | None = None,
        version: int | None = None, optimization_id: str | None = None,
    ) -> dict[str, Any]:
        """Report the evaluation of the proposal a run (started without ``objective=``) waits
        on, naming it by ``version`` or ``iteration`` with ``optimization_id``; returns the status.

        Example: ``await session.report_metrics("temperature", {"accuracy": 0.8},
        version=proposal.version)`` returns the status.
        """
        return await self._optimizations.report_metrics(
            variable, metrics, iteration=iteration, version=version,
            optimization_id=optimization_id,
        )

    async def get_optimization_status(
        self, variable: str, optimization_id: str | None = None
    ) -> dict[str, Any]:
        """The variable's optimization status dict (``is_optimizing``, ``state``,
        ``iteration``, ``best_value``...); with ``optimization_id``, that run's.

        Example: ``(await session.get_optimization_status("temperature"))["best_value"]``.
        """
        return await self._optimizations.get_optimization_status(variable, optimization_id)

    async def get_optimization_history(
        self, variable: str, limit: int = 100, since: datetime | float | None = None,
        optimizer_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """The variable's evaluated iterations, oldest first: the newest ``limit`` (since
        ``since``; of one run with ``optimizer_id``).

        Example: ``await session.get_optimization_history("temperature", limit=10)``.
        """
        return await self._optimizations.get_optimization_history(
            variable, limit, since, optimizer_id
        )

    async def wait_for_optimization(self, variable: str) -> dict[str, Any]:
        """Wait until this session's run on ``variable`` (name, id or optimization id) has
        ended; returns its final status.

        Example: ``await session.wait_for_optimization("t")`` after
        ``session.start_optimization("t", "grid_search", objective=score)`` returns its status.
        """
        return await self._optimizations.wait_for_optimization(variable)

    def observe_optimization(self, variable: str) -> reactivex.Observable[dict[str, Any]]:
        """A reactivex ``Observable`` of the variable's optimization status dicts, one per
        live change.

        Example: ``session.observe_optimization("temperature").subscribe(print)``.
        """
        return self._progress.observe_optimization(variable)

    def watch_optimization(self, variable: str) -> Watch:
        """Watch a variable's optimization: status dicts, the current one first, then one per
        change.

        Example: ``session.watch_optimization("temperature")`` yields status dicts; stop
        iterating once ``status["state"]`` says the run ended.
        """
        return self._progress.watch_optimization(variable)

    def proposals(self, variable: str) -> Watch:
        """A watch of the proposals of the variable's run that await a report, in order, none
        missed; it ends with the run.

        Example: ``session.proposals("temperature")`` yields proposals, each answered by
        ``await proposal.report({"accuracy": await evaluate(proposal.value)})``.
        """
        return self._progress.proposals(variable)
