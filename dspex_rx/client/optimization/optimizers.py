"""The optimizer registry (names to classes, the built-ins fixed) and the one import path
for every optimizer name: SearchSpace, BaseOptimizer and the four built-ins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dspex_rx.client.optimization.base import RUNNER_CONFIG_KEYS, BaseOptimizer
from dspex_rx.client.optimization.bayesian import BayesianOptimizer
from dspex_rx.client.optimization.gradient import GradientOptimizer
from dspex_rx.client.optimization.grid import GridSearch, RandomSearch
from dspex_rx.client.optimization.space import SearchSpace
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
    "is_builtin",
    "make_optimizer",
    "optimizer_names",
    "register_optimizer",
]


_BUILTINS: dict[str, type[BaseOptimizer]] = {
    cls.name: cls for cls in (GridSearch, RandomSearch, BayesianOptimizer, GradientOptimizer)
}
_REGISTRY: dict[str, type[BaseOptimizer]] = dict(_BUILTINS)
_BUILTIN_CLASSES = frozenset(_BUILTINS.values())


def check_optimizer_class(name: str, cls: type[BaseOptimizer]) -> None:
    """Check that ``cls`` may be registered as ``name`` without registering it:
    ``ValueError`` for an empty or built-in name, ``TypeError`` for a class that is not a
    ``BaseOptimizer`` subclass.

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

    >>> class Mine(BaseOptimizer):
    ...     def ask(self):
    ...         return self.space.sample(self.rng)
    >>> register_optimizer("mine", Mine)
    >>> get_optimizer("mine") is Mine
    True
    >>> _ = _REGISTRY.pop("mine")
    """
    check_optimizer_class(name, cls)
    _REGISTRY[name] = cls


def get_optimizer(name: str) -> type[BaseOptimizer]:
    """The optimizer class registered as ``name``.

    >>> get_optimizer("bayesian").__name__
    'BayesianOptimizer'
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise InvalidValueError(
            f"unknown optimizer {name!r} (known: {', '.join(optimizer_names())})"
        ) from None


def is_builtin(optimizer: BaseOptimizer) -> bool:
    """Whether ``optimizer`` is exactly one of the built-in classes (quick enough to run in
    the trio thread); a subclass may override anything, so it is not.

    >>> is_builtin(make_optimizer("grid_search", SearchSpace("boolean"), {}, seed=0))
    True
    """
    return type(optimizer) in _BUILTIN_CLASSES


def optimizer_names() -> list[str]:
    """Every registered optimizer name, sorted.

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

    >>> opt = make_optimizer("grid_search", SearchSpace("boolean"), {}, seed=0)
    >>> opt.ask(), opt.ask(), opt.done
    (False, True, True)
    """
    return get_optimizer(name)(space, config, seed=seed, max_iterations=max_iterations)
