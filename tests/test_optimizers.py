"""The optimizer algorithms (``dspex_rx.client.optimization``), without a server.

It proves that:

- every built-in, run for 40 ask/tell rounds over float, integer, choice, module and boolean
  variables, proposes only values that ``validate_value`` accepts under the variable's
  normalized constraints, as exact builtins (``int``, ``float``, ``bool``, a choice);
- ``SearchSpace.from_variable`` refuses what cannot be optimized, with the variable named;
- the grid proposes exactly its points in order and then is done;
- the Bayesian optimizer is reproducible from its seed, finds the maximum of smooth 1-d
  functions in 20 evaluations with each acquisition function, and recommends by posterior
  mean rather than by the luckiest noisy score;
- the gradient optimizer climbs a concave quadratic (finite differences and SPSA, floats and
  integers) and shrinks a learning rate that is too large instead of bouncing;
- the registry takes custom subclasses and refuses the rest with the right exception.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspex_rx.client.optimization import optimizers
from dspex_rx.client.optimization.optimizers import (
    RUNNER_CONFIG_KEYS,
    BaseOptimizer,
    BayesianOptimizer,
    GradientOptimizer,
    GridSearch,
    RandomSearch,
    SearchSpace,
    check_optimizer_class,
    get_optimizer,
    make_optimizer,
    optimizer_names,
    register_optimizer,
)
from dspex_rx.core.types import check_constraints, validate_value

BUILTINS = ["bayesian", "gradient", "grid_search", "random"]

# name, type, constraints as a user registers them (normalized by check_constraints below)
VARIABLES: list[tuple[str, str, dict[str, Any]]] = [
    ("temperature", "float", {"min": 0.0, "max": 2.0}),
    ("top_p", "float", {"min": 0, "max": 1}),  # integer bounds on a float variable
    ("max_tokens", "integer", {"min": 1, "max": 50}),
    ("style", "choice", {"choices": ["terse", "plain", "verbose"]}),
    ("module", "module", {"choices": ["Predict", "ChainOfThought", "ReAct"]}),
    ("verbose", "boolean", {}),
]
EXACT_TYPE = {"float": float, "integer": int, "boolean": bool, "choice": str, "module": str}


def space_of(name: str, type_name: str, constraints: dict[str, Any],
             config: dict[str, Any] | None = None) -> tuple[SearchSpace, dict[str, Any]]:
    clean = check_constraints(name, type_name, constraints)
    return SearchSpace.from_variable(name, type_name, clean, config), clean


def toy_score(space: SearchSpace, value: Any) -> float:
    """Peaks at 70 % of a numeric range, at the second choice, at True."""
    if space.is_numeric:
        return -((space.to_unit(value) - 0.7) ** 2)
    if space.type == "boolean":
        return 1.0 if value else 0.0
    assert space.choices is not None
    return -abs(space.choices.index(value) - 1.0)


def drive(optimizer: BaseOptimizer, score: Callable[[Any], float], rounds: int) -> list[Any]:
    proposals = []
    for _ in range(rounds):
        if optimizer.done:
            break
        value = optimizer.ask()
        proposals.append(value)
        optimizer.tell(value, score(value))
    return proposals


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(optimizers._REGISTRY)
    yield
    optimizers._REGISTRY.clear()
    optimizers._REGISTRY.update(saved)


# ------------------------------------------------------------ every proposal is valid


# The gradient optimizer refuses discrete variables (tested below), so it has no case here.
RUNS = [
    pytest.param(optimizer_name, *variable, id=f"{optimizer_name}-{variable[0]}")
    for optimizer_name in BUILTINS
    for variable in VARIABLES
    if optimizer_name != "gradient" or variable[1] in ("float", "integer")
]


@pytest.mark.parametrize(("optimizer_name", "name", "type_name", "constraints"), RUNS)
def test_every_proposal_passes_validate_value(
    optimizer_name: str, name: str, type_name: str, constraints: dict[str, Any]
) -> None:
    space, clean = space_of(name, type_name, constraints)
    optimizer = make_optimizer(optimizer_name, space, {}, seed=3, max_iterations=40)
    proposals = drive(optimizer, lambda v: toy_score(space, v), 40)

    if isinstance(optimizer, GridSearch):
        assert proposals == optimizer.points and optimizer.done
    else:
        assert len(proposals) == 40
    for value in [*proposals, optimizer.recommend()]:
        assert type(value) is EXACT_TYPE[type_name], (value, type(value))
        assert space.contains(value)
        assert validate_value(name, type_name, value, clean) == value
        if type_name in ("choice", "module"):
            assert value in clean["choices"]
    assert [v for v, _ in optimizer.history] == proposals


def test_proposals_of_every_builtin_on_discrete_spaces_cover_the_choices() -> None:
    space, _ = space_of("style", "choice", {"choices": ["terse", "plain", "verbose"]})
    for optimizer_name in ("bayesian", "grid_search"):
        optimizer = make_optimizer(optimizer_name, space, {}, seed=0)
        first = drive(optimizer, lambda v: toy_score(space, v), 3)
        assert sorted(first) == ["plain", "terse", "verbose"], optimizer_name


# ---------------------------------------------------------------------- SearchSpace


@pytest.mark.parametrize("type_name", ["string", "list", "dict", "embedding", "tensor"])
def test_space_refuses_types_that_cannot_be_optimized(type_name: str) -> None:
    with pytest.raises(ValueError, match=rf"'prompt'.*{type_name}.*cannot be optimized"):
        SearchSpace.from_variable("prompt", type_name, {})


def test_space_refuses_unknown_type_naming_it() -> None:
    with pytest.raises(ValueError, match=r"'x' of type 'complex' cannot be optimized"):
        SearchSpace.from_variable("x", "complex", {})


@pytest.mark.parametrize(
    ("type_name", "constraints"),
    [("float", {"min": 0.0}), ("float", {"max": 1.0}), ("integer", {}),
     ("float", {"min": -math.inf, "max": 1.0})],
)
def test_space_needs_finite_min_and_max_or_bounds(
    type_name: str, constraints: dict[str, Any]
) -> None:
    with pytest.raises(
        ValueError,
        match=r"variable 'lr' needs min and max constraints or optimizer_config\['bounds'\]",
    ):
        SearchSpace.from_variable("lr", type_name, constraints)
    space = SearchSpace.from_variable("lr", type_name, constraints, {"bounds": (0, 1)})
    assert (space.low, space.high) == ((0.0, 1.0) if type_name == "float" else (0, 1))


def test_bounds_narrow_the_constraints() -> None:
    space = SearchSpace.from_variable("t", "float", {"min": 0.0, "max": 2.0},
                                      {"bounds": [0.5, 1]})
    assert (space.type, space.low, space.high, space.name) == ("float", 0.5, 1.0, "t")
    assert type(space.high) is float
    ints = SearchSpace.from_variable("n", "integer", {"min": 0, "max": 10},
                                     {"bounds": (2.5, 7.5)})
    assert (ints.low, ints.high) == (3, 7)
    assert type(ints.low) is int and type(ints.high) is int


@pytest.mark.parametrize("bounds", [(-0.5, 1.0), (0.5, 2.5), (-1.0, 3.0)])
def test_bounds_outside_the_constraints_are_refused(bounds: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match=r"variable 't'.*must lie inside the constraints"):
        SearchSpace.from_variable("t", "float", {"min": 0.0, "max": 2.0}, {"bounds": bounds})


@pytest.mark.parametrize("bounds", [(1.0,), (2.0, 1.0), ("a", "b"), (0.0, math.nan), "01"])
def test_malformed_bounds_are_refused(bounds: Any) -> None:
    with pytest.raises(ValueError, match=r"variable 't': optimizer_config\['bounds'\]"):
        SearchSpace.from_variable("t", "float", {}, {"bounds": bounds})


def test_bounds_on_a_discrete_variable_are_refused() -> None:
    with pytest.raises(ValueError, match=r"'flag'.*bounds.*not boolean"):
        SearchSpace.from_variable("flag", "boolean", {}, {"bounds": (0, 1)})


def test_choice_and_module_spaces_need_choices() -> None:
    with pytest.raises(ValueError, match=r"'m': a module variable needs a non-empty 'choices'"):
        SearchSpace.from_variable("m", "module", {})
    with pytest.raises(ValueError, match=r"'c'.*requires constraint\(s\) choices"):
        SearchSpace.from_variable("c", "choice", {})
    # validate_value refuses an empty module name, so the space leaves it out.
    space = SearchSpace.from_variable("m", "module", {"choices": ["", "Predict"]})
    assert space.choices == ("Predict",)


def test_space_conversions_return_builtins() -> None:
    floats = SearchSpace("float", 0.0, 2.0)
    assert floats.to_unit(0.5) == 0.25
    assert floats.from_unit(0.25) == 0.5 and type(floats.from_unit(0.25)) is float
    assert floats.from_unit(-3) == 0.0 and floats.from_unit(7) == 2.0
    assert floats.clip(5) == 2.0 and type(floats.clip(5)) is float
    ints = SearchSpace("integer", 0, 10)
    assert [ints.from_unit(u) for u in (0.0, 0.04, 0.05, 0.5, 1.0)] == [0, 0, 1, 5, 10]
    assert all(type(ints.from_unit(u)) is int for u in np.linspace(0, 1, 7))
    assert ints.clip(np.float64(3.6)) == 4 and type(ints.clip(np.float64(3.6))) is int
    assert ints.clip(-4) == 0 and ints.clip(99) == 10
    assert ints.coerce(np.int64(3)) == 3 and type(ints.coerce(np.int64(3))) is int
    assert ints.coerce(4.0) == 4 and type(ints.coerce(4.0)) is int
    with pytest.raises(ValueError, match="not in the search space"):
        ints.coerce(4.5)
    choices = SearchSpace("choice", choices=("a", "b", "c"))
    assert [choices.to_unit(c) for c in "abc"] == [0.0, 0.5, 1.0]
    assert choices.from_unit(0.5) == "b"
    booleans = SearchSpace("boolean")
    assert booleans.choices == (False, True)
    assert booleans.from_unit(1.0) is True and booleans.coerce(np.bool_(False)) is False
    rng = np.random.default_rng(0)
    samples = [ints.sample(rng) for _ in range(300)]
    assert set(samples) == set(range(11)) and all(type(s) is int for s in samples)
    assert {booleans.sample(rng) for _ in range(50)} == {False, True}


def test_contains_is_as_strict_as_validate_value() -> None:
    ints = SearchSpace("integer", 0, 3)
    assert ints.contains(2) and not ints.contains(2.0) and not ints.contains(True)
    assert not ints.contains(4) and not ints.contains("2")
    floats = SearchSpace("float", 0.0, 1.0)
    assert floats.contains(1) and floats.contains(0.5) and not floats.contains(True)
    assert not floats.contains(math.nan) and not floats.contains(1.5)
    booleans = SearchSpace("boolean")
    assert booleans.contains(True) and not booleans.contains(1)
    choices = SearchSpace("choice", choices=("a", "b"))
    assert choices.contains("a") and not choices.contains("c")


def test_space_construction_errors() -> None:
    with pytest.raises(ValueError, match="low 2 is greater than high 1"):
        SearchSpace("integer", 2, 1)
    with pytest.raises(ValueError, match="integer bounds must be integers"):
        SearchSpace("integer", 0, 1.5)
    with pytest.raises(ValueError, match="duplicate"):
        SearchSpace("choice", choices=("a", "a"))
    with pytest.raises(ValueError, match="finite width"):
        SearchSpace("float", -1e308, 1e308)


@settings(max_examples=60, deadline=None)
@given(u=st.floats(-2, 3), low=st.integers(-10**6, 10**6), width=st.integers(0, 10**6))
def test_from_unit_and_clip_always_land_in_the_space(u: float, low: int, width: int) -> None:
    for space in (SearchSpace("integer", low, low + width),
                  SearchSpace("float", float(low), float(low + width))):
        value = space.from_unit(u)
        assert space.contains(value) and type(value) is EXACT_TYPE[space.type]
        assert space.contains(space.clip(low + u * width))


# --------------------------------------------------------------------- BaseOptimizer


def test_unknown_config_keys_are_refused_listing_the_allowed_ones() -> None:
    space = SearchSpace("float", 0.0, 1.0, name="t")
    with pytest.raises(ValueError, match=r"'t'.*unknown optimizer_config key\(s\) 'n_ponts'") as e:
        GridSearch(space, {"n_ponts": 3})
    for key in ("n_points", "choices", *RUNNER_CONFIG_KEYS):
        assert key in str(e.value)
    with pytest.raises(ValueError, match=r"'kappa_'.*allowed: acquisition_function"):
        BayesianOptimizer(space, {"kappa_": 1.0})
    # The runner's keys are always accepted.
    RandomSearch(space, {"metric": "acc", "mode": "min", "seed": 1, "bounds": (0, 1),
                         "patience": 3})


def test_tell_checks_value_and_score() -> None:
    optimizer = RandomSearch(SearchSpace("float", 0.0, 1.0, name="t"))
    with pytest.raises(ValueError, match=r"'t'.*nothing to recommend"):
        optimizer.recommend()
    with pytest.raises(ValueError, match=r"'t': 3.0 is not in the search space"):
        optimizer.tell(3.0, 1.0)
    with pytest.raises(ValueError, match=r"score for 0.5 must be a finite number, got nan"):
        optimizer.tell(0.5, math.nan)
    optimizer.tell(np.float64(0.5), np.float32(2.0))
    assert optimizer.history == [(0.5, 2.0)]
    assert type(optimizer.history[0][0]) is float and type(optimizer.history[0][1]) is float


def test_default_converged_rule_uses_patience() -> None:
    optimizer = RandomSearch(SearchSpace("float", 0.0, 1.0), {"patience": 3})
    scores = [0.1, 0.5, 0.9, 0.92, 0.93, 0.93]
    verdicts = []
    for i, score in enumerate(scores):
        optimizer.tell(i / 10, score)
        verdicts.append(optimizer.converged(0.05))
    # Needs patience + 1 = 4 tells. Over the last 3 tells the best rose: at 4 tells from
    # 0.1 to 0.92, at 5 from 0.5 to 0.93, at 6 from 0.9 to 0.93 (less than 0.05).
    assert verdicts == [False, False, False, False, False, True]
    assert not optimizer.converged(0.005)
    assert optimizer.recommend() == 0.4 and optimizer.best == (0.4, 0.93)


@pytest.mark.parametrize("config", [{"patience": 0}, {"patience": 2.5}])
def test_bad_patience_is_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"optimizer_config\['patience'\] must be an integer"):
        RandomSearch(SearchSpace("boolean"), config)


# ------------------------------------------------------------------------------ grid


def test_float_grid_includes_both_ends_in_order_then_is_done() -> None:
    grid = GridSearch(SearchSpace("float", 0.0, 2.0), {"n_points": 5})
    values = drive(grid, lambda v: -abs(v - 1.4), 100)
    assert values == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert all(type(v) is float for v in values)
    assert grid.done and grid.recommend() == 1.5
    assert not grid.converged(1e9)
    with pytest.raises(ValueError, match="exhausted"):
        grid.ask()


def test_integer_grid_is_unique_rounded_values() -> None:
    assert GridSearch(SearchSpace("integer", 0, 10), {"n_points": 4}).points == [0, 3, 7, 10]
    dense = GridSearch(SearchSpace("integer", 0, 10), {"n_points": 40}).points
    assert dense == list(range(11)) and all(type(v) is int for v in dense)
    assert GridSearch(SearchSpace("integer", 0, 10)).points == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert GridSearch(SearchSpace("float", 0.0, 2.0), {"n_points": 1}).points == [1.0]


def test_grid_defaults_to_every_choice() -> None:
    assert GridSearch(SearchSpace("boolean")).points == [False, True]
    choices = SearchSpace("choice", choices=("x", "y", "z"))
    grid = GridSearch(choices)
    assert drive(grid, lambda v: 0.0, 10) == ["x", "y", "z"] and grid.done


def test_grid_explicit_choices_are_validated_and_converted() -> None:
    floats = SearchSpace("float", 0.0, 2.0, name="t")
    grid = GridSearch(floats, {"choices": [0.5, 1, 1.5, 1]})
    assert grid.points == [0.5, 1.0, 1.5] and type(grid.points[1]) is float
    with pytest.raises(ValueError, match=r"'t': grid choice 3.0 is not valid"):
        GridSearch(floats, {"choices": [1.0, 3.0]})
    with pytest.raises(ValueError, match=r"grid choice 'nope' is not valid"):
        GridSearch(SearchSpace("choice", choices=("a", "b")), {"choices": ["a", "nope"]})
    with pytest.raises(ValueError, match="non-empty list"):
        GridSearch(floats, {"choices": []})
    with pytest.raises(ValueError, match="not both"):
        GridSearch(floats, {"choices": [1.0], "n_points": 3})
    with pytest.raises(ValueError, match=r"n_points'\] must be an integer >= 1"):
        GridSearch(floats, {"n_points": 0})


# ---------------------------------------------------------------------------- random


def test_random_search_is_seeded_and_uniform() -> None:
    space = SearchSpace("float", -1.0, 1.0)
    first = drive(RandomSearch(space, seed=5), lambda v: 0.0, 200)
    assert first == drive(RandomSearch(space, seed=5), lambda v: 0.0, 200)
    assert first != drive(RandomSearch(space, seed=6), lambda v: 0.0, 200)
    assert -0.15 < float(np.mean(first)) < 0.15 and min(first) < -0.9 and max(first) > 0.9


# -------------------------------------------------------------------------- bayesian


def smooth(x: float) -> float:
    """Global max near x = 1.361 on [0, 2] (0.92), a local max near 0.351 (0.70)."""
    return (math.exp(-((x - 1.35) ** 2) / 0.08) + 0.6 * math.exp(-((x - 0.35) ** 2) / 0.02)
            + 0.1 * math.sin(4.0 * x))


SMOOTH_ARGMAX = float(max(np.linspace(0.0, 2.0, 20001), key=smooth))


def test_bayesian_is_reproducible_from_its_seed() -> None:
    space = SearchSpace("float", 0.0, 2.0)
    runs = [drive(BayesianOptimizer(space, seed=seed), smooth, 12) for seed in (11, 11, 12)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_bayesian_initial_points_are_a_latin_hypercube() -> None:
    space = SearchSpace("float", 0.0, 2.0)
    first = drive(BayesianOptimizer(space, seed=4), smooth, 5)
    assert sorted(int(space.to_unit(x) * 5) for x in first) == [0, 1, 2, 3, 4]
    more = drive(BayesianOptimizer(space, {"n_initial_points": 8}, seed=4), smooth, 8)
    assert sorted(int(space.to_unit(x) * 8) for x in more) == list(range(8))


@pytest.mark.parametrize("acquisition", ["ei", "ucb", "pi"])
@pytest.mark.parametrize("seed", [0, 1])
def test_bayesian_finds_the_max_of_a_smooth_function_in_20(acquisition: str, seed: int) -> None:
    assert abs(SMOOTH_ARGMAX - 1.361) < 0.001  # the global max, not the local one
    optimizer = BayesianOptimizer(SearchSpace("float", 0.0, 2.0),
                                  {"acquisition_function": acquisition}, seed=seed)
    drive(optimizer, smooth, 20)
    assert abs(optimizer.recommend() - SMOOTH_ARGMAX) < 0.03


def test_bayesian_acquisition_config_is_checked() -> None:
    space = SearchSpace("float", 0.0, 1.0, name="t")
    with pytest.raises(
        ValueError, match=r"'t': unknown acquisition_function 'poi' \(expected one of ei, ucb, pi\)"
    ):
        BayesianOptimizer(space, {"acquisition_function": "poi"})
    with pytest.raises(ValueError, match=r"optimizer_config\['xi'\] must be a number"):
        BayesianOptimizer(space, {"xi": -1})
    with pytest.raises(ValueError, match=r"optimizer_config\['n_initial_points'\]"):
        BayesianOptimizer(space, {"n_initial_points": 0})
    assert BayesianOptimizer(space, {"acquisition_function": "UCB", "kappa": 0.5}).kappa == 0.5


def test_bayesian_recommends_by_posterior_mean_not_the_luckiest_score() -> None:
    space = SearchSpace("float", 0.0, 2.0)
    optimizer = BayesianOptimizer(space, seed=0)
    noise = np.random.default_rng(0)
    for x in np.linspace(0.0, 2.0, 21):
        optimizer.tell(float(x), -((x - 1.0) ** 2) + float(noise.normal(0.0, 0.05)))
    optimizer.tell(0.2, 0.3)  # a lucky score far from the optimum
    assert optimizer.best == (0.2, 0.3)
    assert abs(optimizer.recommend() - 1.0) <= 0.1


def test_bayesian_integer_space_never_repeats_until_exhausted() -> None:
    space = SearchSpace("integer", 0, 11)
    optimizer = BayesianOptimizer(space, seed=2)
    values = drive(optimizer, lambda v: -((v - 8) ** 2), 15)
    assert sorted(values[:12]) == list(range(12))
    assert all(type(v) is int for v in values)
    assert optimizer.recommend() == 8
    wide = BayesianOptimizer(SearchSpace("integer", -10**12, 10**12), seed=2)
    values = drive(wide, lambda v: -(((v - 3 * 10**11) / 1e12) ** 2), 15)
    assert all(type(v) is int for v in values) and len(set(values)) == 15
    assert abs(wide.recommend() - 3 * 10**11) < 10**11


def test_bayesian_choice_space_tries_every_choice_then_exploits() -> None:
    space = SearchSpace("choice", choices=("a", "b", "c", "d"))
    scores = {"a": 0.1, "b": 0.5, "c": 0.9, "d": 0.2}
    optimizer = BayesianOptimizer(space, seed=1)
    values = drive(optimizer, scores.__getitem__, 8)
    assert sorted(values[:4]) == ["a", "b", "c", "d"]
    assert values[4:] == ["c"] * 4 and optimizer.recommend() == "c"


# -------------------------------------------------------------------------- gradient


def quadratic(x: float) -> float:
    return -((x - 1.3) ** 2)


@pytest.mark.parametrize("method", ["finite_difference", "spsa"])
def test_gradient_climbs_a_concave_quadratic(method: str) -> None:
    space = SearchSpace("float", 0.0, 2.0)
    optimizer = GradientOptimizer(space, {"method": method, "initial_value": 0.2}, seed=0,
                                  max_iterations=40)
    values = drive(optimizer, quadratic, 40)
    assert values[0] == 0.2
    assert abs(optimizer.recommend() - 1.3) < abs(0.2 - 1.3)
    assert abs(optimizer.recommend() - 1.3) < 0.02
    assert optimizer.converged(1e-3)


def test_finite_difference_cycle_is_probe_probe_step() -> None:
    optimizer = GradientOptimizer(SearchSpace("float", 0.0, 2.0))
    values = drive(optimizer, quadratic, 4)
    # start at the middle, probes at +-0.01 of the range, then 0.1 x the unit gradient.
    assert values[:3] == pytest.approx([1.0, 1.02, 0.98])
    unit_gradient = (quadratic(1.02) - quadratic(0.98)) / 0.02
    assert values[3] == pytest.approx(2.0 * (0.5 + 0.1 * unit_gradient))


def test_gradient_starts_from_a_value_told_before_the_first_ask() -> None:
    optimizer = GradientOptimizer(SearchSpace("float", 0.0, 2.0))
    optimizer.tell(1.8, quadratic(1.8))
    assert [optimizer.ask(), optimizer.ask()] == pytest.approx([1.82, 1.78])


def test_gradient_on_integers_probes_at_least_one_apart_and_moves() -> None:
    space = SearchSpace("integer", 0, 40)
    optimizer = GradientOptimizer(space, {"initial_value": 5}, seed=0)
    values = drive(optimizer, lambda v: -((v - 23) ** 2) / 400.0, 45)
    assert all(type(v) is int for v in values)
    assert values[:3] == [5, 6, 4]
    assert optimizer.recommend() == 23


def test_gradient_shrinks_a_learning_rate_too_large_for_the_scores() -> None:
    optimizer = GradientOptimizer(SearchSpace("float", 0.0, 2.0), {"learning_rate": 50.0})
    values = drive(optimizer, lambda v: -1000.0 * (v - 0.3) ** 2, 45)
    assert abs(optimizer.recommend() - 0.3) < 0.01
    assert values.count(2.0) + values.count(0.0) <= 4  # no bouncing between the bounds


def test_gradient_refuses_discrete_spaces_and_bad_config() -> None:
    with pytest.raises(ValueError, match=r"'style'.*needs a float or integer variable, not choice"):
        GradientOptimizer(SearchSpace("choice", choices=("a", "b"), name="style"))
    with pytest.raises(ValueError, match=r"'flag'.*not boolean"):
        make_optimizer("gradient", SearchSpace("boolean", name="flag"))
    space = SearchSpace("float", 0.0, 1.0)
    with pytest.raises(ValueError, match=r"unknown gradient method 'newton'"):
        GradientOptimizer(space, {"method": "newton"})
    with pytest.raises(ValueError, match=r"optimizer_config\['learning_rate'\]"):
        GradientOptimizer(space, {"learning_rate": 0})
    with pytest.raises(ValueError, match=r"optimizer_config\['momentum'\]"):
        GradientOptimizer(space, {"momentum": 1.0})
    with pytest.raises(ValueError, match="not in the search space"):
        GradientOptimizer(space, {"initial_value": 2.0})


# -------------------------------------------------------------------------- registry


class Halving(BaseOptimizer):
    name = "halving"
    config_keys = frozenset({"start"})

    def ask(self) -> Any:
        return self.space.clip(self.config.get("start", 1.0) / 2 ** len(self.history))


def test_custom_optimizer_registered_and_used(clean_registry: None) -> None:
    register_optimizer("halving", Halving)
    assert get_optimizer("halving") is Halving
    assert "halving" in optimizer_names() and set(BUILTINS) <= set(optimizer_names())
    optimizer = make_optimizer("halving", SearchSpace("float", 0.0, 1.0), {"start": 0.8})
    assert drive(optimizer, lambda v: -v, 3) == [0.8, 0.4, 0.2]
    assert optimizer.recommend() == 0.2

    class Other(Halving):
        pass

    register_optimizer("halving", Other)  # a custom name may be replaced
    assert get_optimizer("halving") is Other


def test_registry_refusals(clean_registry: None) -> None:
    with pytest.raises(TypeError, match=r"optimizer 'mine' must be a subclass of BaseOptimizer"):
        register_optimizer("mine", dict)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a subclass of BaseOptimizer"):
        register_optimizer("mine", object())  # type: ignore[arg-type]
    for name in BUILTINS:
        with pytest.raises(ValueError, match=rf"'{name}' belongs to a built-in optimizer"):
            register_optimizer(name, Halving)
        with pytest.raises(ValueError, match="built-in"):
            check_optimizer_class(name, Halving)
    for bad in ("", "  ", 3):
        with pytest.raises(ValueError, match="non-empty string"):
            register_optimizer(bad, Halving)  # type: ignore[arg-type]
    assert get_optimizer("bayesian") is BayesianOptimizer
    assert "mine" not in optimizer_names()


def test_unknown_optimizer_name_lists_the_known_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown optimizer 'annealing' \(known: bayesian, gradient, "
        r"grid_search, random"
    ):
        get_optimizer("annealing")


def test_builtin_registry_names_match_the_classes() -> None:
    assert {name: get_optimizer(name) for name in BUILTINS} == {
        "bayesian": BayesianOptimizer, "gradient": GradientOptimizer,
        "grid_search": GridSearch, "random": RandomSearch,
    }
    assert all(get_optimizer(name).name == name for name in BUILTINS)
