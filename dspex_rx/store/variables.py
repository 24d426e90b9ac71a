"""Reading and writing variables: get, get_many, list, set, update_many, delete and
set_permissions.

Writes may compare-and-set a version and must pass an optimization lease's fence.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import Any

from dspex_rx.core.limits import check_count, measure_map, measure_value
from dspex_rx.core.patterns import compile_name_filter
from dspex_rx.core.types import infer_type, normalize_type
from dspex_rx.errors import ConflictError, DspexError, InvalidValueError, VariableNotFoundError
from dspex_rx.store.accounts import _rules_cost
from dspex_rx.store.checked import raw_value
from dspex_rx.store.checks import _show
from dspex_rx.store.records import UpdateOutcome, VariableRecord, VariableSpec
from dspex_rx.store.registration import Registration
from dspex_rx.store.state import Session


def _failed(ref: str, error: DspexError | None) -> UpdateOutcome:
    if error is None:
        raise AssertionError(f"no outcome for {ref!r}")
    current = error.details.get("current_version")
    return UpdateOutcome(
        ref, False, str(error), error.kind, current_version=int(current or 0)
    )


class Variables(Registration):
    """The engine's variable read/write part.

    Example: ``store.set(sid, "t", 0.9, actor="me")`` returns ``(record, revision, False)``.
    """

    def get(self, session_id: str, ref: str) -> VariableRecord:
        """The current record of a variable, by id or name.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> store.get("s", "t").value
        0.7
        """
        return self._access.locate(self.session(session_id), ref, "read")[1]

    def get_many(
        self, session_id: str, refs: Sequence[str], permission: str = "read"
    ) -> tuple[list[VariableRecord], list[str]]:
        """Records for the refs that exist (in order) and the refs that do not (or that
        the session may not see). A visible variable without ``permission`` raises
        ``AccessDeniedError``.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> found, missing = store.get_many("s", ["t", "nope"])
        >>> [r.name for r in found], missing
        (['t'], ['nope'])
        """
        session = self.session(session_id)
        if not isinstance(refs, list | tuple):
            raise InvalidValueError("refs must be a list of variable names or ids")
        check_count("the list of variables", len(refs), "max_batch_size",
                    self.limits.max_batch_size)
        found, missing = [], []
        for ref in refs:
            try:
                found.append(self._access.locate(session, ref, permission)[1])
            except VariableNotFoundError:
                missing.append(ref)
        return found, missing

    def write_target(
        self, session_id: str, ref: str
    ) -> tuple[str, str, Mapping[str, Any]] | None:
        """What a write of ``ref`` by this session would be validated against now: the
        variable's (name, type, constraints), or ``None`` when the write would be refused
        before validation (no session, no such variable, no write permission). Changes
        nothing; the server uses it to check a large value ahead (``checked.py``).

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7, {"max": 1.0})], actor="me")
        >>> store.write_target("s", "t"), store.write_target("s", "nope")
        (('t', 'float', {'max': 1.0}), None)
        """
        try:
            record = self._access.locate(self.session(session_id), ref, "write")[1]
        except DspexError:
            return None
        return record.name, record.type, record.constraints

    def _prepare_write(
        self,
        record: VariableRecord,
        value: Any,
        metadata: Mapping[str, Any],
        actor: str,
        revision: int = 0,
        validated: bool = False,
    ) -> VariableRecord:
        if validated:
            new_value = value
            value_size = measure_value(value, self.limits, f"variable {record.name!r}: value")
        else:
            new_value, value_size = self._validated(
                record.name, record.type, value, record.constraints
            )
        # Metadata merges into the variable's: the merged map must fit the limits too.
        merged: Mapping[str, Any]
        if metadata:
            merged = {**record.metadata, **metadata}
            metadata_size = measure_map(
                merged, self.limits, f"variable {record.name!r}: metadata (merged)"
            )
        else:
            merged, metadata_size = record.metadata, record.metadata_size
        # Built field by field, not with dataclasses.replace: this is the hot path of every
        # write, and replace costs several times more. ``revision`` is the one the commit
        # will take (0: let _commit stamp it).
        return VariableRecord(
            record.id, record.name, record.type, new_value, record.constraints, merged,
            record.version + 1, revision, record.create_revision, record.created_at,
            self._clock(), actor, record.description, value_size + metadata_size,
            metadata_size,
        )

    def set(
        self,
        session_id: str,
        ref: str,
        value: Any,
        *,
        metadata: Mapping[str, Any] | None = None,
        actor: str,
        create_if_missing: bool = False,
        type_hint: str | None = None,
        expected_version: int | None = None,
        source: str | None = None,
        fencing_token: int | None = None,
    ) -> tuple[VariableRecord, int, bool]:
        """Validate and write one value; returns (new record, revision, created).

        ``expected_version`` makes it a compare-and-set: a variable at another version
        raises ``ConflictError`` (with ``current_version``) and nothing is written.
        ``source`` is who watchers see as the writer (default: ``actor``). A variable
        under an optimization lease takes the write only with the lease's
        ``fencing_token``; otherwise ``OptimizationLockedError``.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> record, revision, created = store.set("s", "t", 0.9, actor="me")
        >>> record.version, revision, created
        (2, 2, False)
        >>> store.set("s", "t", 0.1, actor="me", expected_version=1)
        Traceback (most recent call last):
        ...
        dspex_rx.errors.ConflictError: variable 't': expected version 1, but it is at version 2
        """
        caller = self.session(session_id)
        if source is not None:
            self._check_reason("a write's source", source)
        try:
            session, record = self._access.locate(
                caller, ref, "write", raw_value(value), check_value=True
            )
        except VariableNotFoundError:
            session = caller
            if not create_if_missing:
                raise
            if expected_version:
                raise ConflictError(
                    f"variable {_show(ref)}: expected version {expected_version}, but it does "
                    "not exist",
                    current_version=0,
                ) from None
            type_name = (
                normalize_type(type_hint) if type_hint else infer_type(ref, raw_value(value))
            )
            records, revision = self.register(
                session_id, [VariableSpec(ref, type_name, value, None, metadata)], actor
            )
            return records[0], revision, True
        self._expire_leases(session)
        record = session.variables[record.id]
        # A derived variable's owner writes under its derivation token (consumed here).
        lease_token = self._check_derivation(session, record, fencing_token, session_id)
        self._check_lease(session, record, lease_token, caller_id=session_id)
        self._check_version(record, expected_version)
        clean_metadata, metadata_size = self._clean_metadata(
            record.name, metadata, f"variable {record.name!r}: metadata"
        )
        new = self._prepare_write(record, value, clean_metadata, actor, self._revision + 1)
        self._accounts.check_room(
            session, self._accounts.records_cost(session, [new], metadata_size)
        )
        written, revision = self._commit(
            session, [new], metadata=clean_metadata, source=source or actor,
            metadata_size=metadata_size,
        )
        if fencing_token and lease_token is None:
            self._derivation_written(session, record.id, revision)
        return written[0], revision, False

    @staticmethod
    def _check_version(record: VariableRecord, expected: int | None) -> None:
        if expected and expected != record.version:
            raise ConflictError(
                f"variable {record.name!r}: expected version {expected}, but it is at "
                f"version {record.version}",
                current_version=record.version,
            )

    def update_many(
        self,
        session_id: str,
        updates: Sequence[tuple[str, Any]] | Sequence[tuple[str, Any, int | None]],
        *,
        metadata: Mapping[str, Any] | None = None,
        atomic: bool = True,
        actor: str,
        require_leases: Sequence[tuple[str, str, int]] = (),
    ) -> tuple[list[UpdateOutcome], int, bool]:
        """Write several variables under one revision; returns (outcomes, revision, applied).

        Each update is ``(ref, value)`` or ``(ref, value, expected_version)``. With
        ``atomic`` any bad entry (invalid, unknown, or at another version than expected)
        means nothing is applied: the bad entries carry their error, the rest say they
        were not applied. Without it the valid entries are applied. ``require_leases``
        names ``(ref, optimization_id, fencing_token)`` leases the caller must still hold:
        if one has ended, ``OptimizationLockedError`` and nothing is applied.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> specs = [VariableSpec("a", "int", 0), VariableSpec("b", "int", 0)]
        >>> _ = store.register("s", specs, actor="me")
        >>> outcomes, revision, applied = store.update_many("s", [("a", 1), ("b", 2)], actor="me")
        >>> [o.record.value for o in outcomes], revision, applied
        ([1, 2], 2, True)
        """
        caller = self.session(session_id)
        if not isinstance(updates, list | tuple) or not all(
            isinstance(u, tuple | list) and len(u) in (2, 3) for u in updates
        ):
            raise InvalidValueError(
                "updates must be a list of (ref, value) or (ref, value, expected_version)"
            )
        check_count("the batch", len(updates), "max_batch_size", self.limits.max_batch_size)
        if not isinstance(require_leases, list | tuple) or not all(
            isinstance(g, tuple | list) and len(g) == 3 for g in require_leases
        ):
            raise InvalidValueError(
                "require_leases must be a list of (ref, optimization_id, fencing_token)"
            )
        check_count("the required leases", len(require_leases), "max_batch_size",
                    self.limits.max_batch_size)
        clean_metadata, metadata_size = self._clean_metadata(
            "update", metadata, "the batch's metadata"
        )
        self._expire_leases(caller)
        for ref, optimization_id, token in require_leases:
            guard_owner, guarded = self._access.locate(caller, ref, "optimize")
            self._expire_leases(guard_owner)
            self._holder_lease(guard_owner, guarded, optimization_id, token, caller.id)
        prepared: list[VariableRecord | None] = []
        errors: list[DspexError | None] = []
        seen: set[str] = set()
        refs = [u[0] for u in updates]
        # A batch is one commit in one session: it writes the variables of one owner
        # session (the first entry's), and an entry of another owner is an error.
        session: Session | None = None
        for update in updates:
            ref, value = update[0], update[1]
            expected = update[2] if len(update) > 2 else None
            try:
                owner, record = self._access.locate(
                    caller, ref, "write", raw_value(value), check_value=True
                )
                if session is None:
                    session = owner
                    if owner is not caller:
                        self._expire_leases(owner)
                        record = owner.variables[record.id]
                elif owner is not session:
                    raise InvalidValueError(
                        f"variable {ref!r} belongs to session {owner.id!r}, but the batch "
                        f"writes variables of session {session.id!r}: a batch is one commit "
                        "in one session (send one batch per owner session)"
                    )
                if record.id in seen:
                    raise InvalidValueError(
                        f"variable {record.name!r} appears more than once in the batch"
                    )
                seen.add(record.id)
                self._check_lease(session, record, None)
                self._check_version(record, expected)
                prepared.append(
                    self._prepare_write(
                        record, value, clean_metadata, actor, self._revision + 1
                    )
                )
                errors.append(None)
            except DspexError as exc:
                prepared.append(None)
                errors.append(exc)
        failed = [e for e in errors if e is not None]
        if atomic and failed:
            first_bad = next(ref for ref, e in zip(refs, errors, strict=True) if e)
            outcomes = [
                _failed(ref, e)
                if e
                else UpdateOutcome(
                    ref, False, f"not applied: the atomic batch failed on {first_bad!r}", "aborted"
                )
                for ref, e in zip(refs, errors, strict=True)
            ]
            return outcomes, (session or caller).revision, False
        to_apply = [r for r in prepared if r is not None]
        self._check_batch_bytes(sum(r.size for r in to_apply), len(to_apply), "the batch")
        session = session or caller
        revision = session.revision
        committed: dict[str, VariableRecord] = {}
        if to_apply:
            # A budget refusal is the whole request's, atomic or not: nothing is applied.
            self._accounts.check_room(
                session, self._accounts.records_cost(session, to_apply, metadata_size)
            )
            written, revision = self._commit(
                session, to_apply, metadata=clean_metadata, source=actor,
                metadata_size=metadata_size,
            )
            committed = {r.id: r for r in written}
        outcomes = [
            UpdateOutcome(ref, True, record=committed[p.id]) if p is not None else _failed(ref, e)
            for ref, p, e in zip(refs, prepared, errors, strict=True)
        ]
        return outcomes, revision, bool(to_apply)

    def delete(
        self, session_id: str, ref: str, actor: str = "", cascade: bool = False
    ) -> tuple[builtins.list[str], int]:
        """Remove a variable; returns (ids deleted, the named one first; the new revision).

        A variable others depend on is refused unless ``cascade``, which deletes every
        variable that depends on it, transitively, in the same commit.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> deleted, revision = store.delete("s", "t")
        >>> deleted, revision
        (['var_t_1'], 2)
        """
        session, record = self._access.locate(self.session(session_id), ref, "owner")
        self._expire_leases(session)
        dependents = session.graph.dependents(record.id, transitive=True)
        if dependents and not cascade:
            names = ", ".join(repr(session.variables[d].name) for d, _, _ in dependents)
            raise InvalidValueError(
                f"variable {record.name!r} cannot be deleted: {names} depend(s) on it "
                "(delete with cascade=True to delete them too)"
            )
        doomed = [record, *(session.variables[d] for d, _, _ in dependents)]
        for victim in doomed:
            self._check_lease(session, victim, None, doing="deleted")
        _, revision = self._commit(session, (), removed=doomed, source=actor)
        return [r.id for r in doomed], revision

    def set_permissions(
        self, session_id: str, ref: str, rules: Any, actor: str = ""
    ) -> int:
        """Replace a variable's access rules (its owner only); returns the revision.

        A commit with no value change: the variable's version stays, and live watches of
        other sessions are checked again (one that lost ``observe`` ends). A running
        optimization of a session that lost ``optimize`` is stopped right after (its own
        commit; the later revision is returned).

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> store.set_permissions("s", "t", [{"session_pattern": "any", "permissions": ["read"]}])
        2
        >>> [rule.permissions for rule in store.rules("s", "t")]
        [('read',)]
        """
        owner, record = self._access.locate(self.session(session_id), ref, "owner")
        clean = self._access.checked_rules(record.name, record.type, rules)
        self._accounts.check_room(
            owner, _rules_cost(clean) - _rules_cost(owner.rules.get(record.id, ()))
        )
        revision = self._commit(owner, (), source=actor, rules={record.id: clean})[1]
        # A foreign optimization lives on the optimize permission: without it, it ends
        # (its own commit, right after), so its fencing token no longer lands writes.
        return self._end_unpermitted_leases(owner, "its access rules were changed") or revision

    def list(self, session_id: str, pattern: str | None = None) -> list[VariableRecord]:
        """Variables whose name matches a regex (all when no pattern), by name.

        The regex is searched in the name (``re.search`` semantics; ``^...$`` for the whole
        name) with RE2 (``patterns.compile_name_filter``), in linear time. Clients send an
        explicit glob already translated (``patterns.glob_as_search``).

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> specs = [VariableSpec("model.lr", "float", 0.1), VariableSpec("seed", "int", 1)]
        >>> _ = store.register("s", specs, actor="me")
        >>> [r.name for r in store.list("s", r"^model\\.")]
        ['model.lr']
        """
        session = self.session(session_id)
        records = sorted(session.variables.values(), key=lambda r: r.name)
        if pattern:
            match = compile_name_filter(pattern, self.limits.max_pattern_length)
            records = [r for r in records if match(r.name)]
        return records
