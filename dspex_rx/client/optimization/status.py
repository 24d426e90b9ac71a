"""Optimization status dicts from the wire or an event, and the checks of a run's config
(mode, metric, objective, end reason) that the session and the run share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import trio

from dspex_rx.errors import InvalidValueError
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import timestamp, utc_datetime

Objective = Callable[[Any], Any]
STATUS_TIMES = ("started_at", "last_update", "expires_at", "ended_at")
MAX_REASON = 4096


def status_from_pb(status: pb.OptimizationStatus, revision: int) -> dict[str, Any]:
    """The status dict ``get_optimization_status`` returns, from the wire.

    Keys: ``variable``, ``is_optimizing``, ``optimization_id`` (None if never optimized),
    ``optimizer_type``, ``state`` (``idle``, ``running``, ``completed``, ``stopped``,
    ``expired``, ``failed``), ``iteration``, ``max_iterations``, ``best_value``,
    ``best_metrics``, ``best_score`` (the target metric of the best iteration),
    ``minimize``, ``final_value`` (what the run wrote when it ended: the optimizer's
    recommendation, which for a noisy objective may differ from ``best_value``),
    ``started_at``, ``last_update``, ``expires_at``, ``ended_at`` (timezone-aware UTC
    ``datetime``s), ``end_reason``, ``holder_session``, ``holder_client``,
    ``ttl_seconds``, ``revision``; for a run evaluated by reports (``takes_reports``):
    ``proposal_iteration`` and ``proposal_version`` (the proposal a report must name),
    ``awaiting_report``, ``report_metrics`` (the current proposal's report, or None) and
    ``reported_by``.

    >>> status_from_pb(pb.OptimizationStatus(name="t"), 7)["state"]
    'idle'
    """
    if not status.optimization_id:
        return {
            "variable": status.name, "is_optimizing": False, "optimization_id": None,
            "optimizer_type": None, "state": "idle", "iteration": 0, "max_iterations": 0,
            "best_value": None, "best_metrics": {}, "best_score": None, "started_at": None,
            "last_update": None, "expires_at": None, "ended_at": None, "end_reason": "",
            "holder_session": None, "holder_client": None, "ttl_seconds": None,
            "minimize": False, "final_value": None, "takes_reports": False,
            "proposal_iteration": 0, "proposal_version": 0, "awaiting_report": False,
            "report_metrics": None, "reported_by": "", "revision": revision,
        }
    return _with_awaiting({
        "variable": status.name,
        "is_optimizing": status.is_optimizing,
        "optimization_id": status.optimization_id,
        "optimizer_type": status.optimizer_type,
        "state": status.state,
        "iteration": status.iteration,
        "max_iterations": status.max_iterations,
        "best_value": codec.decode(status.best_value) if status.has_best else None,
        "best_metrics": codec.decode_map(status.best_metrics) if status.has_best else {},
        "best_score": status.best_score if status.has_best else None,
        "minimize": status.minimize,
        "final_value": codec.decode(status.final_value) if status.has_final else None,
        "started_at": utc_datetime(status.started_at),
        "last_update": utc_datetime(status.last_update),
        "expires_at": utc_datetime(status.expires_at),
        "ended_at": utc_datetime(status.ended_at) if status.HasField("ended_at") else None,
        "end_reason": status.end_reason,
        "holder_session": status.holder_session,
        "holder_client": status.holder_client,
        "ttl_seconds": status.ttl_seconds,
        "takes_reports": status.takes_reports,
        "proposal_iteration": status.proposal_iteration,
        "proposal_version": status.proposal_version,
        "report_metrics": codec.decode_map(status.report_metrics) if status.has_report
        else None,
        "reported_by": status.reported_by,
        "revision": revision,
    })


def status_from_event(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The status dict of an optimization event (its metadata is the store's status, times
    in POSIX seconds): the keys and types of ``status_from_pb``.

    >>> status = status_from_event({"is_optimizing": True, "takes_reports": True,
    ...                             "proposal_iteration": 1, "report_metrics": None,
    ...                             "started_at": 0.0})
    >>> status["awaiting_report"], status["started_at"].isoformat()
    (True, '1970-01-01T00:00:00+00:00')
    """
    status = dict(metadata)
    for key in STATUS_TIMES:
        if isinstance(status.get(key), int | float):
            status[key] = utc_datetime(timestamp(float(status[key])))
    return _with_awaiting(status)


def _with_awaiting(status: dict[str, Any]) -> dict[str, Any]:
    # Derived, not stored: the run waits for the current proposal's report.
    status["awaiting_report"] = bool(
        status.get("is_optimizing") and status.get("takes_reports")
        and status.get("proposal_iteration") and status.get("report_metrics") is None
    )
    return status


def check_mode(name: str, config: Mapping[str, Any]) -> str:
    """``optimizer_config['mode']``: ``'max'`` (default) or ``'min'``.

    >>> check_mode("t", {"mode": "min"})
    'min'
    """
    mode = config.get("mode", "max")
    if mode not in ("max", "min"):
        raise InvalidValueError(
            f"variable {name!r}: optimizer_config['mode'] must be 'max' or 'min', got {mode!r}"
        )
    return str(mode)


def check_metric(name: str, config: Mapping[str, Any]) -> str | None:
    """``optimizer_config['metric']``: the name of the target metric in a metrics dict,
    or None.

    >>> check_metric("t", {"metric": "accuracy"})
    'accuracy'
    """
    metric = config.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise InvalidValueError(f"variable {name!r}: optimizer_config['metric'] must be a string")
    return metric


def end_reason(text: str) -> str:
    r"""An end reason the server takes: bounded, and valid UTF-8 (an error message may
    carry a lone surrogate from a file name).

    >>> end_reason("bad \udcff name")
    'bad ? name'
    """
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


INTERRUPTED = "cancelled: interrupted (Ctrl-C), or its holder's session closed"


def interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is a cancellation (``trio.Cancelled``, ``KeyboardInterrupt``, or a
    group of only those) rather than a failure: a run ended by it is ``stopped``.

    >>> interrupted(KeyboardInterrupt()), interrupted(ValueError("bad"))
    (True, False)
    """
    kinds = (KeyboardInterrupt, trio.Cancelled)
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(kinds)[1] is None
    return isinstance(exc, kinds)


def as_objective(objective: Any, name: str) -> Objective | None:
    """Check ``objective`` is callable, or None (then each proposal's evaluation is
    reported: ``report_metrics`` or a metric variable).

    >>> as_objective(None, "temperature") is None
    True
    """
    if objective is not None and not callable(objective):
        raise InvalidValueError(f"variable {name!r}: objective must be callable")
    return objective  # type: ignore[no-any-return]
