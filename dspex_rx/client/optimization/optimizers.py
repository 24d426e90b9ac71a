"""Optimizer algorithms for tuning one variable: the search space, the ask/tell protocol, the
built-ins (grid, random, Bayesian, gradient) and their registry. Pure numpy; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from dspex_rx.core.types import check_constraints, normalize_type
from dspex_rx.errors import InvalidValueError

__all__ = [
    "RUNNER_CONFIG_KEYS",
    "BaseOptimizer",
    "BayesianOptimizer",
    "GradientOptimizer",
    "GridSearch",
    "RandomSearch",
    "SearchSpace",
    "check_optimizer_class",
    "get_optimizer",
    "make_optimizer",
    "optimizer_names",
    "register_optimizer",
]

FloatArray = npt.NDArray[np.float64]

#: Keys of ``optimizer_config`` that the runner itself reads; every optimizer accepts them.
RUNNER_CONFIG_KEYS: frozenset[str] = frozenset(
    {"metric", "metric_variable", "mode", "seed", "bounds", "patience"}
)

_NUMERIC = ("float", "integer")
_DISCRETE = ("choice", "module", "boolean")


def _where(name: str) -> str:
    return f"variable {name!r}" if name else "search space"


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


# ------------------------------------------------------------------------ search space


@dataclass(frozen=True)
class SearchSpace:
    """The values an optimizer may propose for one variable.

    Numeric spaces (``float``, ``integer``) are the closed range ``[low, high]``; discrete
    ones (``choice``, ``module``, ``boolean``) are the tuple ``choices``. Every value a space
    hands out is a builtin ``float``, ``int``, ``bool`` or an element of ``choices``, never a
    numpy scalar, because proposals go straight to the wire codec.

    Example::

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

        Example::

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

        Example::

            >>> SearchSpace("boolean").is_numeric
            False
        """
        return self.type in _NUMERIC

    @property
    def size(self) -> int | None:
        """How many distinct values the space holds; ``None`` for a float range.

        Example::

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

        Example::

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

        Example::

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

        Example::

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

        Example::

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

        Example::

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

        Example::

            >>> SearchSpace("choice", choices=("a", "b")).sample(np.random.default_rng(0))
            'b'
        """
        if self.type == "float":
            return min(float(rng.uniform(self._lo, self._hi)), self._hi)
        if self.type == "integer":
            return int(rng.integers(int(self._lo), int(self._hi), endpoint=True))
        return self._options[int(rng.integers(len(self._options)))]


# ------------------------------------------------------------------- config helpers


def _number(
    where: str,
    config: Mapping[str, Any],
    key: str,
    default: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    value = config.get(key, default)
    ok = _is_real(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise InvalidValueError(
            f"{where}: optimizer_config[{key!r}] must be a number in {span}, got {value!r}"
        )
    return float(value)


def _count(where: str, config: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    value = config.get(key, default)
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise InvalidValueError(
            f"{where}: optimizer_config[{key!r}] must be an integer >= {minimum}, got {value!r}"
        )
    return int(value)


# ------------------------------------------------------------------ the protocol


class BaseOptimizer:
    """The ask/tell protocol every optimizer follows; subclass it for your own.

    ``ask()`` returns the next value to evaluate, ``tell(value, score)`` reports its score,
    **higher is better** (the runner negates scores for ``mode='min'``). ``recommend()`` is
    the value to keep at the end. Subclasses declare the ``optimizer_config`` keys they read
    in ``config_keys``; the runner's own keys (``RUNNER_CONFIG_KEYS``) are always allowed and
    any other key is refused. A subclass that overrides ``tell`` calls ``super().tell``, which
    keeps ``history``.

    Example::

        class Halving(BaseOptimizer):
            name = "halving"
            config_keys = frozenset({"start"})

            def ask(self):
                return self.space.clip(self.config.get("start", 1.0) / 2 ** len(self.history))

        register_optimizer("halving", Halving)
    """

    name: ClassVar[str] = ""
    config_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        space: SearchSpace,
        config: Mapping[str, Any] | None = None,
        *,
        seed: int | None = None,
        max_iterations: int = 100,
    ) -> None:
        if not isinstance(space, SearchSpace):
            raise TypeError(f"space must be a SearchSpace, got {type(space).__name__}")
        self.space = space
        self.config: dict[str, Any] = dict(config or {})
        self._where = _where(space.name)
        allowed = type(self).config_keys | RUNNER_CONFIG_KEYS
        unknown = sorted(str(key) for key in self.config if key not in allowed)
        if unknown:
            label = type(self).name or type(self).__name__
            raise InvalidValueError(
                f"{self._where}: unknown optimizer_config key(s) {', '.join(map(repr, unknown))} "
                f"for optimizer {label!r} (allowed: {', '.join(sorted(allowed))})"
            )
        if seed is not None and (not isinstance(seed, int | np.integer) or isinstance(seed, bool)):
            raise InvalidValueError(f"{self._where}: seed must be an integer or None, got {seed!r}")
        if not isinstance(max_iterations, int) or isinstance(max_iterations, bool) or (
            max_iterations < 1
        ):
            raise InvalidValueError(
                f"{self._where}: max_iterations must be an integer >= 1, got {max_iterations!r}"
            )
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.max_iterations = max_iterations
        self.patience = _count(self._where, self.config, "patience", 10, 1)
        self.history: list[tuple[Any, float]] = []
        self._configure()

    def _configure(self) -> None:
        """Read the optimizer's own ``config`` keys (``self.config``, ``self.space`` and
        the rest are set); a subclass overrides it instead of repeating ``__init__``.

        Example::

            def _configure(self):
                self.step = float(self.config.get("step", 0.1))
        """

    def ask(self) -> Any:
        """The next value to evaluate; always valid in ``space``.

        Example::

            value = optimizer.ask()
        """
        raise NotImplementedError(f"{type(self).__name__} must implement ask()")

    def tell(self, value: Any, score: float) -> None:
        """Report the score of an evaluated value (higher is better); kept in ``history``.

        The value must be in the space and the score a finite number, else ``ValueError``.

        Example::

            optimizer.tell(value, accuracy)
        """
        value = self.space.coerce(value)
        if not _is_real(score) or not math.isfinite(score):
            raise InvalidValueError(
                f"{self._where}: score for {value!r} must be a finite number, got {score!r}"
            )
        self.history.append((value, float(score)))

    @property
    def done(self) -> bool:
        """True when there is nothing left to propose (a finished grid).

        Example::

            while not optimizer.done: ...
        """
        return False

    @property
    def best(self) -> tuple[Any, float] | None:
        """The ``(value, score)`` with the highest told score, or ``None`` before any tell.

        Example::

            value, score = optimizer.best
        """
        if not self.history:
            return None
        return max(self.history, key=lambda item: item[1])

    def converged(self, threshold: float) -> bool:
        """Whether the best score rose by less than ``threshold`` over the last ``patience``
        tells (``optimizer_config['patience']``, default 10); needs ``patience + 1`` tells.

        Example::

            if optimizer.converged(1e-3): break
        """
        scores = [score for _, score in self.history]
        if len(scores) < self.patience + 1:
            return False
        before = max(scores[: -self.patience])
        return max(scores) - before < threshold

    def recommend(self) -> Any:
        """The value to keep: by default the one with the best told score.

        Example::

            await session.set_variable(name, optimizer.recommend())
        """
        best = self.best
        if best is None:
            raise InvalidValueError(f"{self._where}: nothing to recommend before any tell")
        return best[0]


# ------------------------------------------------------------------- grid & random


class GridSearch(BaseOptimizer):
    """Exhaustive search over a fixed list, in order; ``done`` after the last value.

    ``optimizer_config``: ``choices`` (explicit values, each valid in the space) or
    ``n_points`` (default 10) evenly spaced over ``[low, high]`` with both ends included
    (integers: the unique rounded values). Discrete spaces default to all their choices.

    Example::

        >>> grid = GridSearch(SearchSpace("float", 0.0, 2.0), {"n_points": 5})
        >>> [grid.ask() for _ in range(5)], grid.done
        ([0.0, 0.5, 1.0, 1.5, 2.0], True)
    """

    name = "grid_search"
    config_keys = frozenset({"choices", "n_points"})

    def _configure(self) -> None:
        self.points: list[Any] = self._points()
        self._next = 0

    def _points(self) -> list[Any]:
        if "choices" in self.config and "n_points" in self.config:
            raise InvalidValueError(
                f"{self._where}: give optimizer_config 'choices' or 'n_points', not both"
            )
        if "choices" in self.config:
            given = self.config["choices"]
            if isinstance(given, str | bytes) or not isinstance(given, Sequence) or not given:
                raise InvalidValueError(
                    f"{self._where}: optimizer_config['choices'] must be a non-empty list"
                )
            points: list[Any] = []
            for value in given:
                try:
                    point = self.space.coerce(value)
                except ValueError:
                    raise InvalidValueError(
                        f"{self._where}: grid choice {value!r} is not valid for the search "
                        f"space {self.space._text()}"
                    ) from None
                if point not in points:
                    points.append(point)
            return points
        n_points = _count(self._where, self.config, "n_points", 10, 1)
        if not self.space.is_numeric:
            return list(self.space._options)
        if n_points == 1:
            return [self.space.from_unit(0.5)]
        if self.space.type == "float":
            # linspace over the real bounds keeps both ends exact.
            raw = [float(x) for x in np.linspace(self.space._lo, self.space._hi, n_points)]
        else:
            raw = [self.space.from_unit(float(u)) for u in np.linspace(0.0, 1.0, n_points)]
        return list(dict.fromkeys(raw))  # unique, in order

    def ask(self) -> Any:
        """The next grid value; ``ValueError`` once the grid is exhausted.

        Example::

            value = grid.ask()
        """
        if self.done:
            raise InvalidValueError(
                f"{self._where}: the grid is exhausted (all {len(self.points)} values proposed)"
            )
        point = self.points[self._next]
        self._next += 1
        return point

    @property
    def done(self) -> bool:
        """True once every grid value has been asked.

        Example::

            while not grid.done: ...
        """
        return self._next >= len(self.points)

    def converged(self, threshold: float) -> bool:
        """Always False: a grid is exhaustive, it stops through ``done``.

        Example::

            >>> GridSearch(SearchSpace("boolean")).converged(1.0)
            False
        """
        return False


class RandomSearch(BaseOptimizer):
    """Uniform random values from the space, seeded; the baseline to beat.

    Example::

        >>> RandomSearch(SearchSpace("integer", 1, 3), seed=1).ask() in (1, 2, 3)
        True
    """

    name = "random"

    def ask(self) -> Any:
        """A uniform sample from the space.

        Example::

            value = RandomSearch(space, seed=0).ask()
        """
        return self.space.sample(self.rng)


# --------------------------------------------------------------- gaussian process

_LOG_2PI = math.log(2.0 * math.pi)
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _matern52(scaled: FloatArray) -> FloatArray:
    s = math.sqrt(5.0) * scaled
    return np.asarray((1.0 + s + s * s / 3.0) * np.exp(-s), dtype=np.float64)


def _distances(a: FloatArray, b: FloatArray) -> FloatArray:
    diff = a[:, None, :] - b[None, :, :]
    return np.asarray(np.sqrt(np.sum(diff * diff, axis=-1)), dtype=np.float64)


def _norm_cdf(z: FloatArray) -> FloatArray:
    return np.asarray(0.5 * _erfc(-z / math.sqrt(2.0)), dtype=np.float64)


def _log_norm_pdf(z: FloatArray) -> FloatArray:
    return np.asarray(-0.5 * z * z - 0.5 * _LOG_2PI, dtype=np.float64)


def _log_ei_factor(z: FloatArray) -> FloatArray:
    """log(z * Phi(z) + phi(z)), accurate far into the lower tail so that far-off candidates
    still rank by expected improvement instead of all tying at zero."""
    out = np.empty_like(z)
    body = z > -6.0
    zb = z[body]
    out[body] = np.log(np.maximum(zb * _norm_cdf(zb) + np.exp(_log_norm_pdf(zb)), 1e-300))
    zt = z[~body]
    out[~body] = _log_norm_pdf(zt) - 2.0 * np.log(-zt) + np.log1p(-3.0 / zt**2 + 15.0 / zt**4)
    return out


def _log_norm_cdf(z: FloatArray) -> FloatArray:
    out = np.empty_like(z)
    body = z > -30.0
    out[body] = np.log(np.maximum(_norm_cdf(z[body]), 1e-300))
    zt = z[~body]
    out[~body] = _log_norm_pdf(zt) - np.log(-zt)
    return out


class _GaussianProcess:
    """A zero-mean GP with a Matern 5/2 kernel on normalized scores.

    The kernel is ``amplitude * (matern(d / scale) + ratio * I)``. For each length scale
    and noise-to-signal ratio on a grid the amplitude has a closed-form maximum likelihood,
    so it is never clipped by a grid; the pair is picked by that profile likelihood plus a
    weak log-normal prior on the length scale (with few points the likelihood alone often
    prefers a length scale too short to say anything between the samples). One
    eigendecomposition per length scale serves every ratio.
    """

    RATIOS = (1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
    PRIOR_WIDTH = 1.5  # sd of log(scale) around the prior's centre

    def __init__(self, x: FloatArray, y: FloatArray, scales: FloatArray, prior_scale: float):
        self.x = x
        self.y_mean = float(np.mean(y))
        spread = float(np.std(y))
        self.y_std = spread if spread > 1e-12 else 1.0
        target = (y - self.y_mean) / self.y_std
        n = len(y)
        distances = _distances(x, x)
        ratios = np.array(self.RATIOS)[:, None]
        best_value = -math.inf
        for scale in scales:
            eigenvalues, vectors = np.linalg.eigh(_matern52(distances / scale))
            projected = vectors.T @ target
            spectrum = np.maximum(eigenvalues, 0.0)[None, :] + ratios + 1e-10
            amplitudes = np.maximum(np.sum(projected**2 / spectrum, axis=1) / n, 1e-12)
            values = -0.5 * n * np.log(amplitudes) - 0.5 * np.sum(np.log(spectrum), axis=1)
            values -= 0.5 * (math.log(scale / prior_scale) / self.PRIOR_WIDTH) ** 2
            pick = int(np.argmax(values))
            if values[pick] > best_value:
                best_value = float(values[pick])
                self.scale = float(scale)
                self.amplitude = float(amplitudes[pick])
                self.noise = float(self.amplitude * ratios[pick, 0])
                self._vectors = np.asarray(vectors, dtype=np.float64)
                self._spectrum = np.asarray(self.amplitude * spectrum[pick], dtype=np.float64)
                self.alpha = np.asarray(vectors @ (projected / self._spectrum), dtype=np.float64)

    def predict(self, points: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Posterior mean and standard deviation of the latent function, normalized units."""
        cross = self.amplitude * _matern52(_distances(points, self.x) / self.scale)
        mean = cross @ self.alpha
        projected = cross @ self._vectors
        var = self.amplitude - np.sum(projected**2 / self._spectrum, axis=1)
        return (np.asarray(mean, dtype=np.float64),
                np.asarray(np.sqrt(np.maximum(var, 1e-12 * self.amplitude)), dtype=np.float64))


