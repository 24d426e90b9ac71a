"""The dependency graph's API: add and remove edges (acyclic, counted, charged) and walk it.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

from dspex_rx.core.graph import DEPENDENCY_TYPES, CycleError, Edge
from dspex_rx.core.limits import too_many
from dspex_rx.errors import InvalidValueError
from dspex_rx.store.records import ITEM_OVERHEAD, VariableRecord
from dspex_rx.store.variables import Variables


class Dependencies(Variables):
    """The engine's dependency part.

    Example: ``store.add_dependency(sid, "eff", "base")`` returns the new revision.
    """

    def add_dependency(
        self,
        session_id: str,
        from_ref: str,
        to_ref: str,
        dependency_type: str = "data",
        metadata: Mapping[str, Any] | None = None,
        actor: str = "",
    ) -> int:
        """Record that ``from_ref`` depends on ``to_ref``; returns the new revision.

        A dependency that would close a cycle raises ``ValueError`` naming it
        (``a -> b -> a``); unknown variables raise ``KeyError``.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> specs = [VariableSpec("base", "float", 0.5), VariableSpec("eff", "float", 0.5)]
        >>> _ = store.register("s", specs, actor="me")
        >>> store.add_dependency("s", "eff", "base")
        2
        >>> [r.name for r, _, _ in store.dependencies("s", "eff")]
        ['base']
        """
        session = self.session(session_id)
        dependent = self._access.resolve(session, from_ref)
        dependency = self._access.resolve(session, to_ref)
        if dependency_type not in DEPENDENCY_TYPES:
            raise InvalidValueError(
                f"dependency type must be one of {', '.join(DEPENDENCY_TYPES)}, "
                f"got {dependency_type!r}"
            )
        clean, size = self._clean_metadata(
            dependent.name, metadata, f"variable {dependent.name!r}: dependency metadata"
        )
        edge = Edge(dependent.id, dependency.id, dependency_type, clean, ITEM_OVERHEAD + size)
        existing = session.graph.edge(dependent.id, dependency.id)
        if existing is None and len(session.graph) >= self.limits.max_dependencies_per_session:
            raise too_many(
                f"session {session.id!r} already holds {len(session.graph)} dependencies",
                len(session.graph) + 1, "max_dependencies_per_session",
                self.limits.max_dependencies_per_session,
            )
        self._accounts.check_room(session, edge.size - (existing.size if existing else 0))
        if existing == edge:
            return session.revision  # already there, unchanged: nothing was written
        if existing is None:
            back = session.graph.path(dependency.id, dependent.id)
            if back is not None:
                raise self._cycle_error(session, CycleError([dependent.id, *back])) from None
        return self._commit(session, (), source=actor, edges=[edge])[1]

    def remove_dependency(
        self, session_id: str, from_ref: str, to_ref: str, actor: str = ""
    ) -> tuple[bool, int]:
        """Forget that ``from_ref`` depends on ``to_ref``; returns (existed, revision).

        Example: ``store.remove_dependency(sid, "eff", "base")``
        returns ``(True, revision)`` when the edge existed.
        """
        session = self.session(session_id)
        dependent = self._access.resolve(session, from_ref)
        dependency = self._access.resolve(session, to_ref)
        if session.graph.edge(dependent.id, dependency.id) is None:
            return False, session.revision
        unlinked = [(dependent.id, dependency.id)]
        return True, self._commit(session, (), source=actor, unlinked=unlinked)[1]

    def dependencies(
        self, session_id: str, ref: str, *, dependents: bool = False, transitive: bool = False
    ) -> builtins.list[tuple[VariableRecord, int, Edge]]:
        """What ``ref`` depends on (or, with ``dependents``, what depends on it):
        (record, depth, the edge that reached it), nearest first.

        Example: ``store.dependencies(sid, "eff", transitive=True)``
        lists (record, depth, edge), nearest first.
        """
        caller = self.session(session_id)
        session, record = self._access.locate(caller, ref, "read")
        walk = session.graph.dependents if dependents else session.graph.dependencies
        # Of another session's graph, only the variables the caller may read are shown.
        return [
            (session.variables[var_id], depth, edge)
            for var_id, depth, edge in walk(record.id, transitive)
            if session is caller or self.may(caller.id, var_id, "read")
        ]
