"""Running an optimization: take the lease, step (renew, evaluate, propose), finish, stop.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from typing import Any

from dspex_rx.core.limits import check_length, measure_map
from dspex_rx.core.types import same_value
from dspex_rx.errors import (
    InvalidValueError,
    OptimizationLockedError,
    SessionNotFoundError,
    VariableTypeError,
)
from dspex_rx.store.base import log
from dspex_rx.store.checks import MAX_ITERATIONS, MAX_TTL, NAME_RE, RECENT_LEASES, _show
from dspex_rx.store.history import History
from dspex_rx.store.leases import FINISH_STATES, OptimizationLease
from dspex_rx.store.leasing import staged_copy
from dspex_rx.store.records import ITEM_OVERHEAD, VariableRecord


class Optimization(History):
    """The engine's optimization-run part.

    Example: ``store.start_optimization(sid, "t", optimizer_type="grid")`` takes the lease.
    """

    def start_optimization(
        self,
        session_id: str,
        ref: str,
        *,
        optimizer_type: str,
        config: Mapping[str, Any] | None = None,
        max_iterations: int = 100,
        ttl: float | None = None,
        client_id: str = "",
        actor: str = "",
        minimize: bool = False,
        takes_reports: bool = False,
    ) -> tuple[OptimizationLease, int]:
        """Take the variable's optimization lease; returns (lease, revision).

        A variable already under a running lease raises ``OptimizationLockedError`` (a
        ``ValueError``) saying it is "already being optimized" and by which optimization.
        ``takes_reports``: each proposal the holder writes is evaluated elsewhere and
        reported with ``report_metrics``.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> lease, _ = store.start_optimization("s", "t", optimizer_type="grid",
        ...                                     client_id=client_id)
        >>> record, _, _ = store.set("s", "t", 0.4, actor="me", fencing_token=lease.token)
        >>> lease.state, record.value
        ('running', 0.4)
        """
        caller = self.session(session_id)
        session, record = self._access.locate(caller, ref, "optimize")
        self._expire_leases(session)
        if not isinstance(optimizer_type, str) or not NAME_RE.fullmatch(optimizer_type):
            raise InvalidValueError(
                f"variable {record.name!r}: optimizer type {_show(optimizer_type)} is not a "
                "valid name (letters, digits, _ . - /)"
            )
        if not isinstance(client_id, str):
            raise VariableTypeError("client id must be a string")
        check_length("the client id", client_id, "max_string_length",
                     self.limits.max_string_length)
        if (
            not isinstance(max_iterations, int) or isinstance(max_iterations, bool)
            or not 1 <= max_iterations <= MAX_ITERATIONS
        ):
            raise InvalidValueError(
                f"variable {record.name!r}: max_iterations must be an integer from 1 to "
                f"{MAX_ITERATIONS}, got {max_iterations!r}"
            )
        if ttl is not None and not (ttl == 0 or (math.isfinite(ttl) and 0 < ttl <= MAX_TTL)):
            raise InvalidValueError(
                f"variable {record.name!r}: lease ttl must be between 0 and {MAX_TTL:g} "
                f"seconds (0 for the server default), got {ttl!r}"
            )
        clean_config, config_size = self._clean_metadata(
            record.name, config, f"variable {record.name!r}: optimizer config"
        )
        if client_id not in caller.clients:
            # Only an attached client can hold a lease: its close or silence must be able
            # to end it (a made-up or swept client id would hold it for the whole TTL).
            raise SessionNotFoundError(
                f"client {_show(client_id)} is not attached to session {caller.id!r}; only "
                "an attached client can hold an optimization lease",
                detached=True,
            )
        running = session.running.get(record.id)
        if running is not None:
            raise OptimizationLockedError(
                f"variable {record.name!r} is already being optimized by {running.id} "
                f"({running.optimizer_type}, session {running.holder_session}, iteration "
                f"{running.iteration})",
                optimization_id=running.id,
            )
        now = self._clock()
        ttl = ttl or self.lease_ttl
        lease = OptimizationLease(
            id="opt_" + secrets.token_hex(8),
            variable_id=record.id,
            optimizer_type=optimizer_type,
            holder_session=caller.id,
            holder_client=client_id,
            token=self._new_token(session, record.id),
            ttl=ttl,
            config=clean_config,
            max_iterations=max_iterations,
            started_at=now,
            last_update=now,
            expires_at=now + ttl,
            minimize=bool(minimize),
            size=5 * ITEM_OVERHEAD + config_size + len(client_id),
            takes_reports=bool(takes_reports),
        )
        # The account charges each lease while it is one of the variable's recent leases
        # (the latest, in session.leases, is one of them).
        recent = session.recent_leases.get(record.id)
        replaced = recent[0].size if recent and len(recent) >= RECENT_LEASES else 0
        self._accounts.check_room(session, lease.size - replaced)
        log.info("optimization_started", session_id=session.id, optimization_id=lease.id,
                 variable=record.name, optimizer=optimizer_type, client_id=client_id)
        revision = self._commit(session, (), source=actor or lease.id, notes=[lease])[1]
        return lease, revision

    def optimization_step(
        self,
        session_id: str,
        ref: str,
        optimization_id: str,
        fencing_token: int,
        *,
        evaluation: tuple[int, Any, Mapping[str, Any] | None, float] | None = None,
        proposal: tuple[Any, int] | None = None,
        actor: str = "",
    ) -> tuple[OptimizationLease, VariableRecord | None, int]:
        """One step of a running optimization, by its holder: renew the lease, record an
        evaluated ``(iteration, value, metrics, score)`` (better is higher, or lower for a
        lease that minimizes) and/or
        write a ``(value, iteration)`` proposal, in one commit. Returns (lease, the written
        record or None, revision). Everything is validated before anything changes; a
        lease that has ended raises ``OptimizationLockedError``.

        Example: ``store.optimization_step(sid, "t", lease.id, lease.token, proposal=(0.4, 1))``
        writes proposal 1 and renews the lease.
        """
        session, record, lease, clean = self._held(
            session_id, ref, optimization_id, fencing_token, evaluation
        )
        written: list[VariableRecord] = []
        metadata: dict[str, Any] = {}
        if proposal is not None:
            value, iteration = proposal
            if not isinstance(iteration, int) or isinstance(iteration, bool):
                raise InvalidValueError(
                    f"variable {record.name!r}: the proposal's iteration must be an integer"
                )
            metadata = {"optimization_id": lease.id, "optimizer": lease.optimizer_type,
                        "iteration": iteration}
            # The bookkeeping goes with the commit (events, history), not into the
            # variable's own metadata, where it would outlive this run.
            written = [self._prepare_write(record, value, {}, actor, self._revision + 1)]
            if lease.takes_reports and iteration <= lease.proposal_iteration:
                # A report names its proposal by iteration: one number, one proposal.
                raise InvalidValueError(
                    f"variable {record.name!r}: iteration {iteration} of {lease.id} is "
                    f"already proposed (the last proposal is {lease.proposal()})"
                )
        metadata_size = measure_map(metadata, self.limits, "the step's metadata")
        self._accounts.check_room(
            session,
            self._accounts.records_cost(session, written, metadata_size)
            + self._evaluation_cost(session, lease, clean),
        )
        if clean is None and not written:
            lease.renew(self._clock())  # a heartbeat alone: no commit, no revision
            # Stored too, so a reload (another replica's write) keeps the renewal.
            self._backend.touch(session.id, lease.variable_id)
            return lease, None, session.revision
        # The step changes a staged copy; the commit writes it back into ``lease``.
        staged = staged_copy(lease)
        staged.renew(self._clock())
        evaluated = [self._record_evaluation(staged, clean)] if clean is not None else []
        if written:
            staged.propose(proposal[1] if proposal else 0, written[0].version)
        stamped, revision = self._commit(
            session, written, metadata=metadata, source=lease.id, notes=[staged],
            metadata_size=metadata_size, evaluated=evaluated,
        )
        return lease, (stamped[0] if stamped else None), revision

    def finish_optimization(
        self,
        session_id: str,
        ref: str,
        optimization_id: str,
        fencing_token: int,
        *,
        evaluation: tuple[int, Any, Mapping[str, Any] | None, float] | None = None,
        final_value: Any = None,
        write_final: bool = False,
        state: str = "completed",
        reason: str = "",
        actor: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[OptimizationLease, VariableRecord | None, int]:
        """End a run by its holder: record the last evaluation, write the final value and
        release the lease, in one commit. ``state`` is ``completed``, ``failed`` or
        ``stopped`` (the holder cancelled it).

        Example: ``store.finish_optimization(sid, "t", lease.id, lease.token)`` ends the run
        as completed (with ``write_final=True`` it also writes ``final_value``).
        """
        if state not in FINISH_STATES:
            raise InvalidValueError(
                f"an optimization finishes as one of {', '.join(FINISH_STATES)}, not "
                f"{_show(state)}"
            )
        self._check_reason("the end reason", reason)
        session, record, lease, clean = self._held(
            session_id, ref, optimization_id, fencing_token, evaluation
        )
        written: list[VariableRecord] = []
        extra, _ = self._clean_metadata(
            record.name, dict(metadata) if isinstance(metadata, Mapping) else metadata,
            f"variable {record.name!r}: the finish's metadata",
        )
        commit_metadata: dict[str, Any] = {}
        if write_final:
            commit_metadata = {**extra, "optimization_id": lease.id,
                               "optimizer": lease.optimizer_type, "final": True}
            written = [
                self._prepare_write(record, final_value, {}, actor, self._revision + 1)
            ]
            self._status_value(record, written[0].value, "final value")
        metadata_size = measure_map(commit_metadata, self.limits, "the finish's metadata")
        self._accounts.check_room(
            session,
            self._accounts.records_cost(session, written, metadata_size)
            + self._evaluation_cost(session, lease, clean),
        )
        staged = staged_copy(lease)  # written back into ``lease`` by the commit
        evaluated = [self._record_evaluation(staged, clean)] if clean is not None else []
        if written:
            staged.final_value, staged.has_final = written[0].value, True
        revision = self._end_lease(
            session, staged, state, reason or state, written, commit_metadata, actor=lease.id,
            metadata_size=metadata_size, evaluated=evaluated,
        )
        return lease, (session.variables[record.id] if written else None), revision

    def stop_optimization(
        self,
        session_id: str,
        ref: str,
        *,
        reason: str = "",
        optimization_id: str = "",
        apply_best: bool = False,
        actor: str = "",
    ) -> tuple[bool, OptimizationLease | None, int, VariableRecord | None]:
        """Revoke the variable's running lease (any session that may optimize it); returns
        (whether one was stopped, the lease, revision, the record written by
        ``apply_best`` or None). From then on the holder's fencing
        token is refused, so none of its writes lands. ``apply_best`` writes the best value
        recorded so far in the same commit. ``optimization_id`` stops only that run.

        Example: ``store.stop_optimization(sid, "t", reason="budget spent")``
        returns ``(True, lease, revision, None)`` when a run was stopped.
        """
        self._check_reason("the stop reason", reason)
        self._check_reason("the stopping actor", actor)
        caller = self.session(session_id)
        session, record = self._access.locate(caller, ref, "optimize")
        self._expire_leases(session)
        lease = session.running.get(record.id)
        if lease is None or (optimization_id and lease.id != optimization_id):
            return False, session.leases.get(record.id), session.revision, None
        written: list[VariableRecord] = []
        metadata: dict[str, Any] = {}
        if apply_best and lease.best_score is not None and not same_value(
            lease.best_value, record.value
        ):
            metadata = {"optimization_id": lease.id, "optimizer": lease.optimizer_type,
                        "final": True, "stopped": True}
            written = [
                self._prepare_write(
                    record, lease.best_value, {}, actor, self._revision + 1, validated=True,
                )
            ]
        metadata_size = measure_map(metadata, self.limits, "the stop's metadata")
        self._accounts.check_room(
            session, self._accounts.records_cost(session, written, metadata_size)
        )
        staged = staged_copy(lease)  # written back into ``lease`` by the commit
        if apply_best and lease.best_score is not None:
            staged.final_value, staged.has_final = lease.best_value, True
        revision = self._end_lease(
            session, staged, "stopped", reason or f"stopped by {actor or 'a session'}",
            written, metadata, actor=actor, metadata_size=metadata_size,
        )
        return True, lease, revision, (session.variables[record.id] if written else None)
