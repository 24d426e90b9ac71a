"""Optimization leases as the store keeps them: who optimizes a variable, under which fencing
token and until when, and what each recorded iteration scored. No gRPC and no clock here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# A lease is "running" until it ends in one of the other states, once.
STATES = ("running", "completed", "stopped", "expired", "failed")
# What a holder may end its own run as: "stopped" when it cancelled the run (Ctrl-C), which
# is not a failure of the optimization.
FINISH_STATES = ("completed", "failed", "stopped")


@dataclass(slots=True)
class OptimizationLease:
    """One optimization of one variable: held by ``holder_session``/``holder_client`` while
    ``state == "running"`` and renewed before ``expires_at``; writes need ``token``.

    Mutable on purpose: the store is its only writer, and every change to it is published
    as a commit carrying ``status()``.

    Example: ``store.optimization_status(sid, "temperature")[1]``
    is the latest lease (``state``, ``iteration``, ``best_value``).
    """

    id: str
    variable_id: str
    optimizer_type: str
    holder_session: str
    holder_client: str
    token: int
    ttl: float
    config: Mapping[str, Any]
    max_iterations: int
    started_at: float
    last_update: float
    expires_at: float
    state: str = "running"
    iteration: int = 0
    best_value: Any = None
    best_metrics: Mapping[str, Any] = field(default_factory=dict)
    best_score: float | None = None
    end_reason: str = ""
    ended_at: float | None = None
    minimize: bool = False
    final_value: Any = None
    has_final: bool = False
    size: int = 0  # what the store accounts for it (its config) in the memory budget
    revision: int = 0  # the commit that last published this lease's status
    # Ask/tell over the server: proposals are evaluated elsewhere and reported.
    takes_reports: bool = False
    proposal_iteration: int = 0  # the latest proposal written (0: none yet)
    proposal_version: int = 0  # the variable's version that proposal's write made
    report: Mapping[str, Any] | None = None  # the latest proposal's report, once it came
    reported_by: str = ""

    @property
    def active(self) -> bool:
        """True while the lease is held.

        Example: ``lease.active`` is True until the lease ends.
        """
        return self.state == "running"

    def renew(self, now: float) -> None:
        """Push the expiry ``ttl`` seconds past ``now``.

        Example: ``lease.renew(now)`` moves ``expires_at`` to ``now + lease.ttl``.
        """
        self.last_update = now
        self.expires_at = now + self.ttl

    def propose(self, iteration: int, version: int) -> None:
        """Note a proposal the holder wrote: reports now evaluate it, none has come yet.

        Example: ``lease.propose(3, record.version)``
        records iteration 3's proposal, awaiting its report.
        """
        self.proposal_iteration = iteration
        self.proposal_version = version
        self.report = None
        self.reported_by = ""

    def proposal(self) -> str:
        """The current proposal in words, for errors.

        Example: ``lease.proposal()`` returns "iteration 3 (version 7)", or "none yet".
        """
        if not self.proposal_iteration:
            return "none yet"
        return f"iteration {self.proposal_iteration} (version {self.proposal_version})"

    def record(self, iteration: int, value: Any, metrics: Mapping[str, Any], score: float) -> bool:
        """Count an evaluated iteration; returns True when it is the best so far (a higher
        score is better, or a lower one when the lease minimizes).

        Example: ``lease.record(3, 0.7, {"accuracy": 0.91}, 0.91)``
        keeps 0.7 as best if 0.91 beats the best score.
        """
        self.iteration = max(self.iteration, iteration)
        best = self.best_score
        if best is None or (score < best if self.minimize else score > best):
            self.best_score = score
            self.best_value = value
            self.best_metrics = dict(metrics)
            return True
        return False

    def end(self, state: str, reason: str, now: float) -> None:
        """Release the lease for good.

        Example: ``lease.end("stopped", "stopped by sess_2", now)`` ends the lease once.
        """
        self.state = state
        self.end_reason = reason
        self.ended_at = now
        self.last_update = now

    def status(self, name: str, revision: int) -> dict[str, Any]:
        """The status as plain values: what ``get_optimization_status`` answers and what an
        optimization event carries as metadata. ``revision`` is the commit it belongs to.

        Example: ``lease.status("temperature", 42)["is_optimizing"]`` is True while it runs.
        """
        return {
            "variable": name,
            "is_optimizing": self.active,
            "optimization_id": self.id,
            "optimizer_type": self.optimizer_type,
            "holder_session": self.holder_session,
            "holder_client": self.holder_client,
            "state": self.state,
            "iteration": self.iteration,
            "max_iterations": self.max_iterations,
            "best_value": self.best_value,
            "best_metrics": dict(self.best_metrics),
            "best_score": self.best_score,
            "started_at": self.started_at,
            "last_update": self.last_update,
            "expires_at": self.expires_at,
            "ttl_seconds": self.ttl,
            "minimize": self.minimize,
            "final_value": self.final_value,
            "end_reason": self.end_reason,
            "ended_at": self.ended_at,
            "takes_reports": self.takes_reports,
            "proposal_iteration": self.proposal_iteration,
            "proposal_version": self.proposal_version,
            "report_metrics": dict(self.report) if self.report is not None else None,
            "reported_by": self.reported_by,
            "revision": revision,
        }


@dataclass(frozen=True, slots=True)
class OptimizationEntry:
    """One evaluated iteration, as the optimization history keeps it.

    Example: ``store.optimization_history(sid, "t")[-1].score`` is the newest evaluation's score.
    """

    optimization_id: str
    optimizer_type: str
    iteration: int
    value: Any
    metrics: Mapping[str, Any]
    score: float
    timestamp: float
    revision: int
    size: int = 0  # what the store accounts for it in the session's memory budget
