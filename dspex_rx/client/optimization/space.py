"""The search space: the values an optimizer may propose for one variable,
mapped to and from the unit interval. Pure numpy; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dspex_rx.core.types import check_constraints, normalize_type
from dspex_rx.errors import InvalidValueError

_NUMERIC = ("float", "integer")
_DISCRETE = ("choice", "module", "boolean")


def _where(name: str) -> str:
    return f"variable {name!r}" if name else "search space"


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )



@dataclass(frozen=True)
class SearchSpace:
    """The values an optimizer may propose for one variable.

    Numeric spaces (``float``, ``integer``) are the closed range ``[low, high]``; discrete
    ones (``choice``, ``module``, ``boolean``) are the tuple ``choices``. Every value a space
    hands out is a builtin ``float``, ``int``, ``bool`` or an element of ``choices``, never a
    numpy scalar, because proposals go straight to the wire codec.

    >>> space = SearchSpace("integer", 1, 5)
    >>> space.from_unit(0.5), space.to_unit(5), space.contains(6)
    (3, 1.0, False)
    """

    type: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        where = _where(self.name)
        if self.type in _NUMERIC:
            if self.choices is not None:
                raise InvalidValueError(f"{where}: a {self.type} space takes no choices")
            if self.low is None or self.high is None:
                raise InvalidValueError(f"{where}: a {self.type} space needs low and high")
            low, high = self.low, self.high
            if self.type == "integer":
                if not all(isinstance(b, int | np.integer) and not isinstance(b, bool)
                           for b in (low, high)):
                    raise InvalidValueError(f"{where}: integer bounds must be integers")
                low, high = int(low), int(high)
            else:
                if not (_is_real(low) and _is_real(high)):
                    raise InvalidValueError(f"{where}: float bounds must be numbers")
                low, high = float(low), float(high)
                # An overflowing width would turn every unit mapping into inf or NaN.
                if not math.isfinite(high - low):
                    raise InvalidValueError(
                        f"{where}: bounds [{low!r}, {high!r}] must be finite with a finite width"
                    )
            if low > high:
                raise InvalidValueError(f"{where}: low {low!r} is greater than high {high!r}")
            object.__setattr__(self, "low", low)
            object.__setattr__(self, "high", high)
        elif self.type in _DISCRETE:
            if self.low is not None or self.high is not None:
                raise InvalidValueError(f"{where}: a {self.type} space takes no low/high")
            if self.type == "boolean":
                if self.choices is not None and tuple(self.choices) != (False, True):
                    raise InvalidValueError(f"{where}: boolean choices are (False, True)")
                object.__setattr__(self, "choices", (False, True))
            else:
                choices = tuple(self.choices or ())
                if not choices:
                    raise InvalidValueError(f"{where}: a {self.type} space needs choices")
                if len(set(choices)) != len(choices):
                    raise InvalidValueError(f"{where}: choices has duplicate entries")
                object.__setattr__(self, "choices", choices)
        else:
            raise InvalidValueError(
                f"{where} of type {self.type!r} cannot be optimized (optimizable types: "
                "float, integer, choice, module, boolean)"
            )

    # The bounds as plain floats for arithmetic; numeric spaces only.
    @property
    def _lo(self) -> float:
        return float(self.low)  # type: ignore[arg-type]

    @property
    def _hi(self) -> float:
        return float(self.high)  # type: ignore[arg-type]

    @property
    def _options(self) -> tuple[Any, ...]:
        return self.choices or ()

    @classmethod
    def from_variable(
        cls,
        name: str,
        type_name: str,
        constraints: Mapping[str, Any],
        config: Mapping[str, Any] | None = None,
    ) -> SearchSpace:
        """The space of a registered variable: its constraints, narrowed by
        ``config['bounds'] = (low, high)`` for numbers.

        Raises ``ValueError`` naming the variable when the type cannot be optimized
        (string, list, dict, embedding, tensor), a number has no finite min/max and no
        bounds, the bounds leave the constraints, or a choice/module has no choices.

        >>> SearchSpace.from_variable("t", "float", {"min": 0.0, "max": 2.0},
        ...                           {"bounds": (0.5, 1.5)})
        SearchSpace(type='float', low=0.5, high=1.5, choices=None, name='t')
        """
        try:
            canonical = normalize_type(type_name)
        except (TypeError, ValueError):
            canonical = ""
        if canonical not in _NUMERIC + _DISCRETE:
            raise InvalidValueError(
                f"variable {name!r} of type {type_name!r} cannot be optimized (optimizable "
                "types: float, integer, choice, module, boolean)"
            )
        clean = check_constraints(name, canonical, constraints)
        bounds = (config or {}).get("bounds")
        if canonical in _DISCRETE:
            if bounds is not None:
                raise InvalidValueError(
                    f"variable {name!r}: optimizer_config['bounds'] applies to float and "
                    f"integer variables, not {canonical}"
                )
            if canonical == "boolean":
                return cls("boolean", name=name)
            choices = clean.get("choices") or []
            if canonical == "module":
                # validate_value refuses an empty module name, so never propose one.
                choices = [c for c in choices if c]
            if not choices:
                raise InvalidValueError(
                    f"variable {name!r}: a {canonical} variable needs a non-empty 'choices' "
                    "constraint to be optimized"
                )
            return cls(canonical, choices=tuple(choices), name=name)

        low: float | int | None = clean.get("min")
        high: float | int | None = clean.get("max")
        if bounds is not None:
            low, high = cls._narrow(name, canonical, bounds, low, high)
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            raise InvalidValueError(
                f"variable {name!r} needs min and max constraints or "
                "optimizer_config['bounds'] to be optimized"
            )
        if canonical == "float":
            return cls("float", float(low), float(high), name=name)
        return cls("integer", int(low), int(high), name=name)

    @staticmethod
    def _narrow(
        name: str, type_name: str, bounds: Any, low: float | int | None, high: float | int | None
    ) -> tuple[float | int, float | int]:
        if (
            isinstance(bounds, str | bytes)
            or not isinstance(bounds, Sequence)
            or len(bounds) != 2
            or not all(_is_real(b) and math.isfinite(b) for b in bounds)
        ):
            raise InvalidValueError(
                f"variable {name!r}: optimizer_config['bounds'] must be (low, high), two "
                f"finite numbers; got {bounds!r}"
            )
        lo, hi = float(bounds[0]), float(bounds[1])
        if lo > hi:
            raise InvalidValueError(
                f"variable {name!r}: optimizer_config['bounds'] low {lo!r} is greater than "
                f"high {hi!r}"
            )
        if (low is not None and lo < low) or (high is not None and hi > high):
            raise InvalidValueError(
                f"variable {name!r}: optimizer_config['bounds'] ({lo!r}, {hi!r}) must lie "
                f"inside the constraints min {low!r} and max {high!r}"
            )
        if type_name == "integer":
            ilo, ihi = math.ceil(lo), math.floor(hi)
            if ilo > ihi:
                raise InvalidValueError(
                    f"variable {name!r}: optimizer_config['bounds'] ({lo!r}, {hi!r}) hold no "
                    "integer"
                )
            return ilo, ihi
        return lo, hi

    @property
    def is_numeric(self) -> bool:
        """True for ``float`` and ``integer`` spaces.

        >>> SearchSpace("boolean").is_numeric
        False
        """
        return self.type in _NUMERIC

    @property
    def size(self) -> int | None:
        """How many distinct values the space holds; ``None`` for a float range.

        >>> SearchSpace("integer", -2, 2).size, SearchSpace("float", 0.0, 1.0).size
        (5, None)
        """
        if self.type == "float":
            return None
        if self.type == "integer":
            return int(self.high) - int(self.low) + 1  # type: ignore[arg-type]
        return len(self._options)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is valid here, with the strictness of ``validate_value``
        (``True`` is not an integer, ``1.0`` is not an integer, ``1`` is a float).

        >>> SearchSpace("integer", 0, 3).contains(2), SearchSpace("integer", 0, 3).contains(2.0)
        (True, False)
        """
        if self.type == "float":
            return (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and self._lo <= value <= self._hi
            )
        if self.type == "integer":
            return (
                isinstance(value, int)
                and not isinstance(value, bool)
                and self._lo <= value <= self._hi
            )
        return self._index(value) is not None

    def _index(self, value: Any) -> int | None:
        # Type and value must both match, so that 1 never stands in for True.
        for i, choice in enumerate(self._options):
            if type(choice) is type(value) and choice == value:
                return i
        return None

    def coerce(self, value: Any) -> Any:
        """``value`` as the builtin this space hands out (numpy scalars and integral floats
        accepted for integers), or ``ValueError`` when it is not in the space.

        >>> SearchSpace("integer", 0, 3).coerce(2.0), SearchSpace("float", 0, 3).coerce(1)
        (2, 1.0)
        """
        where = _where(self.name)
        if self.type == "float":
            if _is_real(value) and math.isfinite(value) and self._lo <= value <= self._hi:
                return float(value)
        elif self.type == "integer":
            if _is_real(value) and math.isfinite(value) and float(value).is_integer():
                number = int(value)
                if self._lo <= number <= self._hi:
                    return number
        else:
            index = self._index(value)
            if index is None and isinstance(value, np.bool_ | np.str_):
                index = self._index(value.item())
            if index is not None:
                return self._options[index]
        raise InvalidValueError(f"{where}: {value!r} is not in the search space {self._text()}")

    def _text(self) -> str:
        if self.is_numeric:
            return f"{self.type} [{self.low!r}, {self.high!r}]"
        return f"{self.type} {list(self._options)!r}"

    def clip(self, value: Any) -> Any:
        """The nearest valid value: numbers clipped into ``[low, high]`` (integers rounded,
        half away from the low end); a discrete value must already be a member.

        >>> SearchSpace("integer", 0, 10).clip(11.7), SearchSpace("float", 0, 1).clip(-3)
        (10, 0.0)
        """
        if self.is_numeric:
            if not _is_real(value) or math.isnan(value):
                raise InvalidValueError(f"{_where(self.name)}: cannot clip {value!r}")
            x = min(max(float(value), self._lo), self._hi)
            if self.type == "float":
                return x
            return self._round(x)
        return self.coerce(value)

    def _round(self, x: float) -> int:
        # floor(x + 0.5) rather than round(): banker's rounding would make 0.5 and 1.5
        # land on the same side differently and break evenly spaced integer grids.
        number = math.floor(x + 0.5)
        return int(min(max(number, int(self._lo)), int(self._hi)))

    def to_unit(self, value: Any) -> float:
        """The position of ``value`` in ``[0, 1]``: linear over ``[low, high]`` for numbers,
        the choice's index spread over ``[0, 1]`` for discrete spaces.

        >>> SearchSpace("float", 0.0, 2.0).to_unit(0.5)
        0.25
        """
        if self.is_numeric:
            if not _is_real(value):
                raise InvalidValueError(f"{_where(self.name)}: {value!r} is not a number")
            width = self._hi - self._lo
            return 0.0 if width == 0 else (float(value) - self._lo) / width
        index = self._index(self.coerce(value))
        count = len(self._options)
        return 0.0 if count == 1 else float(index or 0) / (count - 1)

    def from_unit(self, u: float) -> Any:
        """The value at position ``u`` (clipped into ``[0, 1]``); the inverse of ``to_unit``.

        >>> SearchSpace("float", 0.0, 2.0).from_unit(0.25), SearchSpace("boolean").from_unit(1)
        (0.5, True)
        """
        if not _is_real(u) or math.isnan(u):
            raise InvalidValueError(f"{_where(self.name)}: unit position {u!r} is not a number")
        u = min(max(float(u), 0.0), 1.0)
        if self.is_numeric:
            x = self._lo + u * (self._hi - self._lo)
            if self.type == "float":
                return min(max(x, self._lo), self._hi)
            return self._round(x)
        count = len(self._options)
        return self._options[min(math.floor(u * (count - 1) + 0.5), count - 1)]

    def sample(self, rng: np.random.Generator) -> Any:
        """A uniformly drawn valid value.

        >>> SearchSpace("choice", choices=("a", "b")).sample(np.random.default_rng(0))
        'b'
        """
        if self.type == "float":
            return min(float(rng.uniform(self._lo, self._hi)), self._hi)
        if self.type == "integer":
            return int(rng.integers(int(self._lo), int(self._hi), endpoint=True))
        return self._options[int(rng.integers(len(self._options)))]
