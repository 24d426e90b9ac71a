"""A session's optimization calls: start a run or hold a lease by hand, stop, report,
status and history; it keeps this connection's runs and registered optimizers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import trio

from dspex_rx.client.core import SessionCore
from dspex_rx.client.encoding import encode_metadata
from dspex_rx.client.optimization.lease import HeldLease
from dspex_rx.client.optimization.optimizers import (
    BaseOptimizer,
    SearchSpace,
    check_optimizer_class,
    get_optimizer,
)
from dspex_rx.client.optimization.run import OptimizationRun
from dspex_rx.client.optimization.status import (
    INTERRUPTED,
    as_objective,
    check_metric,
    check_mode,
    end_reason,
    interrupted,
    status_from_pb,
)
from dspex_rx.errors import DspexError, InvalidValueError, VariableTypeError, error_from_kind
from dspex_rx.logs import get_logger
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import since_seconds, timestamp, utc_datetime

if TYPE_CHECKING:
    from dspex_rx.client import SessionContext

log = get_logger("dspex_rx.client")

Held = TypeVar("Held")


class Optimizations:
    """This connection's optimization calls, its runs (by optimization id, and by the
    variable's id and name) and the optimizers registered in it.

    Example: ``await optimizations.get_optimization_status("t")`` returns the status dict.
    """

    def __init__(self, core: SessionCore, session: SessionContext) -> None:
        self.core = core
        self.session = session  # public API only: the run reads and watches through it
        self.optimizers: dict[str, type[BaseOptimizer]] = {}
        self.runs: dict[str, OptimizationRun] = {}
        self.runs_by_variable: dict[str, OptimizationRun] = {}

    async def register_python_optimizer(
        self, name: str, optimizer_class: type[BaseOptimizer]
    ) -> None:
        """Make a ``BaseOptimizer`` subclass (the ask/tell protocol) usable as
        ``start_optimization(..., optimizer_type=name)`` in this session. Built-in names
        (``grid_search``, ``bayesian``, ``gradient``, ``random``) cannot be replaced.

        Example: ``await session.register_python_optimizer("halving", Halving)`` with
        ``Halving`` a ``BaseOptimizer`` subclass defining ``ask`` and ``tell``.
        """
        # Awaitable as the spec has it; registration is local to this connection.
        await trio.lowlevel.checkpoint()
        check_optimizer_class(name, optimizer_class)
        self.optimizers[name] = optimizer_class

    async def start_optimization(
        self,
        variable: str,
        optimizer_type: str,
        optimizer_config: Mapping[str, Any] | None = None,
        max_iterations: int = 100,
        convergence_threshold: float = 0.001,
        callback: Callable[[int, Any, dict[str, Any]], Any] | None = None,
        objective: Callable[[Any], Any] | None = None,
        *,
        lease_ttl: float | None = None,
    ) -> str:
        """Optimize one variable under a server lease; returns the optimization id at once
        while the run goes on in the background (in this connection's nursery).

        Each iteration proposes a value, writes it under the lease's fencing token, gets
        its evaluation, records it, then calls ``callback(iteration, value, metrics)`` (a
        callback returning ``False`` ends the run). An evaluation is a number or a dict of
        metrics whose target is ``optimizer_config['metric']``;
        ``optimizer_config['mode']`` is ``'max'`` (default) or ``'min'``.

        Without ``objective`` (the spec's form), the evaluation comes from the program
        over the server, ask/tell: the run writes the proposal and waits until someone
        reports it: ``proposals(variable)`` yields each proposal and ``proposal.report``
        answers it (``report_metrics`` naming the proposal), from any connection of the
        session (or another session allowed to ``optimize`` the variable), or, when
        ``optimizer_config['metric_variable']`` names a variable, by a write to it whose
        metadata names the proposal (``proposal_version``, or ``iteration`` with
        ``optimization_id``; its value: a number, or a dict of metrics). A run nobody
        reports to waits, renewing its lease and warning once per lease TTL, until
        ``stop_optimization``. ``objective(value)`` is the in-process shortcut: sync
        objectives run in a worker thread, async ones in the session's nursery. The run
        ends at ``max_iterations``, on convergence, when the search space is exhausted, or when
        someone calls ``stop_optimization``; then the best value is written and the lease
        released. While it runs, other writes to the variable raise
        ``OptimizationLockedError``; a second start raises it too (a ``ValueError`` saying
        the variable is "already being optimized"). ``lease_ttl`` (server default 30 s)
        is how long the lease outlives a holder that stops renewing it.

        Example: ``await session.start_optimization("temperature", "bayesian", {"seed": 7},
        max_iterations=20)`` starts a run; each proposal of ``session.proposals("temperature")``
        is answered by ``await proposal.report(score)``.
        """
        config = dict(optimizer_config or {})
        objective_fn = as_objective(objective, variable)
        metric_variable = config.get("metric_variable")
        if metric_variable is not None and (
            not isinstance(metric_variable, str) or not metric_variable
        ):
            raise InvalidValueError(
                f"variable {variable!r}: optimizer_config['metric_variable'] must be a "
                f"variable name, got {metric_variable!r}"
            )
        if metric_variable is not None and objective_fn is not None:
            raise InvalidValueError(
                f"variable {variable!r}: optimizer_config['metric_variable'] and objective= "
                "are two ways to evaluate; give one"
            )
        if callback is not None and not callable(callback):
            raise InvalidValueError(f"variable {variable!r}: callback must be callable")
        if (
            not isinstance(convergence_threshold, int | float)
            or isinstance(convergence_threshold, bool)
            or not convergence_threshold >= 0
        ):
            raise InvalidValueError(
                f"variable {variable!r}: convergence_threshold must be a number >= 0, got "
                f"{convergence_threshold!r}"
            )
        self.core.nursery()  # RuntimeError: the session is not initialized
        info = await self.session.get_variables([variable], include_metadata=True)
        if variable not in info:
            raise error_from_kind("not_found", f"no variable {variable!r}")
        meta = info[variable]  # system fields: id, name, type, constraints
        if metric_variable is not None:
            # It must exist and be readable now (KeyError otherwise), and not be the
            # variable being optimized (its proposals would read as evaluations).
            try:
                metric_meta = (await self.session.get_variables(
                    [metric_variable], include_metadata=True))[metric_variable]
            except KeyError:
                raise error_from_kind(
                    "not_found", f"variable {variable!r}: optimizer_config['metric_variable'] "
                    f"names no variable this session can read: {metric_variable!r}"
                ) from None
            if metric_meta["id"] == meta["id"]:
                raise InvalidValueError(
                    f"variable {variable!r}: the metric variable cannot be the variable "
                    "being optimized"
                )
        space = SearchSpace.from_variable(meta["name"], meta["type"], meta["constraints"],
                                          config)
        mode, metric = check_mode(variable, config), check_metric(variable, config)
        seed = config.get("seed")
        optimizer_class = self.optimizers.get(optimizer_type) or get_optimizer(optimizer_type)
        # Built before the lease is taken: a bad config fails with nothing changed.
        optimizer = optimizer_class(space, config, seed=seed, max_iterations=max_iterations)
        return await self.start_lease(
            variable, optimizer_type, config, max_iterations, lease_ttl, mode,
            lambda response: self.launch(
                variable, response, optimizer, space, objective_fn, callback, metric, mode,
                max_iterations, float(convergence_threshold), metric_variable,
            ),
            takes_reports=objective_fn is None,
        )

    def launch(
        self, variable: str, response: pb.StartOptimizationResponse, optimizer: BaseOptimizer,
        space: SearchSpace, objective_fn: Callable[[Any], Any] | None,
        callback: Callable[[int, Any, dict[str, Any]], Any] | None, metric: str | None,
        mode: str, max_iterations: int, convergence_threshold: float,
        metric_variable: str | None,
    ) -> str:
        """Start the run that holds a granted lease, in the session's nursery.

        Example: ``start_lease`` calls it with the StartOptimization answer.
        """
        run = OptimizationRun(
            session=self.session, core=self.core, variable=variable,
            optimization_id=response.status.optimization_id,
            token=response.fencing_token, optimizer=optimizer, space=space,
            objective=objective_fn, callback=callback, metric=metric, mode=mode,
            max_iterations=max_iterations, convergence_threshold=convergence_threshold,
            ttl=response.status.ttl_seconds, metric_variable=metric_variable,
        )
        self.runs[run.optimization_id] = run
        self.runs_by_variable[response.status.variable_id] = run
        self.runs_by_variable[response.status.name] = run
        self.core.nursery().start_soon(run.run, name=f"dspex-rx-optimize[{variable}]")
        return run.optimization_id

    @asynccontextmanager
    async def optimization_lease(
        self,
        variable: str,
        optimizer_type: str = "manual",
        optimizer_config: Mapping[str, Any] | None = None,
        *,
        max_iterations: int = 100,
        lease_ttl: float | None = None,
    ) -> AsyncIterator[HeldLease]:
        """Hold the variable's optimization lease for an optimization driven by hand or
        by another library (a DSPy optimizer): inside the block nobody else can write the
        variable, ``lease.write`` writes under the fencing token, ``lease.record`` adds
        evaluations to the optimization history, and the lease is renewed in the
        background. Leaving the block releases it (``completed``, ``failed`` with the
        exception, or ``stopped`` when cancelled: Ctrl-C); ``await lease.finish(value,
        write_final=True)`` inside it ends the run with a final value. A stop from
        elsewhere makes the next write raise ``OptimizationLockedError``.
        ``optimizer_config['metric']``/``['mode']`` tell ``record`` how to read a metrics
        dict.

        Example: ``session.optimization_lease("temperature", "my_sweep")`` is the
        ``async with`` block in which ``await lease.write(0.2, iteration=1)`` and
        ``await lease.record(1, 0.2, {"accuracy": 0.9})`` run.
        """
        config = dict(optimizer_config or {})
        mode, metric = check_mode(variable, config), check_metric(variable, config)
        self.core.nursery()  # RuntimeError: the session is not initialized
        lease = await self.start_lease(
            variable, optimizer_type, config, max_iterations, lease_ttl, mode,
            lambda response: HeldLease(
                self.core, variable, response.status.optimization_id, response.fencing_token,
                response.status.ttl_seconds, metric, mode,
            ),
        )
        started = time.perf_counter()
        self.core.nursery().start_soon(lease.keep_alive, name=f"dspex-rx-lease[{variable}]")
        try:
            yield lease
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                if not lease.released and lease.revoked is None:
                    # Cancelled (Ctrl-C): stopped by its holder, not a failure.
                    stopped = interrupted(exc)
                    try:
                        await lease.finish(
                            state="stopped" if stopped else "failed",
                            reason=INTERRUPTED if stopped
                            else end_reason(f"{type(exc).__name__}: {exc}"),
                        )
                    except Exception as again:
                        log.warning("optimization_release_failed", variable=variable,
                                    error=str(again))
            raise
        else:
            if not lease.released and lease.revoked is None:
                try:
                    await lease.finish(state="completed", reason="the holder's block ended")
                except Exception as again:
                    if lease.revoked is None:
                        raise
                    log.info("optimization_lease_revoked", variable=variable, reason=str(again))
        finally:
            lease.stop_renewing()
            self.core.add_optimization_time(variable, time.perf_counter() - started)

    async def start_lease(
        self, variable: str, optimizer_type: str, config: Mapping[str, Any],
        max_iterations: int, lease_ttl: float | None, mode: str,
        then: Callable[[pb.StartOptimizationResponse], Held], takes_reports: bool = False,
    ) -> Held:
        """Take the lease and hand it to ``then``; give it back if that fails.

        Example: ``await optimizations.start_lease("t", "manual", {}, 100, None, "max", f)``.
        """
        # Take the lease, then hand it to ``then`` (which starts whatever holds it). If
        # that does not happen (a cancel, a closed session, an error), the lease is
        # given back at once rather than leaving the variable locked until the TTL. (A
        # session that closed meanwhile has released it already: the server ends a
        # closing client's leases.)
        request = pb.StartOptimizationRequest(
            session_id=self.core.session_id, ref=variable, optimizer_type=optimizer_type,
            config=encode_metadata(variable, config), max_iterations=max_iterations,
            ttl_seconds=lease_ttl or 0.0, client_id=self.core.client_id, minimize=mode == "min",
            takes_reports=takes_reports,
        )
        # Shielded: a cancel arriving while the server grants the lease must not throw the
        # answer away (the lease would be held by no one until its TTL); the caller gives
        # it back instead, at its next checkpoint.
        with trio.CancelScope(shield=True):
            response = await self.core.call(
                "StartOptimization", request, pb.StartOptimizationResponse
            )
        try:
            await trio.lowlevel.checkpoint()  # a cancel that came during the start lands here
            if self.core.conn.nursery is None:
                raise RuntimeError("the session is closed")
            return then(response)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.release(variable, response.status.optimization_id)
            raise

    async def release(self, variable: str, optimization_id: str) -> None:
        """Give back a lease whose start was interrupted (a failure is only logged).

        Example: ``await optimizations.release("t", optimization_id)``.
        """
        if not self.core.open:
            return
        try:
            await self.core.call(
                "StopOptimization",
                pb.StopOptimizationRequest(
                    session_id=self.core.session_id, ref=variable, optimization_id=optimization_id,
                    reason="its start was interrupted", client_id=self.core.client_id,
                ),
                pb.StopOptimizationResponse,
                timeout=5.0,
            )
        except (DspexError, grpc.RpcError, RuntimeError) as exc:
            log.warning("optimization_release_failed", variable=variable, error=str(exc))

    async def stop_optimization(
        self, variable: str, reason: str | None = None, apply_best: bool = False
    ) -> None:
        """Revoke the variable's optimization lease, from any connection of the session.
        The running optimizer notices within one iteration (a run waiting for a report at
        once) and ends; its later writes are refused (the fencing token), so none lands
        after the stop. ``apply_best`` writes the best value recorded so far in the same
        commit. A variable that is not being optimized raises ``ValueError`` (saying so,
        and how its last run ended).

        Example: ``await session.stop_optimization("temperature", reason="budget spent")``.
        """
        response = await self.core.call(
            "StopOptimization",
            pb.StopOptimizationRequest(
                session_id=self.core.session_id, ref=variable, reason=reason or "",
                apply_best=apply_best, client_id=self.core.client_id,
            ),
            pb.StopOptimizationResponse,
        )
        if response.HasField("variable"):
            self.core.remember(response.variable)
        if not response.stopped:
            last = status_from_pb(response.status, response.revision)
            ended = (f" (its last optimization {last['optimization_id']} has {last['state']})"
                     if last["optimization_id"] else "")
            raise InvalidValueError(
                f"variable {variable!r} is not being optimized{ended}: nothing to stop"
            )

    async def report_metrics(
        self,
        variable: str,
        metrics: Mapping[str, Any] | float,
        *,
        iteration: int | None = None,
        version: int | None = None,
        optimization_id: str | None = None,
    ) -> dict[str, Any]:
        """Report the evaluation of the proposal a running optimization (started without
        ``objective=``) wrote into ``variable``: a dict of metrics (the target is
        ``optimizer_config['metric']``) or a number. From any connection of the session,
        or another session allowed to ``optimize`` the variable. Returns the status.

        The report names the proposal it evaluates: by ``version`` (the variable's version
        the proposal's write made, ``VariableUpdate.version``: versions only grow, so it
        names one proposal for good), or by ``iteration`` with ``optimization_id`` (its
        run: iterations restart at 1 in each run); ``proposal.report`` sends all three. A
        report naming neither is a ``ValueError`` (the version this connection last saw
        need not be the one the evaluator read). A ``ValueError`` naming the current
        proposal refuses, and changes nothing for, a report of an earlier proposal or of
        another run (never credited to a later one), a second report of one proposal (the
        first counts), or a report when nothing is being optimized.

        ``proposals(variable)`` yields the proposals to evaluate (none missed, whenever
        it starts), and ``proposal.report(metrics)`` calls this.

        Example: ``await session.report_metrics("temperature", {"accuracy": 0.8},
        version=proposal.version)`` returns the status.
        """
        if isinstance(metrics, int | float) and not isinstance(metrics, bool):
            metrics = {"score": float(metrics)}
        if not isinstance(metrics, Mapping):
            raise VariableTypeError(
                f"variable {variable!r}: metrics must be a dict or a number, got "
                f"{type(metrics).__name__}"
            )
        for label, number in (("iteration", iteration), ("version", version)):
            if number is not None and (
                not isinstance(number, int) or isinstance(number, bool) or number < 1
            ):
                raise InvalidValueError(
                    f"variable {variable!r}: {label} must be a positive integer, got "
                    f"{number!r}"
                )
        if optimization_id is not None and not isinstance(optimization_id, str):
            raise VariableTypeError(
                f"variable {variable!r}: optimization_id must be a string, got "
                f"{type(optimization_id).__name__}"
            )
        if iteration is None and version is None:
            # No guess from what this connection last saw: the evaluator may have read
            # another proposal (or another run's), and the report would score the wrong one.
            raise InvalidValueError(
                f"variable {variable!r}: name the proposal the metrics evaluate: "
                "proposal.report(metrics) for a proposal from session.proposals(x), or "
                "report_metrics(x, metrics, version=update.version) with the version the "
                "proposal's write made (or iteration= with optimization_id=)"
            )
        response = await self.core.call(
            "ReportMetrics",
            pb.ReportMetricsRequest(
                session_id=self.core.session_id, ref=variable,
                metrics=encode_metadata(variable, dict(metrics)),
                iteration=iteration or 0, version=version or 0, client_id=self.core.client_id,
                optimization_id=optimization_id or "",
            ),
            pb.ReportMetricsResponse,
        )
        return status_from_pb(response.status, response.revision)

    async def get_optimization_status(
        self, variable: str, optimization_id: str | None = None
    ) -> dict[str, Any]:
        """The variable's optimization status: ``is_optimizing``, ``optimization_id``,
        ``iteration``, ``best_value``, ``best_metrics``, ``started_at``, ``last_update``,
        ``state`` and, once ended, ``end_reason`` and ``ended_at`` (see ``status_from_pb``
        for every key). A variable never optimized has ``state == 'idle'``. With
        ``optimization_id``, the status of that run (one of the variable's 16 latest).

        Example: ``(await session.get_optimization_status("temperature"))["best_value"]``.
        """
        response = await self.core.call(
            "GetOptimizationStatus",
            pb.GetOptimizationStatusRequest(
                session_id=self.core.session_id, ref=variable, optimization_id=optimization_id or ""
            ),
            pb.GetOptimizationStatusResponse,
        )
        return status_from_pb(response.status, response.revision)

    async def get_optimization_history(
        self,
        variable: str,
        limit: int = 100,
        since: datetime | float | None = None,
        optimizer_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """The variable's evaluated iterations, oldest first: the newest ``limit`` of them
        (recorded at or after ``since``, a ``datetime`` or POSIX seconds; of one
        optimization when ``optimizer_id`` names its id). Each entry has ``iteration``,
        ``value``, ``metrics``, ``score``, ``timestamp`` (a timezone-aware UTC
        ``datetime``), ``optimization_id``, ``optimizer_type``.

        Example: ``await session.get_optimization_history("temperature", limit=10)``.
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 2**31 - 1:
            raise InvalidValueError(
                f"variable {variable!r}: history limit must be a positive integer, got "
                f"{limit!r}"
            )
        request = pb.GetOptimizationHistoryRequest(
            session_id=self.core.session_id, ref=variable, limit=limit,
            optimization_id=optimizer_id or "",
        )
        if since is not None:
            request.since.CopyFrom(timestamp(since_seconds(f"variable {variable!r}", since)))
        response = await self.core.call(
            "GetOptimizationHistory", request, pb.GetOptimizationHistoryResponse
        )
        return [
            {
                "iteration": entry.iteration,
                "value": codec.decode(entry.value),
                "metrics": codec.decode_map(entry.metrics),
                "score": entry.score,
                "timestamp": utc_datetime(entry.timestamp),
                "optimization_id": entry.optimization_id,
                "optimizer_type": entry.optimizer_type,
            }
            for entry in response.entries
        ]

    async def wait_for_optimization(self, variable: str) -> dict[str, Any]:
        """Wait until this session's run on ``variable`` (by name, id, or optimization id)
        has ended, then return that run's final status (even if another run has started
        since).

        Example: ``await session.wait_for_optimization("t")`` after
        ``session.start_optimization("t", "grid_search", objective=score)`` returns its status.
        """
        run = self.runs.get(variable) or self.runs_by_variable.get(variable)
        if run is None:
            raise error_from_kind(
                "not_found", f"this session runs no optimization of {variable!r}"
            )
        await run.finished.wait()
        if not self.core.open:
            raise RuntimeError("the session is closed")
        return await self.get_optimization_status(run.variable, run.optimization_id)
