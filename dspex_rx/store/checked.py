"""Values checked ahead of their write: ``check_ahead`` validates and measures a value
with no store state (so a server may run it off its loop, on a worker thread), and the
``Checked`` it returns stands in for the value in a store call, which then skips the work.

The store stays single-threaded: only this pure step moves. The store uses a ``Checked``
only if it was made for what the write meets (the variable's name, type, constraints and
the store's limits); otherwise it validates the raw value itself, as for any value. A
refusal is kept and raised where the store would have validated, so a write refused for
another reason first (a lease, a version) answers with that reason, as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dspex_rx.core.limits import Limits, measure_value, too_big
from dspex_rx.core.types import keep_origin, validate_value
from dspex_rx.errors import DspexError


def validated(
    name: str, type_name: str, value: Any, constraints: Mapping[str, Any], limits: Limits
) -> tuple[Any, int]:
    """The value to store and its encoded size, every rule and limit checked.

    Validation recurses through what it was given: a structure deeper than Python's stack
    (only an in-process caller can make one; protobuf stops the wire's at ~48 levels) is
    refused as too deep.

    >>> from dspex_rx.core.limits import DEFAULT_LIMITS
    >>> validated("t", "float", 1, {"max": 2.0}, DEFAULT_LIMITS)
    (1.0, 9)
    """
    where = f"variable {name!r}: value"
    try:
        clean = keep_origin(value, validate_value(name, type_name, value, constraints))
    except RecursionError:
        raise too_big(f"{where} nests too deep to validate", 0, "max_depth",
                      limits.max_depth) from None
    return clean, measure_value(clean, limits, where)


class Checked:
    """A value validated ahead of its write, for a given variable name, type, constraints
    and limits: the raw value (what access rules' bounds and answers compare with), and
    the clean value and size, or the refusal.

    >>> from dspex_rx.core.limits import DEFAULT_LIMITS
    >>> ahead = check_ahead("t", "float", 1, {}, DEFAULT_LIMITS)
    >>> ahead.raw, ahead.result(), ahead.fits("t", "float", {}, DEFAULT_LIMITS)
    (1, (1.0, 9), True)
    """

    __slots__ = ("clean", "constraints", "error", "limits", "name", "raw", "size", "type_name")

    def __init__(
        self, raw: Any, name: str, type_name: str, constraints: Mapping[str, Any],
        limits: Limits,
    ) -> None:
        self.raw = raw
        self.name = name
        self.type_name = type_name
        self.constraints = constraints
        self.limits = limits
        self.clean: Any = None
        self.size = 0
        self.error: DspexError | ValueError | TypeError | KeyError | None = None

    def fits(
        self, name: str, type_name: str, constraints: Mapping[str, Any], limits: Limits
    ) -> bool:
        """Whether this check is the one a write of ``name`` would make now.

        >>> from dspex_rx.core.limits import DEFAULT_LIMITS
        >>> check_ahead("t", "float", 1, {}, DEFAULT_LIMITS).fits("t", "int", {}, DEFAULT_LIMITS)
        False
        """
        return (
            name == self.name
            and type_name == self.type_name
            and (limits is self.limits or limits == self.limits)
            and (constraints is self.constraints or constraints == self.constraints)
        )

    def result(self) -> tuple[Any, int]:
        """The clean value and its size, or the refusal raised.

        >>> from dspex_rx.core.limits import DEFAULT_LIMITS
        >>> check_ahead("t", "float", "x", {}, DEFAULT_LIMITS).result()
        Traceback (most recent call last):
        ...
        dspex_rx.errors.VariableTypeError: variable 't': expected float, got str 'x'
        """
        if self.error is not None:
            raise self.error
        return self.clean, self.size


def check_ahead(
    name: str, type_name: str, value: Any, constraints: Mapping[str, Any], limits: Limits
) -> Checked:
    """Validate and measure ``value`` for a write of variable ``name``; a refusal is kept
    in the result, not raised. Pure: safe on any thread.

    >>> from dspex_rx.core.limits import DEFAULT_LIMITS
    >>> check_ahead("t", "list", [1, 2], {"max_length": 1}, DEFAULT_LIMITS).error is not None
    True
    """
    checked = Checked(value, name, type_name, constraints, limits)
    try:
        checked.clean, checked.size = validated(name, type_name, value, constraints, limits)
    except (DspexError, ValueError, TypeError, KeyError) as exc:
        checked.error = exc
    return checked


def raw_value(value: Any) -> Any:
    """The value as sent: a ``Checked``'s raw value, anything else itself.

    >>> from dspex_rx.core.limits import DEFAULT_LIMITS
    >>> raw_value(check_ahead("t", "integer", 3, {}, DEFAULT_LIMITS)), raw_value(4)
    (3, 4)
    """
    return value.raw if isinstance(value, Checked) else value