class BayesianOptimizer(BaseOptimizer):
    """Gaussian-process Bayesian optimization.

    The first ``n_initial_points`` (default 5) proposals are a seeded Latin-hypercube design
    (discrete spaces: distinct values). Then a GP (Matern 5/2 on the unit interval, one-hot
    for choices; length scale, signal and noise variance by marginal likelihood) is fitted
    once per tell, and ``ask`` returns the maximizer of the acquisition function over a dense
    candidate set: ``acquisition_function`` ``'ei'`` (default, with ``xi``, default 0.01), ``'pi'``
    (``xi``) or ``'ucb'`` (``kappa``, default 2.0); ``xi`` and ``kappa`` are in units of the
    scores' standard deviation. ``n_candidates`` (default 2000) random candidates join a
    uniform grid and perturbations of the incumbent. Discrete spaces never re-propose a
    value until every value has been evaluated. ``recommend()`` returns the evaluated value
    with the highest posterior mean, which is robust to a lucky noisy score.

    Example::

        opt = BayesianOptimizer(space, {"acquisition_function": "ucb", "kappa": 1.5}, seed=7)
        for _ in range(20):
            x = opt.ask()
            opt.tell(x, evaluate(x))
        best = opt.recommend()
    """

    name = "bayesian"
    config_keys = frozenset(
        {"acquisition_function", "xi", "kappa", "n_initial_points", "n_candidates"}
    )
    ACQUISITIONS: ClassVar[tuple[str, ...]] = ("ei", "ucb", "pi")
    #: Beyond this many evaluations the GP is fitted to the best half and the latest half.
    MAX_FIT_POINTS: ClassVar[int] = 300
    #: Integer spaces up to this size use every integer as a candidate.
    DENSE_INTEGER_LIMIT: ClassVar[int] = 4096

    def _configure(self) -> None:
        acquisition = self.config.get("acquisition_function", "ei")
        if not isinstance(acquisition, str) or acquisition.lower() not in self.ACQUISITIONS:
            raise InvalidValueError(
                f"{self._where}: unknown acquisition_function {acquisition!r} (expected one "
                f"of {', '.join(self.ACQUISITIONS)})"
            )
        self.acquisition = acquisition.lower()
        self.xi = _number(self._where, self.config, "xi", 0.01, low=0.0)
        self.kappa = _number(self._where, self.config, "kappa", 2.0, low=0.0)
        self.n_initial_points = _count(self._where, self.config, "n_initial_points", 5, 1)
        self.n_candidates = _count(self._where, self.config, "n_candidates", 2000, 1)
        self._design = self._initial_design()
        self._design_next = 0
        self._gp: _GaussianProcess | None = None
        self._gp_size = -1
        self._encoded: list[list[float]] = []

    # -- encoding: unit position for numbers, one-hot for discrete values

    def _encode_one(self, value: Any) -> list[float]:
        if self.space.is_numeric:
            return [self.space.to_unit(value)]
        row = [0.0] * len(self.space._options)
        row[self.space._index(value) or 0] = 1.0
        return row

    def _history_x(self) -> FloatArray:
        while len(self._encoded) < len(self.history):
            self._encoded.append(self._encode_one(self.history[len(self._encoded)][0]))
        return np.array(self._encoded, dtype=np.float64)

    def _initial_design(self) -> list[Any]:
        n = self.n_initial_points
        space = self.space
        if not space.is_numeric:
            order = self.rng.permutation(len(space._options))
            return [space._options[int(i)] for i in order[:n]]
        # Latin hypercube in one dimension: one uniform draw inside each of n strata.
        units = (self.rng.permutation(n) + self.rng.random(n)) / n
        design: list[Any] = []
        size = space.size or 0
        for u in units:
            value = space.from_unit(float(u))
            if space.type == "integer" and value in design and len(design) < size:
                # Rounding put two strata on one integer; take an unused one instead.
                while value in design:
                    value = space.sample(self.rng)
            if value not in design:
                design.append(value)
        return design

    # -- model

    def _fit(self) -> _GaussianProcess:
        if self._gp is not None and self._gp_size == len(self.history):
            return self._gp
        x = self._history_x()
        y = np.array([score for _, score in self.history], dtype=np.float64)
        if len(y) > self.MAX_FIT_POINTS:
            half = self.MAX_FIT_POINTS // 2
            best = np.argsort(-y, kind="stable")[:half]
            keep = np.union1d(best, np.arange(len(y) - half, len(y)))
            x, y = x[keep], y[keep]
        if self.space.is_numeric:
            scales, prior = np.geomspace(0.04, 4.0, 16), 0.25
        else:
            scales, prior = np.geomspace(0.3, 8.0, 10), 1.5
        self._gp = _GaussianProcess(x, y, scales, prior)
        self._gp_size = len(self.history)
        return self._gp

    def _acquire(self, gp: _GaussianProcess, x: FloatArray, incumbent: float) -> FloatArray:
        mean, std = gp.predict(x)
        if self.acquisition == "ucb":
            return mean + self.kappa * std
        z = (mean - incumbent - self.xi) / std
        if self.acquisition == "pi":
            return _log_norm_cdf(z)
        return np.log(std) + _log_ei_factor(z)

    def _incumbent(self, gp: _GaussianProcess) -> tuple[int, float]:
        """Index into history of the evaluated value with the best posterior mean, and
        that mean (normalized units)."""
        mean, _ = gp.predict(self._history_x())
        best = int(np.argmax(mean))
        return best, float(mean[best])

    # -- proposals

    def ask(self) -> Any:
        """The next value: the initial design first, then the acquisition maximizer.

        Example::

            value = opt.ask()
        """
        if self._design_next < len(self._design) and len(self.history) < self.n_initial_points:
            value = self._design[self._design_next]
            self._design_next += 1
            return value
        if not self.history:
            return self.space.sample(self.rng)
        gp = self._fit()
        best, incumbent = self._incumbent(gp)
        if self.space.type == "float":
            return self._ask_float(gp, self.space.to_unit(self.history[best][0]), incumbent)
        if self.space.type == "integer":
            return self._ask_integer(gp, self.history[best][0], incumbent)
        return self._ask_discrete(gp, incumbent)

    def _ask_float(self, gp: _GaussianProcess, center: float, incumbent: float) -> Any:
        units = np.clip(np.concatenate([
            self.rng.random(self.n_candidates),
            np.linspace(0.0, 1.0, 201),
            center + self.rng.normal(0.0, 0.01, 64),
            center + self.rng.normal(0.0, 0.05, 64),
        ]), 0.0, 1.0)
        scores = self._acquire(gp, units[:, None], incumbent)
        winner = float(units[int(np.argmax(scores))])
        # A local pass around the winner: the random candidates are ~1/2000 apart; finer
        # matters only near the optimum, where it is cheap to look closely.
        local = np.clip(winner + np.linspace(-0.004, 0.004, 33), 0.0, 1.0)
        scores = self._acquire(gp, local[:, None], incumbent)
        return self.space.from_unit(float(local[int(np.argmax(scores))]))

    def _ask_integer(self, gp: _GaussianProcess, center: int, incumbent: float) -> Any:
        space = self.space
        low, width = int(space._lo), int(space._hi) - int(space._lo)
        if width == 0:
            return low
        if width < self.DENSE_INTEGER_LIMIT:
            offsets = np.arange(width + 1, dtype=np.float64)
        else:
            units = np.concatenate([self.rng.random(self.n_candidates),
                                    np.linspace(0.0, 1.0, 201)])
            near = (center - low) + np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
            offsets = np.unique(np.clip(
                np.concatenate([np.floor(units * width + 0.5), near]), 0, width
            ))
        tried = np.array([v - low for v, _ in self.history], dtype=np.float64)
        fresh = offsets[~np.isin(offsets, tried)]
        # Once every value has been scored, re-scoring one is all that is left.
        offsets = fresh if fresh.size else offsets
        scores = self._acquire(gp, (offsets / width)[:, None], incumbent)
        return space.clip(low + int(offsets[int(np.argmax(scores))]))

    def _ask_discrete(self, gp: _GaussianProcess, incumbent: float) -> Any:
        options = self.space._options
        tried = {self.space._index(v) for v, _ in self.history}
        indices = [i for i in range(len(options)) if i not in tried] or list(range(len(options)))
        onehot = np.eye(len(options), dtype=np.float64)[indices]
        scores = self._acquire(gp, onehot, incumbent)
        return options[indices[int(np.argmax(scores))]]

    def recommend(self) -> Any:
        """The evaluated value with the highest GP posterior mean (not the luckiest score).

        Example::

            best = opt.recommend()
        """
        if not self.history:
            return super().recommend()
        best, _ = self._incumbent(self._fit())
        return self.history[best][0]


