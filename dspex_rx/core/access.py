"""Access rules: which other sessions may do what with a variable.

A variable's owner session (the one that registered it) may do everything with it. Any
other session has no right to it unless one of the variable's rules grants it. A rule is

    {"session_pattern": "admin_*",          # 'any', or an fnmatch glob of session ids
     "permissions": ["read", "observe"],    # of read, write, observe, optimize
     "conditions": {"expires_at": 1.9e9}}   # optional; the keys of CONDITIONS

and a session's rights are the union of the rules that match its id and whose
conditions hold. Conditions:

- ``not_before`` / ``expires_at`` (POSIX seconds, the server's clock): the rule applies
  only from ``not_before`` and before ``expires_at``.
- ``min_value`` / ``max_value`` (numbers; numeric variables only): the rule's ``write``
  grant covers only new values within these bounds (inclusive). Its other grants are
  unaffected.

Unknown keys, permissions or conditions, and values of the wrong type, are refused with
``InvalidValueError`` naming them. No gRPC here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dspex_rx.core.patterns import compile_glob
from dspex_rx.errors import InvalidValueError

PERMISSIONS = ("read", "write", "observe", "optimize")
RULE_KEYS = ("session_pattern", "permissions", "conditions")
TIME_CONDITIONS = ("not_before", "expires_at")
VALUE_CONDITIONS = ("min_value", "max_value")
CONDITIONS = TIME_CONDITIONS + VALUE_CONDITIONS
ANY_SESSION = "any"
MAX_RULES = 256
NUMERIC_TYPES = ("float", "integer")


@dataclass(frozen=True, slots=True)
class AccessRule:
    """One validated access rule.

    >>> rule = AccessRule("admin_*", ("read",))
    >>> rule.matches("admin_1"), rule.matches("guest")
    (True, False)
    """

    session_pattern: str
    permissions: tuple[str, ...]
    conditions: Mapping[str, float] = field(default_factory=dict)
    # The claim of the exact, unreserved id the rule names (identity.py): set by the store
    # when it accepts the rule, 0 for 'any', globs and reserved ids.
    claim: int = field(default=0, repr=False)

    def matches(self, session_id: str, claim: int = 0) -> bool:
        """Whether the rule names this session (``'any'`` names every session). A rule
        bound to a claim names only a session of that claim.

        >>> AccessRule("any", ("read",)).matches("whoever")
        True
        >>> AccessRule("bob", ("read",), claim=7).matches("bob", claim=8)
        False
        """
        if self.claim and claim != self.claim:
            return False
        # User patterns go through patterns.compile_glob (RE2, linear time, cached).
        return self.session_pattern == ANY_SESSION or compile_glob(self.session_pattern)(
            session_id
        )

    def active(self, now: float) -> bool:
        """Whether the rule's time conditions hold at ``now``.

        >>> AccessRule("any", ("read",), {"expires_at": 10.0}).active(11.0)
        False
        """
        before = self.conditions.get("not_before")
        expires = self.conditions.get("expires_at")
        return (before is None or now >= before) and (expires is None or now < expires)

    def allows_value(self, value: Any) -> bool:
        """Whether the rule's value bounds admit ``value`` (for its ``write`` grant).

        >>> AccessRule("any", ("write",), {"max_value": 1.0}).allows_value(2.0)
        False
        """
        low = self.conditions.get("min_value")
        high = self.conditions.get("max_value")
        if low is None and high is None:
            return True
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        return (low is None or value >= low) and (high is None or value <= high)

    def as_dict(self) -> dict[str, Any]:
        """The rule in the spec's shape.

        >>> AccessRule("any", ("read",)).as_dict()
        {'session_pattern': 'any', 'permissions': ['read'], 'conditions': {}}
        """
        return {
            "session_pattern": self.session_pattern,
            "permissions": list(self.permissions),
            "conditions": dict(self.conditions),
        }


def check_permission(permission: Any) -> str:
    """A permission name, or ``InvalidValueError``.

    >>> check_permission("read")
    'read'
    """
    if permission not in PERMISSIONS:
        raise InvalidValueError(
            f"unknown permission {permission!r} (one of {', '.join(PERMISSIONS)})"
        )
    return str(permission)


def _number(where: str, key: str, value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(
        value
    ):
        raise InvalidValueError(f"{where}: condition {key!r} must be a finite number, "
                                f"got {value!r}")
    return float(value)


def check_rules(name: str, type_name: str, rules: Any) -> tuple[AccessRule, ...]:
    """Validate a variable's access rules fully; returns them in a canonical form.

    >>> check_rules("t", "float", [{"session_pattern": "any", "permissions": ["read"]}])
    (AccessRule(session_pattern='any', permissions=('read',), conditions={}),)
    """
    if rules is None:
        return ()
    if isinstance(rules, str | bytes | Mapping) or not isinstance(rules, list | tuple):
        raise InvalidValueError(
            f"variable {name!r}: access_rules must be a list of rules, got {type(rules).__name__}"
        )
    if len(rules) > MAX_RULES:
        raise InvalidValueError(f"variable {name!r}: at most {MAX_RULES} access rules")
    out = []
    for index, rule in enumerate(rules):
        where = f"variable {name!r}: access rule {index}"
        if isinstance(rule, AccessRule):
            rule = {**rule.as_dict(), "claim": rule.claim}
        if not isinstance(rule, Mapping):
            raise InvalidValueError(f"{where} must be a mapping, got {type(rule).__name__}")
        # ``claim`` is the server's own binding (identity.py), carried by exports.
        unknown = sorted(map(str, set(rule) - set(RULE_KEYS) - {"claim"}))
        if unknown:
            raise InvalidValueError(
                f"{where} has unknown key(s) {', '.join(map(repr, unknown))} (allowed: "
                f"{', '.join(RULE_KEYS)})"
            )
        pattern = rule.get("session_pattern")
        if not isinstance(pattern, str) or not pattern or len(pattern) > 256:
            raise InvalidValueError(
                f"{where}: session_pattern must be 'any' or a glob of session ids "
                f"(a non-empty string), got {pattern!r}"
            )
        permissions = rule.get("permissions")
        if isinstance(permissions, str) or not isinstance(permissions, list | tuple) or not (
            permissions
        ):
            raise InvalidValueError(
                f"{where}: permissions must be a non-empty list of {', '.join(PERMISSIONS)}, "
                f"got {permissions!r}"
            )
        for permission in permissions:
            try:
                check_permission(permission)
            except InvalidValueError as exc:
                raise exc.prefixed(where) from None
        conditions = rule.get("conditions") or {}
        if not isinstance(conditions, Mapping):
            raise InvalidValueError(f"{where}: conditions must be a mapping, got {conditions!r}")
        unknown = sorted(map(str, set(conditions) - set(CONDITIONS)))
        if unknown:
            raise InvalidValueError(
                f"{where} has unknown condition(s) {', '.join(map(repr, unknown))} "
                f"(supported: {', '.join(CONDITIONS)})"
            )
        clean = {key: _number(where, key, conditions[key]) for key in CONDITIONS
                 if key in conditions}
        if any(key in clean for key in VALUE_CONDITIONS):
            if type_name not in NUMERIC_TYPES:
                raise InvalidValueError(
                    f"{where}: min_value/max_value bound writes of numeric variables only "
                    f"(this one is a {type_name})"
                )
            if "write" not in permissions:
                raise InvalidValueError(
                    f"{where}: min_value/max_value bound the rule's write grant, and it "
                    "grants no write"
                )
        for low, high in (("min_value", "max_value"), ("not_before", "expires_at")):
            if low in clean and high in clean and clean[low] > clean[high]:
                raise InvalidValueError(f"{where}: condition {low!r} is after {high!r}")
        claim = rule.get("claim", 0)
        if not isinstance(claim, int) or isinstance(claim, bool) or not 0 <= claim < 2**64:
            raise InvalidValueError(f"{where}: claim must be an unsigned 64-bit integer")
        ordered = tuple(p for p in PERMISSIONS if p in permissions)
        out.append(AccessRule(pattern, ordered, clean, claim))
    return tuple(out)
