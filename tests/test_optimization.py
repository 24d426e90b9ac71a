"""Optimization end to end: server leases with TTL and fencing tokens, stop from another
connection, a holder that dies, status and history, live progress, the built-in and custom
optimizers through the real server."""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import trio
from helpers import drain, settle, unavailable
from optimization_helpers import (
    FLOAT,
    FakeClock,
    Gate,
    breakable,
    open_pair,
    report_proposals,
)

import dspex_rx
from dspex_rx import BaseOptimizer, OptimizationLockedError
from dspex_rx.core.types import check_constraints, validate_value
from dspex_rx.server import EmbeddedServer
from dspex_rx.store import MemoryStore, VariableSpec
from dspex_rx.wire.convert import seconds, since_seconds, timestamp, utc_datetime


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def clocked(clock: FakeClock) -> Iterator[EmbeddedServer]:
    # The sweep never runs on its own: the test calls store.expire() after moving the clock.
    store = MemoryStore(clock=clock, lease_ttl=5.0)
    with EmbeddedServer(store=store, expire_interval=3600.0) as embedded:
        yield embedded


@pytest.fixture
async def pair(
    clocked: EmbeddedServer,
) -> AsyncIterator[tuple[dspex_rx.SessionContext, dspex_rx.SessionContext]]:
    async with open_pair(clocked.target) as ab:
        yield ab


async def optimization_writes(session: dspex_rx.SessionContext, name: str) -> list[int]:
    history = await session.get_variable_history(name, limit=1000)
    return sorted(e["version"] for e in history if "optimization_id" in e["metadata"])


# --------------------------------------------------------------------- coordination


