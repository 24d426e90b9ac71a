"""Optimization reports and queries: metrics reported for a proposal, status, the statuses a
resync must hear, runs by id, and recorded evaluations.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from typing import Any

from dspex_rx.core.metrics import score_of
from dspex_rx.errors import InvalidValueError, VariableNotFoundError, VariableTypeError
from dspex_rx.store.checks import RECENT_LEASES, _show
from dspex_rx.store.leases import OptimizationEntry, OptimizationLease
from dspex_rx.store.leasing import staged_copy
from dspex_rx.store.optimization import Optimization
from dspex_rx.store.records import OPTIMIZATION_EVENT, ChangeEvent, VariableRecord


class OptimizationReports(Optimization):
    """The engine's optimization reports and queries part.

    Example: ``store.optimization_status(sid, "t")`` returns ``(record, lease or None)``.
    """

    def report_metrics(
        self,
        session_id: str,
        ref: str,
        metrics: Mapping[str, Any],
        *,
        iteration: int = 0,
        version: int = 0,
        optimization_id: str = "",
        actor: str = "",
    ) -> tuple[OptimizationLease, VariableRecord, int]:
        """Report the evaluation of the running optimization's current proposal, named by
        the variable ``version`` its write made, or by its ``iteration`` together with its
        run's ``optimization_id`` (iterations restart at 1 in each run; versions only grow,
        so a version alone names one proposal for good).
        Any session that may optimize the variable can report. The report becomes an
        optimization event (the status carries it), which is how the holder, waiting
        for it, learns of it. Returns (lease, record, revision).

        Refused with ``InvalidValueError`` (nothing changes): nothing is being optimized,
        the run evaluates in-process (no reports taken), no proposal is written yet, the
        report names no proposal (neither version nor iteration), an iteration without
        its run, another run than the running one, or another proposal than the current
        one (a late report of an earlier proposal, of this run or an earlier one, is never
        credited to a later one), the proposal was reported already
        (the first report counts), or the metrics lack the run's target metric.

        Example: ``store.report_metrics(sid, "t", {"accuracy": 0.81}, version=12)``
        scores the proposal written as version 12.
        """
        self._check_reason("the reporter", actor)
        if not isinstance(optimization_id, str):
            raise VariableTypeError(
                f"a report's optimization id must be a string, got {_show(optimization_id)}"
            )
        # Quoted as given in the errors below, but never a megabyte of it.
        run_named = optimization_id if len(optimization_id) <= 80 else _show(optimization_id)
        caller = self.session(session_id)
        session, record = self._access.locate(caller, ref, "optimize")
        self._expire_leases(session)
        where = f"variable {record.name!r}"
        for label, number in (("iteration", iteration), ("version", version)):
            if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                raise InvalidValueError(
                    f"{where}: a report's {label} must be a positive integer (0: not "
                    f"given), got {number!r}"
                )
        lease = session.running.get(record.id)
        if lease is None:
            last = session.leases.get(record.id)
            ended = (f" (its last optimization {last.id} has {last.state})"
                     if last is not None else "")
            raise InvalidValueError(
                f"{where} is not being optimized{ended}: there is no proposal to report "
                "metrics for"
                + (f" (the report is for optimization {run_named})"
                   if optimization_id and (last is None or last.id != optimization_id)
                   else "")
            )
        if optimization_id and optimization_id != lease.id:
            # A late report of an earlier run must not score this run's proposal of the
            # same iteration number.
            raise InvalidValueError(
                f"{where}: the report is for optimization {run_named}, but the "
                f"running optimization is {lease.id} (its current proposal is "
                f"{lease.proposal()}); a report of another run is never credited to this one"
            )
        if not lease.takes_reports:
            raise InvalidValueError(
                f"{where}: optimization {lease.id} evaluates its proposals in-process (an "
                "objective); it takes no reported metrics"
            )
        if not lease.proposal_iteration:
            raise InvalidValueError(
                f"{where}: optimization {lease.id} has written no proposal yet; nothing to "
                "report metrics for"
            )
        if not iteration and not version:
            raise InvalidValueError(
                f"{where}: a report must name the proposal it evaluates: the version its "
                "write made, or its iteration with the optimization id; the current "
                f"proposal of {lease.id} is {lease.proposal()}"
            )
        if iteration and not version and not optimization_id:
            # Iterations restart at 1 in each run: alone, one could name an earlier run's.
            raise InvalidValueError(
                f"{where}: a report naming iteration {iteration} must name its run too "
                "(optimization_id) or the version the proposal's write made; the current "
                f"proposal of {lease.id} is {lease.proposal()}"
            )
        if (iteration and iteration != lease.proposal_iteration) or (
            version and version != lease.proposal_version
        ):
            named = " ".join(
                f"{label} {number}" for label, number in
                (("iteration", iteration), ("version", version)) if number
            )
            raise InvalidValueError(
                f"{where}: the report is for a stale proposal ({named}); the current "
                f"proposal of {lease.id} is {lease.proposal()}"
            )
        if lease.report is not None:
            raise InvalidValueError(
                f"{where}: the proposal {lease.proposal()} of {lease.id} was already "
                f"reported by {lease.reported_by or 'another reporter'}; the first report "
                "counts"
            )
        clean, _ = self._clean_metadata(record.name, metrics, f"{where}: metrics", depth=2)
        config = lease.config
        metric = config.get("metric") if isinstance(config.get("metric"), str) else None
        score_of(record.name, clean, metric, lease.proposal_iteration, "the report")
        # One report per proposal, bounded like metadata and replaced by the next
        # proposal's: the lease's own footprint, not charged as history is.
        staged = staged_copy(lease)  # written back into ``lease`` by the commit
        staged.report = clean
        staged.reported_by = actor
        revision = self._commit(session, (), source=actor or lease.id, notes=[staged])[1]
        return lease, record, revision

    def optimization_status(
        self, session_id: str, ref: str
    ) -> tuple[VariableRecord, OptimizationLease | None]:
        """The variable and its latest lease (running or ended; None if never optimized).

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> record, lease = store.optimization_status("s", "t")
        >>> record.value, lease
        (0.7, None)
        """
        caller = self.session(session_id)
        session, record = self._access.locate(caller, ref, "read")
        self._expire_leases(session)
        return record, session.leases.get(record.id)

    def status_events(
        self, session_id: str, records: Iterable[VariableRecord], after_revision: int = 0
    ) -> builtins.list[ChangeEvent]:
        """The last status of each recent run of these variables published after
        ``after_revision``, oldest first, each stamped with the revision that published
        it: what a watcher resynced past the log's horizon must hear besides the values
        (how the run it followed ended, and what runs since).

        Example: ``store.status_events(sid, [store.get(sid, "temperature")], 41)``
        lists the run statuses published after revision 41.
        """
        session = self.session(session_id)
        events = []
        for record in records:
            for lease in session.recent_leases.get(record.id, ()):
                if lease.revision > after_revision:
                    events.append(ChangeEvent(
                        record, record.value, OPTIMIZATION_EVENT,
                        lease.status(record.name, lease.revision), lease.id,
                    ))
        return events

    def optimization_by_id(
        self, session_id: str, ref: str, optimization_id: str
    ) -> tuple[VariableRecord, OptimizationLease]:
        """The variable and one of its recent optimizations, by id (``KeyError`` once it is
        no longer kept).

        Example: ``store.optimization_by_id(sid, "t", "opt_1f2e")``
        returns ``(record, lease)`` of that run.
        """
        caller = self.session(session_id)
        session, record = self._access.locate(caller, ref, "read")
        self._expire_leases(session)
        lease = next((kept for kept in session.recent_leases.get(record.id, ())
                      if kept.id == optimization_id), None)
        if lease is None:
            raise VariableNotFoundError(
                f"no optimization {optimization_id!r} of variable {record.name!r} is kept "
                f"(the last {RECENT_LEASES} runs of a variable are)"
            )
        return record, lease

    def optimization_history(
        self,
        session_id: str,
        ref: str,
        *,
        limit: int = 100,
        since: float | None = None,
        optimization_id: str = "",
    ) -> builtins.list[OptimizationEntry]:
        """The newest ``limit`` evaluations of the variable (of one optimization, and at or
        after ``since``, to the microsecond, when given), oldest first.

        Example: ``store.optimization_history(sid, "t", limit=10)``
        returns the newest ten evaluations, oldest first.
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InvalidValueError(f"history limit must be a positive integer, got {limit!r}")
        caller = self.session(session_id)
        session, record = self._access.locate(caller, ref, "read")
        # In whole microseconds, the resolution of the datetimes the API hands out (entry
        # times are whole microseconds): an entry's own timestamp given back as ``since``
        # includes that entry, whatever float error the round trip added.
        floor = None if since is None else round(since * 1e6)
        found = [
            e for e in session.evaluations.get(record.id, ())
            if (not optimization_id or e.optimization_id == optimization_id)
            and (floor is None or round(e.timestamp * 1e6) >= floor)
        ]
        return found[-limit:]
