"""Bayesian optimization: a Matern 5/2 Gaussian process over the unit-scaled space and
log expected improvement to pick the next value.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from dspex_rx.client.optimization.base import BaseOptimizer, _count, _number
from dspex_rx.errors import InvalidValueError

FloatArray = npt.NDArray[np.float64]


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

    >>> from dspex_rx.client.optimization.space import SearchSpace
    >>> space = SearchSpace("float", 0.0, 1.0)
    >>> opt = BayesianOptimizer(space, {"acquisition_function": "ucb"}, seed=7)
    >>> for _ in range(8):
    ...     x = opt.ask()
    ...     opt.tell(x, -(x - 0.3) ** 2)
    >>> abs(opt.recommend() - 0.3) < 0.2
    True
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

        >>> from dspex_rx.client.optimization.space import SearchSpace
        >>> opt = BayesianOptimizer(SearchSpace("integer", 0, 9), seed=0)
        >>> opt.ask() in range(10)
        True
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

        >>> from dspex_rx.client.optimization.space import SearchSpace
        >>> opt = BayesianOptimizer(SearchSpace("choice", choices=("a", "b")), seed=0)
        >>> opt.tell("a", 0.1); opt.tell("b", 0.9)
        >>> opt.recommend()
        'b'
        """
        if not self.history:
            return super().recommend()
        best, _ = self._incumbent(self._fit())
        return self.history[best][0]
