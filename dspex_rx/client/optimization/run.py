"""The client side of an optimization: the run loop that holds a server lease (propose →
write under the fencing token → evaluate in-process or await the reported evaluation →
record → callback), and status conversion.

The algorithms live in ``optimizers``; the lease and its fencing live on the server. This
module only drives them, in the session's nursery.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import reactivex
import trio

from dspex_rx.client.actors import VariableUpdate
from dspex_rx.client.aio import is_async_callable, portal_aware
from dspex_rx.client.optimization.optimizers import BaseOptimizer, SearchSpace
from dspex_rx.core.metrics import score_of
from dspex_rx.errors import (
    DspexError,
    InvalidValueError,
    OptimizationLockedError,
    VariableTypeError,
)
from dspex_rx.logs import get_logger
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import timestamp, utc_datetime

if TYPE_CHECKING:
    from dspex_rx.client import SessionContext

log = get_logger("dspex_rx.optimize")

Objective = Callable[[Any], Any]
Callback = Callable[[int, Any, dict[str, Any]], Any]
FINISH_TIMEOUT = 5.0


STATUS_TIMES = ("started_at", "last_update", "expires_at", "ended_at")


def status_from_pb(status: pb.OptimizationStatus, revision: int) -> dict[str, Any]:
    """The status dict ``get_optimization_status`` returns, from the wire.

    Keys: ``variable``, ``is_optimizing``, ``optimization_id`` (None if never optimized),
    ``optimizer_type``, ``state`` (``idle``, ``running``, ``completed``, ``stopped``,
    ``expired``, ``failed``), ``iteration``, ``max_iterations``, ``best_value``,
    ``best_metrics``, ``best_score`` (the target metric of the best iteration),
    ``minimize``, ``final_value`` (what the run wrote when it ended: the optimizer's
    recommendation, which for a noisy objective may differ from ``best_value``),
    ``started_at``, ``last_update``, ``expires_at``, ``ended_at`` (timezone-aware UTC
    ``datetime``s), ``end_reason``, ``holder_session``, ``holder_client``,
    ``ttl_seconds``, ``revision``; for a run evaluated by reports (``takes_reports``):
    ``proposal_iteration`` and ``proposal_version`` (the proposal a report must name),
    ``awaiting_report``, ``report_metrics`` (the current proposal's report, or None) and
    ``reported_by``.

    Example::

        status_from_pb(response.status, response.revision)["is_optimizing"]
    """
    if not status.optimization_id:
        return {
            "variable": status.name, "is_optimizing": False, "optimization_id": None,
            "optimizer_type": None, "state": "idle", "iteration": 0, "max_iterations": 0,
            "best_value": None, "best_metrics": {}, "best_score": None, "started_at": None,
            "last_update": None, "expires_at": None, "ended_at": None, "end_reason": "",
            "holder_session": None, "holder_client": None, "ttl_seconds": None,
            "minimize": False, "final_value": None, "takes_reports": False,
            "proposal_iteration": 0, "proposal_version": 0, "awaiting_report": False,
            "report_metrics": None, "reported_by": "", "revision": revision,
        }
    return _with_awaiting({
        "variable": status.name,
        "is_optimizing": status.is_optimizing,
        "optimization_id": status.optimization_id,
        "optimizer_type": status.optimizer_type,
        "state": status.state,
        "iteration": status.iteration,
        "max_iterations": status.max_iterations,
        "best_value": codec.decode(status.best_value) if status.has_best else None,
        "best_metrics": codec.decode_map(status.best_metrics) if status.has_best else {},
        "best_score": status.best_score if status.has_best else None,
        "minimize": status.minimize,
        "final_value": codec.decode(status.final_value) if status.has_final else None,
        "started_at": utc_datetime(status.started_at),
        "last_update": utc_datetime(status.last_update),
        "expires_at": utc_datetime(status.expires_at),
        "ended_at": utc_datetime(status.ended_at) if status.HasField("ended_at") else None,
        "end_reason": status.end_reason,
        "holder_session": status.holder_session,
        "holder_client": status.holder_client,
        "ttl_seconds": status.ttl_seconds,
        "takes_reports": status.takes_reports,
        "proposal_iteration": status.proposal_iteration,
        "proposal_version": status.proposal_version,
        "report_metrics": codec.decode_map(status.report_metrics) if status.has_report
        else None,
        "reported_by": status.reported_by,
        "revision": revision,
    })


def status_from_event(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The status dict of an optimization event (its metadata is the store's status, times
    in POSIX seconds): the keys and types of ``status_from_pb``.

    Example::

        >>> status = status_from_event({"is_optimizing": True, "takes_reports": True,
        ...                             "proposal_iteration": 1, "report_metrics": None,
        ...                             "started_at": 0.0})
        >>> status["awaiting_report"], status["started_at"].isoformat()
        (True, '1970-01-01T00:00:00+00:00')
    """
    status = dict(metadata)
    for key in STATUS_TIMES:
        if isinstance(status.get(key), int | float):
            status[key] = utc_datetime(timestamp(float(status[key])))
    return _with_awaiting(status)


def _with_awaiting(status: dict[str, Any]) -> dict[str, Any]:
    # Derived, not stored: the run waits for the current proposal's report.
    status["awaiting_report"] = bool(
        status.get("is_optimizing") and status.get("takes_reports")
        and status.get("proposal_iteration") and status.get("report_metrics") is None
    )
    return status


def check_mode(name: str, config: Mapping[str, Any]) -> str:
    """``optimizer_config['mode']``: ``'max'`` (default) or ``'min'``.

    Example::

        >>> check_mode("t", {"mode": "min"})
        'min'
    """
    mode = config.get("mode", "max")
    if mode not in ("max", "min"):
        raise InvalidValueError(
            f"variable {name!r}: optimizer_config['mode'] must be 'max' or 'min', got {mode!r}"
        )
    return str(mode)


def check_metric(name: str, config: Mapping[str, Any]) -> str | None:
    """``optimizer_config['metric']``: the name of the target metric in a metrics dict,
    or None.

    Example::

        >>> check_metric("t", {"metric": "accuracy"})
        'accuracy'
    """
    metric = config.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise InvalidValueError(f"variable {name!r}: optimizer_config['metric'] must be a string")
    return metric


@dataclass
class _Evaluation:
    iteration: int
    value: Any
    metrics: dict[str, Any]
    score: float  # the target metric, as the objective reported it

    def fill(self, request: Any) -> None:
        request.has_record = True
        request.iteration = self.iteration
        codec.fill(request.evaluated_value, self.value)
        request.metrics.CopyFrom(codec.encode_map(self.metrics))
        request.score = self.score


@portal_aware
@dataclass(frozen=True)
class Proposal:
    """A value an optimization run (started without ``objective=``) wrote into its
    variable and waits to hear about: ``session.proposals(variable)`` yields them.

    Example::

        async for proposal in session.proposals("temperature"):
            await proposal.report({"accuracy": await evaluate(proposal.value)})
    """

    session: SessionContext = field(repr=False)
    variable: str
    optimization_id: str
    iteration: int
    version: int  # the variable's version the proposal's write made
    value: Any

    async def report(self, metrics: Mapping[str, Any] | float) -> dict[str, Any]:
        """Report this proposal's evaluation (``session.report_metrics`` naming it by its
        version, iteration and run, so a late report is never credited to a later proposal
        or run); returns the status.

        Example::

            await proposal.report({"accuracy": 0.81})
        """
        return await self.session.report_metrics(
            self.variable, metrics, iteration=self.iteration, version=self.version,
            optimization_id=self.optimization_id,
        )


@portal_aware
class HeldLease:
    """A variable's optimization lease as its holder sees it: writes under the fencing
    token, recorded evaluations, renewal, and the release. ``session.optimization_lease``
    hands one out for optimizations driven by hand (or by another library); the built-in
    loop uses one too.

    Example::

        async with session.optimization_lease("temperature", "my_tuner") as lease:
            await lease.write(0.4, iteration=1)
            await lease.record(1, 0.4, {"accuracy": 0.91})
    """

    def __init__(
        self, session: SessionContext, variable: str, optimization_id: str, token: int,
        ttl: float, metric: str | None = None, mode: str = "max",
    ) -> None:
        self.session = session
        self.variable = variable
        self.optimization_id = optimization_id
        self.token = token
        self.ttl = ttl
        self.metric = metric
        self.mode = mode
        self.iteration = 0
        self.revoked: str | None = None  # why the lease was taken away, once it was
        self.released = False
        self._keep_alive_scope = trio.CancelScope()

    async def write(self, value: Any, iteration: int | None = None) -> int:
        """Write under the lease's fencing token (also renews); returns the new version.
        After a stop or expiry this raises ``OptimizationLockedError``.

        Example::

            version = await lease.write(0.4, iteration=1)
        """
        step = iteration if iteration is not None else self.iteration + 1
        try:
            variable = await self.step(None, value, step)
        except _Revoked as exc:
            raise OptimizationLockedError(str(exc), optimization_id=self.optimization_id) \
                from None
        assert variable is not None
        return variable.version

    async def record(self, iteration: int, value: Any, result: Any) -> dict[str, Any]:
        """Record an evaluated iteration: ``result`` is a score or a dict of metrics (the
        target named by the lease's ``metric``); it appears in the optimization history
        and the status. Returns the metrics as recorded.

        Example::

            await lease.record(1, 0.4, {"accuracy": 0.91, "latency_ms": 820.0})
        """
        metrics, target = score_of(self.variable, result, self.metric, iteration)
        try:
            await self.step(_Evaluation(iteration, value, metrics, target), None, 0)
        except _Revoked as exc:
            raise OptimizationLockedError(str(exc), optimization_id=self.optimization_id) \
                from None
        self.iteration = max(self.iteration, iteration)
        return metrics

    async def step(
        self, evaluation: _Evaluation | None, value: Any, iteration: int
    ) -> pb.Variable | None:
        """One ``OptimizationStep``: record, renew, write (``iteration`` > 0 writes
        ``value``); raises ``_Revoked`` once the lease is gone.

        Example::

            await lease.step(None, None, 0)   # renew only
        """
        request = pb.OptimizationStepRequest(
            session_id=self.session.session_id, ref=self.variable,
            optimization_id=self.optimization_id, fencing_token=self.token,
        )
        if evaluation is not None:
            evaluation.fill(request)
        if iteration:
            request.has_write = True
            request.write_iteration = iteration
            codec.fill(request.write_value, value)
        started = time.perf_counter()
        try:
            response = await self.session._call(
                "OptimizationStep", request, pb.OptimizationStepResponse
            )
        except OptimizationLockedError as exc:
            self.revoked = str(exc)
            raise _Revoked(str(exc)) from None
        if not response.HasField("variable"):
            return None
        actor = self.session._remember(response.variable)
        actor.stats.write_count += 1
        actor.stats.write_latency_total += time.perf_counter() - started
        return response.variable

    async def finish(
        self,
        final_value: Any = None,
        *,
        write_final: bool = False,
        state: str = "completed",
        reason: str = "",
        evaluation: _Evaluation | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Release the lease: record ``evaluation``, write ``final_value`` (with
        ``write_final``, its commit carrying ``metadata`` too) and end the run as
        ``completed`` or ``failed``, in one commit.
        A lease already taken away raises ``OptimizationLockedError``.

        Example::

            await lease.finish(0.4, write_final=True, reason="done")
        """
        request = pb.FinishOptimizationRequest(
            session_id=self.session.session_id, ref=self.variable,
            optimization_id=self.optimization_id, fencing_token=self.token,
            state=state, reason=reason,
        )
        if evaluation is not None:
            evaluation.fill(request)
        if write_final:
            request.has_final = True
            codec.fill(request.final_value, final_value)
        if metadata:
            request.metadata.CopyFrom(codec.encode_map(metadata))
        try:
            response = await self.session._call(
                "FinishOptimization", request, pb.FinishOptimizationResponse,
                timeout=FINISH_TIMEOUT,
            )
        except OptimizationLockedError as exc:
            self.revoked = str(exc)
            raise
        self.released = True
        self._keep_alive_scope.cancel()
        if response.HasField("variable"):
            self.session._remember(response.variable)

    async def keep_alive(self, on_revoked: Callable[[], None] = lambda: None) -> None:
        """Renew every ``ttl/3`` until released or revoked (then ``on_revoked()``).

        Example::

            nursery.start_soon(lease.keep_alive)
        """
        with self._keep_alive_scope:
            while not self.released:
                await trio.sleep(self.ttl / 3.0)
                try:
                    await self.step(None, None, 0)
                except _Revoked:
                    on_revoked()
                    return
                except (DspexError, grpc.RpcError) as exc:
                    log.warning("optimization_renew_failed", variable=self.variable,
                                error=str(exc))

    def stop_renewing(self) -> None:
        """End ``keep_alive`` (the lease then lapses by its TTL unless finished).

        Example::

            lease.stop_renewing()
        """
        self._keep_alive_scope.cancel()


@dataclass
class OptimizationRun:
    """One running optimization, driven from the session's nursery by its holder.

    With an ``objective`` the run evaluates each proposal itself. Without one it is
    ask/tell over the server: each proposal is written (the ask), and the run waits for
    its evaluation to be reported (the tell), by ``report_metrics`` from any allowed
    connection or by a change of ``metric_variable``; reports reach it as optimization
    events on its own subscription, with a status poll every ``ttl`` as a safety net.

    Example::

        run = session._runs[opt_id]   # see SessionContext.start_optimization
        await run.finished.wait(); print(run.end_reason)
    """

    session: SessionContext
    variable: str
    optimization_id: str
    token: int
    optimizer: BaseOptimizer
    space: SearchSpace
    objective: Objective | None
    callback: Callback | None
    metric: str | None
    mode: str
    max_iterations: int
    convergence_threshold: float
    ttl: float
    metric_variable: str | None = None
    finished: trio.Event = field(default_factory=trio.Event)
    state: str = "running"
    end_reason: str = ""
    iterations: int = 0
    elapsed: float = 0.0
    error: BaseException | None = None
    # The trio time since when the run has waited for the current proposal's report (None
    # while it is not waiting): the TTL warnings count from it.
    awaiting_since: float | None = None
    _revoked: _Revoked | None = None
    _pending: _Evaluation | None = None
    # Ask/tell: reports by proposal iteration, metric-variable changes not yet looked at,
    # the run's end as a status event told it, and what wakes the waiting loop.
    _reports: dict[int, dict[str, Any]] = field(default_factory=dict)
    _metric_updates: list[VariableUpdate] = field(default_factory=list)
    _ended: dict[str, Any] | None = None
    _failure: BaseException | None = None
    _wake: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self.lease = HeldLease(self.session, self.variable, self.optimization_id, self.token,
                               self.ttl, self.metric, self.mode)

    async def run(self) -> None:
        """The loop; ends by finishing the lease, or when the lease was taken away.

        Example::

            nursery.start_soon(run.run)
        """
        started = time.perf_counter()
        ended = False
        try:
            async with trio.open_nursery() as nursery:
                # Renewed for the whole run, not only while evaluating: a slow callback or
                # optimizer must not lose a live holder its lease. A revocation noticed
                # by the renewal ends the loop at once.
                def on_revoked() -> None:
                    self._revoked = _Revoked(self.lease.revoked or "the lease was revoked")
                    nursery.cancel_scope.cancel()

                nursery.start_soon(self.lease.keep_alive, on_revoked)
                listening = await self._listen() if self.objective is None else []
                try:
                    state, reason = await self._loop()
                finally:
                    for subscription in listening:
                        subscription.dispose()
                nursery.cancel_scope.cancel()
            if self._revoked is not None:
                raise self._revoked
            await self._finish(self._pending, state, reason)
            ended = True
        except _Revoked as revoked:
            ended = True
            self.state, self.end_reason = "revoked", str(revoked)
            log.info("optimization_revoked", variable=self.variable,
                     optimization_id=self.optimization_id, reason=str(revoked))
        except Exception as exc:  # the run is a background task: report, never crash
            ended = True
            error = self.error = _leaf(exc)
            if isinstance(error, _Revoked):
                self.state, self.end_reason = "revoked", str(error)
            else:
                log.warning("optimization_failed", variable=self.variable,
                            optimization_id=self.optimization_id, error=repr(error))
                with trio.CancelScope(shield=True):
                    await self._finish_quietly(
                        self._pending, "failed", f"{type(error).__name__}: {error}"
                    )
        finally:
            if not ended:  # cancelled: the session is closing under the run
                with trio.CancelScope(shield=True):
                    await self._finish_quietly(
                        self._pending, "failed", "cancelled: the holder's session closed"
                    )
            self.elapsed = time.perf_counter() - started
            self.session._add_optimization_time(self.variable, self.elapsed)
            self.finished.set()

    async def _loop(self) -> tuple[str, str]:
        """The iterations; returns (state, reason) for the finish. ``self._pending`` is
        the evaluation not recorded yet; a revocation is kept in ``self._revoked``."""
        try:
            for iteration in range(1, self.max_iterations + 1):
                if self.optimizer.done:
                    return "completed", "the search space is exhausted"
                value = await self._propose(iteration)
                # The previous iteration's record and this proposal travel as one step.
                written = await self.lease.step(self._pending, value, iteration)
                self._pending = None
                if self.objective is None:
                    assert written is not None
                    result = await self._await_report(iteration, written)
                    source = "the report"
                else:
                    result = await self._evaluate(value)
                    source = "the objective"
                metrics, target = score_of(self.variable, result, self.metric, iteration,
                                           source)
                # Optimizers maximize; the server is told the mode and keeps raw scores.
                await self._offload(
                    self.optimizer.tell, value, target if self.mode == "max" else -target
                )
                self._pending = _Evaluation(iteration, value, metrics, target)
                self.iterations = iteration
                if self.callback is not None:
                    # Recorded before the callback sees it.
                    await self._step(self._pending, None, 0)
                    self._pending = None
                    if await self._call_back(iteration, value, metrics) is False:
                        return "completed", f"the callback stopped it after iteration {iteration}"
                if await self._offload(self.optimizer.converged, self.convergence_threshold):
                    return "completed", f"converged after {iteration} iterations"
            return "completed", f"max_iterations ({self.max_iterations}) reached"
        except _Revoked as revoked:
            self._revoked = revoked
            return "revoked", str(revoked)

    async def _listen(self) -> list[reactivex.abc.DisposableBase]:
        # Subscribed, and the subscriptions registered with the server (sync), before
        # the first proposal is written: no report can be accepted before that write, so
        # none can be missed. The callbacks only note and wake; the loop decides.
        def on_metric(update: VariableUpdate) -> None:
            self._metric_updates.append(update)
            self._wake.set()

        def on_error(exc: Exception) -> None:
            # A lost subscription: the loop's status poll still sees reports and the end.
            log.warning("optimization_events_lost", variable=self.variable, error=repr(exc))

        subscriptions = [self.session.observe_optimization(self.variable).subscribe(
            on_next=self._note_status, on_error=on_error)]
        if self.metric_variable is not None:
            subscriptions.append(self.session.observe(
                self.metric_variable, include_initial=False
            ).subscribe(on_next=on_metric, on_error=on_error))
        await self.session.sync()
        return subscriptions

    def _note_status(self, status: dict[str, Any]) -> None:
        # What a status tells the waiting loop, whether an event or the TTL poll brought
        # it: a report (filed by the proposal it names) and the run's end.
        if status.get("optimization_id") != self.optimization_id:
            return  # an earlier run's last status, or a later run's
        reported, iteration = status.get("report_metrics"), status.get("proposal_iteration")
        if reported is not None and iteration:
            self._reports.setdefault(int(iteration), dict(reported))
        if not status.get("is_optimizing"):
            self._ended = status
        self._wake.set()

    async def _await_report(self, iteration: int, written: pb.Variable) -> dict[str, Any]:
        """Wait for the evaluation of the proposal ``written`` at ``iteration``: a report
        (first one wins, the store refuses the rest) or a change of the metric variable
        naming this proposal. No deadline: the run keeps renewing its lease, and
        ``stop_optimization`` (or the lease's end) is what ends a wait nobody answers;
        every TTL without a report it logs a warning naming the call that would answer."""
        since = self.awaiting_since = trio.current_time()
        try:
            return await self._wait_for_report(iteration, written, since)
        finally:
            self.awaiting_since = None

    async def _wait_for_report(
        self, iteration: int, written: pb.Variable, since: float
    ) -> dict[str, Any]:
        poll_at = since + self.ttl
        while True:
            if iteration in self._reports:
                return self._reports.pop(iteration)
            if self._failure is not None:
                raise self._failure
            if self._ended is not None:
                raise _Revoked(f"optimization {self.optimization_id} has "
                               f"{self._ended.get('state')}: {self._ended.get('end_reason')}")
            if self._metric_updates:
                updates, self._metric_updates = self._metric_updates, []
                for update in updates:
                    metrics = self._metric_report(update, iteration, written)
                    if metrics is not None and await self._forward(metrics, iteration, written):
                        return metrics
                continue
            self._wake = trio.Event()
            # A deadline, not a timeout restarted by every wake: the lease's own renewals
            # and unnamed metric writes wake the loop too, and must not put off the poll
            # or the warning for ever.
            with trio.move_on_at(poll_at):
                await self._wake.wait()
            if trio.current_time() >= poll_at:
                # A whole TTL without the report: ask the server (a stream that broke and
                # resumed must not leave the run waiting on a report it already took).
                poll_at = trio.current_time() + self.ttl
                try:
                    status = await self.session.get_optimization_status(
                        self.variable, self.optimization_id
                    )
                except (DspexError, grpc.RpcError) as exc:
                    # The keep-alive deals with a lost lease; a blip only delays the poll.
                    log.warning("optimization_poll_failed", variable=self.variable,
                                error=str(exc))
                    continue
                self._note_status(status)
                if iteration not in self._reports and self._ended is None:
                    self._warn_awaiting(iteration, written, trio.current_time() - since)

    def _warn_awaiting(self, iteration: int, written: pb.Variable, waited: float) -> None:
        # The spec's workflow run unchanged (no objective, nobody reporting) would
        # otherwise wait for ever in silence: say what it waits for, and the call to make.
        how = (f"session.report_metrics({self.variable!r}, metrics, "
               f"version={written.version}) or proposal.report(metrics) from "
               f"session.proposals({self.variable!r})")
        if self.metric_variable is not None:
            how += (f", or a write of {self.metric_variable!r} with "
                    f"metadata={{'proposal_version': {written.version}}}")
        log.warning(
            "optimization_awaits_report",
            message=f"optimization {self.optimization_id} iteration {iteration} of "
            f"{self.variable!r} awaits report_metrics (nothing reported for "
            f"{waited:.0f} s): {how}",
            variable=self.variable, optimization_id=self.optimization_id,
            iteration=iteration, version=written.version, waited_seconds=round(waited, 1),
        )

    def _metric_report(
        self, update: VariableUpdate, iteration: int, written: pb.Variable
    ) -> dict[str, Any] | None:
        # A metric variable change evaluates the current proposal only when its write
        # metadata names this proposal: ``proposal_version`` (the version its write made)
        # or ``iteration`` with ``optimization_id`` (iterations restart in each run). A
        # change naming none is not credited: a partial or repeated write, or one late
        # for the previous proposal, would otherwise score the wrong proposal.
        assert self.metric_variable is not None
        if update.update_type in ("deleted", "revoked"):
            self._failure = InvalidValueError(
                f"variable {self.variable!r}: the metric variable {self.metric_variable!r} "
                f"was {update.update_type} while iteration {iteration} awaited its metrics"
            )
            raise self._failure
        if update.update_type != "value_change":
            return None
        meta = update.metadata
        names_version = "proposal_version" in meta
        names_iteration = "iteration" in meta and "optimization_id" in meta
        if not (names_version or names_iteration):
            # An iteration alone could be an earlier run's: iterations restart at 1.
            what = ("names an iteration but not its run (optimization_id)"
                    if "iteration" in meta else "names no proposal")
            log.warning(
                "optimization_metric_unnamed",
                message=f"a write of the metric variable {self.metric_variable!r} (version "
                f"{update.version}) {what}, so it scores none: write it with "
                f"metadata={{'proposal_version': {written.version}}} (the proposal's "
                f"version) or {{'optimization_id': {self.optimization_id!r}, 'iteration': "
                f"{iteration}}}",
                variable=self.variable, metric_variable=self.metric_variable,
                optimization_id=self.optimization_id, metadata=repr(dict(meta)),
            )
            return None
        this = (not names_version or meta["proposal_version"] == written.version) and (
            not names_iteration
            or (meta["iteration"], meta["optimization_id"]) == (iteration, self.optimization_id)
        )
        if not this or update.revision <= written.mod_revision:
            log.info("optimization_metric_skipped", variable=self.variable,
                     metric_variable=self.metric_variable, metadata=repr(dict(meta)))
            return None
        value = update.value
        metrics = dict(value) if isinstance(value, Mapping) else {
            self.metric or self.metric_variable: value
        }
        # A value that cannot be scored fails the run here, with the variable named.
        score_of(self.variable, metrics, self.metric, iteration,
                 f"the metric variable {self.metric_variable!r}")
        return metrics

    async def _forward(
        self, metrics: dict[str, Any], iteration: int, written: pb.Variable
    ) -> bool:
        # The metric variable's evaluation becomes a report like any other, so the first
        # report of a proposal wins whichever way it came. Refused (another report came
        # first, or the run ended): the loop hears of that as an event.
        try:
            await self.session.report_metrics(
                self.variable, metrics, iteration=iteration, version=written.version,
                optimization_id=self.optimization_id,
            )
        except InvalidValueError as exc:
            log.info("optimization_metric_not_reported", variable=self.variable,
                     reason=str(exc))
            return False
        return True

    async def _offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        # The built-ins are quick (a GP on at most 300 points); a custom optimizer may not
        # be, and the keep-alive needs the trio thread to renew the lease meanwhile.
        if type(self.optimizer).__module__ == BaseOptimizer.__module__:
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args)

    async def _propose(self, iteration: int) -> Any:
        proposed = await self._offload(self.optimizer.ask)
        try:
            # numpy scalars (rng.integers, rng.choice) are fine: coerce makes builtins.
            value = self.space.coerce(proposed)
        except (ValueError, TypeError):
            value = None
        if value is None or not self.space.contains(value):
            raise InvalidValueError(
                f"variable {self.variable!r}: optimizer {type(self.optimizer).__name__} "
                f"proposed {proposed!r} at iteration {iteration}, outside the variable's "
                "constraints"
            )
        return value

    async def _evaluate(self, value: Any) -> Any:
        assert self.objective is not None
        if is_async_callable(self.objective):
            return await self.objective(value)
        # Sync objectives (an LLM call, a training step) run off the trio thread;
        # contextvars travel with them.
        result = await trio.to_thread.run_sync(self.objective, value, abandon_on_cancel=True)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _call_back(self, iteration: int, value: Any, metrics: dict[str, Any]) -> Any:
        assert self.callback is not None
        if is_async_callable(self.callback):
            return await self.callback(iteration, value, dict(metrics))
        # A sync callback (a progress bar, a checkpoint) runs in a worker thread, like a
        # sync objective: however long it takes, the keep-alive renews the lease.
        answer = await trio.to_thread.run_sync(
            self.callback, iteration, value, dict(metrics), abandon_on_cancel=True
        )
        if inspect.isawaitable(answer):
            answer = await answer
        return answer

    async def _step(self, evaluation: _Evaluation | None, value: Any, iteration: int) -> None:
        await self.lease.step(evaluation, value, iteration)

    async def _finish(
        self, pending: _Evaluation | None, state: str, reason: str, write_final: bool = True
    ) -> None:
        reason = end_reason(reason)
        final = None
        if write_final and self.optimizer.history:
            try:
                final = self.space.coerce(await self._offload(self.optimizer.recommend))
            except Exception as exc:
                log.warning("optimization_recommend_failed", variable=self.variable,
                            error=repr(exc))
                # Without a final value the run did not end as it should have.
                state = "failed"
                reason = end_reason(f"{reason} (recommend() failed: {type(exc).__name__}: "
                                    f"{exc}; nothing final was written)")
        if final is not None and not self.space.contains(final):
            # A custom optimizer's bad recommendation must not keep the lease held.
            log.warning("optimization_bad_recommendation", variable=self.variable,
                        value=repr(final))
            reason += f" (the optimizer recommended {final!r}, outside the constraints: " \
                "nothing final was written)"
            final = None
        try:
            await self.lease.finish(final, write_final=final is not None, state=state,
                                    reason=reason, evaluation=pending)
        except OptimizationLockedError as exc:
            raise _Revoked(str(exc)) from None
        self.state, self.end_reason = state, reason
        log.info("optimization_finished", variable=self.variable,
                 optimization_id=self.optimization_id, state=state, reason=reason,
                 iterations=self.iterations)

    async def _finish_quietly(self, pending: _Evaluation | None, state: str, reason: str) -> None:
        try:
            try:
                await self._finish(pending, state, reason)
            except (InvalidValueError, VariableTypeError):
                # Something in the last record or the final value was refused: release
                # the lease without them rather than leave it to the TTL.
                await self._finish(None, state, "failed; the last record or the final "
                                   "value was refused", write_final=False)
        except Exception as exc:  # never let a run take the session's services down
            # The lease lapses by its TTL anyway; nothing more to do from here.
            self.state, self.end_reason = state, reason
            log.warning("optimization_finish_failed", variable=self.variable,
                        optimization_id=self.optimization_id, error=str(exc))


MAX_REASON = 4096


def end_reason(text: str) -> str:
    r"""An end reason the server takes: bounded, and valid UTF-8 (an error message may
    carry a lone surrogate from a file name).

    Example::

        >>> end_reason("bad \udcff name")
        'bad ? name'
    """
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def _leaf(exc: BaseException) -> BaseException:
    # trio wraps what a nursery body raises in an ExceptionGroup; report the cause.
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class _Revoked(Exception):
    """The lease was taken away (stopped, expired): the holder must write nothing more."""


def as_objective(objective: Any, name: str) -> Objective | None:
    """Check ``objective`` is callable, or None (then each proposal's evaluation is
    reported: ``report_metrics`` or a metric variable).

    Example::

        fn = as_objective(lambda v: -abs(v - 1.3), "temperature")
    """
    if objective is not None and not callable(objective):
        raise InvalidValueError(f"variable {name!r}: objective must be callable")
    return objective  # type: ignore[no-any-return]