async def test_second_start_is_refused_and_other_writes_are_locked(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    a, b = pair
    gate = Gate()
    opt_id = await a.start_optimization("t", "random", {"seed": 1}, objective=gate)
    await gate.arrived(1)
    with pytest.raises(ValueError, match="already being optimized") as refused:
        await b.start_optimization("t", "grid_search", objective=lambda v: 0.0)
    assert isinstance(refused.value, OptimizationLockedError)
    assert refused.value.optimization_id == opt_id
    with pytest.raises(OptimizationLockedError, match=f"locked for optimization by {opt_id}"):
        await b.set_variable("t", 1.0)
    with pytest.raises(OptimizationLockedError):
        await b.set_variable("t", 1.0, fencing_token=999_999)
    outcome = await b.update_variables({"t": 1.0})
    assert outcome["t"] is not True and "locked for optimization" in str(outcome["t"])
    with pytest.raises(OptimizationLockedError, match="cannot be rolled back"):
        await b.rollback_variable("t", 1)
    with pytest.raises(OptimizationLockedError, match="cannot be deleted"):
        await b.delete_variable("t")
    assert await a.stop_optimization("t", reason="test over") is None
    gate.release()
    final = await a.wait_for_optimization("t")
    assert final["state"] == "stopped" and final["end_reason"] == "test over"
    assert await b.set_variable("t", 1.0) > 1  # writable again


async def test_stop_from_another_connection_ends_the_run_and_nothing_lands_after(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    a, b = pair
    gate = Gate()
    seen: list[int] = []
    await a.start_optimization(
        "t", "random", {"seed": 3}, max_iterations=50, objective=gate,
        callback=lambda i, v, m: seen.append(i),
    )
    await gate.arrived(1)
    gate.release()
    await gate.arrived(2)  # iteration 2 is being evaluated: its proposal is written
    assert await b.stop_optimization("t", reason="enough") is None
    stopped = await b.get_optimization_status("t")
    assert stopped["is_optimizing"] is False and stopped["state"] == "stopped"
    version_at_stop = (await b.get_variables(["t"], include_metadata=True))["t"]["version"]
    gate.release()  # the holder finishes evaluating and tries to record and write more
    await a.wait_for_optimization("t")
    assert seen == [1]  # iteration 2 was never recorded, so its callback never ran
    run = a._runs[stopped["optimization_id"]]
    assert run.state == "revoked" and "no longer holds the lease" in run.end_reason
    after = await b.get_variables(["t"], include_metadata=True)
    assert after["t"]["version"] == version_at_stop
    assert max(await optimization_writes(b, "t")) <= version_at_stop
    history = await b.get_optimization_history("t")
    assert [e["iteration"] for e in history] == [1]
    with pytest.raises(ValueError, match="not being optimized"):  # nothing is running any more
        await b.stop_optimization("t")


async def test_stop_can_apply_the_best_value_in_the_same_commit(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    a, b = pair
    gate = Gate()
    await a.start_optimization("t", "grid_search", {"n_points": 5}, objective=gate)
    for n in (1, 2, 3):
        await gate.arrived(n)
        gate.release()
    await gate.arrived(4)  # 0.0, 0.5, 1.0 scored; 1.5 being evaluated
    assert await b.stop_optimization("t", apply_best=True) is None
    status = await b.get_optimization_status("t")
    assert status["best_value"] == 1.0
    assert await b.get_variable("t", bypass_cache=True) == 1.0
    gate.release()
    await a.wait_for_optimization("t")
    assert await b.get_variable("t", bypass_cache=True) == 1.0


async def test_a_stale_fencing_token_is_refused(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext], clocked: EmbeddedServer,
) -> None:
    a, b = pair
    gate = Gate()
    opt_id = await a.start_optimization("t", "random", {"seed": 2}, objective=gate)
    await gate.arrived(1)
    token = a._runs[opt_id].token
    assert await a.set_variable("t", 0.25, fencing_token=token) > 1  # the holder may write
    await b.stop_optimization("t")
    with pytest.raises(OptimizationLockedError, match=f"fencing token {token} is stale"):
        await a.set_variable("t", 0.75, fencing_token=token)
    assert await b.get_variable("t", bypass_cache=True) == 0.25
    gate.release()
    await a.wait_for_optimization("t")
    # A new lease gets a new token; the old one stays refused.
    second = await b.start_optimization("t", "random", {"seed": 2}, objective=gate)
    await gate.arrived(2)
    assert b._runs[second].token != token
    with pytest.raises(OptimizationLockedError, match=f"locked for optimization by {second}"):
        await a.set_variable("t", 0.75, fencing_token=token)
    await b.stop_optimization("t")
    gate.release()
    await b.wait_for_optimization("t")


HOLDER = r"""
import os, sys, trio, dspex_rx

async def main(target, session_id):
    async with dspex_rx.connect(target, session_id=session_id, ttl_seconds=3600,
                                token=os.environ["DSPEX_TOKEN"]) as s:
        async def objective(value):
            print("evaluating", flush=True)
            await trio.sleep_forever()
        await s.start_optimization("t", "random", {"seed": 1}, objective=objective,
                                   lease_ttl=5.0)
        await trio.sleep_forever()

trio.run(main, sys.argv[1], sys.argv[2])
"""


async def test_a_holder_that_dies_loses_the_lease_after_its_ttl(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    clocked: EmbeddedServer, clock: FakeClock,
) -> None:
    a, b = pair
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DSPEX_TOKEN": a.token or ""}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, clocked.target, a.session_id],
        stdout=subprocess.PIPE, env=env,
    )
    try:
        assert holder.stdout is not None
        line = await trio.to_thread.run_sync(holder.stdout.readline)
        assert line == b"evaluating\n"
        running = await b.get_optimization_status("t")
        assert running["is_optimizing"] and running["ttl_seconds"] == 5.0
        holder.kill()  # no goodbye: the lease is only released by its TTL
        await trio.to_thread.run_sync(holder.wait)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    with pytest.raises(OptimizationLockedError):
        await b.set_variable("t", 1.0)  # still within the TTL
    watch = b.watch_optimization("t")
    first: dict[str, Any] = await anext(watch)  # type: ignore[assignment, arg-type]
    assert first["state"] == "running"
    clock.now += 5.5
    expired_now = clocked.call(clocked.store.expire)
    assert a.session_id not in expired_now  # the session lives on through a and b
    status = await b.get_optimization_status("t")
    assert status["state"] == "expired" and status["is_optimizing"] is False
    assert "no renewal" in status["end_reason"]
    assert await b.set_variable("t", 1.0) > 1  # writable again
    await settle(b)
    states = [s["state"] for s in drain(watch)]  # type: ignore[index]
    assert states == ["expired"]
    watch.cancel()


# Guards: a run cancelled under its holder (the session closing) was reported "failed".
async def test_a_closing_holder_releases_its_lease_as_stopped(clocked: EmbeddedServer) -> None:
    async with dspex_rx.connect(clocked.target, ttl_seconds=3600) as a:
        await a.register_variable("t", "float", 0.5, constraints=FLOAT)
        async with dspex_rx.connect(clocked.target, session_id=a.session_id,
                                    token=a.token) as b:
            gate = Gate()
            await b.start_optimization("t", "random", {"seed": 1}, objective=gate)
            await gate.arrived(1)
        status = await a.get_optimization_status("t")
        assert (status["state"], status["end_reason"]) == (
            "stopped", "cancelled: interrupted (Ctrl-C), or its holder's session closed")
        assert status["is_optimizing"] is False
        assert await a.set_variable("t", 1.0) > 1


# Guards: a Ctrl-C'd optimization (KeyboardInterrupt in the program) was reported "failed".
async def test_a_ctrl_c_during_a_run_ends_it_stopped_with_the_best_so_far_written(
    clocked: EmbeddedServer,
) -> None:
    async with dspex_rx.connect(clocked.target, ttl_seconds=3600) as a:
        await a.register_variable("t", "float", 0.5, constraints=FLOAT)
        gate = Gate()
        with pytest.raises(KeyboardInterrupt):
            async with dspex_rx.connect(clocked.target, session_id=a.session_id,
                                        token=a.token) as b:
                await b.start_optimization("t", "random", {"seed": 1}, objective=gate,
                                           max_iterations=10)
                await gate.arrived(1)
                gate.release()
                await gate.arrived(2)  # iteration 1 is evaluated, 2 is under way
                raise KeyboardInterrupt  # what trio raises in the main task on Ctrl-C
        status = await a.get_optimization_status("t")
        assert status["state"] == "stopped", status
        assert status["end_reason"] == ("cancelled: interrupted (Ctrl-C), or its holder's "
                                        "session closed")
        assert status["iteration"] == 1 and status["best_value"] == gate.entered[0]
        # Stopped is not failed: the recommendation (the one evaluated value) was written.
        assert status["final_value"] == gate.entered[0]
        assert await a.get_variable("t", bypass_cache=True) == gate.entered[0]


# Guards: a lease block left by Ctrl-C or cancellation was released as "failed".
async def test_a_lease_block_left_by_cancellation_ends_stopped_and_by_an_error_failed(
    clocked: EmbeddedServer,
) -> None:
    async with dspex_rx.connect(clocked.target, ttl_seconds=3600) as a:
        await a.register_variable("t", "float", 0.5, constraints=FLOAT)
        with trio.CancelScope() as scope:
            async with a.optimization_lease("t", "manual") as lease:
                await lease.write(0.2, iteration=1)
                scope.cancel()
                await trio.sleep_forever()
        stopped = await a.get_optimization_status("t")
        assert (stopped["state"], stopped["end_reason"]) == (
            "stopped", "cancelled: interrupted (Ctrl-C), or its holder's session closed")
        with pytest.raises(RuntimeError, match="boom"):
            async with a.optimization_lease("t", "manual"):
                raise RuntimeError("boom")
        failed = await a.get_optimization_status("t")
        assert (failed["state"], failed["end_reason"]) == ("failed", "RuntimeError: boom")


# ------------------------------------------------------------- status and history


async def test_callback_sees_every_iteration_in_order_and_status_tells_the_run(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("q", "float", 0.0, constraints={"min": -1.0, "max": 1.0})
    seen: list[tuple[int, float, dict[str, Any]]] = []
    started = datetime.now(UTC)

    async def callback(iteration: int, value: float, metrics: dict[str, Any]) -> None:
        status = await session.get_optimization_status("q")
        assert status["iteration"] == iteration  # recorded before the callback runs
        seen.append((iteration, value, metrics))

    opt_id = await session.start_optimization(
        "q", "grid_search", {"n_points": 5, "metric": "loss", "mode": "min"},
        objective=lambda v: {"loss": (v - 0.5) ** 2, "abs": abs(v)}, callback=callback,
    )
    final = await session.wait_for_optimization("q")
    assert [i for i, _, _ in seen] == [1, 2, 3, 4, 5]
    assert [v for _, v, _ in seen] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert seen[3][2] == {"loss": 0.0, "abs": 0.5}
    assert final["optimization_id"] == opt_id and final["state"] == "completed"
    assert final["end_reason"] == "the search space is exhausted"
    assert final["best_value"] == 0.5 and final["best_score"] == 0.0
    assert final["best_metrics"] == {"loss": 0.0, "abs": 0.5} and final["minimize"] is True
    assert final["iteration"] == 5 and final["optimizer_type"] == "grid_search"
    times = [final[key] for key in ("started_at", "last_update", "ended_at", "expires_at")]
    assert all(isinstance(t, datetime) and t.tzinfo is UTC for t in times)
    assert started <= final["started_at"] <= final["last_update"] <= final["ended_at"]
    assert await session.get_variable("q") == 0.5  # the best is written at the end
    assert final["final_value"] == 0.5
    history = await session.get_optimization_history("q")
    assert [e["iteration"] for e in history] == [1, 2, 3, 4, 5]
    assert [e["score"] for e in history] == [2.25, 1.0, 0.25, 0.0, 0.25]
    assert {e["optimization_id"] for e in history} == {opt_id}
    assert [e["iteration"] for e in await session.get_optimization_history("q", limit=2)] == [
        4, 5,
    ]
    assert await session.get_optimization_history("q", optimizer_id="opt_other") == []
    later = history[2]["timestamp"]
    assert all(isinstance(e["timestamp"], datetime) and e["timestamp"].tzinfo is UTC
               for e in history)
    assert [e["iteration"] for e in await session.get_optimization_history("q", since=later)] \
        == [3, 4, 5]
    # since= takes a datetime or POSIX seconds: the same instant gives the same entries.
    by_seconds = await session.get_optimization_history("q", since=later.timestamp())
    assert by_seconds == await session.get_optimization_history("q", since=later)
    naive = later.replace(tzinfo=None)  # taken as UTC
    assert await session.get_optimization_history("q", since=naive) == by_seconds
    stats = await session.get_variable_stats("q")
    assert stats["total_optimization_time_s"] > 0
    assert stats["write_count"] >= 5


async def test_status_of_a_variable_never_optimized(session: dspex_rx.SessionContext) -> None:
    await session.register_variable("idle", "float", 0.1)
    status = await session.get_optimization_status("idle")
    assert status["state"] == "idle" and status["is_optimizing"] is False
    assert status["optimization_id"] is None and status["iteration"] == 0
    assert await session.get_optimization_history("idle") == []
    with pytest.raises(KeyError):
        await session.get_optimization_status("nope")


async def test_progress_is_watched_live_from_another_connection(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variable("p", "integer", 1, constraints={"min": 1, "max": 4})
    values = watcher.watch_variable("p", include_initial=False)
    progress = watcher.watch_optimization("p")
    current: dict[str, Any] = await anext(progress)  # type: ignore[assignment, arg-type]
    assert current["state"] == "idle"  # the current status comes first
    await writer.start_optimization("p", "grid_search", objective=lambda v: float(v))
    await writer.wait_for_optimization("p")
    await settle(watcher)
    statuses: list[dict[str, Any]] = [current, *drain(progress)]  # type: ignore[list-item]
    assert statuses[-1]["state"] == "completed" and statuses[-1]["best_value"] == 4
    iterations = [s["iteration"] for s in statuses[1:]]
    assert iterations == sorted(iterations) and iterations[-1] == 4
    revisions = [s["revision"] for s in statuses[1:]]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
    # Watched statuses carry the same UTC datetimes as get_optimization_status.
    assert all(isinstance(s["started_at"], datetime) and s["started_at"].tzinfo is UTC
               and isinstance(s["last_update"], datetime) for s in statuses[1:])
    assert isinstance(statuses[-1]["ended_at"], datetime)
    assert statuses[-1]["ended_at"] == (await watcher.get_optimization_status("p"))["ended_at"]
    # Plain watchers see the writes, never the status notes.
    updates = drain(values)
    assert {u.update_type for u in updates} == {"value_change"}
    assert [u.value for u in updates] == [1, 2, 3, 4, 4]  # four proposals, then the best
    progress.cancel()
    values.cancel()


async def test_a_slow_progress_reader_gets_the_latest_status(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("s", "float", 0.0, constraints=FLOAT)
    progress = session.watch_optimization("s")
    await anext(progress)
    progress.max_buffer = 2
    await session.start_optimization("s", "grid_search", {"n_points": 6}, objective=abs)
    await session.wait_for_optimization("s")
    await settle(session)
    statuses: list[dict[str, Any]] = drain(progress)  # type: ignore[assignment]
    assert progress.skipped > 0 and len(statuses) <= 3
    assert statuses[-1]["state"] == "completed" and statuses[-1]["final_value"] == 2.0
    progress.cancel()


# ------------------------------------------------------------------ the optimizers


VARIABLES = [
    ("f", "float", 0.5, {"min": 0.0, "max": 2.0}),
    ("i", "integer", 3, {"min": -4, "max": 9}),
    ("c", "choice", "b", {"choices": ["a", "b", "c", "d"]}),
]
OPTIMIZERS = [
    ("grid_search", {"n_points": 6}),
    ("bayesian", {"n_initial_points": 3, "seed": 5}),
    ("random", {"seed": 5}),
    ("gradient", {"learning_rate": 0.2}),
    ("gradient", {"method": "spsa", "seed": 5}),
]


def _score(value: Any) -> float:
    if isinstance(value, str):
        return float("abcd".index(value))
    return -abs(float(value) - 1.3)


@pytest.mark.parametrize(("optimizer", "config"), OPTIMIZERS)
@pytest.mark.parametrize(("name", "type_name", "initial", "constraints"), VARIABLES)
async def test_every_proposal_respects_type_and_constraints(
    session: dspex_rx.SessionContext, optimizer: str, config: dict[str, Any], name: str,
    type_name: str, initial: Any, constraints: dict[str, Any],
) -> None:
    await session.register_variable(name, type_name, initial, constraints=constraints)
    if optimizer == "gradient" and type_name == "choice":
        with pytest.raises(ValueError, match="'c'"):
            await session.start_optimization(name, optimizer, config, objective=_score)
        status = await session.get_optimization_status(name)
        assert status["state"] == "idle"  # refused before any lease was taken
        return
    evaluated: list[Any] = []

    def objective(value: Any) -> float:
        evaluated.append(value)
        return _score(value)

    await session.start_optimization(name, optimizer, config, max_iterations=8,
                                     objective=objective)
    final = await session.wait_for_optimization(name)
    assert final["state"] == "completed", final["end_reason"]
    clean = check_constraints(name, type_name, constraints)
    written = [e["value"] for e in await session.get_variable_history(name, limit=100)]
    assert evaluated and len(evaluated) <= 8
    for value in [*evaluated, *written, final["best_value"]]:
        validate_value(name, type_name, value, clean)
        assert type(value) is {"float": float, "integer": int, "choice": str}[type_name]
    history = await session.get_optimization_history(name)
    assert [e["value"] for e in history] == evaluated


async def test_a_custom_optimizer_registered_and_used(session: dspex_rx.SessionContext) -> None:
    class Halving(BaseOptimizer):
        """Halves the distance to the upper bound each step."""

        config_keys = frozenset({"start"})

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.next = float(self.config.get("start", self.space.low or 0.0))

        def ask(self) -> float:
            value = self.next
            assert self.space.high is not None
            self.next = value + (float(self.space.high) - value) / 2
            return value

    await session.register_variable("h", "float", 0.0, constraints={"min": 0.0, "max": 2.0})
    with pytest.raises(TypeError, match="BaseOptimizer"):
        await session.register_python_optimizer("bad", object)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="built-in"):
        await session.register_python_optimizer("bayesian", Halving)
    with pytest.raises(ValueError, match="halving"):
        await session.start_optimization("h", "halving", objective=_score)  # not yet known
    await session.register_python_optimizer("halving", Halving)
    with pytest.raises(ValueError, match="unknown"):
        await session.start_optimization("h", "halving", {"unknown": 1}, objective=_score)
    await session.start_optimization(
        "h", "halving", {"start": 1.0}, max_iterations=4, objective=_score
    )
    final = await session.wait_for_optimization("h")
    history = await session.get_optimization_history("h")
    assert [e["value"] for e in history] == [1.0, 1.5, 1.75, 1.875]
    assert final["optimizer_type"] == "halving" and final["best_value"] == 1.5
    assert await session.get_variable("h") == 1.5  # closest to 1.3 of those tried


async def test_a_failing_objective_fails_the_run_and_keeps_the_best(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("g", "float", 0.0, constraints=FLOAT)
    calls: list[float] = []

    def objective(value: float) -> float:
        calls.append(value)
        if len(calls) == 3:
            raise RuntimeError("the evaluation service is down")
        return value

    await session.start_optimization("g", "grid_search", {"n_points": 5}, objective=objective)
    final = await session.wait_for_optimization("g")
    assert final["state"] == "failed"
    assert final["end_reason"] == "RuntimeError: the evaluation service is down"
    assert final["iteration"] == 2 and final["best_value"] == 0.5
    assert await session.get_variable("g") == 0.5
    assert await session.set_variable("g", 1.0) > 1  # released


@pytest.mark.parametrize(
    ("config", "objective", "match"),
    [
        ({"mode": "up"}, lambda v: v, "'max' or 'min'"),
        ({"acquisition_function": "nope"}, lambda v: v, "nope"),
        ({}, 42, "objective must be callable"),  # None is fine now: metrics are reported
        ({"bounds": [5.0, 6.0]}, lambda v: v, "bounds"),
    ],
)
async def test_bad_arguments_change_nothing(
    session: dspex_rx.SessionContext, config: dict[str, Any], objective: Any, match: str,
) -> None:
    await session.register_variable("b", "float", 0.5, constraints=FLOAT)
    with pytest.raises(ValueError, match=match):
        await session.start_optimization("b", "bayesian", config, objective=objective)
    assert (await session.get_optimization_status("b"))["state"] == "idle"
    with pytest.raises(KeyError):
        await session.start_optimization("missing", "bayesian", objective=lambda v: v)


async def test_a_metrics_dict_needs_its_target_named(session: dspex_rx.SessionContext) -> None:
    await session.register_variable("m", "float", 0.5, constraints=FLOAT)
    await session.start_optimization(
        "m", "grid_search", {"n_points": 3}, objective=lambda v: {"acc": v, "cost": 1.0}
    )
    final = await session.wait_for_optimization("m")
    assert final["state"] == "failed" and "optimizer_config['metric']" in final["end_reason"]
    assert final["iteration"] == 0


async def test_a_bad_recommendation_still_releases_the_lease(
    session: dspex_rx.SessionContext,
) -> None:
    class Wild(BaseOptimizer):
        def ask(self) -> float:
            return 0.5

        def recommend(self) -> float:
            return 99.0  # outside [0, 2]

    await session.register_python_optimizer("wild", Wild)
    await session.register_variable("w", "float", 0.0, constraints=FLOAT)
    await session.start_optimization("w", "wild", max_iterations=2, objective=lambda v: v)
    final = await session.wait_for_optimization("w")
    assert final["state"] == "failed" and "nothing final was written" in final["end_reason"]
    assert final["final_value"] is None and await session.get_variable("w") == 0.5
    assert await session.set_variable("w", 1.0) > 1


def test_a_client_that_closes_or_expires_ends_its_leases() -> None:
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0], lease_ttl=600.0)
    session, holder, _ = store.initialize_session("s", ttl=10.0)
    _, other, _ = store.initialize_session("s", ttl=1000.0)
    store.register("s", [VariableSpec("x", "float", 0.5), VariableSpec("y", "float", 0.5)],
                   actor="s")
    store.start_optimization("s", "x", optimizer_type="random", client_id=holder)
    store.close_session("s", holder)
    _, lease = store.optimization_status("s", "x")
    assert lease is not None and lease.state == "failed" and holder in lease.end_reason
    _, again, _ = store.initialize_session("s", ttl=10.0)
    store.start_optimization("s", "y", optimizer_type="random", client_id=again)
    now[0] += 11.0  # past the client's TTL, long before the lease's
    store.expire()
    _, lease = store.optimization_status("s", "y")
    assert lease is not None and lease.state == "expired" and "heartbeat" in lease.end_reason
    assert other in session.clients


# ------------------------------------------------------------ a lease held by hand


async def test_a_lease_held_by_hand_writes_records_and_releases(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    mine, other = two
    await mine.register_variable("k", "integer", 1, constraints={"min": 1, "max": 9})
    async with mine.optimization_lease(
        "k", "sweep", {"metric": "acc", "mode": "max"}
    ) as lease:
        with pytest.raises(OptimizationLockedError, match=lease.optimization_id):
            await other.set_variable("k", 5)
        for i, k in enumerate([2, 4, 6], 1):
            assert await lease.write(k, iteration=i) == i + 1
            await lease.record(i, k, {"acc": 1.0 - abs(k - 4) / 10, "cost": k})
        status = await other.get_optimization_status("k")
        assert status["is_optimizing"] and status["optimizer_type"] == "sweep"
        assert status["best_value"] == 4 and status["iteration"] == 3
    final = await other.get_optimization_status("k")
    assert final["state"] == "completed" and final["end_reason"] == "the holder's block ended"
    history = await other.get_optimization_history("k")
    assert [(e["iteration"], e["value"], e["score"]) for e in history] == [
        (1, 2, 0.8), (2, 4, 1.0), (3, 6, 0.8)
    ]
    assert await other.set_variable("k", 5) == 5  # released
    assert (await mine.get_variable_stats("k"))["total_optimization_time_s"] > 0


async def test_a_lease_block_that_raises_fails_the_run_and_a_stop_ends_the_writes(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    mine, other = two
    await mine.register_variable("r", "float", 0.5, constraints=FLOAT)
    with pytest.raises(RuntimeError, match="evaluator crashed"):
        async with mine.optimization_lease("r") as lease:
            await lease.write(0.7)
            raise RuntimeError("evaluator crashed")
    status = await other.get_optimization_status("r")
    assert status["state"] == "failed" and "evaluator crashed" in status["end_reason"]
    async with mine.optimization_lease("r") as lease:
        await lease.write(0.9)
        assert await other.stop_optimization("r", reason="manual stop") is None
        with pytest.raises(OptimizationLockedError, match="no longer holds the lease"):
            await lease.write(1.1)
        assert lease.revoked is not None
    assert await other.get_variable("r", bypass_cache=True) == 0.9
    assert (await other.get_optimization_status("r"))["end_reason"] == "manual stop"


async def test_a_lease_can_finish_with_a_final_value(session: dspex_rx.SessionContext) -> None:
    await session.register_variable("fv", "choice", "a", constraints={"choices": ["a", "b"]})
    async with session.optimization_lease("fv") as lease:
        await lease.record(1, "b", 0.9)
        await lease.finish("b", write_final=True, reason="picked b", metadata={"run": "r1"})
    status = await session.get_optimization_status("fv")
    last = (await session.get_variable_history("fv", limit=1))[0]["metadata"]
    assert last["run"] == "r1" and last["final"] is True
    assert status["state"] == "completed" and status["final_value"] == "b"
    assert status["end_reason"] == "picked b" and await session.get_variable("fv") == "b"


async def test_a_batch_guarded_by_a_lease_applies_only_while_the_lease_is_held(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    mine, other = two
    await mine.register_variable("in", "float", 0.5, constraints=FLOAT)
    await mine.register_variable("out", "float", 0.0)
    async with mine.optimization_lease("in") as lease:
        assert await mine.update_variables({"out": 1.0}, require_leases=[lease]) == {
            "out": True
        }
        await other.stop_optimization("in")
        revision = (await other.get_variables(["out"], include_metadata=True))["out"][
            "revision"]
        with pytest.raises(OptimizationLockedError, match="no longer holds the lease"):
            await mine.update_variables({"out": 2.0}, require_leases=[lease])
    after = (await other.get_variables(["out"], include_metadata=True))["out"]
    assert after["value"] == 1.0 and after["revision"] == revision


# ------------------------------------------------- ask/tell: reported evaluations


def _accuracy(value: float) -> dict[str, Any]:
    return {"accuracy": 1.0 - (float(value) - 1.0) ** 2, "latency_ms": 800.0}


async def test_reports_from_another_connection_drive_a_grid_run_to_its_best(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    a, b = pair
    seen: list[tuple[int, float, dict[str, Any]]] = []
    reported: list[tuple[int, Any]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(report_proposals, b, "t", _accuracy, reported)
        opt_id = await a.start_optimization(
            "t", "grid_search", {"n_points": 5, "metric": "accuracy"},
            callback=lambda i, v, m: seen.append((i, v, m)),
        )
        final = await a.wait_for_optimization("t")
    assert [i for i, _ in reported] == [1, 2, 3, 4, 5]
    assert [v for _, v in reported] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert [(i, v) for i, v, _ in seen] == [(1, 0.0), (2, 0.5), (3, 1.0), (4, 1.5), (5, 2.0)]
    assert seen[2][2] == {"accuracy": 1.0, "latency_ms": 800.0}
    assert final["optimization_id"] == opt_id and final["state"] == "completed"
    assert final["end_reason"] == "the search space is exhausted"
    assert final["iteration"] == 5 and final["best_value"] == 1.0
    assert final["best_metrics"] == {"accuracy": 1.0, "latency_ms": 800.0}
    assert final["best_score"] == 1.0 and final["final_value"] == 1.0
    assert final["takes_reports"] is True and final["awaiting_report"] is False
    assert final["proposal_iteration"] == 5
    assert final["reported_by"] == f"{b.session_id}/{b._client_id}"  # the last report's
    times = [final[k] for k in ("started_at", "last_update", "ended_at", "expires_at")]
    assert all(isinstance(t, datetime) and t.tzinfo is UTC for t in times)
    assert final["started_at"] <= final["last_update"] <= final["ended_at"]
    history = await b.get_optimization_history("t")
    assert [(e["iteration"], e["value"]) for e in history] == [
        (1, 0.0), (2, 0.5), (3, 1.0), (4, 1.5), (5, 2.0)]
    assert [e["score"] for e in history] == [0.0, 0.75, 1.0, 0.75, 0.0]
    assert {e["optimization_id"] for e in history} == {opt_id}
    assert all(isinstance(e["timestamp"], datetime) and e["timestamp"].tzinfo is UTC
               for e in history)
    assert await b.get_variable("t", bypass_cache=True) == 1.0


async def test_proposals_started_after_the_first_proposal_miss_none_and_end_with_the_run(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    a, b = pair
    opt_id = await a.start_optimization("t", "grid_search", {"n_points": 3,
                                                             "metric": "accuracy"})
    # The first proposal is written before the evaluator exists: a watch of the variable
    # started now would never see it, and the run would wait for ever.
    status = await a.get_optimization_status("t")
    while not status["awaiting_report"]:
        await a.sync()
        status = await a.get_optimization_status("t")
    got: list[tuple[int, float, int, str]] = []
    async with b.proposals("t") as proposals:
        async for proposal in proposals:
            got.append((proposal.iteration, proposal.value, proposal.version,
                        proposal.optimization_id))
            answer = await proposal.report(_accuracy(proposal.value))
            assert answer["report_metrics"] == _accuracy(proposal.value)
    assert [(i, v) for i, v, _, _ in got] == [(1, 0.0), (2, 1.0), (3, 2.0)]
    assert {run for _, _, _, run in got} == {opt_id}
    versions = [version for _, _, version, _ in got]
    assert versions == sorted(versions) and len(set(versions)) == 3
    final = await a.wait_for_optimization("t")
    assert final["state"] == "completed" and final["best_value"] == 1.0


async def test_proposals_wait_for_a_run_and_end_when_it_is_stopped(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    a, b = pair
    got: list[int] = []
    ended = trio.Event()

    async def evaluator() -> None:
        async with b.proposals("t") as proposals:
            async for proposal in proposals:
                got.append(proposal.iteration)
                if proposal.iteration == 2:
                    await a.stop_optimization("t", reason="enough")
                else:
                    await proposal.report(_accuracy(proposal.value))
        ended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(evaluator)
        await b.sync()  # nothing runs yet: the evaluator waits for a run
        assert got == []
        await a.start_optimization("t", "grid_search", {"n_points": 5, "metric": "accuracy"})
        await ended.wait()
    assert got == [1, 2]
    final = await a.get_optimization_status("t")
    assert final["is_optimizing"] is False and final["iteration"] == 1


async def test_reports_drive_a_bayesian_run_near_the_optimum(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    a, b = pair
    reported: list[tuple[int, Any]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(report_proposals, b, "t", _accuracy, reported)
        await a.start_optimization(
            "t", "bayesian", {"n_initial_points": 4, "seed": 7, "metric": "accuracy"},
            max_iterations=12,
        )
        final = await a.wait_for_optimization("t")
    history = await a.get_optimization_history("t")
    assert final["state"] == "completed" and final["iteration"] == len(history) == 12
    assert [e["iteration"] for e in history] == list(range(1, 13))
    assert [e["value"] for e in history] == [v for _, v in reported]  # each its own report
    best = max(history, key=lambda e: e["score"])
    assert final["best_value"] == best["value"] and abs(best["value"] - 1.0) < 0.05
    assert final["best_score"] == best["score"] == _accuracy(best["value"])["accuracy"]


async def test_a_stale_or_second_report_is_refused_and_the_first_counts(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    a, b = pair
    in_callback, leave = trio.Event(), trio.Event()

    async def callback(iteration: int, value: float, metrics: dict[str, Any]) -> None:
        if iteration == 2:
            in_callback.set()
            await leave.wait()  # the run proposes nothing more while this waits

    # Watching before the run starts: a proposal written before the watch existed would
    # be missed, and the run would wait for its report for ever (a hang seen in a full run).
    async with b.watch_variable("t", include_initial=False) as watch:
        opt_id = await a.start_optimization("t", "grid_search", {"n_points": 3},
                                            max_iterations=3, callback=callback)
        first = await anext(watch)
        assert first.metadata["iteration"] == 1 and first.source == opt_id
        await b.report_metrics("t", {"score": 0.1}, version=first.version)
        second = await anext(watch)
        assert second.metadata["iteration"] == 2
        with pytest.raises(ValueError, match=(
            rf"stale proposal \(version {first.version}\); the current proposal of "
            rf"{opt_id} is iteration 2 \(version {second.version}\)"
        )):
            await b.report_metrics("t", {"score": 0.9}, version=first.version)
        with pytest.raises(ValueError, match=r"stale proposal \(iteration 1\)"):
            await b.report_metrics("t", {"score": 0.9}, iteration=1, optimization_id=opt_id)
        with pytest.raises(ValueError, match=r"the report returned several metrics \('a', "
                           r"'c'\): name the target"):
            await b.report_metrics("t", {"a": 1.0, "c": 2.0}, iteration=2,
                                   optimization_id=opt_id)
        assert (await b.get_optimization_status("t"))["awaiting_report"] is True
        # Naming nothing is refused: the version b last saw is no proof of what it read.
        with pytest.raises(ValueError, match="name the proposal the metrics evaluate"):
            await b.report_metrics("t", {"score": 0.5})
        status = await b.report_metrics("t", {"score": 0.5}, version=second.version)
        assert status["report_metrics"] == {"score": 0.5}
        await in_callback.wait()
        with pytest.raises(ValueError, match=(
            rf"iteration 2 \(version {second.version}\) of {opt_id} was already reported "
            rf"by {b.session_id}/{b._client_id}; the first report counts"
        )):
            await b.report_metrics("t", {"score": 0.7}, iteration=2, optimization_id=opt_id)
        leave.set()
        third = await anext(watch)
        await a.report_metrics("t", 0.2, iteration=third.metadata["iteration"],
                               optimization_id=third.metadata["optimization_id"])
    final = await a.wait_for_optimization("t")
    history = await a.get_optimization_history("t")
    assert [(e["iteration"], e["score"]) for e in history] == [(1, 0.1), (2, 0.5), (3, 0.2)]
    assert final["best_value"] == 1.0 and final["best_score"] == 0.5


async def test_another_session_with_optimize_may_report_and_one_without_may_not(
    clocked: EmbeddedServer,
) -> None:
    async with dspex_rx.connect(clocked.target) as tuner, dspex_rx.connect(
        clocked.target
    ) as grader, dspex_rx.connect(clocked.target) as reader:
        var_id = await tuner.register_variable("lr", "float", 0.5, constraints=FLOAT,
                                               access_rules=[
            {"session_pattern": grader.session_id, "permissions": ["optimize", "observe"]},
            {"session_pattern": reader.session_id, "permissions": ["read", "observe"]},
        ])
        # The watch is registered before the run starts, or its first proposal may be
        # written before the watch exists, and the run then waits for ever (a hang seen
        # in a full run). proposals() would avoid it, but it reads the value: the grader
        # may only optimize and observe.
        async with grader.watch_variable(var_id, include_initial=False) as watch:
            opt_id = await tuner.start_optimization("lr", "grid_search", {"n_points": 2})
            async for update in watch:
                if update.metadata.get("final"):
                    break
                with pytest.raises(PermissionError, match="optimize"):
                    await reader.report_metrics(var_id, 9.0, version=update.version)
                await grader.report_metrics(var_id, {"score": update.value},
                                            version=update.version)
        final = await tuner.wait_for_optimization(opt_id)
        assert final["state"] == "completed" and final["best_value"] == 2.0
        assert final["reported_by"] == f"{grader.session_id}/{grader._client_id}"
        history = await tuner.get_optimization_history("lr")
        assert [(e["value"], e["score"]) for e in history] == [(0.0, 0.0), (2.0, 2.0)]


async def test_a_report_with_nothing_to_evaluate_is_refused(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    a, b = pair
    with pytest.raises(ValueError, match=r"variable 't' is not being optimized: there is no "
                       "proposal to report metrics for"):
        await b.report_metrics("t", {"score": 1.0}, iteration=1)
    gate = Gate()
    opt_id = await a.start_optimization("t", "random", {"seed": 1}, objective=gate)
    await gate.arrived(1)
    with pytest.raises(ValueError, match=f"optimization {opt_id} evaluates its proposals "
                       "in-process"):
        await b.report_metrics("t", {"score": 1.0}, iteration=1)
    await b.stop_optimization("t")
    gate.release()
    await a.wait_for_optimization("t")
    with pytest.raises(ValueError, match=rf"not being optimized \(its last optimization "
                       rf"{opt_id} has stopped\)"):
        await b.report_metrics("t", {"score": 1.0}, iteration=1)
    async with dspex_rx.connect(a.target, session_id=a.session_id, token=a.token) as fresh:
        with pytest.raises(ValueError, match=r"name the proposal the metrics evaluate: "
                           r"proposal\.report\(metrics\)"):
            await fresh.report_metrics("t", {"score": 1.0})
    with pytest.raises(TypeError, match="metrics must be a dict or a number"):
        await b.report_metrics("t", "good", iteration=1)  # type: ignore[arg-type]


async def test_a_metric_variable_changing_evaluates_each_proposal(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    a, b = pair
    await a.register_variable("acc", "float", 0.0)

    async def evaluator(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with b.watch_variable("t", include_initial=False) as watch:
            await b.sync()
            task_status.started()
            async for update in watch:
                if update.metadata.get("final"):
                    return
                iteration = update.metadata["iteration"]
                # A write naming another proposal is not this one's evaluation.
                run = update.metadata["optimization_id"]
                await b.set_variable("acc", -5.0, metadata={"iteration": iteration + 7,
                                                            "optimization_id": run})
                await b.set_variable("acc", -abs(update.value - 1.5),
                                     metadata={"iteration": iteration, "optimization_id": run})

    with pytest.raises(ValueError, match="cannot be the variable being optimized"):
        await a.start_optimization("t", "grid_search", {"metric_variable": "t"})
    with pytest.raises(KeyError, match="names no variable this session can read: 'nope'"):
        await a.start_optimization("t", "grid_search", {"metric_variable": "nope"})
    with pytest.raises(ValueError, match="give one"):
        await a.start_optimization("t", "grid_search", {"metric_variable": "acc"},
                                   objective=abs)
    async with trio.open_nursery() as nursery:
        await nursery.start(evaluator)
        await a.start_optimization("t", "grid_search",
                                   {"n_points": 5, "metric_variable": "acc"})
        final = await a.wait_for_optimization("t")
    history = await a.get_optimization_history("t")
    assert [(e["value"], e["metrics"]) for e in history] == [
        (0.0, {"acc": -1.5}), (0.5, {"acc": -1.0}), (1.0, {"acc": -0.5}),
        (1.5, {"acc": -0.0}), (2.0, {"acc": -0.5}),
    ]
    assert final["state"] == "completed" and final["best_value"] == 1.5
    assert await a.get_variable("t") == 1.5


async def test_a_run_nobody_reports_to_keeps_its_lease_until_stopped(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    clocked: EmbeddedServer, clock: FakeClock, mock_clock: trio.testing.MockClock,
) -> None:
    a, b = pair
    opt_id = await a.start_optimization("t", "random", {"seed": 4}, max_iterations=5)
    async with b.watch_optimization("t") as progress:
        async for status in progress:
            if status["awaiting_report"]:
                break
    assert status["proposal_iteration"] == 1 and status["optimization_id"] == opt_id
    # Past two lease TTLs (5 s) of server time: the waiting run renews its lease.
    for _ in range(6):
        before = (await b.get_optimization_status("t"))["last_update"]
        clock.now += 2.0
        mock_clock.jump(2.0)
        while (await b.get_optimization_status("t"))["last_update"] == before:
            await trio.sleep(0)
    clocked.store.expire()
    assert (await b.get_optimization_status("t"))["state"] == "running"
    # A stop ends the wait at once: no virtual time passes before the run is over.
    now = trio.current_time()
    await b.stop_optimization("t", reason="nobody evaluates")
    final = await a.wait_for_optimization("t")
    assert trio.current_time() == now
    assert final["state"] == "stopped" and final["end_reason"] == "nobody evaluates"
    assert final["iteration"] == 0
    run = a._runs[opt_id]
    assert run.state == "revoked" and "has stopped: nobody evaluates" in run.end_reason
    assert await b.set_variable("t", 1.0) > 1  # the lease is released


async def test_a_report_reaches_a_run_whose_watch_stream_is_down(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
) -> None:
    # The run's status poll (every lease TTL without news) is what hears of the report.
    a, b = pair
    async with dspex_rx.connect(a.target, session_id=a.session_id, token=a.token,
                                ttl_seconds=3600) as holder:
        streams = breakable(holder)
        opt_id = await holder.start_optimization("t", "grid_search", {"n_points": 3},
                                                 max_iterations=1)
        while not (await b.get_optimization_status("t"))["awaiting_report"]:
            await trio.sleep(0)

        async def no_stream(*args: Any, **kwargs: Any) -> Any:
            raise unavailable()

        holder._transport.open_stream = no_stream
        streams[0].fail()
        await b.report_metrics("t", {"score": 0.3}, iteration=1, optimization_id=opt_id)
        await trio.testing.wait_all_tasks_blocked()
        assert not holder._runs[opt_id].finished.is_set()  # the report has not reached it
        mock_clock.jump(5.5)  # one lease TTL (5 s) of the run's time: it asks for its status
        final = await holder.wait_for_optimization(opt_id)
    assert len(streams) == 1  # no stream carried the report
    assert final["state"] == "completed" and final["best_value"] == 0.0
    assert [e["score"] for e in await b.get_optimization_history("t")] == [0.3]


async def _spin_until(done: Callable[[], bool], limit: float = 10.0) -> None:
    # Virtual time stands still while a call crosses to the server thread: yield until
    # ``done()``, failing (not hanging) past a wall-clock bound.
    give_up = time.monotonic() + limit
    while not done():
        assert time.monotonic() < give_up, "the awaited log line never came"
        await trio.sleep(0)


async def _awaiting(session: dspex_rx.SessionContext, opt_id: str) -> dict[str, Any]:
    # The run's status once its current proposal awaits a report.
    status = await session.get_optimization_status("t")
    while not (status["optimization_id"] == opt_id and status["awaiting_report"]):
        await session.sync()
        status = await session.get_optimization_status("t")
    return status


async def test_a_late_report_of_a_stopped_run_is_not_credited_to_the_next_run(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    # Guards H1: iterations restart at 1, so run A's late report of its iteration 1 was
    # accepted as run B's iteration 1.
    a, b = pair
    first = await a.start_optimization("t", "random", {"seed": 1}, max_iterations=5)
    async with b.proposals("t") as proposals:
        late = await anext(proposals)
    assert (late.optimization_id, late.iteration) == (first, 1)
    await b.stop_optimization("t")
    second = await a.start_optimization("t", "random", {"seed": 2}, max_iterations=5)
    current = await _awaiting(b, second)
    assert current["proposal_iteration"] == 1 and current["proposal_version"] > late.version
    other_run = (rf"the report is for optimization {first}, but the running optimization "
                 rf"is {second} \(its current proposal is iteration 1 \(version "
                 rf"{current['proposal_version']}\)\)")
    with pytest.raises(ValueError, match=other_run):
        await late.report({"score": 999.0})
    with pytest.raises(ValueError, match=other_run):
        await b.report_metrics("t", {"score": 999.0}, iteration=1, optimization_id=first)
    with pytest.raises(ValueError, match=r"a report naming iteration 1 must name its run "
                       r"too \(optimization_id\) or the version"):
        await b.report_metrics("t", {"score": 999.0}, iteration=1)
    with pytest.raises(ValueError, match=rf"stale proposal \(version {late.version}\)"):
        await b.report_metrics("t", {"score": 999.0}, version=late.version)
    untouched = await b.get_optimization_status("t")
    assert untouched["awaiting_report"] is True and untouched["report_metrics"] is None
    answer = await b.report_metrics("t", {"score": 0.25}, iteration=1, optimization_id=second)
    assert answer["optimization_id"] == second and answer["report_metrics"] == {"score": 0.25}
    await _awaiting(b, second)  # iteration 2: iteration 1 is recorded
    history = await b.get_optimization_history("t", optimizer_id=second)
    assert [(e["iteration"], e["score"]) for e in history] == [(1, 0.25)]
    assert await b.get_optimization_history("t", optimizer_id=first) == []
    await b.stop_optimization("t")
    await a.wait_for_optimization(second)


async def test_a_report_naming_no_proposal_is_refused_with_the_way_to_name_it(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    # Guards H1: with neither iteration nor version the client filled in the version its
    # connection last saw, which need not be the proposal the evaluator read.
    a, b = pair
    opt_id = await a.start_optimization("t", "grid_search", {"n_points": 3})
    status = await _awaiting(b, opt_id)
    await b.get_variable("t", bypass_cache=True)  # b has seen the proposal's version
    with pytest.raises(ValueError, match=(
        r"variable 't': name the proposal the metrics evaluate: proposal\.report\(metrics\) "
        r"for a proposal from session\.proposals\(x\), or report_metrics\(x, metrics, "
        r"version=update\.version\)")):
        await b.report_metrics("t", {"score": 1.0})
    assert (await b.get_optimization_status("t"))["report_metrics"] is None
    done = await b.report_metrics("t", {"score": 1.0}, version=status["proposal_version"])
    assert done["report_metrics"] == {"score": 1.0}
    await b.stop_optimization("t")
    await a.wait_for_optimization(opt_id)


async def test_a_metric_variable_write_scores_only_the_proposal_it_names(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Guards H2: any metric-variable change after a proposal's write counted, so a second
    # (final or late) write of one proposal scored the next proposal.
    caplog.set_level(logging.WARNING, logger="dspex_rx.optimize")
    a, b = pair
    await a.register_variable("acc", "float", 0.0)
    seen: list[int] = []

    async def evaluator() -> None:
        previous = None
        async with b.proposals("t") as proposals:
            async for proposal in proposals:
                seen.append(proposal.version)
                if previous is not None:  # the previous proposal's final write, late
                    await b.set_variable("acc", 1000.0,
                                         metadata={"proposal_version": previous})
                await b.set_variable("acc", -100.0)  # names no proposal: not credited
                await b.set_variable("acc", -abs(proposal.value - 1.5),
                                     metadata={"proposal_version": proposal.version})
                previous = proposal.version

    # A bound, not a wait: a run that credits nothing would otherwise hang the test.
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(evaluator)
            opt_id = await a.start_optimization("t", "grid_search",
                                                {"n_points": 4, "metric_variable": "acc"})
            final = await a.wait_for_optimization(opt_id)
    history = await a.get_optimization_history("t")
    assert [(e["value"], e["score"]) for e in history] == [
        (0.0, -1.5), (2 / 3, -abs(2 / 3 - 1.5)), (4 / 3, -abs(4 / 3 - 1.5)), (2.0, -0.5)]
    assert final["state"] == "completed" and final["best_value"] == 4 / 3
    unnamed = [r.getMessage() for r in caplog.records
               if "optimization_metric_unnamed" in r.getMessage()]
    assert len(unnamed) == len(seen) == 4  # one warning per unnamed write
    assert f"write it with metadata={{'proposal_version': {seen[0]}}}" in unnamed[0]
    assert f"'optimization_id': '{opt_id}', 'iteration': 1" in unnamed[0]


async def test_a_run_nobody_reports_to_warns_once_per_ttl_naming_report_metrics(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    # Guards M4: the spec's workflow run unchanged (no objective, nobody reporting)
    # waited for ever with nothing logged.
    caplog.set_level(logging.WARNING, logger="dspex_rx.optimize")
    a, b = pair

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if "optimization_awaits_report" in r.getMessage()]

    opt_id = await a.start_optimization("t", "random", {"seed": 4}, max_iterations=5)
    status = await _awaiting(b, opt_id)
    # The store knows the proposal awaits a report before the run starts counting: jump
    # only once the run waits, or the TTL would count from after the jump.
    run = a._runs[opt_id]
    await _spin_until(lambda: run.awaiting_since is not None)
    mock_clock.jump(4.9)  # less than one lease TTL (5 s): nothing to say yet
    await trio.testing.wait_all_tasks_blocked()
    assert warnings() == []
    for step, waited in ((0.1, 5), (5.0, 10)):
        mock_clock.jump(step)
        await _spin_until(lambda: len(warnings()) >= waited // 5)  # noqa: B023
        assert (f"optimization {opt_id} iteration 1 of 't' awaits report_metrics (nothing "
                f"reported for {waited} s): session.report_metrics('t', metrics, "
                f"version={status['proposal_version']}) or proposal.report(metrics)"
                ) in warnings()[-1]
    await trio.testing.wait_all_tasks_blocked()
    assert len(warnings()) == 2  # once per TTL, not once per renewal
    await b.stop_optimization("t")
    assert (await a.wait_for_optimization(opt_id))["state"] == "stopped"


async def test_stop_on_a_variable_not_being_optimized_is_a_value_error(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("z", "float", 0.5, constraints=FLOAT)
    with pytest.raises(ValueError, match=r"variable 'z' is not being optimized: nothing to "
                       "stop"):
        await session.stop_optimization("z")
    opt_id = await session.start_optimization("z", "grid_search", {"n_points": 2},
                                              objective=abs)
    await session.wait_for_optimization("z")
    with pytest.raises(ValueError, match=rf"not being optimized \(its last optimization "
                       rf"{opt_id} has completed\)"):
        await session.stop_optimization("z", apply_best=True)
    assert await session.get_variable("z") == 2.0  # nothing was applied


async def test_register_python_optimizer_is_awaitable(
    session: dspex_rx.SessionContext,
) -> None:
    class Fixed(BaseOptimizer):
        def ask(self) -> float:
            return 0.25

    registering = session.register_python_optimizer("fixed", Fixed)
    assert inspect.iscoroutine(registering)
    assert await registering is None
    await session.register_variable("fx", "float", 0.0, constraints=FLOAT)
    await session.start_optimization("fx", "fixed", max_iterations=2, objective=abs)
    assert (await session.wait_for_optimization("fx"))["best_value"] == 0.25


# ------------------------------------------------------- the spec's own examples


async def test_spec_safe_optimization_waits_for_the_running_one_then_starts(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = pair
    await a.register_variable("hyperparameter", "float", 0.5, constraints=FLOAT)
    waited_for: list[str] = []

    async def safe_optimization(session: dspex_rx.SessionContext) -> str:
        try:
            return await session.start_optimization("hyperparameter", "bayesian")
        except ValueError as e:
            if "already being optimized" not in str(e):
                raise
            status = await session.get_optimization_status("hyperparameter")
            waited_for.append(status["optimization_id"])
            while status["is_optimizing"]:
                await trio.sleep(1)
                status = await session.get_optimization_status("hyperparameter")
            return await session.start_optimization("hyperparameter", "bayesian")

    async with trio.open_nursery() as nursery:
        await nursery.start(report_proposals, b, "hyperparameter",
                            lambda v: {"accuracy": 1.0 - (v - 1.2) ** 2}, None, 2)
        first = await b.start_optimization("hyperparameter", "bayesian", max_iterations=6)
        second = await safe_optimization(a)
        done = await a.wait_for_optimization(second)
    assert waited_for == [first] and second != first
    before = await a.get_optimization_status("hyperparameter", first)
    assert before["state"] == "completed" and before["iteration"] == 6
    assert done["state"] == "completed" and done["optimization_id"] == second
    assert done["started_at"] >= before["ended_at"]
    assert 1 <= done["iteration"] <= 100 and done["best_metrics"]["accuracy"] > 0.9


async def test_spec_complete_optimization_workflow_with_reported_accuracy(
    session: dspex_rx.SessionContext, autojump_clock: trio.testing.MockClock,
) -> None:
    temp_id = await session.register_variable("base_temperature", "float", 0.7,
                                              constraints={"min": 0.0, "max": 2.0})
    assert temp_id.startswith("var_base_temperature")
    progress: list[tuple[int, float, float]] = []

    def on_progress(iteration: int, value: float, metrics: dict[str, Any]) -> None:
        progress.append((iteration, value, metrics.get("accuracy", 0)))

    async with trio.open_nursery() as nursery:
        await nursery.start(report_proposals, session, "base_temperature",
                            lambda t: {"accuracy": 0.9 - (t - 0.8) ** 2})
        opt_id = await session.start_optimization(
            "base_temperature", "bayesian",
            optimizer_config={"acquisition_function": "ei", "xi": 0.01},
            callback=on_progress,
        )
        polls = 0
        while True:
            status = await session.get_optimization_status("base_temperature")
            polls += 1
            if not status["is_optimizing"]:
                break
            await trio.sleep(1)
    assert polls >= 1 and status["optimization_id"] == opt_id
    assert status["state"] == "completed"
    assert [i for i, _, _ in progress] == list(range(1, status["iteration"] + 1))
    best = max(progress, key=lambda p: p[2])
    assert status["best_value"] == best[1] and abs(best[1] - 0.8) < 0.1
    assert status["best_metrics"] == {"accuracy": best[2]}
    assert await session.get_variable("base_temperature") == status["final_value"]


def test_an_entrys_own_timestamp_as_since_includes_it() -> None:
    # Regression: a history timestamp given back as since= excluded its own entry now
    # and then (the datetime rounds to a microsecond; floats carry less at this epoch).
    now = [1_765_000_000.0]
    store = MemoryStore(clock=lambda: now[0], lease_ttl=600.0)
    _, client, _ = store.initialize_session("s")
    store.register("s", [VariableSpec("x", "float", 0.5)], actor="s")
    lease, _ = store.start_optimization("s", "x", optimizer_type="manual", client_id=client,
                                        max_iterations=1000)
    for i in range(1, 401):
        # Three microseconds apart, each near the half of a microsecond (where rounding
        # to a microsecond can go either way), and some a quarter microsecond off it.
        offset = (0.49e-6, 0.5e-6, 0.51e-6, 0.25e-6, 0.75e-6)[i % 5]
        now[0] = 1_765_000_000.0 + i * 3e-6 + offset
        store.optimization_step("s", "x", lease.id, lease.token,
                                evaluation=(i, 0.5, {"score": float(i)}, float(i)))
    entries = store.optimization_history("s", "x", limit=1000)
    for i, entry in enumerate(entries):
        # The way a since= datetime travels: entry -> wire -> datetime -> wire -> store.
        shown = utc_datetime(timestamp(entry.timestamp))
        since = seconds(timestamp(since_seconds("x", shown)))
        found = store.optimization_history("s", "x", limit=1000, since=since)
        assert found[0].iteration == entry.iteration, (i, entry.timestamp, shown)
        assert len(found) == len(entries) - i


# ------------------------------------------------------------------- scores and arguments


# Guards: an objective returning np.float32 or np.int64 failed ('must return a number').
@pytest.mark.parametrize(
    "score", [np.float32, np.int64], ids=["float32", "int64"]
)
async def test_a_numpy_scalar_score_is_a_score(
    session: dspex_rx.SessionContext, score: Callable[[float], Any],
) -> None:
    """Bug: score_of accepts only Python int/float (``_is_number``), so an objective that
    returns a numpy scalar such as np.float32 (what ``array.mean()`` of float32 data
    gives) or np.int64 fails the run at iteration 1 ("must return a number"), although
    the codec sends numpy scalars everywhere else."""
    await session.register_variable("n", "integer", 1, constraints={"min": 0, "max": 4})
    await session.start_optimization(
        "n", "grid_search", objective=lambda v: score(-abs(v - 3))
    )
    final = await session.wait_for_optimization("n")
    assert final["state"] == "completed", final["end_reason"]
    assert final["best_value"] == 3


# Guards: get_optimization_history(since=+-inf) escaped as a raw OverflowError.
@pytest.mark.parametrize("since", [float("inf"), float("-inf")], ids=["inf", "-inf"])
async def test_an_unusable_since_is_a_value_error(
    session: dspex_rx.SessionContext, since: float,
) -> None:
    """Bug (error mapping): get_optimization_history(since=±inf) escapes as a raw
    OverflowError from building the protobuf Timestamp (not a ValueError, unlike every
    other bad argument, which raises InvalidValueError naming the variable)."""
    await session.register_variable("h", "float", 0.5, constraints=FLOAT)
    with pytest.raises(ValueError, match="since"):
        await session.get_optimization_history("h", since=since)


# ----------------------------------------------------------- custom optimizers' proposals


class _NumpyAsk(BaseOptimizer):
    """Proposes with numpy, as ``self.rng`` does: np.int64, np.str_, np.bool_."""

    def ask(self) -> Any:
        if self.space.type == "integer":
            return self.rng.integers(int(self.space.low), int(self.space.high), endpoint=True)
        return self.rng.choice(np.array(self.space.choices))


# Guards: a strict type check refused np.int64/np.str_/np.bool_ proposals as out of range.
@pytest.mark.parametrize(
    ("type_name", "initial", "constraints"),
    [
        ("integer", 1, {"min": 0, "max": 4}),
        ("choice", "a", {"choices": ["a", "b", "c"]}),
        ("boolean", False, None),
    ],
    ids=["np.int64", "np.str_", "np.bool_"],
)
async def test_a_custom_optimizer_may_propose_numpy_scalars(
    session: dspex_rx.SessionContext, type_name: str, initial: Any, constraints: Any,
) -> None:
    """Bug: ``_propose`` checks a proposal with ``SearchSpace.contains``, which is strict
    about Python types, so a custom optimizer that proposes what numpy hands it
    (``self.rng.integers`` gives np.int64, ``self.rng.choice`` np.str_ / np.bool_) fails
    its run at iteration 1 saying the value is "outside the variable's constraints", when
    it is inside them (``SearchSpace.coerce``, which ``tell`` uses, accepts exactly these,
    and the codec sends numpy scalars everywhere else)."""
    await session.register_python_optimizer("numpy_ask", _NumpyAsk)
    await session.register_variable("v", type_name, initial, constraints=constraints)
    await session.start_optimization(
        "v", "numpy_ask", {"seed": 3}, max_iterations=4, objective=lambda v: 1.0
    )
    status = await session.wait_for_optimization("v")
    assert status["state"] == "completed", status["end_reason"]
    assert status["iteration"] == 4


# Guards: after the optimizers split into one module per family, built-ins no longer matched
# BaseOptimizer's module, so every ask/tell/converged of a built-in hopped to a worker
# thread (a plain iteration cost ~25% more, bench_optimize).
async def test_built_in_optimizers_run_in_the_trio_thread_and_custom_ones_in_a_worker(
    session: dspex_rx.SessionContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dspex_rx.client.optimization.grid import GridSearch

    threads: dict[str, set[int]] = {"built-in": set(), "custom": set()}
    original_ask = GridSearch.ask

    def recording_ask(self: GridSearch) -> Any:
        kind = "built-in" if type(self) is GridSearch else "custom"
        threads[kind].add(threading.get_ident())
        return original_ask(self)

    monkeypatch.setattr(GridSearch, "ask", recording_ask)

    class MyGrid(GridSearch):
        """A user's subclass: it may override anything, so it runs off the trio thread."""

    await session.register_python_optimizer("my_grid", MyGrid)
    for name, optimizer in (("b", "grid_search"), ("c", "my_grid")):
        await session.register_variable(name, "float", 0.0,
                                        constraints={"min": 0.0, "max": 1.0})
        await session.start_optimization(name, optimizer, {"n_points": 3},
                                         objective=lambda v: -abs(v - 0.5))
        await session.wait_for_optimization(name)
    assert threads["built-in"] == {threading.get_ident()}
    assert threads["custom"] and threading.get_ident() not in threads["custom"]
