"""Registering variables: names, types, constraints, initial values, rules and dependencies,
all checked, then committed under one revision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dspex_rx.core.access import AccessRule
from dspex_rx.core.graph import CycleError, DependencyGraph, Edge
from dspex_rx.core.limits import check_count, too_many
from dspex_rx.errors import AlreadyExistsError, InvalidValueError
from dspex_rx.store.accounts import _rules_cost
from dspex_rx.store.checks import _check_name, _check_not_id_shaped
from dspex_rx.store.records import ITEM_OVERHEAD, VariableRecord, VariableSpec
from dspex_rx.store.sessions import Sessions
from dspex_rx.store.state import Session


class Registration(Sessions):
    """The engine's registration part.

    Example: ``store.register(sid, [VariableSpec("t", "float", 0.7)], "me")`` registers t.
    """

    def register(
        self, session_id: str, specs: Sequence[VariableSpec], actor: str
    ) -> tuple[list[VariableRecord], int]:
        """Register variables atomically: all validated, then all committed under one revision.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> records, revision = store.register("s", [VariableSpec("t", "float", 0.7)], "me")
        >>> records[0].name, records[0].version, revision
        ('t', 1, 1)
        """
        session = self.session(session_id)
        limits = self.limits
        if not specs:
            raise InvalidValueError("register needs at least one variable")
        check_count("the registration", len(specs), "max_batch_size", limits.max_batch_size)
        count = len(session.variables) + len(specs)
        if count > limits.max_variables_per_session:
            raise too_many(
                f"session {session_id!r} would hold {count} variables", count,
                "max_variables_per_session", limits.max_variables_per_session,
            )
        taken: set[str] = set()
        prepared = []
        fixed: list[int] = []
        rules: dict[str, tuple[AccessRule, ...]] = {}
        for spec in specs:
            record, cost = self._prepare_new(session, spec, actor, taken)
            prepared.append(record)
            fixed.append(cost)
            rules[record.id] = self._access.checked_rules(
                record.name, record.type, getattr(spec, "access_rules", ()) or ()
            )
            taken.add(spec.name)
        self._check_batch_bytes(
            sum(r.size for r in prepared) + sum(fixed), len(prepared), "the registration"
        )
        edges = self._new_edges(session, specs, prepared)
        self._accounts.check_room(
            session,
            self._accounts.records_cost(session, prepared) + sum(fixed) + sum(e.size for e in edges)
            + sum(_rules_cost(r) for r in rules.values()),
        )
        # Only a batch edge between two new variables can close a cycle (nothing already
        # in the graph reaches a new variable), so the batch's edges alone are tried, on
        # a graph of their own: the session's changes only with the commit.
        trial = DependencyGraph()
        try:
            for edge in edges:
                trial.add(edge)
        except CycleError as exc:
            names = {r.id: r.name for r in prepared}
            raise self._cycle_error(session, exc, names) from None
        return self._commit(
            session, prepared, rules={k: v for k, v in rules.items() if v}, edges=edges,
            fixed={record.id: cost for record, cost in zip(prepared, fixed, strict=True)},
        )

    def _prepare_new(
        self, session: Session, spec: VariableSpec, actor: str, taken: set[str]
    ) -> tuple[VariableRecord, int]:
        # The record to register and the bytes charged once for it (constraints,
        # description); every limit checked, nothing changed.
        name = spec.name
        _check_name(name)
        if name in session.names or name in taken:
            raise AlreadyExistsError(f"variable {name!r} already exists in session {session.id!r}")
        if name in session.variables:
            raise AlreadyExistsError(
                f"variable name {name!r} already exists as the id of another variable"
            )
        _check_not_id_shaped(name)
        type_name, constraints, fixed = self._declared(name, spec.type, spec.constraints)
        value, value_size = self._validated(name, type_name, spec.initial_value, constraints)
        metadata, metadata_size = self._clean_metadata(
            name, spec.metadata, f"variable {name!r}: metadata"
        )
        fixed += self._description_size(name, spec.description)
        now = self._clock()
        record = VariableRecord(
            id=f"var_{name}_{self._backend.next_id()}",
            name=name,
            type=type_name,
            value=value,
            constraints=constraints,
            metadata=metadata,
            version=1,
            mod_revision=0,  # both stamped by _commit
            create_revision=0,
            created_at=now,
            updated_at=now,
            updated_by=actor,
            description=spec.description,
            size=value_size + metadata_size,
            metadata_size=metadata_size,
        )
        return record, fixed

    def _new_edges(
        self, session: Session, specs: Sequence[VariableSpec], prepared: list[VariableRecord]
    ) -> list[Edge]:
        limits = self.limits
        in_batch = {r.name: r.id for r in prepared} | {r.id: r.id for r in prepared}
        edges: dict[tuple[str, str], Edge] = {}
        for spec, record in zip(specs, prepared, strict=True):
            if not isinstance(spec.dependencies, list | tuple):
                raise InvalidValueError(
                    f"variable {spec.name!r}: dependencies must be a list of names or ids"
                )
            check_count(f"variable {spec.name!r}: the dependency list", len(spec.dependencies),
                        "max_batch_size", limits.max_batch_size)
            for ref in spec.dependencies:
                target = in_batch.get(ref) or self._access.resolve(session, ref).id
                edges[record.id, target] = Edge(record.id, target, "data", {}, ITEM_OVERHEAD)
        count = len(session.graph) + len(edges)
        if count > limits.max_dependencies_per_session:
            raise too_many(
                f"session {session.id!r} would hold {count} dependencies", count,
                "max_dependencies_per_session", limits.max_dependencies_per_session,
            )
        return list(edges.values())

    def _cycle_error(
        self, session: Session, exc: CycleError, names: Mapping[str, str] | None = None
    ) -> InvalidValueError:
        def name(var_id: str) -> str:
            record = session.variables.get(var_id)
            return record.name if record else (names or {}).get(var_id, var_id)

        cycle = " -> ".join(name(v) for v in exc.path)
        return InvalidValueError(f"dependency would create a cycle: {cycle}")
