"""Who may do what: the Access component locates variables for callers and binds access rules
to the parties (claims) they name.

A caller's own variables are found by id or name; another session's by id only, under its
owner's rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from dspex_rx.core.access import ANY_SESSION, TIME_CONDITIONS, AccessRule, check_rules
from dspex_rx.core.identity import Principals, RetiredIds, is_glob
from dspex_rx.errors import AccessDeniedError, InvalidValueError, VariableNotFoundError
from dspex_rx.store.backend import Backend
from dspex_rx.store.checks import _show
from dspex_rx.store.records import VariableRecord
from dspex_rx.store.state import Session


class Access:
    """Who may do what with a variable, by the owner's access rules, and who a rule names.

    It reads the sessions the backend holds and the retired ids' claims; it changes
    nothing. ``identity_checked`` off (a server that checks no tokens) leaves rules
    unbound to claims, since there no id is anyone's.

    >>> from dspex_rx.core.identity import Principals, RetiredIds
    >>> from dspex_rx.store.memory import MemoryBackend
    >>> access = Access(MemoryBackend(), lambda: 0.0, Principals(None), RetiredIds(10))
    >>> access.claimed("bob"), access.owner("var_t_1")
    (False, None)
    """

    def __init__(
        self,
        backend: Backend,
        clock: Callable[[], float],
        principals: Principals,
        retired: RetiredIds,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self.principals = principals
        self._retired = retired
        self.identity_checked = True

    def owner(self, var_id: str) -> str | None:
        """The session that owns a variable id (ids are addressed across sessions).

        Example: ``store.owner_of("var_t_1")`` delegates here.
        """
        return self._backend.read().owner(var_id)

    def claimed(self, session_id: str) -> bool:
        """Whether the id is live, or retired and still claimed by its last token.

        Example: ``store.claimed("bob")`` delegates here.
        """
        return session_id in self._backend.sessions or self._retired.claims(session_id)

    def claim_of(self, session_id: str) -> int:
        """The claim number of a live or retired id (0: nobody's).

        Example: ``store.claim_of("bob")`` delegates here.
        """
        session = self._backend.sessions.get(session_id)
        return session.claim if session is not None else self._retired.claim_of(session_id)

    def checked_rules(
        self, name: str, type_name: str, rules: Any
    ) -> tuple[AccessRule, ...]:
        """Rules checked for shape (core.access) and bound to the parties they name.

        Example: ``access.checked_rules("t", "float", rules)`` returns the bound rules, or raises.
        """
        return self.bind_rules(name, check_rules(name, type_name, rules))

    def bind_rules(
        self, name: str, clean: tuple[AccessRule, ...]
    ) -> tuple[AccessRule, ...]:
        """Each rule checked to name who the owner means, exact ids bound to their claims.

        Example: ``access.bind_rules("t", rules)`` refuses a glob outside reserved namespaces.
        """
        # check_rules is the shape; here, whether each rule names who the owner means, and
        # each exact unreserved id bound to its claim (a rule from an export must find the
        # claim it was written for).
        if not self.identity_checked:
            return tuple(dataclasses.replace(rule, claim=0) for rule in clean)
        out = []
        for index, rule in enumerate(clean):
            pattern = rule.session_pattern
            where = f"variable {name!r}: access rule {index}: session_pattern {pattern!r}"
            if pattern == ANY_SESSION or self.principals.covers(pattern):
                if rule.claim:
                    # Bound to an ordinary id's claim where it was written (another
                    # server, or before the namespace was reserved): here a principal
                    # holds it, another party.
                    raise InvalidValueError(
                        f"{where} was written for the party that held an ordinary id, and "
                        "another party holds it now (here it is 'any' or reserved for a "
                        "principal); rewrite the rule to grant the session you mean"
                    )
                out.append(rule)
                continue
            if is_glob(pattern):
                raise InvalidValueError(
                    f"{where} is a glob over ids anyone may create, so it would grant "
                    "whoever names a session to match; a glob must lie in a namespace "
                    f"reserved on the server ({self._reserved()}), or use 'any' to mean "
                    "every session"
                )
            claim = self.claim_of(pattern)
            if not claim:
                raise InvalidValueError(
                    f"{where} names no session this server knows, so whoever creates it "
                    "first would get the grant; name a session that exists or has "
                    f"existed, an id reserved on the server ({self._reserved()}), or 'any'"
                )
            if rule.claim and rule.claim != claim:
                raise InvalidValueError(
                    f"{where} was written for the party that held that id then (on this "
                    "server or another), and another party holds it now; rewrite the rule "
                    "to grant the session you mean"
                )
            out.append(dataclasses.replace(rule, claim=claim))
        return tuple(out)

    def _reserved(self) -> str:
        if not self.principals:
            return "this server reserves none: see principals / --principals"
        return "reserved: " + ", ".join(repr(ns.pattern) for ns in self.principals.namespaces)

    def resolve(self, session: Session, ref: str) -> VariableRecord:
        """A variable of ``session`` itself, by id or name (never another session's).

        Example: ``access.resolve(store.session(sid), "t")`` returns its record.
        """
        if not isinstance(ref, str) or not ref:
            raise InvalidValueError("a variable name or id is required")
        record = session.variables.get(ref)
        if record is None:
            var_id = session.names.get(ref)
            record = session.variables.get(var_id) if var_id else None
        if record is None:
            owner = self.owner(ref)
            if owner is not None and owner != session.id and isinstance(ref, str):
                # Another session's variable, which needs a permission: callers that may
                # act on foreign variables go through locate.
                foreign = self._backend.sessions[owner]
                if self.rights(session.id, foreign, ref):
                    raise InvalidValueError(
                        f"variable {ref!r} belongs to session {owner!r}: this operation "
                        f"works on variables of session {session.id!r} only"
                    )
            raise VariableNotFoundError(f"no variable {_show(ref)} in session {session.id!r}")
        return record

    def rights(self, caller_id: str, owner: Session, var_id: str) -> set[str]:
        """What a non-owner may do: the union of the matching rules whose time holds.

        Example: ``access.rights("guest_1", store.session("s"), "var_t_1")`` returns {"read"}.
        """
        # What a non-owner may do: the union of the matching rules whose time holds.
        caller = self._backend.sessions.get(caller_id)
        claim = caller.claim if caller is not None else 0
        return {p for r in self._live_rules(caller_id, claim, owner, var_id)
                for p in r.permissions}

    def _live_rules(
        self, caller_id: str, claim: int, owner: Session, var_id: str
    ) -> list[AccessRule]:
        # The rules of ``owner``'s variable that name this caller and hold now.
        rules = owner.rules.get(var_id)
        if not rules:
            return []
        now = self._clock()
        return [r for r in rules if r.matches(caller_id, claim) and r.active(now)]

    def locate(
        self, caller: Session, ref: str, need: str, value: Any = None, check_value: bool = False
    ) -> tuple[Session, VariableRecord]:
        """The owner session and record of ``ref`` for a caller that needs ``need``.

        The caller's own variables (by id or name) come first and allow everything.
        Another session's variable is found by id only; a caller with no permission at
        all on it gets the same ``VariableNotFoundError`` as for a missing variable (it
        cannot learn the variable exists), one with some permission but not ``need``
        gets ``AccessDeniedError``. ``need`` is a permission or ``"owner"`` (delete,
        permissions, dependencies). With ``check_value`` a write must also be within
        the value bounds of a rule that grants it.

        Example: ``store.lookup("guest_1", "var_t_1", "read")`` is ``locate(...)[1]``.
        """
        if not isinstance(ref, str) or not ref:
            raise InvalidValueError("a variable name or id is required")
        record = caller.variables.get(ref)
        if record is None:
            var_id = caller.names.get(ref)
            record = caller.variables.get(var_id) if var_id else None
        if record is not None:
            return caller, record
        owner_id = self.owner(ref)
        owner = self._backend.sessions.get(owner_id) if owner_id else None
        # One reading of the rules (and the clock) serves the rights and the write bounds.
        live = self._live_rules(caller.id, caller.claim, owner, ref) if owner is not None else []
        granted = {p for r in live for p in r.permissions}
        if owner is None or owner is caller or not granted:
            raise VariableNotFoundError(f"no variable {_show(ref)} in session {caller.id!r}")
        record = owner.variables[ref]
        if need == "owner":
            raise AccessDeniedError(
                f"variable {ref!r} ({record.name!r}) belongs to session {owner.id!r}; only "
                f"its owner may do this (session {caller.id!r} may "
                f"{', '.join(sorted(granted))})",
                variable=ref, permission="owner",
            )
        if need not in granted:
            raise AccessDeniedError(
                f"session {caller.id!r} has no {need!r} permission on variable {ref!r} "
                f"({record.name!r}, owned by session {owner.id!r})",
                variable=ref, permission=need,
            )
        if check_value and need == "write":
            rules = [r for r in live if "write" in r.permissions]
            if not any(r.allows_value(value) for r in rules):
                bounds = "; ".join(
                    f"{r.conditions.get('min_value', '-inf')}.."
                    f"{r.conditions.get('max_value', 'inf')}"
                    for r in rules
                )
                raise AccessDeniedError(
                    f"session {caller.id!r} may write variable {ref!r} ({record.name!r}) "
                    f"only within the bounds of its rule(s) ({bounds}), not {value!r}",
                    variable=ref, permission=need,
                )
        return owner, record

    def may(self, session_id: str, var_id: str, permission: str) -> bool:
        """Whether a session may use ``permission`` on a variable, by id.

        Example: ``store.may("guest_1", "var_t_1", "observe")`` delegates here.
        """
        owner_id = self.owner(var_id)
        owner = self._backend.sessions.get(owner_id) if owner_id else None
        if owner is None or var_id not in owner.variables:
            return False
        if owner.id == session_id:
            return True
        return permission in self.rights(session_id, owner, var_id)

    def timed_rules(self, session_id: str, var_id: str) -> bool:
        """Whether a rule naming ``session_id`` on the variable has a time condition.

        Example: ``store.timed_rules("guest_1", "var_t_1")`` delegates here.
        """
        owner = self._backend.sessions.get(self.owner(var_id) or "")
        rules = owner.rules.get(var_id, ()) if owner is not None else ()
        claim = self.claim_of(session_id)
        return any(r.matches(session_id, claim)
                   and any(k in r.conditions for k in TIME_CONDITIONS)
                   for r in rules)