# ---------------------------------------------------------------------- gradient


class GradientOptimizer(BaseOptimizer):
    """Gradient ascent on a numeric variable from paired probes, one evaluation per ask.

    The first ask evaluates the start (``optimizer_config['initial_value']``, else a value
    told before the first ask, else the middle of the range). Then it cycles: probe above,
    probe below, stepped point. ``method='finite_difference'`` (default) probes at
    ``±epsilon`` (default 0.01, unit space) around the current point and steps by
    ``learning_rate`` (default 0.1) x the gradient in unit space (score per unit of the
    range), with optional ``momentum`` (default 0). ``method='spsa'`` probes in a random
    direction with the decaying SPSA gains ``a_k = lr ((A+1)/(k+1+A))^0.602`` and
    ``c_k = epsilon / (k+1)^0.101``. A stepped point that scores worse than the point it
    left is rejected and retried from there at half the gain, and the gain halves too when
    the gradient changes sign (an overshoot), so a learning rate too large for the scores'
    scale shrinks instead of bouncing between the bounds.
    Integers probe at least ±1; when a step would round to no move, the better probe is
    taken if it beat the current point. Choice and boolean variables are refused.

    Example::

        opt = GradientOptimizer(space, {"learning_rate": 0.2, "momentum": 0.5})
        while not opt.converged(1e-4):
            x = opt.ask()
            opt.tell(x, evaluate(x))
    """

    name = "gradient"
    config_keys = frozenset({"method", "epsilon", "learning_rate", "momentum", "initial_value"})
    METHODS: ClassVar[tuple[str, ...]] = ("finite_difference", "spsa")

    def _configure(self) -> None:
        if not self.space.is_numeric:
            raise InvalidValueError(
                f"{self._where}: the gradient optimizer needs a float or integer variable, "
                f"not {self.space.type}; use 'bayesian', 'grid_search' or 'random'"
            )
        method = self.config.get("method", "finite_difference")
        if method not in self.METHODS:
            raise InvalidValueError(
                f"{self._where}: unknown gradient method {method!r} (expected one of "
                f"{', '.join(self.METHODS)})"
            )
        self.method: str = method
        self.epsilon = _number(self._where, self.config, "epsilon", 0.01, low=0.0, high=0.5,
                               low_open=True)
        self.learning_rate = _number(self._where, self.config, "learning_rate", 0.1, low=0.0,
                                     low_open=True)
        self.momentum = _number(self._where, self.config, "momentum", 0.0, low=0.0, high=1.0,
                                high_open=True)
        start = self.config.get("initial_value")
        start_value = self.space.from_unit(0.5) if start is None else self.space.coerce(start)
        #: Unit-space length of the last step proposed (None before the first).
        self.last_step: float | None = None
        # The accepted point the probes surround, and its score once told.
        self._center_value: Any = start_value
        self._center_score: float | None = None
        self._gradient = 0.0
        self._velocity = 0.0
        self._shrink = 1.0  # halves at every rejected step
        self._iteration = 0  # gradient estimates so far (SPSA's k)
        self._stability = max(1.0, 0.1 * self.max_iterations / 3.0)  # SPSA's A
        self._probe_scores: dict[str, tuple[Any, float]] = {}
        self._rejected: set[Any] = set()  # steps from the current centre that scored worse
        # Values to propose, each with its role; and those asked but not yet told.
        self._queue: list[tuple[str, Any]] = [("center", start_value)]
        self._asked: list[tuple[str, Any]] = []
        self._started = False

    def ask(self) -> Any:
        """The next point of the cycle: start, then (probe, probe, step) repeated.

        Example::

            value = opt.ask()
        """
        self._started = True
        if not self._queue:
            # Still waiting for scores: the outstanding value is the only sensible answer.
            return self._asked[0][1] if self._asked else self._center_value
        role, value = self._queue.pop(0)
        self._asked.append((role, value))
        return value

    def tell(self, value: Any, score: float) -> None:
        """Record the score; a probe pair yields a step, a step is accepted or retried.

        Example::

            opt.tell(value, score)
        """
        super().tell(value, score)
        value, score = self.history[-1]
        if not self._started and not self._asked:
            # A score for a value nobody asked for yet: start from it (the variable's
            # current value, told by the runner as a baseline).
            self._started = True
            self._accept(value, score)
            return
        index = next((i for i, (_, asked) in enumerate(self._asked) if asked == value), None)
        if index is None:
            return  # an outside evaluation: history only
        role = self._asked.pop(index)[0]
        if role == "center":
            self._accept(value, score)
        elif role == "step":
            if self._center_score is None or score >= self._center_score:
                self._accept(value, score)
            else:
                self._rejected.add(value)
                self._shrink *= 0.5
                self._velocity = 0.0
                self._queue = self._step()
        else:
            self._probe_scores[role] = (value, score)
            if len(self._probe_scores) == 2:
                gradient = self._estimate()
                if gradient * self._gradient < 0:
                    # The sign flipped: the last step overshot the optimum.
                    self._shrink *= 0.5
                self._gradient = gradient
                self._queue = self._step()

    def _accept(self, value: Any, score: float) -> None:
        self._center_value, self._center_score = value, score
        self._rejected = set()
        self._queue = self._probes()

    def _probes(self) -> list[tuple[str, Any]]:
        space = self.space
        self._probe_scores = {}
        center = space.to_unit(self._center_value)
        if self.method == "spsa":
            eps = self.epsilon / (self._iteration + 1) ** 0.101
            direction = float(self.rng.choice([-1.0, 1.0]))
        else:
            eps, direction = self.epsilon, 1.0
        if space.type == "integer":
            delta = max(1, round(eps * (space._hi - space._lo)))
            up = space.clip(self._center_value + delta)
            down = space.clip(self._center_value - delta)
        else:
            up, down = space.from_unit(center + eps), space.from_unit(center - eps)
        first, second = (up, down) if direction > 0 else (down, up)
        return [("first", first), ("second", second)]

    def _estimate(self) -> float:
        (a, fa), (b, fb) = self._probe_scores["first"], self._probe_scores["second"]
        ua, ub = self.space.to_unit(a), self.space.to_unit(b)
        self._iteration += 1
        # The actual probe positions, not ±epsilon: a probe clipped at a bound is closer.
        return 0.0 if ua == ub else (fa - fb) / (ua - ub)

    def _step(self) -> list[tuple[str, Any]]:
        space = self.space
        k = self._iteration - 1
        gain = self.learning_rate * self._shrink
        if self.method == "spsa":
            gain *= ((self._stability + 1.0) / (k + 1.0 + self._stability)) ** 0.602
        self._velocity = self.momentum * self._velocity + gain * self._gradient
        center = space.to_unit(self._center_value)
        value = space.from_unit(center + self._velocity)
        for _ in range(64):
            if value not in self._rejected:
                break
            # Clipping or rounding gave a step already refused: shrink without asking again.
            self._shrink *= 0.5
            self._velocity *= 0.5
            value = space.from_unit(center + self._velocity)
        self.last_step = abs(space.to_unit(value) - center)
        if value != self._center_value and self.last_step > 1e-12:
            return [("step", value)]
        if space.type == "integer" and self._center_score is not None and self._probe_scores:
            better, better_score = max(self._probe_scores.values(), key=lambda item: item[1])
            if better_score > self._center_score:
                # Already scored: move there without spending an evaluation.
                self.last_step = abs(space.to_unit(better) - center)
                self._accept(better, better_score)
                return self._queue
        # No move is possible from here: estimate the gradient afresh at full gain.
        self._shrink, self._velocity = 1.0, 0.0
        return self._probes()

    def converged(self, threshold: float) -> bool:
        """True when the last step moved less than ``threshold`` in unit space, or by the
        default no-improvement rule.

        Example::

            if opt.converged(1e-4): break
        """
        if self.last_step is not None and self.last_step < threshold:
            return True
        return super().converged(threshold)


# ---------------------------------------------------------------------- registry

_BUILTINS: dict[str, type[BaseOptimizer]] = {
    cls.name: cls for cls in (GridSearch, RandomSearch, BayesianOptimizer, GradientOptimizer)
}
_REGISTRY: dict[str, type[BaseOptimizer]] = dict(_BUILTINS)


def check_optimizer_class(name: str, cls: type[BaseOptimizer]) -> None:
    """Check that ``cls`` may be registered as ``name`` without registering it:
    ``ValueError`` for an empty or built-in name, ``TypeError`` for a class that is not a
    ``BaseOptimizer`` subclass.

    Example::

        >>> try:
        ...     check_optimizer_class("bayesian", RandomSearch)
        ... except ValueError as exc:
        ...     print(exc)
        optimizer name 'bayesian' belongs to a built-in optimizer and cannot be replaced
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidValueError(f"optimizer name must be a non-empty string, got {name!r}")
    if not isinstance(cls, type) or not issubclass(cls, BaseOptimizer):
        raise TypeError(f"optimizer {name!r} must be a subclass of BaseOptimizer, got {cls!r}")
    if name in _BUILTINS:
        raise InvalidValueError(
            f"optimizer name {name!r} belongs to a built-in optimizer and cannot be replaced"
        )


def register_optimizer(name: str, cls: type[BaseOptimizer]) -> None:
    """Make ``cls`` available as ``optimizer=name`` process-wide. A custom name may be
    registered again (the new class replaces the old); a built-in name may not.

    Example::

        class MyOptimizer(BaseOptimizer):
            def ask(self): return self.space.sample(self.rng)

        register_optimizer("mine", MyOptimizer)
    """
    check_optimizer_class(name, cls)
    _REGISTRY[name] = cls


def get_optimizer(name: str) -> type[BaseOptimizer]:
    """The optimizer class registered as ``name``.

    Example::

        >>> get_optimizer("bayesian").__name__
        'BayesianOptimizer'
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise InvalidValueError(
            f"unknown optimizer {name!r} (known: {', '.join(optimizer_names())})"
        ) from None


def optimizer_names() -> list[str]:
    """Every registered optimizer name, sorted.

    Example::

        >>> {"bayesian", "gradient", "grid_search", "random"} <= set(optimizer_names())
        True
    """
    return sorted(_REGISTRY)


def make_optimizer(
    name: str,
    space: SearchSpace,
    config: Mapping[str, Any] | None = None,
    *,
    seed: int | None = None,
    max_iterations: int = 100,
) -> BaseOptimizer:
    """Build the optimizer registered as ``name`` for ``space``.

    Example::

        >>> opt = make_optimizer("grid_search", SearchSpace("boolean"), {}, seed=0)
        >>> opt.ask(), opt.ask(), opt.done
        (False, True, True)
    """
    return get_optimizer(name)(space, config, seed=seed, max_iterations=max_iterations)
