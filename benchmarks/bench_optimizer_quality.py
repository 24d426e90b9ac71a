"""Owns the optimizer quality benchmark: how many noisy evaluations each built-in optimizer
needs before its recommendation is near the optimum of a 1-d function with a decoy.

No server: the optimizers are pure algorithms (``dspex_rx.client.optimization``), driven here by the
same ask/tell loop the runner uses, so the figures measure search quality only.

Objective, on ``x`` in ``[0, 2]`` (a float variable with min 0 and max 2)::

    f(x) = -(x - 1.3)**2 + 0.5 * exp(-((x - 0.4) / 0.1)**2) + noise,  noise ~ N(0, 0.02**2)

The global maximum is at ``x = 1.3`` (f = 0). The bump makes a real local maximum at
``x ~ 0.418`` (f ~ -0.29), a basin a local method can get stuck in. Near the optimum the
function is flat compared with the noise: ``f(1.25) = -0.0025`` while the noise has sd 0.02,
so picking the best *noisy* score is not enough to land within 0.05. Each seed draws its
noise from its own generator (``default_rng([seed, 1])``), the same stream for every method;
the optimizer gets ``seed`` too.

For each of ``--seeds`` (50) seeds and each method, the loop runs up to ``--evaluations``
(60) ask/tell rounds (a grid stops when it is exhausted) and reads ``recommend()`` after
every tell. A run *hits* at the first evaluation count whose recommendation is within
``--tolerance`` (0.05) of 1.3. Methods: ``bayesian`` (defaults: EI, 5 Latin-hypercube
initial points), ``grid_search`` with ``n_points`` 21 (step 0.1, 1.3 is the 14th point)
and 41 (step 0.05, 1.3 is the 27th point), and ``random``.

Figures (one JSON line each, ``"bench": "optimizer_quality"``):

* per method, ``metric``: ``success_rate`` (hit within ``--budget`` = 25 evaluations, the
  issue's criterion), ``median_evaluations`` and ``mean_evaluations`` to the first hit
  (a run that never hits within the evaluation limit counts as ``evaluations + 1`` = 61;
  ``failures`` gives how many), ``at_budget_rate`` (share of runs whose recommendation *at*
  evaluation 25 is within tolerance: an early lucky hit that is later abandoned does not
  count), ``stay_rate`` (share of runs whose recommendation is within tolerance at every
  evaluation from the 25th to the last) and ``seconds``.
* ``metric: goal``: bayesian ``success_rate >= 0.9`` and its median below grid_search's (both
  grids) and random's; ``meets_goal``.

Run::

    .venv/bin/python benchmarks/bench_optimizer_quality.py            # about 20 s on 2 cores
    .venv/bin/python benchmarks/bench_optimizer_quality.py --quick    # 10 seeds, a smoke test
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _common import emit, environment, make_note, require_positive

from dspex_rx.client.optimization.optimizers import SearchSpace, make_optimizer

OPTIMUM = 1.3
NOISE_SD = 0.02
GOAL_SUCCESS_RATE = 0.9
BENCH = "optimizer_quality"

note = make_note("optimizer_quality")


def objective_mean(x: float) -> float:
    """The noiseless objective: global max at 1.3, local max near 0.418."""
    return -((x - OPTIMUM) ** 2) + 0.5 * math.exp(-(((x - 0.4) / 0.1) ** 2))


def methods() -> dict[str, tuple[str, dict[str, Any]]]:
    """Label -> (registered optimizer name, optimizer_config)."""
    return {
        "bayesian": ("bayesian", {}),
        "grid_search_21": ("grid_search", {"n_points": 21}),
        "grid_search_41": ("grid_search", {"n_points": 41}),
        "random": ("random", {}),
    }


def run_seed(space: SearchSpace, optimizer_name: str, config: dict[str, Any], seed: int,
              evaluations: int, tolerance: float) -> list[bool]:
    """Run one seed; return, per evaluation, whether ``recommend()`` was within tolerance."""
    optimizer = make_optimizer(optimizer_name, space, config, seed=seed,
                               max_iterations=evaluations)
    noise = np.random.default_rng([seed, 1])
    within: list[bool] = []
    for _ in range(evaluations):
        if optimizer.done:
            break
        x = optimizer.ask()
        optimizer.tell(x, objective_mean(x) + float(noise.normal(0.0, NOISE_SD)))
        within.append(abs(optimizer.recommend() - OPTIMUM) <= tolerance)
    # An exhausted grid keeps its last recommendation for the remaining evaluations.
    within.extend([within[-1]] * (evaluations - len(within)))
    return within


def summarize(label: str, optimizer_name: str, config: dict[str, Any],
              runs: list[list[bool]], args: argparse.Namespace, seconds: float,
              ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    failed = args.evaluations + 1
    hits = [next((i + 1 for i, ok in enumerate(run) if ok), failed) for run in runs]
    successes = sum(h <= args.budget for h in hits)
    at_budget = sum(run[args.budget - 1] for run in runs)
    # Stays: within tolerance at the budget and at every later evaluation.
    stays = sum(all(run[args.budget - 1:]) for run in runs)
    median = statistics.median(hits)
    mean = statistics.fmean(hits)
    base = {"bench": BENCH, "method": label, "optimizer": optimizer_name, "config": config,
            "seeds": len(runs), "evaluations": args.evaluations, "budget": args.budget,
            "tolerance": args.tolerance}
    failures = sum(h == failed for h in hits)
    records = [
        {**base, "metric": "success_rate", "value": round(successes / len(runs), 3),
         "unit": f"share of seeds within {args.tolerance} by evaluation {args.budget}"},
        {**base, "metric": "median_evaluations",
         "value": median if median < failed else f">{args.evaluations}",
         "failures": failures, "failures_counted_as": failed},
        {**base, "metric": "mean_evaluations", "value": round(mean, 2), "failures": failures,
         "failures_counted_as": failed},
        {**base, "metric": "at_budget_rate", "value": round(at_budget / len(runs), 3),
         "unit": f"share of seeds whose recommendation at evaluation {args.budget} is within "
                 f"{args.tolerance}"},
        {**base, "metric": "stay_rate", "value": round(stays / len(runs), 3),
         "unit": f"share of seeds within {args.tolerance} from evaluation {args.budget} on"},
        {**base, "metric": "seconds", "value": round(seconds, 3)},
    ]
    return records, {"success_rate": successes / len(runs), "median": float(median)}


def run(args: argparse.Namespace, out: Callable[[dict[str, Any]], None]) -> bool:
    space = SearchSpace.from_variable("x", "float", {"min": 0.0, "max": 2.0})
    figures: dict[str, dict[str, float]] = {}
    for label, (optimizer_name, config) in methods().items():
        started = time.perf_counter()
        runs = [run_seed(space, optimizer_name, config, seed, args.evaluations, args.tolerance)
                for seed in range(args.seeds)]
        seconds = time.perf_counter() - started
        note(f"{label}: {args.seeds} seeds in {seconds:.1f} s")
        records, figures[label] = summarize(label, optimizer_name, config, runs, args, seconds)
        for record in records:
            out(record)
    bayes = figures["bayesian"]
    others = {label: f["median"] for label, f in figures.items() if label != "bayesian"}
    met = bayes["success_rate"] >= GOAL_SUCCESS_RATE and all(
        bayes["median"] < median for median in others.values()
    )
    out({
        "bench": BENCH, "method": "bayesian", "metric": "goal",
        "goal": f"bayesian success_rate >= {GOAL_SUCCESS_RATE} within {args.budget} "
                "evaluations and median evaluations below grid_search's and random's",
        "success_rate": round(bayes["success_rate"], 3),
        "median_evaluations": bayes["median"],
        "other_medians": others,
        "meets_goal": met,
    })
    return met


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Optimizer quality on a noisy 1-d function with a decoy local maximum: "
            "evaluations until recommend() is within tolerance of the optimum, for "
            "bayesian, grid_search and random. One JSON line per figure."
        ),
    )
    parser.add_argument("--seeds", type=int, default=50, help="seeds per method (default 50)")
    parser.add_argument("--evaluations", type=int, default=60,
                        help="ask/tell rounds per run (default 60)")
    parser.add_argument("--budget", type=int, default=25,
                        help="evaluations allowed for a success (default 25)")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="distance from the optimum that counts as found (default 0.05)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 seeds")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = 10
    require_positive(parser, args, "seeds", "evaluations", "budget")
    if args.budget > args.evaluations:
        parser.error("--budget must not exceed --evaluations")
    if args.tolerance <= 0:
        parser.error("--tolerance must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    emit(environment())
    run(args, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
