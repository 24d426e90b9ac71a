"""Variable reads and writes over the session's call: register, get (through the actors'
cache), set, batches, list, delete. The server validates; this encodes and caches."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from dspex_rx.client.core import SessionCore
from dspex_rx.client.encoding import (
    check_positive,
    encode_metadata,
    encode_rules,
    encode_value,
    info,
    prefixed,
)
from dspex_rx.client.optimization.lease import HeldLease
from dspex_rx.core.patterns import name_pattern
from dspex_rx.errors import (
    ConflictError,
    DspexError,
    InvalidValueError,
    SessionNotFoundError,
    error_from_kind,
)
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import type_to_pb, utc_datetime


class Variables:
    """The session's variable calls (``SessionContext`` delegates to them).

    Example: ``await variables.get_variable("t")`` returns the value ``session.get_variable``
    would.
    """

    def __init__(self, core: SessionCore) -> None:
        self.core = core

    async def ping(self, payload: bytes = b"") -> bytes:
        """One round trip to the server that touches no state (the transport baseline).

        Example: ``await session.ping(b"x")`` returns ``b"x"``.
        """
        response = await self.core.call("Echo", pb.EchoRequest(payload=payload), pb.EchoResponse)
        return response.payload

    async def register_variable(
        self,
        name: str,
        type: str,
        initial_value: Any,
        constraints: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        dependencies: Sequence[str] | None = None,
        access_rules: Sequence[Mapping[str, Any]] | None = None,
        *,
        description: str = "",
    ) -> str:
        """Register a typed variable; returns its id. An existing name raises ``ValueError``.

        Positional parameters are the spec's, in its order; ``description`` is
        keyword-only. ``metadata`` is kept apart from system fields and comes back exactly
        as given (``get_variables(..., include_metadata=True)[name]['metadata']``).

        Example: ``await session.register_variable("temperature", "float", 0.7,
        constraints={"min": 0.0, "max": 2.0})`` returns the new variable's id.
        """
        spec = self.spec(
            name, type, initial_value, constraints, metadata, description, dependencies,
            access_rules,
        )
        response = await self.core.call(
            "RegisterVariable",
            pb.RegisterVariableRequest(session_id=self.core.session_id, spec=spec),
            pb.RegisterVariableResponse,
        )
        self.core.remember(response.variable)
        return response.variable.id

    def spec(
        self,
        name: str,
        type_name: str,
        initial_value: Any,
        constraints: Mapping[str, Any] | None,
        metadata: Mapping[str, Any] | None,
        description: str,
        dependencies: Sequence[str] | None,
        access_rules: Sequence[Mapping[str, Any]] | None,
    ) -> pb.VariableSpec:
        """A variable's spec on the wire, checked as far as encoding it needs.

        Example: ``variables.spec("t", "float", 0.7, None, None, "", None, None).name``
        is ``"t"``.
        """
        if isinstance(dependencies, str):
            raise InvalidValueError(
                f"variable {name!r}: dependencies must be a list of names or ids, not a string"
            )
        if not isinstance(name, str):
            raise InvalidValueError(f"variable name must be a string, got {name!r}")
        try:
            wire_type = type_to_pb(type_name)
        except DspexError as exc:
            raise prefixed(name, exc) from None
        return pb.VariableSpec(
            name=name,
            type=wire_type,  # type: ignore[arg-type]
            initial_value=encode_value(name, initial_value),
            constraints=encode_metadata(name, constraints),
            metadata=encode_metadata(name, metadata),
            description=description,
            dependencies=list(dependencies or ()),
            access_rules=encode_rules(name, access_rules),
        )

    async def register_variables(self, variables: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """Register several variables in one atomic call; returns name -> id.

        Each entry takes the keys of ``register_variable`` (``initial_value`` or ``value``).
        If any entry is invalid, none is registered.

        Example: ``await session.register_variables([{"name": "a", "type": "integer",
        "initial_value": 1}])`` returns ``{"a": <its id>}``.
        """
        specs = []
        for index, entry in enumerate(variables):
            if not isinstance(entry, Mapping) or "name" not in entry or "type" not in entry:
                raise InvalidValueError(
                    f"register_variables entry {index} needs at least 'name' and 'type'"
                )
            unknown = set(entry) - {
                "name", "type", "initial_value", "value", "constraints", "metadata",
                "description", "dependencies", "access_rules",
            }
            if unknown:
                raise InvalidValueError(
                    f"register_variables entry {index} ({entry['name']!r}) has unknown keys "
                    f"{sorted(unknown)}"
                )
            specs.append(
                self.spec(
                    entry["name"],
                    entry["type"],
                    entry.get("initial_value", entry.get("value")),
                    entry.get("constraints"),
                    entry.get("metadata"),
                    entry.get("description", ""),
                    entry.get("dependencies"),
                    entry.get("access_rules"),
                )
            )
        response = await self.core.call(
            "RegisterVariables",
            pb.RegisterVariablesRequest(session_id=self.core.session_id, specs=specs),
            pb.RegisterVariablesResponse,
        )
        for variable in response.variables:
            self.core.remember(variable)
        return {v.name: v.id for v in response.variables}

    async def get_variable(
        self,
        name: str,
        default: Any = None,
        bypass_cache: bool = False,
        *,
        as_tensor: str | None = None,
    ) -> Any:
        """The variable's current value, by name or id.

        An unknown variable raises ``KeyError`` unless a ``default`` other than ``None`` is
        given (as the spec says: ``None`` means "no default"). A watched variable is read
        from its actor's entry, which the stream keeps current; an unwatched one is cached
        for the cache TTL. ``bypass_cache=True`` always asks the server (and counts as a
        cache miss). Arrays come back as read-only ``np.ndarray``, except a value written
        from a ``torch.Tensor``, which comes back as one when torch is installed;
        ``as_tensor="torch"`` or ``"numpy"`` asks for one kind whatever the origin.

        Example: ``await session.get_variable("retries", default=3)`` returns 3 if there is
        no ``retries``.
        """
        kind = codec.check_tensor_kind(as_tensor)
        started = time.perf_counter()
        found, cached, counted, actor = self.core.read_cached(name, bypass_cache)
        if found:
            assert actor is not None
            actor.stats.read_latency_total += time.perf_counter() - started
            return codec.present(cached, kind)
        try:
            response = await self.core.call(
                "GetVariable",
                pb.GetVariableRequest(session_id=self.core.session_id, ref=name),
                pb.GetVariableResponse,
            )
        except SessionNotFoundError:
            raise
        except KeyError:
            if default is None:
                raise
            return default
        variable = response.variable
        value = codec.decode(variable.value)
        learned = self.core.remember(variable, value)
        if not counted:
            learned.stats.cache_misses += 1
        learned.stats.read_latency_total += time.perf_counter() - started
        return codec.present(value, kind)

    async def get_variables(
        self,
        names: Sequence[str],
        defaults: Mapping[str, Any] | None = None,
        include_metadata: bool = False,
        include_stats: bool = False,
        *,
        as_tensor: str | None = None,
    ) -> dict[str, Any]:
        """Several values in one call, keyed by the names asked for.

        Cached values (watched variables, or unwatched within the TTL) are read locally and
        every miss is fetched in one call. A missing name takes ``defaults[name]``; with no
        default (or a ``None`` one, as in ``get_variable``) it raises ``KeyError`` naming
        every missing variable. ``include_metadata`` makes each entry ``{'value': ...,
        'metadata': {the user's metadata, as given}, 'id': ..., 'type': ..., ...}`` (the
        system fields of ``list_variables``, as their own keys) and ``include_stats`` adds
        ``'stats'`` (server counters and timestamps, and this client's counters as in
        ``get_variable_stats``); both read from the server. ``as_tensor`` as in
        ``get_variable``.

        Example: ``await session.get_variables(["temperature"], include_metadata=True)``
        returns ``{"temperature": {"value": ..., "metadata": ..., ...}}``.
        """
        if isinstance(names, str):
            raise InvalidValueError("get_variables takes a list of names, not one string")
        kind = codec.check_tensor_kind(as_tensor)
        plain = not (include_metadata or include_stats)
        local: dict[str, Any] = {}
        counted: set[str] = set()
        to_fetch: list[str] = []
        for ref in dict.fromkeys(names):
            found_locally, cached, was_counted, _ = self.core.read_cached(
                ref, bypass_cache=not plain
            )
            if was_counted:
                counted.add(ref)
            if found_locally:
                local[ref] = cached
            else:
                to_fetch.append(ref)
        found: dict[str, pb.Variable] = {}
        missing: set[str] = set()
        revision = self.core.conn.revision
        if to_fetch:
            found, missing, revision = await self.core.get_many(to_fetch)
        defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
        unresolved = [ref for ref in to_fetch if ref in missing and ref not in defaults]
        if unresolved:
            raise error_from_kind(
                "not_found",
                f"no variable(s) {', '.join(map(repr, unresolved))} in session "
                f"{self.core.session_id!r}",
            )
        result: dict[str, Any] = {}
        for ref in names:
            if ref in local:
                result[ref] = codec.present(local[ref], kind)
                continue
            variable = found.get(ref)
            if variable is None:
                result[ref] = defaults[ref]
                continue
            value = codec.decode(variable.value)
            actor = self.core.remember(variable, value)
            if ref not in counted:
                actor.stats.cache_misses += 1
                counted.add(ref)
            if plain:
                result[ref] = codec.present(value, kind)
                continue
            entry: dict[str, Any] = {"value": codec.present(value, kind)}
            if include_metadata:
                entry.update(info(variable, revision))
            if include_stats:
                entry["stats"] = {
                    "version": variable.version,
                    "mod_revision": variable.mod_revision,
                    "create_revision": variable.create_revision,
                    "created_at": utc_datetime(variable.created_at),
                    "updated_at": utc_datetime(variable.updated_at),
                    **self.core.stats(variable.id),
                }
            result[ref] = entry
        return result

    async def set_variable(
        self,
        name: str,
        value: Any,
        metadata: Mapping[str, Any] | None = None,
        create_if_missing: bool = False,
        type_hint: str | None = None,
        *,
        expected_version: int | None = None,
        source: str | None = None,
        fencing_token: int | None = None,
    ) -> int:
        """Validate on the server and write one value; returns the variable's new version.

        With ``create_if_missing`` an unknown name is registered, its type taken from
        ``type_hint`` or inferred from the value (ambiguous values raise ``TypeError``).
        ``expected_version`` makes the write a compare-and-set: if the variable is at
        another version, ``ConflictError`` (a ``ValueError`` with ``.current_version``) is
        raised and nothing is written. ``source`` is the writer watchers see
        (``'derived'`` for computed variables); by default this session. A variable under
        an optimization lease takes writes only with the lease's ``fencing_token``; any
        other write raises ``OptimizationLockedError``.

        Example: ``await session.set_variable("counter", 8, expected_version=7)`` returns 8.
        """
        request = pb.SetVariableRequest(
            session_id=self.core.session_id,
            ref=name,
            value=encode_value(name, value),
            metadata=encode_metadata(name, metadata),
            create_if_missing=create_if_missing,
            expected_version=check_positive(name, "expected_version", expected_version),
            source=source or "",
            fencing_token=check_positive(name, "fencing_token", fencing_token),
        )
        if type_hint is not None:
            try:
                request.type_hint = type_to_pb(type_hint)  # type: ignore[assignment]
            except DspexError as exc:
                raise prefixed(name, exc) from None
        started = time.perf_counter()
        response = await self.core.call("SetVariable", request, pb.SetVariableResponse)
        actor = self.core.remember(response.variable)
        actor.stats.write_count += 1
        actor.stats.write_latency_total += time.perf_counter() - started
        return response.variable.version

    async def update_variables(
        self,
        updates: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
        atomic: bool = True,
        *,
        expected_versions: Mapping[str, int] | None = None,
        require_leases: Sequence[HeldLease] = (),
    ) -> dict[str, bool | str]:
        """Write several variables in one call; returns name -> ``True`` or an error message.

        ``atomic=True``: all are validated first and applied under one revision, or none
        is (the bad entries carry their error, the rest say they were not applied). No
        exception is raised for bad entries. ``atomic=False`` applies what is valid.
        ``expected_versions`` maps names to the version each must be at (compare-and-set
        per entry). In an atomic batch a mismatch raises ``ConflictError`` and nothing is
        applied: ``.current_version`` is the first stale variable's version and
        ``.details['conflicts']`` maps every stale name to its version. Without
        ``atomic`` a mismatch is that entry's error and the rest apply.
        ``require_leases``: optimization leases (``optimization_lease`` handles) this
        session must still hold for the batch to apply, checked in the same step as the
        write; if one was stopped or expired, ``OptimizationLockedError`` and nothing is
        applied (a run's results publish only while the run is alive).

        Example: ``await session.update_variables({"temperature": 0.5, "max_tokens": 512})``
        returns ``{"temperature": True, "max_tokens": True}``.
        """
        request = pb.UpdateVariablesRequest(
            session_id=self.core.session_id,
            metadata=encode_metadata("update", metadata),
            atomic=atomic,
        )
        for lease in require_leases:
            request.require_leases.add(
                ref=lease.variable, optimization_id=lease.optimization_id,
                fencing_token=lease.token,
            )
        local_errors: dict[str, str] = {}
        sent: dict[str, Any] = {}
        expected_versions = expected_versions or {}
        unknown = set(expected_versions) - set(updates)
        if unknown:
            raise InvalidValueError(
                f"expected_versions names {sorted(unknown)} that are not among the updates"
            )
        for name, value in updates.items():
            try:
                wire_value = encode_value(name, value)
                expected = check_positive(name, "expected_version", expected_versions.get(name))
            except DspexError as exc:
                local_errors[name] = str(exc)
                continue
            request.updates.add(ref=name, value=wire_value, expected_version=expected)
            sent[name] = wire_value
        if local_errors and atomic:
            first = next(iter(local_errors))
            return {
                name: local_errors.get(
                    name, f"not applied: the atomic batch failed on {first!r}"
                )
                for name in updates
            }
        results: dict[str, bool | str] = dict(local_errors)
        if request.updates:
            started = time.perf_counter()
            response = await self.core.call("UpdateVariables", request, pb.UpdateVariablesResponse)
            elapsed = time.perf_counter() - started
            conflicts = {
                r.ref: r.current_version for r in response.results if r.error_kind == "conflict"
            }
            if atomic and conflicts:
                stale = next(r for r in response.results if r.error_kind == "conflict")
                raise ConflictError(
                    stale.error + " (nothing in the batch was applied)",
                    current_version=stale.current_version,
                    conflicts=conflicts,
                )
            hub = self.core.hub()
            for result in response.results:
                results[result.ref] = True if result.ok else result.error
                if result.ok:
                    # The server sends the stored value only when validation changed it.
                    stored = result.value if result.HasField("value") else sent[result.ref]
                    actor = hub.learn(result.variable_id, result.name)
                    actor.store(codec.decode(stored), result.version, result.mod_revision)
                    actor.stats.write_count += 1
                    actor.stats.write_latency_total += elapsed
        return {name: results[name] for name in updates}

    async def list_variables(
        self, pattern: str | None = None, *, glob: bool = False
    ) -> list[dict[str, Any]]:
        """Variables whose names match ``pattern``, sorted by name: a regular expression
        (RE2) searched anywhere in the name, as ``re.search`` would (``^model\\.`` for a
        prefix, ``^...$`` for the whole name), the same rule as ``export_variables`` and
        ``VariableCache.invalidate_pattern``. ``glob=True`` takes an fnmatch glob
        (``model.*``) matching the whole name instead. A pattern RE2 refuses raises
        ``ValueError`` naming it and why.

        Each entry is the ``include_metadata`` dict plus ``'value'``.

        Example: ``await session.list_variables(r"^model\\.")`` lists the ``model.`` variables.
        """
        response = await self.core.call(
            "ListVariables",
            pb.ListVariablesRequest(
                session_id=self.core.session_id, pattern=name_pattern("pattern", pattern, glob)
            ),
            pb.ListVariablesResponse,
        )
        infos = []
        for variable in response.variables:
            value = codec.decode(variable.value)
            self.core.remember(variable, value)
            infos.append({**info(variable), "value": codec.present(value, None)})
        return infos

    async def delete_variable(self, name: str, cascade: bool = False) -> bool:
        """Delete a variable by name or id; unknown names raise ``KeyError``. A variable
        others depend on raises ``ValueError`` unless ``cascade=True``, which deletes its
        dependents (transitively) too, in one revision.

        Example: ``await session.delete_variable("base_temperature", cascade=True)`` returns
        True.
        """
        response = await self.core.call(
            "DeleteVariable",
            pb.DeleteVariableRequest(session_id=self.core.session_id, ref=name, cascade=cascade),
            pb.DeleteVariableResponse,
        )
        hub = self.core.hub()
        for var_id in response.deleted_ids or [response.id]:
            actor = hub.known(var_id)
            if actor is not None:
                self.core.cache.invalidate_nowait(actor.id, "deleted")
                if not actor.attached:
                    hub.forget(actor)
        return True

    async def fetch_missing(self, var_ids: Sequence[str]) -> dict[str, Any]:
        """One ``GetVariables`` call for the given ids or names: ``{ref: value}`` of those
        that exist. The default loader for ``VariableCache.get_batch``.

        Example: ``await cache.get_batch(["a", "b"], session.fetch_missing)``.
        """
        found, _, _ = await self.core.get_many(list(var_ids))
        values = {}
        for ref, variable in found.items():
            values[ref] = codec.decode(variable.value)
            self.core.remember(variable, values[ref])
        return values
