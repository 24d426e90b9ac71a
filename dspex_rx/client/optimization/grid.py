"""The exhaustive optimizers: GridSearch walks a fixed list of values in order,
RandomSearch samples the space uniformly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dspex_rx.client.optimization.base import BaseOptimizer, _count
from dspex_rx.errors import InvalidValueError


class GridSearch(BaseOptimizer):
    """Exhaustive search over a fixed list, in order; ``done`` after the last value.

    ``optimizer_config``: ``choices`` (explicit values, each valid in the space) or
    ``n_points`` (default 10) evenly spaced over ``[low, high]`` with both ends included
    (integers: the unique rounded values). Discrete spaces default to all their choices.

    >>> from dspex_rx.client.optimization.space import SearchSpace
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

        >>> from dspex_rx.client.optimization.space import SearchSpace
        >>> GridSearch(SearchSpace("integer", 0, 4), {"choices": [4, 2]}).ask()
        4
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

        >>> from dspex_rx.client.optimization.space import SearchSpace
        >>> grid = GridSearch(SearchSpace("boolean"))
        >>> grid.ask(), grid.done, grid.ask(), grid.done
        (False, False, True, True)
        """
        return self._next >= len(self.points)

    def converged(self, threshold: float) -> bool:
        """Always False: a grid is exhaustive, it stops through ``done``.

        >>> from dspex_rx.client.optimization.space import SearchSpace
        >>> GridSearch(SearchSpace("boolean")).converged(1.0)
        False
        """
        return False


class RandomSearch(BaseOptimizer):
    """Uniform random values from the space, seeded; the baseline to beat.

    >>> from dspex_rx.client.optimization.space import SearchSpace
    >>> RandomSearch(SearchSpace("integer", 1, 3), seed=1).ask() in (1, 2, 3)
    True
    """

    name = "random"

    def ask(self) -> Any:
        """A uniform sample from the space.

        >>> from dspex_rx.client.optimization.space import SearchSpace
        >>> RandomSearch(SearchSpace("float", 0.0, 1.0), seed=0).ask() <= 1.0
        True
        """
        return self.space.sample(self.rng)
