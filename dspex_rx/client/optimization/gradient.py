"""Gradient ascent on a numeric variable from paired finite-difference probes, one
evaluation per ask.
"""

from __future__ import annotations

from typing import Any, ClassVar

from dspex_rx.client.optimization.base import BaseOptimizer, _number
from dspex_rx.errors import InvalidValueError


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

    >>> from dspex_rx.client.optimization.space import SearchSpace
    >>> space = SearchSpace("float", 0.0, 1.0)
    >>> opt = GradientOptimizer(space, {"learning_rate": 0.2, "initial_value": 0.5})
    >>> for _ in range(40):
    ...     x = opt.ask()
    ...     opt.tell(x, -(x - 0.8) ** 2)
    >>> abs(opt.recommend() - 0.8) < 0.1
    True
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

        >>> from dspex_rx.client.optimization.space import SearchSpace
        >>> GradientOptimizer(SearchSpace("float", 0.0, 1.0), {"initial_value": 0.5}).ask()
        0.5
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

        >>> from dspex_rx.client.optimization.space import SearchSpace
        >>> opt = GradientOptimizer(SearchSpace("float", 0.0, 1.0), {"initial_value": 0.5})
        >>> opt.tell(opt.ask(), 1.0)
        >>> opt.history
        [(0.5, 1.0)]
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

        >>> from dspex_rx.client.optimization.space import SearchSpace
        >>> GradientOptimizer(SearchSpace("float", 0.0, 1.0)).converged(1e-4)
        False
        """
        if self.last_step is not None and self.last_step < threshold:
            return True
        return super().converged(threshold)
