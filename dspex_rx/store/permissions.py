"""The store's access methods (a part of the engine's chain): what a session may do with a
variable, answered by the Access component.
"""

from __future__ import annotations

from dspex_rx.core.access import AccessRule, check_permission
from dspex_rx.errors import AccessDeniedError, VariableNotFoundError
from dspex_rx.store.base import StoreBase
from dspex_rx.store.records import VariableRecord


class AccessMethods(StoreBase):
    """The store's access queries, delegated to its Access component.

    Example: ``store.check_access("guest_1", "var_t_1", "read")`` answers without disclosing.
    """

    def claimed(self, session_id: str) -> bool:
        """Whether the id is live, or retired and still claimed by its last session's token.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> _ = store.initialize_session("bob")
        >>> store.claimed("bob"), store.claimed("carol")
        (True, False)
        """
        return self._access.claimed(session_id)

    def claim_of(self, session_id: str) -> int:
        """The claim number of a live or retired id (0: nobody's), see ``identity.py``.

        Example: ``store.claim_of("bob")``
        returns the claim number of ``bob`` (0 for an id nobody holds).
        """
        return self._access.claim_of(session_id)

    def may(self, session_id: str, var_id: str, permission: str) -> bool:
        """Whether a session may use ``permission`` on a variable, by id (False when the
        variable is gone). Used to re-check a live watch.

        Example: ``store.may("guest_1", "var_t_1", "observe")``
        tells whether guest_1 may still watch the variable.
        """
        return self._access.may(session_id, var_id, permission)

    def lookup(self, session_id: str, ref: str, permission: str) -> VariableRecord:
        """The record of ``ref`` if the session may use ``permission`` on it (``KeyError``
        if it cannot see it, ``AccessDeniedError`` if it lacks the permission).

        Example: ``store.lookup("guest_1", "var_t_1", "optimize")``
        returns the record guest_1 may optimize.
        """
        return self._access.locate(self.session(session_id), ref, permission)[1]

    def timed_rules(self, session_id: str, var_id: str) -> bool:
        """Whether a rule of another session's variable that names ``session_id`` has a
        time condition (so its rights may have changed without a permissions commit).

        Example: ``store.timed_rules("guest_1", "var_t_1")``
        is True when a rule granting guest_1 has a time window.
        """
        return self._access.timed_rules(session_id, var_id)

    def owner_of(self, var_id: str) -> str | None:
        """The id of the session that owns a variable, or None.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> store.owner_of(store.get("s", "t").id), store.owner_of("var_nope_9")
        ('s', None)
        """
        return self._access.owner(var_id)

    def check_access(self, session_id: str, ref: str, permission: str) -> bool:
        """Whether the session may use ``permission`` on the variable: ``False`` for a
        missing permission and for a variable it cannot see at all (the spec: "True if
        access granted, False otherwise"; an unknown variable answers the same, so the
        answer reveals nothing). An unknown permission name raises ``ValueError``.

        >>> from dspex_rx.store import MemoryStore, VariableSpec
        >>> store = MemoryStore()
        >>> session, client_id, created = store.initialize_session("s")
        >>> _ = store.register("s", [VariableSpec("t", "float", 0.7)], actor="me")
        >>> _ = store.initialize_session("guest")
        >>> var_id = store.get("s", "t").id
        >>> store.check_access("s", "t", "write"), store.check_access("guest", var_id, "read")
        (True, False)
        """
        check_permission(permission)
        caller = self.session(session_id)
        try:
            self._access.locate(caller, ref, permission)
        except (AccessDeniedError, VariableNotFoundError):
            return False
        return True

    def visible(self, session_id: str, ref: str) -> bool:
        """Whether the session can see the variable at all (its own, or another's it has
        some permission on).

        Example: ``store.visible("guest_1", "var_t_1")``
        is False unless guest_1 has some permission on it.
        """
        try:
            self._access.locate(self.session(session_id), ref, "read")
        except AccessDeniedError:
            return True
        except VariableNotFoundError:
            return False
        return True

    def rules(self, session_id: str, ref: str) -> tuple[AccessRule, ...]:
        """A variable's access rules (its owner only).

        Example: ``store.rules(sid, "temperature")`` returns the variable's ``AccessRule`` tuple.
        """
        owner, record = self._access.locate(self.session(session_id), ref, "owner")
        return owner.rules.get(record.id, ())
