"""An optimization lease as its holder uses it (fenced writes, recorded evaluations,
renewal, release), and the proposals a run waits to hear about."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import trio

from dspex_rx.client.aio import portal_aware
from dspex_rx.client.core import SessionCore
from dspex_rx.core.metrics import score_of
from dspex_rx.errors import DspexError, OptimizationLockedError
from dspex_rx.logs import get_logger
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec

if TYPE_CHECKING:
    from dspex_rx.client import SessionContext

log = get_logger("dspex_rx.optimize")

FINISH_TIMEOUT = 5.0


class Revoked(Exception):
    """The lease was taken away (stopped, expired): the holder must write nothing more.

    Example: ``lease.step`` raises it once the server refuses the fencing token.
    """


@dataclass
class Evaluation:
    """One evaluated iteration, as a step or finish request records it.

    >>> request = pb.OptimizationStepRequest()
    >>> Evaluation(1, 0.4, {"score": 0.9}, 0.9).fill(request)
    >>> request.has_record, request.score
    (True, 0.9)
    """

    iteration: int
    value: Any
    metrics: dict[str, Any]
    score: float  # the target metric, as the objective reported it

    def fill(self, request: Any) -> None:
        """Put the record into a step or finish request.

        Example: ``evaluation.fill(request)``, as in the class example.
        """
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

    Example: ``session.proposals("temperature")`` yields them.
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

        Example: ``await proposal.report({"accuracy": 0.81})`` returns the status.
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

    Example: ``session.optimization_lease("temperature", "my_tuner")`` hands one out
    (an ``async with`` block).
    """

    def __init__(
        self, core: SessionCore, variable: str, optimization_id: str, token: int,
        ttl: float, metric: str | None = None, mode: str = "max",
    ) -> None:
        self.core = core
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

    @property
    def _trio_token(self) -> trio.lowlevel.TrioToken | None:
        # The run the session lives in: portal_aware runs sync methods there.
        return self.core.trio_token

    async def write(self, value: Any, iteration: int | None = None) -> int:
        """Write under the lease's fencing token (also renews); returns the new version.
        After a stop or expiry this raises ``OptimizationLockedError``.

        Example: ``await lease.write(0.4, iteration=1)`` returns the new version.
        """
        step = iteration if iteration is not None else self.iteration + 1
        try:
            variable = await self.step(None, value, step)
        except Revoked as exc:
            raise OptimizationLockedError(str(exc), optimization_id=self.optimization_id) \
                from None
        assert variable is not None
        return variable.version

    async def record(self, iteration: int, value: Any, result: Any) -> dict[str, Any]:
        """Record an evaluated iteration: ``result`` is a score or a dict of metrics (the
        target named by the lease's ``metric``); it appears in the optimization history
        and the status. Returns the metrics as recorded.

        Example: ``await lease.record(1, 0.4, {"accuracy": 0.91})`` returns the metrics.
        """
        metrics, target = score_of(self.variable, result, self.metric, iteration)
        try:
            await self.step(Evaluation(iteration, value, metrics, target), None, 0)
        except Revoked as exc:
            raise OptimizationLockedError(str(exc), optimization_id=self.optimization_id) \
                from None
        self.iteration = max(self.iteration, iteration)
        return metrics

    async def step(
        self, evaluation: Evaluation | None, value: Any, iteration: int
    ) -> pb.Variable | None:
        """One ``OptimizationStep``: record, renew, write (``iteration`` > 0 writes
        ``value``); raises ``Revoked`` once the lease is gone.

        Example: ``await lease.step(None, None, 0)`` only renews.
        """
        request = pb.OptimizationStepRequest(
            session_id=self.core.session_id, ref=self.variable,
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
            response = await self.core.call(
                "OptimizationStep", request, pb.OptimizationStepResponse
            )
        except OptimizationLockedError as exc:
            self.revoked = str(exc)
            raise Revoked(str(exc)) from None
        if not response.HasField("variable"):
            return None
        actor = self.core.remember(response.variable)
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
        evaluation: Evaluation | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Release the lease: record ``evaluation``, write ``final_value`` (with
        ``write_final``, its commit carrying ``metadata`` too) and end the run as
        ``completed``, ``failed`` or ``stopped`` (cancelled by its holder), in one commit.
        A lease already taken away raises ``OptimizationLockedError``.

        Example: ``await lease.finish(0.4, write_final=True, reason="done")`` releases it.
        """
        request = pb.FinishOptimizationRequest(
            session_id=self.core.session_id, ref=self.variable,
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
            response = await self.core.call(
                "FinishOptimization", request, pb.FinishOptimizationResponse,
                timeout=FINISH_TIMEOUT,
            )
        except OptimizationLockedError as exc:
            self.revoked = str(exc)
            raise
        self.released = True
        self._keep_alive_scope.cancel()
        if response.HasField("variable"):
            self.core.remember(response.variable)

    async def keep_alive(self, on_revoked: Callable[[], None] = lambda: None) -> None:
        """Renew every ``ttl/3`` until released or revoked (then ``on_revoked()``).

        Example: ``nursery.start_soon(lease.keep_alive)`` renews in the background.
        """
        with self._keep_alive_scope:
            while not self.released:
                await trio.sleep(self.ttl / 3.0)
                try:
                    await self.step(None, None, 0)
                except Revoked:
                    on_revoked()
                    return
                except (DspexError, grpc.RpcError) as exc:
                    log.warning("optimization_renew_failed", variable=self.variable,
                                error=str(exc))

    def stop_renewing(self) -> None:
        """End ``keep_alive`` (the lease then lapses by its TTL unless finished).

        Example: ``lease.stop_renewing()`` ends the renewal.
        """
        self._keep_alive_scope.cancel()

