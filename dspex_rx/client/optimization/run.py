"""The client side of an optimization: the run loop that holds a server lease (propose →
write under the fencing token → evaluate in-process or await the reported evaluation →
record → callback). The algorithms live in ``optimizers``, the lease in ``lease``."""

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
from dspex_rx.client.aio import is_async_callable
from dspex_rx.client.core import SessionCore
from dspex_rx.client.optimization.lease import Evaluation, HeldLease, Proposal, Revoked
from dspex_rx.client.optimization.optimizers import BaseOptimizer, SearchSpace, is_builtin
from dspex_rx.client.optimization.status import INTERRUPTED, Objective, end_reason
from dspex_rx.core.metrics import score_of
from dspex_rx.errors import (
    DspexError,
    InvalidValueError,
    OptimizationLockedError,
    VariableTypeError,
)
from dspex_rx.logs import get_logger
from dspex_rx.v1 import variables_pb2 as pb

if TYPE_CHECKING:
    from dspex_rx.client import SessionContext

# HeldLease and Proposal are imported from here by the package and the DSPy bridge.
__all__ = ["Callback", "HeldLease", "OptimizationRun", "Proposal"]

log = get_logger("dspex_rx.optimize")

Callback = Callable[[int, Any, dict[str, Any]], Any]


@dataclass
class OptimizationRun:
    """One running optimization, driven from the session's nursery by its holder.

    With an ``objective`` the run evaluates each proposal itself. Without one it is
    ask/tell over the server: each proposal is written (the ask), and the run waits for
    its evaluation to be reported (the tell), by ``report_metrics`` from any allowed
    connection or by a change of ``metric_variable``; reports reach it as optimization
    events on its own subscription, with a status poll every ``ttl`` as a safety net.

    Example: ``await session.wait_for_optimization("temperature")`` waits for a run's
    ``finished`` event and returns its final status.
    """

    session: SessionContext  # its public API only: observe, sync, report_metrics...
    core: SessionCore  # calls, the actors, the optimization-time counter
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
    _revoked: Revoked | None = None
    _pending: Evaluation | None = None
    # Ask/tell: reports by proposal iteration, metric-variable changes not yet looked at,
    # the run's end as a status event told it, and what wakes the waiting loop.
    _reports: dict[int, dict[str, Any]] = field(default_factory=dict)
    _metric_updates: list[VariableUpdate] = field(default_factory=list)
    _ended: dict[str, Any] | None = None
    _failure: BaseException | None = None
    _wake: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self.lease = HeldLease(self.core, self.variable, self.optimization_id, self.token,
                               self.ttl, self.metric, self.mode)

    async def run(self) -> None:
        """The loop; ends by finishing the lease, or when the lease was taken away.

        Example: ``nursery.start_soon(run.run)`` runs it in the session's nursery.
        """
        started = time.perf_counter()
        ended = False
        try:
            async with trio.open_nursery() as nursery:
                # Renewed for the whole run, not only while evaluating: a slow callback or
                # optimizer must not lose a live holder its lease. A revocation noticed
                # by the renewal ends the loop at once.
                def on_revoked() -> None:
                    self._revoked = Revoked(self.lease.revoked or "the lease was revoked")
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
        except Revoked as revoked:
            ended = True
            self.state, self.end_reason = "revoked", str(revoked)
            log.info("optimization_revoked", variable=self.variable,
                     optimization_id=self.optimization_id, reason=str(revoked))
        except Exception as exc:  # the run is a background task: report, never crash
            ended = True
            error = self.error = _leaf(exc)
            if isinstance(error, Revoked):
                self.state, self.end_reason = "revoked", str(error)
            else:
                log.warning("optimization_failed", variable=self.variable,
                            optimization_id=self.optimization_id, error=repr(error))
                with trio.CancelScope(shield=True):
                    await self._finish_quietly(
                        self._pending, "failed", f"{type(error).__name__}: {error}"
                    )
        finally:
            if not ended:
                # Cancelled (Ctrl-C, the session closing under the run): the user stopped
                # it, the optimization did not fail; the best so far is still written.
                with trio.CancelScope(shield=True):
                    await self._finish_quietly(self._pending, "stopped", INTERRUPTED)
            self.elapsed = time.perf_counter() - started
            self.core.add_optimization_time(self.variable, self.elapsed)
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
                self._pending = Evaluation(iteration, value, metrics, target)
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
        except Revoked as revoked:
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
                raise Revoked(f"optimization {self.optimization_id} has "
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
        if is_builtin(self.optimizer):
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

    async def _step(self, evaluation: Evaluation | None, value: Any, iteration: int) -> None:
        await self.lease.step(evaluation, value, iteration)

    async def _finish(
        self, pending: Evaluation | None, state: str, reason: str, write_final: bool = True
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
            raise Revoked(str(exc)) from None
        self.state, self.end_reason = state, reason
        log.info("optimization_finished", variable=self.variable,
                 optimization_id=self.optimization_id, state=state, reason=reason,
                 iterations=self.iterations)

    async def _finish_quietly(self, pending: Evaluation | None, state: str, reason: str) -> None:
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


def _leaf(exc: BaseException) -> BaseException:
    # trio wraps what a nursery body raises in an ExceptionGroup; report the cause.
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc

