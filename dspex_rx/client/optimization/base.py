"""The ask/tell protocol every optimizer follows (BaseOptimizer) and the checks of
``optimizer_config`` values its subclasses share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from dspex_rx.client.optimization.space import SearchSpace, _is_real, _where
from dspex_rx.errors import InvalidValueError

#: Keys of ``optimizer_config`` that the runner itself reads; every optimizer accepts them.
RUNNER_CONFIG_KEYS: frozenset[str] = frozenset(
    {"metric", "metric_variable", "mode", "seed", "bounds", "patience"}
)


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

    >>> from dspex_rx.client.optimization.space import SearchSpace
    >>> class Halving(BaseOptimizer):
    ...     config_keys = frozenset({"start"})
    ...     def ask(self):
    ...         return self.space.clip(self.config.get("start", 1.0) / 2 ** len(self.history))
    >>> opt = Halving(SearchSpace("float", 0.0, 1.0), {"start": 1.0})
    >>> opt.tell(opt.ask(), 0.5)
    >>> opt.ask(), opt.recommend()
    (0.5, 1.0)
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

        Example: a subclass's ``_configure`` sets ``self.step = self.config.get("step", 0.1)``.
        """

    def ask(self) -> Any:
        """The next value to evaluate; always valid in ``space``.

        Example: ``optimizer.ask()`` returns the next value to evaluate.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement ask()")

    def tell(self, value: Any, score: float) -> None:
        """Report the score of an evaluated value (higher is better); kept in ``history``.

        The value must be in the space and the score a finite number, else ``ValueError``.

        >>> from dspex_rx.client.optimization.space import SearchSpace
        >>> opt = BaseOptimizer(SearchSpace("integer", 0, 3))
        >>> opt.tell(2, 0.75)
        >>> opt.history
        [(2, 0.75)]
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

        >>> from dspex_rx.client.optimization.space import SearchSpace
        >>> BaseOptimizer(SearchSpace("boolean")).done
        False
        """
        return False

    @property
    def best(self) -> tuple[Any, float] | None:
        """The ``(value, score)`` with the highest told score, or ``None`` before any tell.

        >>> from dspex_rx.client.optimization.space import SearchSpace
        >>> opt = BaseOptimizer(SearchSpace("integer", 0, 3))
        >>> opt.tell(1, 0.2); opt.tell(3, 0.9); opt.tell(2, 0.5)
        >>> opt.best
        (3, 0.9)
        """
        if not self.history:
            return None
        return max(self.history, key=lambda item: item[1])

    def converged(self, threshold: float) -> bool:
        """Whether the best score rose by less than ``threshold`` over the last ``patience``
        tells (``optimizer_config['patience']``, default 10); needs ``patience + 1`` tells.

        >>> from dspex_rx.client.optimization.space import SearchSpace
        >>> opt = BaseOptimizer(SearchSpace("integer", 0, 3), {"patience": 2})
        >>> for value in (1, 2, 3):
        ...     opt.tell(value, 0.5)
        >>> opt.converged(1e-3)
        True
        """
        scores = [score for _, score in self.history]
        if len(scores) < self.patience + 1:
            return False
        before = max(scores[: -self.patience])
        return max(scores) - before < threshold

    def recommend(self) -> Any:
        """The value to keep: by default the one with the best told score.

        >>> from dspex_rx.client.optimization.space import SearchSpace
        >>> opt = BaseOptimizer(SearchSpace("choice", choices=("a", "b")))
        >>> opt.tell("a", 0.1); opt.tell("b", 0.3)
        >>> opt.recommend()
        'b'
        """
        best = self.best
        if best is None:
            raise InvalidValueError(f"{self._where}: nothing to recommend before any tell")
        return best[0]
