"""Derivation leases' rules: claiming a derived variable (owner or standby), renewal,
release, lapse and hand-over to a standby, the stale mark when none is left, and the
fencing of the owner's writes. The lease objects themselves are derivations.py.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from typing import Any

from dspex_rx.core.limits import measure_map, too_many
from dspex_rx.errors import (
    AlreadyExistsError,
    DerivationFencedError,
    DspexError,
    InvalidValueError,
    SessionNotFoundError,
    VariableNotFoundError,
    VariableTypeError,
)
from dspex_rx.store.base import log
from dspex_rx.store.checks import MAX_TTL, _show
from dspex_rx.store.commit import Committer
from dspex_rx.store.derivations import MAX_STANDBYS, Derivation, Standby
from dspex_rx.store.records import VariableRecord
from dspex_rx.store.state import Session

# Who watchers see as the writer of a stale mark (or its clearing).
DERIVATION_SOURCE = "derivation"
ROLES = ("owner", "standby", "none")


class Deriving(Committer):
    """The engine's derivation-lease part: who recomputes a derived variable.

    >>> from dspex_rx.store import MemoryStore, VariableSpec
    >>> store = MemoryStore()
    >>> session, client_id, _ = store.initialize_session("s")
    >>> _ = store.register("s", [VariableSpec("a", "float", 1.0),
    ...                          VariableSpec("d", "float", 2.0,
    ...                          {}, {"derived_from": ["a"]})], actor="me")
    >>> derivation, role, _ = store.claim_derivation("s", "d", ["a"], client_id=client_id)
    >>> role, derivation.owner_client == client_id
    ('owner', True)
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # The earliest moment a derivation lease of each session can lapse (no entry: not
        # known, scan). Every write checks for lapses; before that moment it skips the
        # scan, which costs a step per derived variable. A renewal only moves a lease's
        # expiry later, so the bound stays true; a new expiry lowers it (``_due``).
        self._derive_due: dict[str, float] = {}
        self._backend.on_reload(self._derive_due.clear)
        self._backend.on_replicated(lambda _: self._derive_due.clear())

    def claim_derivation(
        self,
        session_id: str,
        ref: str,
        inputs: Sequence[str],
        *,
        client_id: str,
        ttl: float | None = None,
    ) -> tuple[Derivation, str, int]:
        """Take ``ref``'s derivation lease from ``inputs`` (names or ids of the same
        session), or stand by for it; returns (derivation, the client's role, revision).

        The first claimant (or the first after the variable went stale) becomes the owner
        under a new fencing token, and a stale mark clears (a commit); later ones with
        the same inputs are standbys. Different inputs are refused (``InvalidValueError``
        naming both), as is a client not attached to the session.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> _, one, _ = store.initialize_session("s")
        >>> _, two, _ = store.initialize_session("s", token=store.session("s").token)
        >>> _ = store.register("s", [VariableSpec("a", "float", 1.0),
        ...                          VariableSpec("d", "float", 2.0,
        ...                          {}, {"derived_from": ["a"]})], actor="me")
        >>> store.claim_derivation("s", "d", ["a"], client_id=one)[1]
        'owner'
        >>> store.claim_derivation("s", "d", ["a"], client_id=two)[1]
        'standby'
        """
        caller = self.session(session_id)
        session, record = self._access.locate(caller, ref, "write")
        self._expire_derivations(session)
        self._check_client(caller, client_id)
        if ttl is not None and not (ttl == 0 or (math.isfinite(ttl) and 0 < ttl <= MAX_TTL)):
            raise InvalidValueError(
                f"variable {record.name!r}: derivation lease ttl must be between 0 and "
                f"{MAX_TTL:g} seconds (0 for the server default), got {ttl!r}"
            )
        input_ids = self._input_ids(session, record, inputs)
        now = self._clock()
        derivation = session.derivations.get(record.id)
        if derivation is not None and derivation.inputs != input_ids:
            raise InvalidValueError(
                f"variable {record.name!r} is already derived from "
                f"{self._names(session, derivation.inputs)} (owner: "
                f"{derivation.owner_client or 'none'}); a different derivation of it, from "
                f"{self._names(session, input_ids)}, is refused"
            )
        if derivation is None:
            if "derived_from" not in record.metadata:
                raise AlreadyExistsError(
                    f"variable {record.name!r} already exists and is not derived: a "
                    "derivation takes a variable derive() registered (metadata "
                    "'derived_from'), not one written by hand"
                )
            derivation = Derivation(record.id, input_ids, ttl or self.lease_ttl)
            session.derivations[record.id] = derivation
        role = derivation.role(caller.id, client_id)
        revision = session.revision
        if role == "owner":
            derivation.expires_at = now + derivation.ttl
        elif not derivation.owned:
            derivation.ttl = ttl or derivation.ttl
            was_stale = derivation.stale
            derivation.take(caller.id, client_id, self._derivation_token(derivation), now)
            role = "owner"
            log.info("derivation_owner", session_id=session.id, variable=record.name,
                     client_id=client_id, took_over=False)
            if was_stale:
                revision = self._mark(session, record, False, f"client {client_id} derives it")
        else:
            standby = derivation.standby(caller.id, client_id)
            if standby is None:
                if len(derivation.standbys) >= MAX_STANDBYS:
                    raise too_many(
                        f"variable {record.name!r} already has {MAX_STANDBYS} derivation "
                        "standbys", MAX_STANDBYS + 1, "MAX_STANDBYS", MAX_STANDBYS,
                    )
                derivation.standbys.append(Standby(caller.id, client_id, now + derivation.ttl))
            else:
                standby.expires_at = now + derivation.ttl
            role = "standby"
        self._due(session.id, now + derivation.ttl)
        self._backend.touch(session.id, record.id)
        return derivation, role, revision

    def renew_derivation(
        self, session_id: str, ref: str, *, client_id: str
    ) -> tuple[Derivation | None, str]:
        """Renew this client's part in ``ref``'s derivation (owner or standby); returns
        (derivation or None, its role now). A standby whose owner lapsed may come back as
        the owner (the lapse was handled first); ``none`` means the client has no part any
        more (its lease lapsed): it claims again to rejoin.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, _ = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("a", "float", 1.0),
        ...                          VariableSpec("d", "float", 2.0,
        ...                          {}, {"derived_from": ["a"]})], actor="me")
        >>> _ = store.claim_derivation("s", "d", ["a"], client_id=client_id)
        >>> store.renew_derivation("s", "d", client_id=client_id)[1]
        'owner'
        """
        caller = self.session(session_id)
        session, record = self._access.locate(caller, ref, "write")
        now = self._clock()
        derivation = session.derivations.get(record.id)
        # A standby renewing is alive now: renewed before lapses are handled, so it can
        # be the heir of an owner that lapsed meanwhile (an owner that lapsed has lost).
        entry = derivation.standby(caller.id, client_id) if derivation is not None else None
        if entry is not None:
            entry.expires_at = now + derivation.ttl  # type: ignore[union-attr]
        self._expire_derivations(session)
        derivation = session.derivations.get(record.id)
        if derivation is None:
            return None, "none"
        role = derivation.role(caller.id, client_id)
        if role == "owner":
            derivation.expires_at = now + derivation.ttl
        if role != "none":
            self._backend.touch(session.id, record.id)
        return derivation, role

    def release_derivation(
        self, session_id: str, ref: str, *, client_id: str
    ) -> tuple[Derivation | None, int]:
        """Give up this client's part in ``ref``'s derivation: a standby leaves; an owner's
        lease passes to the first live standby, or, with none, the variable is marked
        stale (a commit). Returns (derivation or None, revision).

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, _ = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("a", "float", 1.0),
        ...                          VariableSpec("d", "float", 2.0,
        ...                          {}, {"derived_from": ["a"]})], actor="me")
        >>> _ = store.claim_derivation("s", "d", ["a"], client_id=client_id)
        >>> derivation, _ = store.release_derivation("s", "d", client_id=client_id)
        >>> derivation.stale, store.get("s", "d").metadata["stale"]
        (True, True)
        """
        caller = self.session(session_id)
        session, record = self._access.locate(caller, ref, "write")
        self._expire_derivations(session)
        derivation = session.derivations.get(record.id)
        if derivation is None:
            return None, session.revision
        role = derivation.role(caller.id, client_id)
        revision = session.revision
        if role == "owner":
            revision = self._hand_over(
                session, derivation, f"its owner {client_id} released it"
            ) or revision
        elif role == "standby":
            derivation.standbys = [
                s for s in derivation.standbys if (s.session, s.client) != (caller.id,
                                                                            client_id)
            ]
        self._backend.touch(session.id, record.id)
        return derivation, revision

    def derivation_status(
        self, session_id: str, ref: str, client_id: str = ""
    ) -> tuple[VariableRecord, Derivation | None, str]:
        """``ref``'s record, its derivation (None: not derived through a lease) and the
        role of ``client_id`` in it, after lapsed leases were handled.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, _ = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("d", "float", 2.0,
        ...                          {}, {"derived_from": ["a"]})], actor="me")
        >>> store.derivation_status("s", "d")[1] is None
        True
        """
        caller = self.session(session_id)
        session, record = self._access.locate(caller, ref, "read")
        self._expire_derivations(session)
        derivation = session.derivations.get(record.id)
        role = derivation.role(caller.id, client_id) if derivation is not None else "none"
        return session.variables[record.id], derivation, role

    def derivation_input_names(self, session_id: str, ref: str) -> dict[str, str]:
        """Names of ``ref``'s derivation inputs by id (for its status).

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, _ = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("d", "float", 2.0,
        ...                          {}, {"derived_from": ["a"]})], actor="me")
        >>> store.derivation_input_names("s", "d")
        {}
        """
        session, record = self._access.locate(self.session(session_id), ref, "read")
        derivation = session.derivations.get(record.id)
        if derivation is None:
            return {}
        return {i: session.variables[i].name for i in derivation.inputs
                if i in session.variables}

    # -- the engine's side ---------------------------------------------------------

    def _expire_derivations(self, session: Session) -> None:
        # Lapsed standbys leave; a lapsed owner hands over (or the variable goes stale).
        if not session.derivations:
            return
        now = self._clock()
        due = self._derive_due.get(session.id)
        if due is not None and now <= due:
            return  # nothing can have lapsed yet
        for derivation in list(session.derivations.values()):
            live = [s for s in derivation.standbys if now <= s.expires_at]
            if len(live) != len(derivation.standbys):
                derivation.standbys = live
                self._backend.touch(session.id, derivation.variable_id)
            if derivation.owned and now > derivation.expires_at:
                self._hand_over(
                    session, derivation,
                    f"the lease lapsed: no renewal from {derivation.owner_client} within "
                    f"{derivation.ttl:g} s",
                )
        self._derive_due[session.id] = min(
            (e for d in session.derivations.values()
             for e in ([d.expires_at] if d.owned else []) + [s.expires_at for s in d.standbys]),
            default=math.inf,
        )

    def _due(self, session_id: str, when: float) -> None:
        # A lease of the session now expires at ``when``: the next scan is due by then.
        due = self._derive_due.get(session_id)
        if due is not None and when < due:
            self._derive_due[session_id] = when

    def _hand_over(self, session: Session, derivation: Derivation, why: str) -> int:
        # The owner's lease ended: the first live standby takes it under a new token, or
        # the variable is marked stale. Returns the stale mark's revision, or 0.
        record = session.variables.get(derivation.variable_id)
        derivation.give_up(why)
        self._backend.touch(session.id, derivation.variable_id)
        if record is None:
            return 0
        now = self._clock()
        live = [s for s in derivation.standbys if now <= s.expires_at]
        if live:
            heir = live[0]
            derivation.take(heir.session, heir.client, self._derivation_token(derivation), now)
            self._due(session.id, derivation.expires_at)
            log.info("derivation_owner", session_id=session.id, variable=record.name,
                     client_id=heir.client, took_over=True, reason=why)
            return 0
        derivation.standbys = []
        derivation.stale, derivation.stale_reason = True, why
        log.warning("derivation_stale", session_id=session.id, variable=record.name,
                    reason=why)
        return self._mark(session, record, True, why)

    def _mark(self, session: Session, record: VariableRecord, stale: bool, why: str) -> int:
        # The stale mark is the variable's metadata ``stale``: a commit of the same value,
        # so watchers hear of it (a change they can see) and every backend keeps it.
        metadata = {**record.metadata, "stale": stale}
        note = {"derivation": "stale" if stale else "owned", "reason": why}
        try:
            metadata_size = measure_map(metadata, self.limits,
                                        f"variable {record.name!r}: metadata (merged)")
            note_size = measure_map(note, self.limits, "the stale mark's metadata")
            new = VariableRecord(
                record.id, record.name, record.type, record.value, record.constraints,
                metadata, record.version + 1, self._revision + 1, record.create_revision,
                record.created_at, self._clock(), DERIVATION_SOURCE, record.description,
                record.size - record.metadata_size + metadata_size, metadata_size,
            )
            self._accounts.check_room(
                session, self._accounts.records_cost(session, [new], note_size)
            )
        except DspexError as exc:
            # No room for the mark: the derivation's status still says it (never frozen
            # silently: the status and the log do).
            log.warning("derivation_mark_refused", session_id=session.id,
                        variable=record.name, error=str(exc))
            return 0
        return self._commit(session, [new], metadata=note, source=DERIVATION_SOURCE,
                            metadata_size=note_size)[1]

    def _check_derivation(
        self, session: Session, record: VariableRecord, token: int | None, caller_id: str
    ) -> int | None:
        # A write carrying a fencing token to a derived variable: the derivation's owner
        # token passes (returns None: no optimization token left to check); a token of
        # a running optimization goes on to _check_lease; any other is refused.
        derivation = session.derivations.get(record.id)
        if derivation is None or not token:
            return token
        lease = session.running.get(record.id)
        if lease is not None and lease.token == token:
            return token
        if derivation.owned and derivation.token == token:
            if derivation.owner_session == caller_id:
                return None
            why = f"it is the token session {derivation.owner_session!r} holds, not " \
                  f"{caller_id!r}"
        else:
            ended = derivation.ended_why(token)
            why = ended if ended is not None else "it belongs to no derivation of this " \
                                                  "variable"
            if derivation.owned:
                why += f"; client {derivation.owner_client} owns it now"
            elif derivation.stale:
                why += "; the variable is stale (no owner)"
        raise DerivationFencedError(
            f"variable {record.name!r}: derivation fencing token {token} is stale: {why}",
            current_version=record.version,
        )

    def _derivation_written(self, session: Session, var_id: str, revision: int) -> None:
        # The owner wrote a recomputed value under its token.
        derivation = session.derivations.get(var_id)
        if derivation is not None:
            derivation.last_computed_revision = revision
            self._backend.touch(session.id, var_id)

    def _drop_held_derivations(self, holder: str, client_id: str | None, why: str) -> None:
        # A client (or, with None, every client of session ``holder``) went: its standby
        # entries go, and the leases it owned pass on (or their variables go stale).
        for session in list(self._sessions.values()):
            for derivation in list(session.derivations.values()):
                def gone(session_id: str, client: str) -> bool:
                    return session_id == holder and (client_id is None or client == client_id)

                kept = [s for s in derivation.standbys if not gone(s.session, s.client)]
                if len(kept) != len(derivation.standbys):
                    derivation.standbys = kept
                    self._backend.touch(session.id, derivation.variable_id)
                if derivation.owned and gone(derivation.owner_session,
                                             derivation.owner_client):
                    self._hand_over(session, derivation, why)

    def _refresh_derivations(self) -> None:
        # A restart: every owner and standby gets a fresh window, as attached clients do
        # (the time the server was down does not count); tokens stay, so one owner stays.
        now = self._clock()
        self._derive_due.clear()
        for session in self._sessions.values():
            for derivation in session.derivations.values():
                if derivation.owned:
                    derivation.expires_at = now + derivation.ttl
                for standby in derivation.standbys:
                    standby.expires_at = now + derivation.ttl
                self._backend.touch(session.id, derivation.variable_id)

    @staticmethod
    def _derivation_token(derivation: Derivation) -> int:
        # A positive int64, unguessable, unlike the tokens this derivation remembers.
        taken = {token for token, _ in derivation.ended} | {derivation.token}
        while True:
            token = secrets.randbits(62) + 1
            if token not in taken:
                return token

    def _check_client(self, caller: Session, client_id: str) -> None:
        if not isinstance(client_id, str):
            raise VariableTypeError("client id must be a string")
        if client_id not in caller.clients:
            # Only an attached client can hold a part: its close or silence must end it.
            raise SessionNotFoundError(
                f"client {_show(client_id)} is not attached to session {caller.id!r}; only "
                "an attached client can take part in a derivation",
                detached=True,
            )

    def _input_ids(
        self, session: Session, record: VariableRecord, inputs: Sequence[str]
    ) -> tuple[str, ...]:
        if isinstance(inputs, str) or not inputs:
            raise InvalidValueError(
                f"variable {record.name!r}: a derivation needs a list of input variables"
            )
        ids = []
        for ref in inputs:
            if not isinstance(ref, str):
                raise VariableTypeError(f"variable {record.name!r}: inputs must be names")
            var_id = ref if ref in session.variables else session.names.get(ref)
            if var_id is None:
                raise VariableNotFoundError(
                    f"variable {record.name!r}: no input variable {_show(ref)} in session "
                    f"{session.id!r}"
                )
            if var_id == record.id:
                raise InvalidValueError(
                    f"variable {record.name!r} cannot be derived from itself"
                )
            ids.append(var_id)
        return tuple(ids)

    @staticmethod
    def _names(session: Session, ids: Sequence[str]) -> list[str]:
        return [session.variables[i].name if i in session.variables else i for i in ids]
