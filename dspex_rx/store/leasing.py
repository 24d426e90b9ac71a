"""Optimization leases' rules: lapse and end, fencing-token checks, the holder's checks, and
the evaluations a run records. The lease objects themselves are leases.py.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from dspex_rx.core.limits import measure_value, too_big
from dspex_rx.errors import InvalidValueError, OptimizationLockedError
from dspex_rx.store.base import log
from dspex_rx.store.deriving import Deriving
from dspex_rx.store.leases import OptimizationEntry, OptimizationLease
from dspex_rx.store.records import ITEM_OVERHEAD, VariableRecord
from dspex_rx.store.state import Session

# A checked evaluation: (iteration, value, metrics, score, bytes charged for it).
_Evaluation = tuple[int, Any, dict[str, Any], float, int]


def staged_copy(lease: OptimizationLease) -> OptimizationLease:
    """A copy of a lease to change for a commit (``put_lease``): the backend writes it back
    into the lease it copies (same id) once the commit applies, so an abort leaves it be.

    >>> lease = OptimizationLease("opt_1", "var_t_1", "grid", "s", "c", 7, 30.0, {}, 10,
    ...                           0.0, 0.0, 30.0)
    >>> copy = staged_copy(lease); copy.end("stopped", "test", 1.0)
    >>> lease.state, copy.state, copy.id == lease.id
    ('running', 'stopped', True)
    """
    return dataclasses.replace(lease)


class Leasing(Deriving):
    """The engine's lease rules shared by writes and the optimization API.

    Example: ``store.set(sid, "t", 0.4, actor="me", fencing_token=lease.token)`` passes them.
    """

    def _expire_leases(self, session: Session) -> None:
        # Leases lapse lazily, on the next call that could see them, and in expire();
        # each lapse is its own commit, before whatever the caller does next. Derivation
        # leases lapse on the same calls.
        self._expire_derivations(session)
        if not session.running:
            return
        now = self._clock()
        for lease in [lease for lease in session.running.values() if now > lease.expires_at]:
            self._end_lease(
                session, lease, "expired",
                f"the lease lapsed: no renewal from {lease.holder_client or 'its holder'} "
                f"within {lease.ttl:g} s",
            )
        # A rule's time condition may have lapsed since: its optimize grant with it.
        self._end_unpermitted_leases(session, "the rule granting it no longer applies")

    def _end_leases_of_old_holders(self, reason: str) -> None:
        # Every lease the backend holds as running (a durable store's, loaded) ends as
        # "failed", each in its own commit, so its token is refused from now on.
        for session in list(self._sessions.values()):
            for lease in list(session.running.values()):
                self._end_lease(session, lease, "failed", reason)

    def _end_lease(
        self,
        session: Session,
        lease: OptimizationLease,
        state: str,
        reason: str,
        records: Sequence[VariableRecord] = (),
        metadata: Mapping[str, Any] | None = None,
        actor: str = "",
        metadata_size: int = 0,
        evaluated: Sequence[tuple[str, OptimizationEntry]] = (),
    ) -> int:
        # A staged copy ends; the commit writes it back into the lease and takes it out
        # of session.running, so a txn that ends without a commit leaves it running.
        lease = staged_copy(lease)
        lease.end(state, reason, self._clock())
        log.info("optimization_ended", session_id=session.id, optimization_id=lease.id,
                 state=state, reason=reason, iterations=lease.iteration)
        return self._commit(
            session, records, metadata=metadata, source=actor or lease.id, notes=[lease],
            metadata_size=metadata_size, evaluated=evaluated,
        )[1]

    @staticmethod
    def _new_token(session: Session, var_id: str) -> int:
        # A positive int64 (the wire field), unguessable, and unlike every token of the
        # variable's leases the store still remembers (a stale one is told apart by
        # value). Older ones are not kept (that set would grow by one per run, without
        # bound): a repeat of one of them is a 62-bit coincidence, and would still pass
        # only from the session the new lease is held by.
        taken = {lease.token for lease in session.recent_leases.get(var_id, ())}
        while True:
            token = secrets.randbits(62) + 1
            if token not in taken:
                return token

    def _check_lease(
        self,
        session: Session,
        record: VariableRecord,
        token: int | None,
        doing: str = "written",
        caller_id: str = "",
    ) -> OptimizationLease | None:
        # A token passes only for the session that holds the lease (``caller_id``): a
        # token is a fence for its holder's writes, not a password anyone may present.
        lease = session.running.get(record.id)
        if lease is None:
            if token:
                last = session.leases.get(record.id)
                if last is not None and last.token == token and (
                    last.holder_session == caller_id
                ):
                    why = f"optimization {last.id} has {last.state}"
                    why += f" ({last.end_reason})" if last.end_reason else ""
                else:
                    why = "it belongs to no optimization of this variable"
                raise OptimizationLockedError(
                    f"variable {record.name!r}: fencing token {token} is stale: {why}",
                    optimization_id=last.id if last is not None else "",
                )
            return None
        if token != lease.token or doing != "written" or lease.holder_session != caller_id:
            raise OptimizationLockedError(
                f"variable {record.name!r} is locked for optimization by {lease.id} "
                f"({lease.optimizer_type}, session {lease.holder_session}); it cannot be "
                f"{doing} until the optimization ends or is stopped",
                optimization_id=lease.id,
                current_version=record.version,
            )
        return lease

    def _held(
        self,
        session_id: str,
        ref: str,
        optimization_id: str,
        token: int,
        evaluation: tuple[int, Any, Mapping[str, Any] | None, float] | None,
    ) -> tuple[Session, VariableRecord, OptimizationLease, _Evaluation | None]:
        # What a holder's step and finish both start with: the variable (with the optimize
        # right), its lease (held by this caller with this token), the evaluation checked.
        caller = self.session(session_id)
        session, record = self._access.locate(caller, ref, "optimize")
        self._expire_leases(session)
        lease = self._holder_lease(session, record, optimization_id, token, caller.id)
        clean = self._prepare_evaluation(lease, record, evaluation) if evaluation else None
        return session, record, lease, clean

    def _holder_lease(
        self,
        session: Session,
        record: VariableRecord,
        optimization_id: str,
        token: int,
        caller_id: str,
    ) -> OptimizationLease:
        lease = session.running.get(record.id)
        if (
            lease is None or lease.id != optimization_id or lease.token != token
            or lease.holder_session != caller_id
        ):
            last = session.leases.get(record.id)
            if last is not None and last.id == optimization_id:
                why = f"it has {last.state}" + (f" ({last.end_reason})" if last.end_reason
                                                else "")
                if last.token != token or last.holder_session != caller_id:
                    why = f"fencing token {token} is not the token session {caller_id!r} holds"
            else:
                why = "no such optimization of this variable"
            raise OptimizationLockedError(
                f"variable {record.name!r}: optimization {optimization_id!r} no longer holds "
                f"the lease: {why}",
                optimization_id=optimization_id,
            )
        return lease

    def _end_unpermitted_leases(self, session: Session, why: str) -> int:
        # Ends the running leases whose holder session (not the owner) no longer has
        # ``optimize`` on the variable; returns the last revision taken, or 0.
        revision = 0
        for lease in list(session.running.values()):
            if lease.holder_session == session.id or "optimize" in self._access.rights(
                lease.holder_session, session, lease.variable_id
            ):
                continue
            revision = self._end_lease(
                session, lease, "stopped",
                f"session {lease.holder_session!r} may no longer optimize variable "
                f"{lease.variable_id!r}: {why}",
            )
        return revision

    def _end_held_leases(
        self, holder: str, state: str, reason: str, client_id: str | None = None
    ) -> None:
        # End the running leases session ``holder`` holds (those of one of its clients,
        # with ``client_id``) on the variables of every live session; its derivation
        # leases pass on too.
        self._drop_held_derivations(holder, client_id, reason)
        for owner in list(self._sessions.values()):
            for lease in [lease for lease in owner.running.values()
                          if lease.holder_session == holder
                          and (client_id is None or lease.holder_client == client_id)]:
                self._end_lease(owner, lease, state, reason)

    def _release_client_leases(
        self, session: Session, client_id: str, state: str, reason: str
    ) -> None:
        # Its leases on other sessions' variables (held under the optimize permission)
        # end too; they live in the owner session.
        self._end_held_leases(session.id, state, reason, client_id)

    def _prepare_evaluation(
        self,
        lease: OptimizationLease,
        record: VariableRecord,
        evaluation: tuple[int, Any, Mapping[str, Any] | None, float],
    ) -> _Evaluation:
        iteration, value, metrics, score = evaluation
        if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 1:
            raise InvalidValueError(
                f"variable {record.name!r}: iteration must be a positive integer, got "
                f"{iteration!r}"
            )
        if iteration <= lease.iteration:
            raise InvalidValueError(
                f"variable {record.name!r}: iteration {iteration} of {lease.id} is already "
                f"recorded (the last was {lease.iteration})"
            )
        if not isinstance(score, int | float) or not math.isfinite(score):
            raise InvalidValueError(
                f"variable {record.name!r}: score of iteration {iteration} must be a finite "
                f"number, got {score!r}"
            )
        clean_value, _ = self._validated(record.name, record.type, value, record.constraints)
        value_size = self._status_value(record, clean_value, "evaluated value")
        clean_metrics, metrics_size = self._clean_metadata(
            record.name, metrics, f"variable {record.name!r}: metrics", depth=2
        )
        size = ITEM_OVERHEAD + value_size + metrics_size
        return iteration, clean_value, clean_metrics, float(score), size

    def _status_value(self, record: VariableRecord, value: Any, what: str) -> int:
        # Values an optimization records travel inside its status (metadata, a level
        # deeper than a value), so they are bounded like metadata.
        where = f"variable {record.name!r}: {what}"
        size = measure_value(value, self.limits, where, depth=1)
        if size > self.limits.max_metadata_bytes:
            raise too_big(f"{where} is {size} bytes encoded", size, "max_metadata_bytes",
                          self.limits.max_metadata_bytes)
        return size

    def _evaluation_cost(self, session: Session, lease: OptimizationLease,
                         evaluation: _Evaluation | None) -> int:
        if evaluation is None:
            return 0
        entries = session.evaluations.get(lease.variable_id)
        full = entries and len(entries) >= self.optimization_history_size
        dropped = entries[0].size if entries and full else 0
        return evaluation[4] - dropped

    def _record_evaluation(
        self, lease: OptimizationLease, evaluation: _Evaluation
    ) -> tuple[str, OptimizationEntry]:
        # Counts the iteration on the lease; the entry is for _commit (``evaluated``).
        iteration, value, metrics, score, size = evaluation
        lease.record(iteration, value, metrics, score)
        return lease.variable_id, OptimizationEntry(
            lease.id, lease.optimizer_type, iteration, value, metrics, score,
            # Whole microseconds, as the API's datetimes show it and since= compares.
            round(self._clock() * 1e6) / 1e6, self._revision + 1, size,
        )
