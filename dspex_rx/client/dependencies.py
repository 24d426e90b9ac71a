"""Dependencies between variables from the client: add, remove, and walk them either way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dspex_rx.client.core import SessionCore
from dspex_rx.client.encoding import encode_metadata
from dspex_rx.errors import InvalidValueError
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import DEPENDENCY_FROM_PB, DEPENDENCY_TO_PB, type_from_pb


class Dependencies:
    """The session's dependency calls (``SessionContext`` delegates to them).

    Example: ``await dependencies.add_dependency("b", "a")`` returns True.
    """

    def __init__(self, core: SessionCore) -> None:
        self.core = core

    async def add_dependency(
        self,
        from_variable: str,
        to_variable: str,
        dependency_type: str = "data",
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record that ``from_variable`` depends on ``to_variable`` (``data``,
        ``constraint`` or ``optimization``). A dependency that would close a cycle raises
        ``ValueError`` naming it (``a -> b -> c -> a``); unknown variables raise
        ``KeyError``. When ``to_variable`` changes, watchers of ``from_variable`` get a
        ``dependency_changed`` update in the same frame.

        Example: ``await session.add_dependency("effective_temperature",
        "base_temperature")`` returns True.
        """
        if dependency_type not in DEPENDENCY_TO_PB:
            raise InvalidValueError(
                f"dependency_type must be one of {', '.join(DEPENDENCY_TO_PB)}, "
                f"got {dependency_type!r}"
            )
        await self.core.call(
            "AddDependency",
            pb.AddDependencyRequest(
                session_id=self.core.session_id,
                from_ref=from_variable,
                to_ref=to_variable,
                dependency_type=DEPENDENCY_TO_PB[dependency_type],  # type: ignore[arg-type]
                metadata=encode_metadata(from_variable, metadata),
            ),
            pb.AddDependencyResponse,
        )
        return True

    async def remove_dependency(self, from_variable: str, to_variable: str) -> bool:
        """Forget that ``from_variable`` depends on ``to_variable``; returns whether it did.

        Example: ``await session.remove_dependency("effective_temperature",
        "base_temperature")`` returns True.
        """
        response = await self.core.call(
            "RemoveDependency",
            pb.RemoveDependencyRequest(
                session_id=self.core.session_id, from_ref=from_variable, to_ref=to_variable
            ),
            pb.RemoveDependencyResponse,
        )
        return response.removed

    async def walk(
        self, variable: str, dependents: bool, transitive: bool
    ) -> list[dict[str, Any]]:
        """What ``variable`` depends on (with ``dependents``: what depends on it), nearest
        first, directly or (``transitive``) at any depth. Each entry: ``variable_id``,
        ``name``, ``type`` (the dependency's type, as in the spec: ``'data'``,
        ``'constraint'`` or ``'optimization'``), ``variable_type`` (the variable's own type,
        ``'float'``...), ``metadata`` (the dependency's), ``depth`` (1 = direct).

        Example: ``await session.get_dependencies("effective_temperature")`` walks it
        (``dependents=False``); ``session.get_dependents`` the other way.
        """
        response = await self.core.call(
            "GetDependencies",
            pb.GetDependenciesRequest(
                session_id=self.core.session_id, ref=variable, dependents=dependents,
                transitive=transitive,
            ),
            pb.GetDependenciesResponse,
        )
        return [
            {
                "variable_id": entry.variable_id,
                "name": entry.name,
                "type": DEPENDENCY_FROM_PB.get(entry.dependency_type, "data"),
                "variable_type": type_from_pb(entry.type),
                "metadata": codec.decode_map(entry.metadata),
                "depth": entry.depth,
            }
            for entry in response.entries
        ]
