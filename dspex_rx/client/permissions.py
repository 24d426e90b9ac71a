"""A variable's access rules from the client: set them, read them, check one permission."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dspex_rx.client.core import SessionCore
from dspex_rx.client.encoding import encode_rules
from dspex_rx.errors import AccessDeniedError
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec


class Permissions:
    """The session's access-rule calls (``SessionContext`` delegates to them).

    Example: ``await permissions.check_variable_access("t", "write")`` returns a bool.
    """

    def __init__(self, core: SessionCore) -> None:
        self.core = core

    async def set_variable_permissions(
        self, variable: str, rules: Sequence[Mapping[str, Any]]
    ) -> int:
        """Replace a variable's access rules; only its owner session may. Returns the
        revision. A session watching it that loses ``observe`` has that watch ended with
        ``PermissionError``. A rule names ``'any'``, a session the server knows, or a glob
        inside a namespace it reserves (``--principals``); else ``ValueError``.

        Example: ``await session.set_variable_permissions("temperature", [{"session_pattern":
        "admin_*", "permissions": ["read", "write"]}])`` returns the revision.
        """
        response = await self.core.call(
            "SetVariablePermissions",
            pb.SetVariablePermissionsRequest(
                session_id=self.core.session_id, ref=variable,
                rules=encode_rules(variable, rules) if rules else [],
            ),
            pb.SetVariablePermissionsResponse,
        )
        return response.revision

    async def check_variable_access(self, variable: str, permission: str) -> bool:
        """Whether this session may use ``permission`` (``read``, ``write``, ``observe``,
        ``optimize``) on a variable: its own (always) or another session's, by id.
        ``False`` for a missing permission and for a variable it cannot see at all (one
        that does not exist looks the same, as everywhere); an unknown permission name
        raises ``ValueError``.

        Example: ``await session.check_variable_access("var_temperature_3", "write")`` is a
        bool.
        """
        response = await self.core.call(
            "CheckVariableAccess",
            pb.CheckVariableAccessRequest(
                session_id=self.core.session_id, ref=variable, permission=permission
            ),
            pb.CheckVariableAccessResponse,
        )
        return response.allowed

    async def get_variable_permissions(self, variable: str) -> list[dict[str, Any]]:
        """A variable's access rules as the spec's dicts (its owner session only sees them).

        Example: ``await session.get_variable_permissions("temperature")`` returns the rules.
        """
        response = await self.core.call(
            "GetVariable",
            pb.GetVariableRequest(session_id=self.core.session_id, ref=variable),
            pb.GetVariableResponse,
        )
        if response.variable.owner_session not in ("", self.core.session_id):
            raise AccessDeniedError(
                f"variable {variable!r} belongs to session "
                f"{response.variable.owner_session!r}; only its owner sees its rules"
            )
        return [
            {"session_pattern": r.session_pattern, "permissions": list(r.permissions),
             "conditions": codec.decode_map(r.conditions)}
            for r in response.variable.access_rules
        ]
