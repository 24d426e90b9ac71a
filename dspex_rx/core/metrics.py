"""Reading an evaluation's result into metrics and one target score.

Shared: the store checks reported metrics with it, a client run its objective's results.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from dspex_rx.errors import InvalidValueError


def score_of(
    name: str, result: Any, metric: str | None, iteration: int, source: str = "the objective"
) -> tuple[dict[str, Any], float]:
    """Read an evaluation: a number, or a dict of metrics whose target is ``metric`` (or
    its only numeric entry, or ``'score'``). Returns (metrics, target). The store checks
    reports with it, the run its objective's results; ``source`` names the evaluator.

    >>> score_of("t", {"accuracy": 0.9, "latency": 1.2}, "accuracy", 1)
    ({'accuracy': 0.9, 'latency': 1.2}, 0.9)
    >>> score_of("t", 0.5, None, 1)
    ({'score': 0.5}, 0.5)
    """
    where = f"variable {name!r}, iteration {iteration}: {source}"
    if isinstance(result, Mapping):
        metrics = {key: _plain(value) for key, value in result.items()}
        if metric is not None:
            if metric not in metrics:
                raise InvalidValueError(
                    f"{where} returned no {metric!r} metric (it returned "
                    f"{', '.join(map(repr, metrics)) or 'nothing'})"
                )
            target = metrics[metric]
        elif "score" in metrics:
            target = metrics["score"]
        else:
            numeric = [k for k, v in metrics.items() if is_number(v)]
            if len(numeric) != 1:
                raise InvalidValueError(
                    f"{where} returned several metrics ({', '.join(map(repr, metrics))}): "
                    "name the target with optimizer_config['metric']"
                    if numeric else f"{where} returned no numeric metric"
                )
            target = metrics[numeric[0]]
    elif is_number(result):
        target = float(result)
        metrics = {metric or "score": target}
    else:
        raise InvalidValueError(
            f"{where} must return a number or a dict of metrics, got {type(result).__name__}"
        )
    if not is_number(target) or not math.isfinite(float(target)):
        raise InvalidValueError(f"{where} returned a target metric that is not a finite "
                                f"number: {target!r}")
    return metrics, float(target)


def is_number(value: Any) -> bool:
    """A real number that can be a score (numpy scalars are; bools are not).

    >>> is_number(np.float32(0.5)), is_number(True)
    (True, False)
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
