"""The client side of an optimization: the run loop that holds a server lease (propose →
write under the fencing token → evaluate → record → callback), and status conversion.

The algorithms live in ``optimizers``; the lease and its fencing live on the server. This
module only drives them, in the session's nursery.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import trio

from . import codec
from .aio import portal_aware
from .convert import seconds
from .errors import DspexError, InvalidValueError, OptimizationLockedError, VariableTypeError
from .logs import get_logger
from .optimizers import BaseOptimizer, SearchSpace
from .v1 import variables_pb2 as pb

if TYPE_CHECKING:
    from .client import SessionContext

log = get_logger("dspex_rx.optimize")

Objective = Callable[[Any], Any]
Callback = Callable[[int, Any, dict[str, Any]], Any]
FINISH_TIMEOUT = 5.0


def status_from_pb(status: pb.OptimizationStatus, revision: int) -> dict[str, Any]:
    """The status dict ``get_optimization_status`` returns, from the wire.

    Keys: ``variable``, ``is_optimizing``, ``optimization_id`` (None if never optimized),
    ``optimizer_type``, ``state`` (``idle``, ``running``, ``completed``, ``stopped``,
    ``expired``, ``failed``), ``iteration``, ``max_iterations``, ``best_value``,
    ``best_metrics``, ``best_score`` (the target metric of the best iteration),
    ``minimize``, ``final_value`` (what the run wrote when it ended: the optimizer's
    recommendation, which for a noisy objective may differ from ``best_value``),
    ``started_at``, ``last_update``, ``expires_at``, ``ended_at``, ``end_reason``,
    ``holder_session``, ``holder_client``, ``ttl_seconds``, ``revision``.

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
            "minimize": False, "final_value": None, "revision": revision,
        }
    return {
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
        "started_at": seconds(status.started_at),
        "last_update": seconds(status.last_update),
        "expires_at": seconds(status.expires_at),
        "ended_at": seconds(status.ended_at) if status.HasField("ended_at") else None,
        "end_reason": status.end_reason,
        "holder_session": status.holder_session,
        "holder_client": status.holder_client,
        "ttl_seconds": status.ttl_seconds,
        "revision": revision,
    }


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


def score_of(
    name: str, result: Any, metric: str | None, iteration: int
) -> tuple[dict[str, Any], float]:
    """Read an objective's result: a number, or a dict of metrics whose target is
    ``metric`` (or its only numeric entry, or ``'score'``). Returns (metrics, target).

    Example::

        >>> score_of("t", {"accuracy": 0.9, "latency": 1.2}, "accuracy", 1)
        ({'accuracy': 0.9, 'latency': 1.2}, 0.9)
        >>> score_of("t", 0.5, None, 1)
        ({'score': 0.5}, 0.5)
    """
    where = f"variable {name!r}, iteration {iteration}: the objective"
    if isinstance(result, Mapping):
        metrics = {key: _plain(value) for key, value in result.items()}
        if metric is not None:
            if metric not in metrics:
                raise InvalidValueError(
                    f"{where} returned no {metric!r} metric (it returned "
                    f"{', '.join(map(repr, metrics)) or 'nothing'})"
                )
            target = metrics[metric]
        elif "score" in metrics:
            target = metrics["score"]
        else:
            numeric = [k for k, v in metrics.items() if _is_number(v)]
            if len(numeric) != 1:
                raise InvalidValueError(
                    f"{where} returned several metrics ({', '.join(map(repr, metrics))}): "
                    "name the target with optimizer_config['metric']"
                )
            target = metrics[numeric[0]]
    elif _is_number(result):
        target = float(result)
        metrics = {metric or "score": target}
    else:
        raise InvalidValueError(
            f"{where} must return a number or a dict of metrics, got {type(result).__name__}"
        )
    if not _is_number(target) or not math.isfinite(float(target)):
        raise InvalidValueError(f"{where} returned a target metric that is not a finite "
                                f"number: {target!r}")
    return metrics, float(target)


def is_async_callable(fn: Any) -> bool:
    """True for ``async def`` functions, partials of them, and objects whose ``__call__``
    is one: those run in the trio thread; anything else runs in a worker thread.

    Example::

        >>> async def score(value): return value
        >>> is_async_callable(score), is_async_callable(abs)
        (True, False)
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - the bound __call__ is what runs
    )


def _is_number(value: Any) -> bool:
    # numpy scalars register as numbers.Real; bools (Python's and numpy's) are not scores.
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


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

    Example::

        run = session.optimization_run("opt_...")   # see SessionContext.start_optimization
        await run.finished.wait(); print(run.end_reason)
    """

    session: SessionContext
    variable: str
    optimization_id: str
    token: int
    optimizer: BaseOptimizer
    space: SearchSpace
    objective: Objective
    callback: Callback | None
    metric: str | None
    mode: str
    max_iterations: int
    convergence_threshold: float
    ttl: float
    finished: trio.Event = field(default_factory=trio.Event)
    state: str = "running"
    end_reason: str = ""
    iterations: int = 0
    elapsed: float = 0.0
    error: BaseException | None = None
    _revoked: _Revoked | None = None
    _pending: _Evaluation | None = None

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
                state, reason = await self._loop()
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
                await self._step(self._pending, value, iteration)
                self._pending = None
                result = await self._evaluate(value)
                metrics, target = score_of(self.variable, result, self.metric, iteration)
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


def as_objective(objective: Any, name: str) -> Objective:
    """Check ``objective`` is callable (the spec has no way to say what is measured, so
    ``start_optimization`` needs one).

    Example::

        fn = as_objective(lambda v: -abs(v - 1.3), "temperature")
    """
    if objective is None:
        raise InvalidValueError(
            f"variable {name!r}: start_optimization needs objective=, a function of the "
            "proposed value returning a score or a dict of metrics"
        )
    if not callable(objective):
        raise InvalidValueError(f"variable {name!r}: objective must be callable")
    return objective  # type: ignore[no-any-return]

