"""The API spec's own examples (Python Variables API v2), run under asyncio and under trio.

Each example body is written once, in our words with the spec's calls, and run twice: by
a sync test through ``asyncio.run`` and by a pytest-trio test. The bodies differ from the
spec only where README.md's "Differences from the spec" table says so:

- the connect line (``async with dspex_rx.connect(target)`` or ``SessionContext(id,
  target)`` + ``initialize()``, a target string instead of a grpc channel);
- ``rt.spawn(...)`` is ``asyncio.create_task(...)`` under asyncio and a nursery task under
  trio (trio has no free-standing tasks); under trio, ``cancel_watch`` gets the Watch;
- an optimization started without ``objective=`` waits for the program to report each
  evaluation: a concurrent program-side task calls ``session.report_metrics``;
- the spec's one-second polling loops become event-driven waits
  (``watch_optimization``), so no test waits on the wall clock.

Timing (throttle, debounce) is asserted only under trio, in virtual time
(``autojump_clock``); under asyncio only order and last values are.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm loads

import numpy as np
import pytest
import trio
import trio.testing
import yaml

import dspex_rx
from dspex_rx import SessionContext, VariableCache
from dspex_rx.server import EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent
HANG_GUARD = 60.0  # seconds: a hang guard for asyncio joins, never a timing assertion
ADMIN_KEY = "spec-examples-admin-key-0123456789abcdef"

Example = Callable[..., Awaitable[Any]]


# ---------------------------------------------------------------------- the two runtimes


class AsyncioRuntime:
    """What the spec's bodies need from asyncio: its own calls, unchanged."""

    name = "asyncio"

    def spawn(self, awaitable: Any) -> asyncio.Task[Any]:
        return asyncio.create_task(awaitable)  # the spec's call

    async def join(self, task: asyncio.Task[Any]) -> None:
        done, _ = await asyncio.wait([task], timeout=HANG_GUARD)
        assert task in done, "a task never finished"
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    async def work(self, seconds: float) -> None:
        # Processing time: under asyncio only a yield (no wall-clock sleep in tests).
        await asyncio.sleep(0)

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def event(self) -> Any:
        return asyncio.Event()

    def cancel_handle(self, task: Any, watch: Any) -> Any:
        return task  # the spec passes the task that runs the watch


class TrioTask:
    """A nursery task with the two things the spec uses of an asyncio.Task: ``cancel()``
    and knowing when it is done."""

    def __init__(self, nursery: trio.Nursery, awaitable: Any) -> None:
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        self.error: BaseException | None = None
        nursery.start_soon(self._run, awaitable)

    async def _run(self, awaitable: Any) -> None:
        try:
            with self._scope:
                if isinstance(awaitable, dspex_rx.Watch):
                    async for _ in awaitable:
                        pass
                else:
                    await awaitable
        except Exception as exc:
            self.error = exc
        finally:
            self._done.set()

    def cancel(self) -> None:
        self._scope.cancel()

    def done(self) -> bool:
        return self._done.is_set()


class TrioRuntime:
    """The same needs under trio: tasks live in a nursery; ``work`` takes (virtual) time."""

    name = "trio"

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def spawn(self, awaitable: Any) -> TrioTask:
        return TrioTask(self._nursery, awaitable)

    async def join(self, task: TrioTask) -> None:
        await task._done.wait()
        if task.error is not None:
            raise task.error

    async def work(self, seconds: float) -> None:
        await trio.sleep(seconds)  # virtual time under the MockClock

    def now(self) -> float:
        return trio.current_time()

    def event(self) -> Any:
        return trio.Event()

    def cancel_handle(self, task: Any, watch: Any) -> Any:
        return watch  # trio has no task objects: cancel_watch takes the Watch


class Runtime(Protocol):
    """What an example body may use besides the session: one interface, two runtimes."""

    name: str

    def spawn(self, awaitable: Any) -> Any: ...
    async def join(self, task: Any) -> None: ...
    async def work(self, seconds: float) -> None: ...
    def now(self) -> float: ...
    def event(self) -> Any: ...
    def cancel_handle(self, task: Any, watch: Any) -> Any: ...


def on_asyncio(example: Example, *args: Any) -> Any:
    # wait_for is a hang guard (a broken example fails instead of stalling the suite).
    return asyncio.run(asyncio.wait_for(example(AsyncioRuntime(), *args), HANG_GUARD))


async def on_trio(example: Example, *args: Any) -> Any:
    finished = threading.Event()
    hung = False

    async def hang_guard(scope: trio.CancelScope) -> None:
        # Wall-clock, in a thread: a hang guard that virtual time cannot trip.
        nonlocal hung
        if not await trio.to_thread.run_sync(finished.wait, HANG_GUARD,
                                             abandon_on_cancel=True):
            hung = True
            scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hang_guard, nursery.cancel_scope)
            result = await example(TrioRuntime(nursery), *args)
            finished.set()
            nursery.cancel_scope.cancel()  # anything the example left running
    except BaseExceptionGroup as group:
        raise _leaf(group) from None  # report the example's own error, as asyncio does
    assert not hung, f"{example.__name__} did not finish within {HANG_GUARD} s"
    return result


def _leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def unique(prefix: str) -> str:
    """A session id nobody has claimed on this server (ids stay claimed after a run)."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def is_utc_datetime(value: Any) -> bool:
    return isinstance(value, dt.datetime) and value.utcoffset() == dt.timedelta(0)


def accuracy_of(temperature: float) -> float:
    """The program's evaluation: best at 0.9."""
    return round(1.0 - (temperature - 0.9) ** 2, 6)


async def report_each_proposal(
    session: SessionContext, watch: dspex_rx.Watch, variable: str,
    only: Callable[[str], bool] = lambda optimization_id: True,
) -> None:
    """The program side of an optimization started without ``objective=``: evaluate each
    value the optimizer proposes and report it (the run waits for the report)."""
    async for update in watch:
        meta = update.metadata
        if "iteration" not in meta or meta.get("final") or not only(meta["optimization_id"]):
            continue
        await session.report_metrics(variable, {"accuracy": accuracy_of(update.value)},
                                     version=update.version)


async def until_done(session: SessionContext, variable: str) -> dict[str, Any]:
    """Replaces the spec's ``while status['is_optimizing']`` loop that sleeps a second: the
    status is pushed, so wait for the push that says the run ended (no wall-clock poll)."""
    async with session.watch_optimization(variable) as statuses:
        async for status in statuses:
            if not status["is_optimizing"]:  # type: ignore[index]
                break
    return await session.get_optimization_status(variable)


@pytest.fixture(scope="module")
def reserved() -> Iterator[EmbeddedServer]:
    """A server that reserves the ``admin_*`` namespace (``--principals``)."""
    with EmbeddedServer(principals={"admin_*": ADMIN_KEY}) as embedded:
        yield embedded


# --------------------------------------------------------- Complete Optimization Workflow


async def complete_optimization_workflow(rt: Runtime, target: str, out: Path) -> dict[str, Any]:
    import grpc

    # The spec's line passes a channel: refused with a TypeError that names the change.
    # (grpc.insecure_channel: the same refusal as grpc.aio's, and closable in both runtimes.)
    channel = grpc.insecure_channel(target)
    refused = ""
    try:
        SessionContext(unique("session_123"), channel)
    except TypeError as exc:
        refused = str(exc)
    finally:
        channel.close()
    # Differences: a target string, not a channel.
    session = SessionContext(unique("session_123"), target)
    await session.initialize()
    try:
        temp_id = await session.register_variable(
            "base_temperature", "float", 0.7, constraints={"min": 0.0, "max": 2.0})
        style_id = await session.register_variable(
            "style_modifier", "float", 1.0, constraints={"min": 0.5, "max": 1.5})
        await session.register_variable(
            "effective_temperature", "float", 0.7, dependencies=[temp_id, style_id])

        progress: list[tuple[int, float, float]] = []

        def on_progress(iteration: int, value: float, metrics: dict[str, Any]) -> None:
            progress.append((iteration, value, metrics.get("accuracy", 0)))
            print(f"Iteration {iteration}: temp={value:.3f}, "
                  f"accuracy={metrics.get('accuracy', 0):.3f}")

        # The program-side actor: no objective is passed, so the program evaluates.
        watch = session.watch_variable("base_temperature", include_initial=False)
        await session.sync()
        evaluator = rt.spawn(report_each_proposal(session, watch, "base_temperature"))

        opt_id = await session.start_optimization(
            "base_temperature", "bayesian",
            optimizer_config={"acquisition_function": "ei", "xi": 0.01},
            callback=on_progress)
        status = await until_done(session, "base_temperature")
        print(f"Optimization complete! Best value: {status['best_value']}")
        evaluator.cancel()
        await rt.join(evaluator)

        export_data = await session.export_variables(
            include_history=True, filter_pattern=r".*temperature.*")
        path = out / "optimization_results.json"
        with open(path, "wb") as f:
            f.write(export_data)
        return {
            "refused": refused, "opt_id": opt_id, "status": status, "progress": progress,
            "history": await session.get_optimization_history("base_temperature", limit=500),
            "export": json.loads(path.read_bytes()),
            "deps": await session.get_dependencies("effective_temperature"),
        }
    finally:
        await session.close()


def check_complete_optimization_workflow(result: dict[str, Any]) -> None:
    assert "SessionContext(session_id, 'localhost:50051')" in result["refused"]
    status, progress, history = result["status"], result["progress"], result["history"]
    n = status["iteration"]
    assert status["optimization_id"] == result["opt_id"]
    assert status["is_optimizing"] is False and status["state"] == "completed"
    assert 1 <= n <= 100  # max_iterations' default
    # Every evaluation the program reported reached the callback, in order.
    assert [i for i, _, _ in progress] == list(range(1, n + 1))
    assert all(acc == accuracy_of(value) for _, value, acc in progress)
    best = max(acc for _, _, acc in progress)
    assert status["best_metrics"]["accuracy"] == best
    assert accuracy_of(status["best_value"]) == best
    assert is_utc_datetime(status["started_at"]) and is_utc_datetime(status["last_update"])
    assert status["started_at"] <= status["last_update"]
    assert [h["iteration"] for h in history] == list(range(1, n + 1))
    assert [h["value"] for h in history] == [value for _, value, _ in progress]
    # The regex filter matches both temperatures and not the style modifier.
    exported = {v["name"] for v in result["export"]["variables"]}
    assert exported == {"base_temperature", "effective_temperature"}
    assert {(d["name"], d["type"]) for d in result["deps"]} == {
        ("base_temperature", "data"), ("style_modifier", "data")}


def test_complete_optimization_workflow_asyncio(server: EmbeddedServer, tmp_path: Path) -> None:
    check_complete_optimization_workflow(
        on_asyncio(complete_optimization_workflow, server.target, tmp_path))


async def test_complete_optimization_workflow_trio(server: EmbeddedServer, tmp_path: Path) -> None:
    check_complete_optimization_workflow(
        await on_trio(complete_optimization_workflow, server.target, tmp_path))


# ------------------------------------------------- Real-Time Adaptive System (DummyLM)

SIMPLE_Q = "What is 2+2?"
COMPLEX_Q = ("Explain the philosophical implications of consciousness in artificial "
             "intelligence systems")


def dummy_lm() -> Any:
    dspy = pytest.importorskip("dspy")
    return dspy.utils.DummyLM({
        SIMPLE_Q: {"reasoning": "unused by Predict", "answer": "4"},
        COMPLEX_Q: {"reasoning": "Consciousness is contested.", "answer": "It is open."},
    })


async def adaptive_reasoning_system(rt: Runtime, target: str, lm: Any) -> dict[str, Any]:
    import dspy

    from dspex_rx.dspy import ModuleVariableResolver

    session = SessionContext(unique("adaptive_session"), target)
    await session.initialize()
    try:
        await session.register_variable(
            "reasoning_strategy", "module", "ChainOfThought",
            constraints={"choices": ["Predict", "ChainOfThought", "ReAct", "ProgramOfThought"]})
        await session.register_variable(
            "complexity_threshold", "float", 0.5, constraints={"min": 0.0, "max": 1.0})
        resolver = ModuleVariableResolver(session)

        seen: list[tuple[int, str]] = []
        written: list[int] = []
        caught_up = rt.event()

        # Created before the task starts, so no switch races the task's first step.
        strategy_watch = session.watch_variable("reasoning_strategy")
        await session.sync()

        async def strategy_watcher() -> None:
            async for update in strategy_watch:
                print(f"Strategy changed to: {update.value}")
                seen.append((update.version, update.value))
                if written and update.version >= written[-1]:
                    caught_up.set()

        watcher_task = rt.spawn(strategy_watcher())

        async def answer_question(question: str) -> Any:
            complexity = len(question.split()) / 20.0
            threshold = await session.get_variable("complexity_threshold")
            if complexity > threshold:
                version = await session.set_variable("reasoning_strategy", "ChainOfThought")
            else:
                version = await session.set_variable("reasoning_strategy", "Predict")
            written.append(version)
            qa_module = await resolver.create_module("reasoning_strategy", "question -> answer")
            return await qa_module.forward(question=question)

        with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
            simple_ans = await answer_question(SIMPLE_Q)
            complex_ans = await answer_question(COMPLEX_Q)
            # Ours: the threshold is a variable; lowered, the same question gets reasoning.
            await session.set_variable("complexity_threshold", 0.4)
            adapted_ans = await answer_question(COMPLEX_Q)

        stats = await session.get_variable_stats()
        print(f"Total variable updates: {stats['write_count']}")
        print(f"Cache hit rate: {stats['cache_hit_rate']:.2%}")
        await caught_up.wait()  # the watcher has seen the last switch
        watcher_task.cancel()
        await rt.join(watcher_task)

        # Offering ReAct as a choice works; creating it without tools= is what fails.
        await session.set_variable("reasoning_strategy", "ReAct")
        react_error: BaseException | None = None
        try:
            await resolver.create_module("reasoning_strategy", "question -> answer")
        except Exception as exc:
            react_error = exc
        return {"simple": simple_ans, "complex": complex_ans, "adapted": adapted_ans,
                "stats": stats, "seen": seen,
                "written": written, "react_error": react_error}
    finally:
        await session.close()


def check_adaptive_reasoning_system(result: dict[str, Any]) -> None:
    simple, complex_ = result["simple"], result["complex"]
    assert simple.answer == "4" and simple.get("reasoning") is None  # Predict
    # The spec's own heuristic: 10 words / 20 = 0.5, not above the 0.5 threshold, so its
    # "complex" question is answered by Predict too.
    assert complex_.answer == "It is open." and complex_.get("reasoning") is None
    adapted = result["adapted"]  # ChainOfThought, after the threshold went down
    assert adapted.answer == "It is open." and adapted.reasoning == "Consciousness is contested."
    assert [value for _, value in result["seen"]] == ["ChainOfThought", "Predict", "Predict",
                                                      "ChainOfThought"]
    assert [version for version, _ in result["seen"][1:]] == result["written"]
    stats = result["stats"]
    assert stats["write_count"] == 4  # three strategy switches and the threshold
    assert isinstance(stats["cache_hit_rate"], float) and 0.0 <= stats["cache_hit_rate"] <= 1.0
    error = result["react_error"]
    assert isinstance(error, ValueError | TypeError) and "tools" in str(error)


def test_adaptive_reasoning_system_asyncio(server: EmbeddedServer) -> None:
    lm = dummy_lm()
    check_adaptive_reasoning_system(on_asyncio(adaptive_reasoning_system, server.target, lm))


async def test_adaptive_reasoning_system_trio(server: EmbeddedServer) -> None:
    lm = dummy_lm()
    check_adaptive_reasoning_system(await on_trio(adaptive_reasoning_system, server.target, lm))


# ----------------------------------------------------- Batch Processing with Progress


async def batch_processing_with_variables(rt: Runtime, target: str) -> dict[str, Any]:
    async with dspex_rx.connect(target) as session:
        await session.register_variables([
            {"name": "batch_size", "type": "integer", "initial_value": 32,
             "constraints": {"min": 1, "max": 256}},
            {"name": "processing_temperature", "type": "float", "initial_value": 0.7},
            {"name": "progress", "type": "float", "initial_value": 0.0,
             "constraints": {"min": 0.0, "max": 100.0}},
        ])
        shown: list[tuple[float, str, float]] = []
        finished = rt.event()

        async def progress_monitor() -> None:
            async for update in session.watch_variable("progress", throttle_ms=500):
                print(f"Progress: {update.value:.1f}%")
                shown.append((rt.now(), update.update_type, update.value))
                if update.value == 100.0:
                    finished.set()

        monitor_task = rt.spawn(progress_monitor())

        async def process_batch(batch: list[int], temperature: float) -> list[float]:
            await rt.work(0.2)  # left to the reader by the spec: 0.2 s per batch
            return [item * temperature for item in batch]

        items = list(range(1000))
        total_items = 1000
        batch_size = await session.get_variable("batch_size")
        written: list[float] = []
        for i in range(0, total_items, batch_size):
            temp = await session.get_variable("processing_temperature")
            batch = items[i:i + batch_size]
            results = await process_batch(batch, temperature=temp)
            assert len(results) == len(batch)
            progress = (i + len(batch)) / total_items * 100
            await session.set_variable("progress", progress,
                                       metadata={"batch_num": i // batch_size})
            written.append(progress)
        # The spec cancels at once and may lose the last value; wait for it (event-driven).
        await finished.wait()
        monitor_task.cancel()
        await rt.join(monitor_task)
        last = (await session.get_variable_history("progress", limit=1))[0]
        return {"shown": shown, "written": written, "last": last}


def check_batch_processing(result: dict[str, Any], timed: bool) -> None:
    shown, written = result["shown"], result["written"]
    assert len(written) == 32 and written[-1] == 100.0
    values = [value for _, _, value in shown]
    # The monitor starts when its task first runs: its initial value is whatever is current.
    assert shown[0][1] == "initial" and values[0] in [0.0, *written]
    assert values == sorted(values) and len(set(values)) == len(values)  # in order, once
    assert values[-1] == 100.0  # the last value is never throttled away
    assert set(values[1:]) <= set(written)
    assert result["last"]["value"] == 100.0 and result["last"]["metadata"]["batch_num"] == 31
    if timed:
        changes = [t for t, kind, _ in shown if kind != "initial"]
        gaps = [b - a for a, b in itertools.pairwise(changes)]
        assert all(gap >= 0.5 - 1e-9 for gap in gaps), gaps  # at most one per 500 ms


def test_batch_processing_asyncio(server: EmbeddedServer) -> None:
    check_batch_processing(on_asyncio(batch_processing_with_variables, server.target), False)


async def test_batch_processing_trio(
    server: EmbeddedServer, autojump_clock: trio.testing.MockClock
) -> None:
    check_batch_processing(await on_trio(batch_processing_with_variables, server.target), True)


# ------------------------------------------------------------- Error Handling Patterns


async def robust_variable_operations(rt: Runtime, target: str) -> dict[str, Any]:
    import grpc

    logger = logging.getLogger("spec.robust")
    async with dspex_rx.connect(target) as session:
        outcomes = []
        for _run in range(2):  # first: the variable is missing; then: it exists
            try:
                for attempt in range(3):
                    try:
                        value = await session.get_variable("critical_config")
                        break
                    except grpc.RpcError as e:
                        if e.code() == grpc.StatusCode.UNAVAILABLE and attempt < 2:
                            await rt.work(0.5 * (attempt + 1))
                            continue
                        raise
            except KeyError:
                await session.register_variable("critical_config", "dict", {"default": True})
                value = {"default": True}
                outcomes.append(("created", value))
                continue
            except ValueError as e:
                logger.error(f"Variable type mismatch: {e}")
                await session.rollback_variable("critical_config", version=1)
            except PermissionError:
                logger.warning("Insufficient permissions for critical_config")
                value = await session.get_variable("critical_config_public")
            outcomes.append(("read", value))
        return {"outcomes": outcomes}


def check_robust_variable_operations(result: dict[str, Any]) -> None:
    assert result["outcomes"] == [("created", {"default": True}), ("read", {"default": True})]


def test_robust_variable_operations_asyncio(server: EmbeddedServer) -> None:
    check_robust_variable_operations(on_asyncio(robust_variable_operations, server.target))


async def test_robust_variable_operations_trio(server: EmbeddedServer) -> None:
    check_robust_variable_operations(await on_trio(robust_variable_operations, server.target))


class _Waiting(logging.Handler):
    """The spec's ``logger`` is left to the reader: ours also lets the test's program side
    start evaluating once safe_optimization has logged that it waits."""

    def __init__(self, event: Any) -> None:
        super().__init__()
        self.event = event
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.event.set()


async def safe_optimization_example(rt: Runtime, target: str) -> dict[str, Any]:
    logger = logging.getLogger(f"spec.safe.{rt.name}")
    logger.setLevel(logging.INFO)
    gate = rt.event()
    handler = _Waiting(gate)
    logger.addHandler(handler)
    try:
        async with dspex_rx.connect(target) as session:
            await session.register_variable(
                "hyperparameter", "float", 0.5, constraints={"min": 0.0, "max": 1.0})
            # A run already going: it waits for its first report until the example waits.
            watch = session.watch_variable("hyperparameter", include_initial=False)
            await session.sync()
            first = await session.start_optimization("hyperparameter", "bayesian",
                                                     max_iterations=3)

            async def program_side() -> None:
                await gate.wait()
                await report_each_proposal(session, watch, "hyperparameter",
                                           only=lambda opt: opt == first)

            reporter = rt.spawn(program_side())
            refusal: list[str] = []

            async def safe_optimization() -> str:
                try:
                    opt_id = await session.start_optimization("hyperparameter", "bayesian")
                except ValueError as e:
                    refusal.append(str(e))
                    if "already being optimized" in str(e):
                        status = await session.get_optimization_status("hyperparameter")
                        logger.info(f"Waiting for optimization {status['optimization_id']}")
                        # The spec polls every second; the status is pushed instead.
                        status = await until_done(session, "hyperparameter")
                        opt_id = await session.start_optimization("hyperparameter", "bayesian")
                return opt_id

            second = await safe_optimization()
            first_status = await session.get_optimization_status("hyperparameter", first)
            stopped = await session.stop_optimization("hyperparameter")
            second_status = await session.get_optimization_status("hyperparameter")
            again: BaseException | None = None
            try:
                await session.stop_optimization("hyperparameter")
            except Exception as exc:
                again = exc
            reporter.cancel()
            await rt.join(reporter)
            return {"first": first, "second": second, "refusal": refusal,
                    "logged": handler.messages, "first_status": first_status,
                    "stopped": stopped, "second_status": second_status, "again": again}
    finally:
        logger.removeHandler(handler)


def check_safe_optimization(result: dict[str, Any]) -> None:
    first, second = result["first"], result["second"]
    assert len(result["refusal"]) == 1 and "already being optimized" in result["refusal"][0]
    assert result["logged"] == [f"Waiting for optimization {first}"]
    assert second != first
    assert result["first_status"]["state"] == "completed"
    assert result["first_status"]["iteration"] == 3
    assert result["stopped"] is None  # the spec's stop returns None
    assert result["second_status"]["optimization_id"] == second
    assert result["second_status"]["is_optimizing"] is False
    # Stopping a variable that is not being optimized: ValueError, as the spec says.
    assert isinstance(result["again"], ValueError)


def test_safe_optimization_asyncio(server: EmbeddedServer) -> None:
    check_safe_optimization(on_asyncio(safe_optimization_example, server.target))


async def test_safe_optimization_trio(server: EmbeddedServer) -> None:
    check_safe_optimization(await on_trio(safe_optimization_example, server.target))


# ------------------------------------------------------------------------ Migration guide


async def migration_guide(rt: Runtime, target: str) -> dict[str, Any]:
    # Before: a variable someone else registered.
    async with dspex_rx.connect(target) as session:
        await session.register_variable("temperature", "float", 0.7)
        temp = await session.get_variable("temperature")
        await session.set_variable("temperature", 0.8)
        before = (temp, await session.get_variable("temperature"))

    # After: the full-featured form, in a fresh session.
    async with dspex_rx.connect(target) as session:
        temp_id = await session.register_variable(
            "temperature", "float", 0.7, constraints={"min": 0.0, "max": 2.0},
            metadata={"description": "LLM generation temperature"})
        # The spec's dependency needs its dependent: registered here.
        await session.register_variable("effective_temperature", "float", 0.7)
        await session.add_dependency("effective_temperature", "temperature",
                                     dependency_type="data")

        watch = session.watch_variable("temperature", include_initial=False)
        await session.sync()
        evaluator = rt.spawn(report_each_proposal(session, watch, "temperature"))
        printed: list[tuple[int, float]] = []

        def print_iteration(i: int, v: float) -> None:  # the spec's print, recorded too
            print(f"Iteration {i}: {v}")
            printed.append((i, v))

        opt_id = await session.start_optimization(
            "temperature", "bayesian", callback=lambda i, v, m: print_iteration(i, v))

        async def end_of_watch() -> None:
            # The spec's watch loop never ends: once the run is over, one more significant
            # write, tagged, tells our loop to stop.
            final = await until_done(session, "temperature")
            await session.set_variable("temperature", 0.0 if final["final_value"] > 1 else 2.0,
                                       metadata={"reason": "done"})

        closer = rt.spawn(end_of_watch())
        significant: list[tuple[Any, Any, dict[str, Any]]] = []
        async for update in session.watch_variable(
            "temperature", filter_fn=lambda old, new: abs(new - old) > 0.05
        ):
            print(f"Temperature changed significantly: {update.value}")
            significant.append((update.old_value, update.value, update.metadata))
            if update.metadata.get("reason") == "done":
                break
        await rt.join(closer)
        evaluator.cancel()
        await rt.join(evaluator)

        config = await session.export_variables(format="yaml", include_history=True)
        info = await session.get_variables(["temperature"], include_metadata=True)
        return {"before": before, "temp_id": temp_id, "opt_id": opt_id, "printed": printed,
                "significant": significant, "config": yaml.safe_load(config),
                "status": await session.get_optimization_status("temperature"),
                "info": info["temperature"],
                "deps": await session.get_dependencies("effective_temperature")}


def check_migration_guide(result: dict[str, Any]) -> None:
    assert result["before"] == (0.7, 0.8)
    assert result["temp_id"].startswith("var_temperature")
    status = result["status"]
    assert status["optimization_id"] == result["opt_id"] and status["state"] == "completed"
    assert [i for i, _ in result["printed"]] == list(range(1, status["iteration"] + 1))
    changes = result["significant"]
    assert changes[0][0] is None  # the initial value, never filtered
    assert all(abs(new - old) > 0.05 for old, new, _ in changes[1:])
    assert all("iteration" in meta or meta.get("final") for _, _, meta in changes[1:-1])
    assert changes[-1][2] == {"reason": "done"}
    # User metadata comes back as given, not shadowed by the system's description field.
    assert result["info"]["metadata"]["description"] == "LLM generation temperature"
    assert [(d["name"], d["type"]) for d in result["deps"]] == [("temperature", "data")]
    exported = {v["name"]: v for v in result["config"]["variables"]}
    assert exported["temperature"]["value"] == changes[-1][1]
    history = exported["temperature"]["history"]
    assert [h["version"] for h in history] == sorted(h["version"] for h in history)
    assert len(history) == exported["temperature"]["version"]


def test_migration_guide_asyncio(server: EmbeddedServer) -> None:
    check_migration_guide(on_asyncio(migration_guide, server.target))


async def test_migration_guide_trio(server: EmbeddedServer) -> None:
    check_migration_guide(await on_trio(migration_guide, server.target))


# ------------------------------------------- every method's docstring example, in groups


async def variable_methods(rt: Runtime, target: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with dspex_rx.connect(target) as session:
        # register_variable
        temp_id = await session.register_variable(
            "temperature", "float", 0.7, constraints={"min": 0.0, "max": 2.0})
        try:  # the spec's all-zero embedding cannot be normalised
            await session.register_variable(
                "context_embedding", "embedding", np.zeros(768),
                constraints={"dimensions": 768, "normalize": True})
        except ValueError as exc:
            out["zero_vector"] = str(exc)
        embed_id = await session.register_variable(
            "context_embedding", "embedding", np.ones(768),
            constraints={"dimensions": 768, "normalize": True})
        style_id = await session.register_variable("style", "float", 1.0)
        derived_id = await session.register_variable(
            "effective_temperature", "float", 0.7, dependencies=[temp_id, style_id])
        out["ids"] = (temp_id, embed_id, derived_id)
        # Positional, in the spec's order: constraints, metadata, dependencies, access_rules.
        await session.register_variable("positional", "float", 0.1, {"min": 0.0},
                                        {"unit": "none"}, [temp_id], None)
        out["positional_deps"] = [d["name"] for d in await session.get_dependencies("positional")]

        # register_variables
        out["var_ids"] = await session.register_variables([
            {"name": "threshold", "type": "float", "initial_value": 0.25},
            {"name": "model", "type": "choice", "initial_value": "gpt-4",
             "constraints": {"choices": ["gpt-4", "claude-3", "gemini"]}},
        ])

        # get_variable
        out["temperature"] = await session.get_variable("temperature")
        out["max_tokens"] = await session.get_variable("max_tokens", default=256)
        try:
            await session.get_variable("max_tokens", default=None)
        except KeyError as exc:
            out["none_default"] = exc
        out["current_temp"] = await session.get_variable("temperature", bypass_cache=True)
        out["model_name"] = await session.get_variable("model")
        out["threshold"] = await session.get_variable("threshold")
        out["embedding"] = await session.get_variable("context_embedding")

        # get_variables
        out["vars"] = await session.get_variables(["temperature", "threshold", "model"])
        out["with_defaults"] = await session.get_variables(
            ["temp", "tokens"], defaults={"temp": 0.7, "tokens": 256})
        out["vars_info"] = await session.get_variables(
            ["temperature", "model"], include_metadata=True, include_stats=True)

        # set_variable
        await session.set_variable("temperature", 0.9)
        await session.set_variable("temperature", 0.9,
                                   metadata={"reason": "user_preference", "source": "ui"})
        await session.set_variable("new_config", {"key": "value"}, create_if_missing=True,
                                   type_hint="dict")
        out["new_config"] = await session.get_variable("new_config")
        # The type table: a map's keys are converted to strings; user metadata stays apart.
        await session.register_variable("by_id", "dict", {1: "one", 2: "two"},
                                        metadata={"type": "lookup table"})
        out["by_id"] = await session.get_variables(["by_id"], include_metadata=True)
        out["temp_history"] = await session.get_variable_history("temperature", limit=1)

        # update_variables
        await session.register_variable("max_tokens", "integer", 256)
        results = await session.update_variables(
            {"temperature": 0.8, "max_tokens": 512, "model": "gpt-4"}, atomic=True)
        failures = [var for var, result in results.items() if result is not True]
        out["results"], out["failures"] = results, failures
        bad = await session.update_variables({"temperature": 5.0, "max_tokens": 128},
                                             atomic=True)
        out["bad"] = bad
        out["after_bad"] = await session.get_variables(["temperature", "max_tokens"])
    return out


def check_variable_methods(out: dict[str, Any]) -> None:
    assert "context_embedding" in out["zero_vector"] and "norm 0" in out["zero_vector"]
    assert all(i.startswith("var_") for i in out["ids"])
    assert out["positional_deps"] == ["temperature"]
    assert set(out["var_ids"]) == {"threshold", "model"}
    assert out["temperature"] == 0.7 and out["current_temp"] == 0.7
    assert out["max_tokens"] == 256
    assert isinstance(out["none_default"], KeyError)  # a None default is no default
    assert isinstance(out["model_name"], str) and out["model_name"] == "gpt-4"
    assert isinstance(out["threshold"], float)
    emb = out["embedding"]
    assert isinstance(emb, np.ndarray) and emb.shape == (768,)
    assert np.isclose(np.linalg.norm(emb), 1.0)
    assert out["vars"] == {"temperature": 0.7, "threshold": 0.25, "model": "gpt-4"}
    assert out["with_defaults"] == {"temp": 0.7, "tokens": 256}
    info = out["vars_info"]["temperature"]
    assert info["value"] == 0.7 and isinstance(info["metadata"], dict)
    assert isinstance(info["stats"]["read_count"], int)
    assert isinstance(info["stats"]["cache_hits"], int)
    assert out["new_config"] == {"key": "value"}
    by_id = out["by_id"]["by_id"]
    assert by_id["value"] == {"1": "one", "2": "two"}
    assert by_id["metadata"] == {"type": "lookup table"} and by_id["type"] == "dict"
    assert out["temp_history"][0]["metadata"] == {"reason": "user_preference", "source": "ui"}
    assert out["results"] == {"temperature": True, "max_tokens": True, "model": True}
    assert out["failures"] == []
    assert out["bad"]["temperature"] is not True and "max" in out["bad"]["temperature"]
    assert out["bad"]["max_tokens"] is not True  # atomic: not applied either
    assert out["after_bad"] == {"temperature": 0.8, "max_tokens": 512}


def test_variable_methods_asyncio(server: EmbeddedServer) -> None:
    check_variable_methods(on_asyncio(variable_methods, server.target))


async def test_variable_methods_trio(server: EmbeddedServer) -> None:
    check_variable_methods(await on_trio(variable_methods, server.target))


async def dependency_methods(rt: Runtime, target: str) -> dict[str, Any]:
    async with dspex_rx.connect(target) as session:
        await session.register_variables([
            {"name": n, "type": "float", "initial_value": 0.5}
            for n in ("base_temperature", "style", "effective_temperature", "final")])
        await session.add_dependency("effective_temperature", "base_temperature",
                                     dependency_type="data")
        await session.add_dependency("effective_temperature", "style",
                                     dependency_type="constraint")
        await session.add_dependency("final", "effective_temperature")
        deps = await session.get_dependencies("effective_temperature")
        transitive = await session.get_dependencies("final", include_transitive=True)
        dependents = await session.get_dependents("base_temperature", include_transitive=True)
        cycle: BaseException | None = None
        try:
            await session.add_dependency("base_temperature", "final")
        except ValueError as exc:
            cycle = exc
        await session.remove_dependency("effective_temperature", "style")
        after = await session.get_dependencies("effective_temperature")
    return {"deps": deps, "transitive": transitive, "dependents": dependents, "cycle": cycle,
            "after": after}


def check_dependency_methods(out: dict[str, Any]) -> None:
    # 'type' is the dependency's type, as in the spec's example answer.
    assert sorted((d["variable_id"].startswith("var_"), d["name"], d["type"])
                  for d in out["deps"]) == [(True, "base_temperature", "data"),
                                            (True, "style", "constraint")]
    assert {d["name"] for d in out["transitive"]} == {"effective_temperature",
                                                      "base_temperature", "style"}
    assert {d["name"] for d in out["dependents"]} == {"effective_temperature", "final"}
    assert isinstance(out["cycle"], ValueError)
    assert [d["name"] for d in out["after"]] == ["base_temperature"]


def test_dependency_methods_asyncio(server: EmbeddedServer) -> None:
    check_dependency_methods(on_asyncio(dependency_methods, server.target))


async def test_dependency_methods_trio(server: EmbeddedServer) -> None:
    check_dependency_methods(await on_trio(dependency_methods, server.target))


class CustomBayesianOptimizer(dspex_rx.BaseOptimizer):
    """The spec's ``my_optimizers.CustomBayesianOptimizer``: tries min, mid, max."""

    def ask(self) -> Any:
        low, high = self.space.low, self.space.high
        assert low is not None and high is not None
        return [low, (low + high) / 2, high][len(self.history) % 3]


async def optimization_methods(rt: Runtime, target: str) -> dict[str, Any]:
    async with dspex_rx.connect(target) as session:
        await session.register_variables([
            {"name": "temperature", "type": "float", "initial_value": 0.7,
             "constraints": {"min": 0.0, "max": 2.0}},
            {"name": "learning_rate", "type": "float", "initial_value": 0.1,
             "constraints": {"min": 0.001, "max": 1.0}},
        ])
        watch = session.watch_variables(["temperature", "learning_rate"], include_initial=False)
        await session.sync()

        async def program_side() -> None:
            async for update in watch:
                meta = update.metadata
                if "iteration" in meta and not meta.get("final"):
                    await session.report_metrics(update.name,
                                                 {"accuracy": accuracy_of(update.value)},
                                                 version=update.version)

        reporter = rt.spawn(program_side())
        started = dt.datetime.now(dt.UTC)

        opt_id = await session.start_optimization(
            "temperature", "bayesian",
            optimizer_config={"acquisition_function": "ei", "n_initial_points": 5},
            max_iterations=50)
        progress: list[tuple[int, Any, dict[str, Any]]] = []

        def on_progress(iteration: int, value: Any, metrics: dict[str, Any]) -> None:
            progress.append((iteration, value, metrics))
            print(f"Iteration {iteration}: {value} -> {metrics}")

        lr_id = await session.start_optimization("learning_rate", "gradient",
                                                 callback=on_progress)
        temp_status = await until_done(session, "temperature")
        lr_status = await until_done(session, "learning_rate")

        history = await session.get_optimization_history("temperature", limit=50)
        iterations = [h["iteration"] for h in history]
        values = [h["value"] for h in history]
        metrics = [h["metrics"]["accuracy"] for h in history]
        since = await session.get_optimization_history("temperature", since=started)
        later = await session.get_optimization_history(
            "temperature", since=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))

        await session.register_python_optimizer("custom_bayesian", CustomBayesianOptimizer)
        custom_id = await session.start_optimization("temperature", "custom_bayesian",
                                                     max_iterations=3)
        custom_status = await until_done(session, "temperature")
        custom_values = [h["value"] for h in await session.get_optimization_history(
            "temperature", optimizer_id=custom_id)]
        reporter.cancel()
        await rt.join(reporter)
    return {"opt_id": opt_id, "lr_id": lr_id, "temp_status": temp_status,
            "lr_status": lr_status, "progress": progress, "iterations": iterations,
            "values": values, "metrics": metrics, "since": since, "later": later,
            "custom_status": custom_status, "custom_values": custom_values}


def check_optimization_methods(out: dict[str, Any]) -> None:
    temp, lr = out["temp_status"], out["lr_status"]
    assert temp["optimization_id"] == out["opt_id"] and 1 <= temp["iteration"] <= 50
    assert lr["optimization_id"] == out["lr_id"] and not lr["is_optimizing"]
    for status in (temp, lr):
        assert isinstance(status["is_optimizing"], bool) and isinstance(status["iteration"], int)
        assert isinstance(status["best_metrics"], dict)
        assert is_utc_datetime(status["started_at"]) and is_utc_datetime(status["last_update"])
    assert [i for i, _, _ in out["progress"]] == list(range(1, lr["iteration"] + 1))
    assert all(m["accuracy"] == accuracy_of(v) for _, v, m in out["progress"])
    n = temp["iteration"]
    assert out["iterations"] == list(range(1, n + 1))
    assert out["metrics"] == [accuracy_of(v) for v in out["values"]]
    assert [h["iteration"] for h in out["since"]] == list(range(1, n + 1))
    assert out["later"] == []
    assert out["custom_status"]["state"] == "completed"
    assert out["custom_values"] == [0.0, 1.0, 2.0]


def test_optimization_methods_asyncio(server: EmbeddedServer) -> None:
    check_optimization_methods(on_asyncio(optimization_methods, server.target))


async def test_optimization_methods_trio(server: EmbeddedServer) -> None:
    check_optimization_methods(await on_trio(optimization_methods, server.target))


async def watching_methods(rt: Runtime, target: str) -> dict[str, Any]:
    async with dspex_rx.connect(target) as session:
        await session.register_variables([
            {"name": "temperature", "type": "float", "initial_value": 0.7},
            {"name": "metrics", "type": "dict", "initial_value": {"step": 0}},
            {"name": "query", "type": "string", "initial_value": ""},
            {"name": "filters", "type": "list", "initial_value": []},
            {"name": "sort", "type": "string", "initial_value": "relevance"},
        ])
        significant: list[tuple[float, float, Any]] = []
        ui: list[tuple[float, Any]] = []
        searches: list[tuple[float, str, Any]] = []
        written: dict[Any, float] = {}
        done = {k: rt.event() for k in ("temperature", "metrics", "search")}

        # Each watch is created before its task starts: a watch subscribes when created,
        # and the writes below must not race the tasks' first step (in any runtime).
        temperature_watch = session.watch_variable(
            "temperature", filter_fn=lambda old, new: abs(new - old) > 0.05)
        metrics_watch = session.watch_variable("metrics", throttle_ms=1000)
        search_watch = session.watch_variables(["query", "filters", "sort"], debounce_ms=500)

        async def significant_changes() -> None:
            async for update in temperature_watch:
                print(f"Significant change: {update.old_value} -> {update.value}")
                significant.append((update.old_value, update.value, update.timestamp))
                if update.value == 1.0:
                    done["temperature"].set()

        def update_ui(value: Any) -> None:
            ui.append((rt.now(), value))
            if value == {"step": 5}:
                done["metrics"].set()

        async def throttled() -> None:
            async for update in metrics_watch:
                update_ui(update.value)

        async def perform_search(update: Any) -> None:
            searches.append((rt.now(), update.name, update.value))
            if update.name == "sort" and update.value == "date":
                done["search"].set()

        async def debounced() -> None:
            async for update in search_watch:
                await perform_search(update)

        tasks = [rt.spawn(significant_changes()), rt.spawn(throttled()),
                 rt.spawn(debounced())]
        await session.sync()
        for value in (0.72, 0.8, 0.82, 1.0):
            await session.set_variable("temperature", value)
        for step in range(1, 6):
            written[("metrics", step)] = rt.now()
            await session.set_variable("metrics", {"step": step})
            await rt.work(0.25)
        edits: list[tuple[str, Any]] = [("query", "cats"), ("query", "cats and dogs"),
                                        ("filters", ["recent"]), ("sort", "date")]
        for name, value in edits:
            written[(name, str(value))] = rt.now()
            await session.set_variable(name, value)
        for event in done.values():
            await event.wait()
        for task in tasks:
            task.cancel()
        for task in tasks:
            await rt.join(task)

        # cancel_watch: the spec passes the task that runs the watch.
        watch = session.watch_variable("temperature")
        watch_task = rt.spawn(watch)
        await session.sync()
        session.cancel_watch(rt.cancel_handle(watch_task, watch))
        await rt.join(watch_task)
        return {"significant": significant, "ui": ui, "searches": searches,
                "written": written, "watch_task_done": watch_task.done()}


def check_watching_methods(out: dict[str, Any], timed: bool) -> None:
    significant = out["significant"]
    assert [(old, new) for old, new, _ in significant] == [(None, 0.7), (0.72, 0.8),
                                                         (0.82, 1.0)]
    assert all(is_utc_datetime(ts) for _, _, ts in significant)
    ui = out["ui"]
    assert ui[0][1] == {"step": 0} and ui[-1][1] == {"step": 5}
    steps = [value["step"] for _, value in ui]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    latest = {}
    for _, name, value in out["searches"]:
        latest[name] = value
    assert latest == {"query": "cats and dogs", "filters": ["recent"], "sort": "date"}
    assert out["watch_task_done"]
    if timed:
        times = [t for t, _ in ui[1:]]
        assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(times))
        after_writes = [(t, name, value) for t, name, value in out["searches"]
                        if (name, str(value)) in out["written"]]
        # Autojump also moves the clock while a write waits for the server, so which
        # intermediate values settle is not fixed; that each came 500 ms after its write is.
        assert after_writes
        for t, name, value in after_writes:
            assert t - out["written"][(name, str(value))] >= 0.5 - 1e-9


def test_watching_methods_asyncio(server: EmbeddedServer) -> None:
    check_watching_methods(on_asyncio(watching_methods, server.target), False)


async def test_watching_methods_trio(
    server: EmbeddedServer, autojump_clock: trio.testing.MockClock
) -> None:
    check_watching_methods(await on_trio(watching_methods, server.target), True)


async def access_methods(rt: Runtime, target: str, open_target: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # On a server that reserves no namespace, the spec's admin_* rule is refused.
    async with dspex_rx.connect(open_target) as plain:
        await plain.register_variable("api_key", "string", "sk-test")
        try:
            await plain.set_variable_permissions("api_key", [
                {"session_pattern": "admin_*", "permissions": ["read"]}])
        except ValueError as exc:
            out["unreserved"] = str(exc)
        try:  # the spec types conditions as Dict[str, str]: only the known keys are kept
            await plain.set_variable_permissions("api_key", [
                {"session_pattern": "any", "permissions": ["read"],
                 "conditions": {"ip_range": "10.0.0.0/8"}}])
        except ValueError as exc:
            out["unknown_condition"] = str(exc)
    async with dspex_rx.connect(target) as session, dspex_rx.connect(
        target, session_id=unique(f"admin_{rt.name}"), principal_key=ADMIN_KEY
    ) as admin, dspex_rx.connect(target) as guest:
        var_id = await session.register_variable("api_key", "string", "sk-test")
        private_id = await session.register_variable("private", "string", "secret")
        await session.set_variable_permissions("api_key", [
            {"session_pattern": "any", "permissions": ["read"]},
            {"session_pattern": "admin_*", "permissions": ["read", "write", "optimize"]},
        ])
        # Another session names the variable by its id (names are per session).
        out["guest"] = {p: await guest.check_variable_access(var_id, p)
                        for p in ("read", "write", "observe", "optimize")}
        out["admin"] = {p: await admin.check_variable_access(var_id, p)
                        for p in ("read", "write", "observe", "optimize")}
        out["owner"] = await session.check_variable_access("api_key", "write")
        out["guest_private"] = await guest.check_variable_access(private_id, "read")
        out["guest_read"] = await guest.get_variable(var_id)
        await admin.set_variable(var_id, "sk-rotated")
        # Another session wrote it: force a server fetch (unwatched values are cached).
        out["after_admin"] = await session.get_variable("api_key", bypass_cache=True)
        try:
            await guest.set_variable(var_id, "sk-mine")
        except PermissionError as exc:
            out["guest_write"] = exc
    return out


def check_access_methods(out: dict[str, Any]) -> None:
    assert "admin_*" in out["unreserved"]
    assert "ip_range" in out["unknown_condition"]
    assert out["guest"] == {"read": True, "write": False, "observe": False, "optimize": False}
    assert out["admin"] == {"read": True, "write": True, "observe": False, "optimize": True}
    assert out["owner"] is True
    assert out["guest_private"] is False  # cannot see it: False, not an error
    assert out["guest_read"] == "sk-test" and out["after_admin"] == "sk-rotated"
    assert isinstance(out["guest_write"], PermissionError)


def test_access_methods_asyncio(reserved: EmbeddedServer, server: EmbeddedServer) -> None:
    check_access_methods(on_asyncio(access_methods, reserved.target, server.target))


async def test_access_methods_trio(reserved: EmbeddedServer, server: EmbeddedServer) -> None:
    check_access_methods(await on_trio(access_methods, reserved.target, server.target))


async def history_methods(rt: Runtime, target: str) -> dict[str, Any]:
    async with dspex_rx.connect(target) as session:
        await session.register_variable("temperature", "float", 0.1)
        for i in range(2, 9):
            await session.set_variable("temperature", i / 10, metadata={"iteration": i})
        history = await session.get_variable_history("temperature", limit=100, offset=0,
                                                     include_metadata=True)
        page = await session.get_variable_history("temperature", limit=2, offset=1)
        await session.rollback_variable("temperature", version=5,
                                        reason="optimization_diverged")
        after = await session.get_variable_history("temperature", limit=1)
        try:
            await session.rollback_variable("temperature", version=99)
        except ValueError as exc:
            missing: BaseException | None = exc
        value = await session.get_variable("temperature")
        session_id = session.session_id
    return {"history": history, "page": page, "after": after, "missing": missing,
            "value": value, "session_id": session_id}


def check_history_methods(out: dict[str, Any]) -> None:
    history = out["history"]
    assert [h["version"] for h in history] == list(range(8, 0, -1))  # newest first
    assert [h["value"] for h in history] == [i / 10 for i in range(8, 0, -1)]
    assert all(is_utc_datetime(h["updated_at"]) for h in history)
    assert history[0]["updated_by"] == out["session_id"]
    assert history[0]["metadata"] == {"iteration": 8}
    assert [h["version"] for h in out["page"]] == [7, 6]
    (latest,) = out["after"]
    assert latest["version"] == 9 and latest["value"] == 0.5 == out["value"]
    assert latest["metadata"]["reason"] == "optimization_diverged"
    assert isinstance(out["missing"], ValueError)


def test_history_methods_asyncio(server: EmbeddedServer) -> None:
    check_history_methods(on_asyncio(history_methods, server.target))


async def test_history_methods_trio(server: EmbeddedServer) -> None:
    check_history_methods(await on_trio(history_methods, server.target))


async def export_import_methods(rt: Runtime, target: str, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with dspex_rx.connect(target) as session, dspex_rx.connect(target) as fresh:
        await session.register_variables([
            {"name": "model", "type": "choice", "initial_value": "gpt-4",
             "constraints": {"choices": ["gpt-4", "claude-3"]}},
            {"name": "embedding_model", "type": "string", "initial_value": "ada"},
            {"name": "temperature", "type": "float", "initial_value": 0.7},
        ])
        await session.set_variable("temperature", 0.9)
        export_data = await session.export_variables(format="json", include_history=True)
        with open(tmp / "variables_backup.json", "wb") as f:
            f.write(export_data)
        model_vars = await session.export_variables(filter_pattern=r".*model.*")
        out["model_vars"] = sorted(v["name"] for v in json.loads(model_vars)["variables"])

        with open(tmp / "variables_backup.json", "rb") as f:
            data = f.read()
        summary = await fresh.import_variables(data, dry_run=True)
        out["dry_run"] = summary
        if summary["errors"] == 0:
            out["imported"] = await fresh.import_variables(data)
        out["values"] = await fresh.get_variables(["model", "embedding_model", "temperature"])
        out["fresh_history"] = await fresh.get_variable_history("temperature")

        broken = json.loads(data)
        for variable in broken["variables"]:
            if variable["name"] == "model":
                variable["value"] = variable["history"][0]["value"] = "llama"
        out["broken"] = await fresh.import_variables(json.dumps(broken).encode(),
                                                     merge_strategy="replace")

        pickled = await session.export_variables(format="pickle")
        try:
            await fresh.import_variables(pickled, format="pickle")
        except ValueError as exc:
            out["untrusted"] = str(exc)
        out["trusted"] = await fresh.import_variables(pickled, format="pickle", trusted=True,
                                                      merge_strategy="keep")
    return out


def check_export_import_methods(out: dict[str, Any]) -> None:
    assert out["model_vars"] == ["embedding_model", "model"]  # a regex, as in the spec
    dry = out["dry_run"]
    assert dry["errors"] == 0 and dry["imported"] == 3 and dry["skipped"] == 0
    assert out["imported"]["errors"] == 0 and out["imported"]["imported"] == 3
    assert out["values"] == {"model": "gpt-4", "embedding_model": "ada", "temperature": 0.9}
    assert [h["value"] for h in out["fresh_history"]] == [0.9, 0.7]
    broken = out["broken"]
    assert broken["errors"] == 1 and broken["imported"] == 0
    assert len(broken["error_details"]) == 1 and "model" in broken["error_details"][0]
    assert "trusted=True" in out["untrusted"]
    assert out["trusted"]["errors"] == 0 and out["trusted"]["skipped"] == 3


def test_export_import_methods_asyncio(server: EmbeddedServer, tmp_path: Path) -> None:
    check_export_import_methods(on_asyncio(export_import_methods, server.target, tmp_path))


async def test_export_import_methods_trio(server: EmbeddedServer, tmp_path: Path) -> None:
    check_export_import_methods(await on_trio(export_import_methods, server.target, tmp_path))


async def monitoring_methods(rt: Runtime, target: str) -> dict[str, Any]:
    async with dspex_rx.connect(target) as session:
        await session.register_variable("temperature", "float", 0.7)
        await session.get_variable("temperature", bypass_cache=True)  # a miss
        await session.get_variable("temperature")  # a hit: cached for the TTL
        stats = await session.get_variable_stats("temperature")
        print(f"Cache hit rate: {stats['cache_hit_rate']:.2%}")
        overall = await session.get_variable_stats()
        info = session.get_cache_info()

        session.set_cache_config(ttl=0)
        await session.get_variable("temperature")
        await session.get_variable("temperature")
        no_cache = await session.get_variable_stats("temperature")
        session.set_cache_config(ttl=5.0, max_size=10000, eviction_policy="lru")
        configured = session.get_cache_info()
    return {"stats": stats, "overall": overall, "info": info, "no_cache": no_cache,
            "configured": configured}


def check_monitoring_methods(out: dict[str, Any]) -> None:
    stats = out["stats"]
    assert stats["read_count"] == 2 and stats["cache_hits"] == 1 and stats["cache_misses"] == 1
    assert stats["cache_hit_rate"] == 0.5
    for key in ("write_count", "avg_read_latency_ms", "avg_write_latency_ms",
                "total_optimization_time_s"):
        assert key in stats and key in out["overall"]
    assert out["overall"]["read_count"] == 2
    info = out["info"]
    assert isinstance(info["size"], int) and isinstance(info["ttl"], float)
    assert isinstance(info["hit_rate"], float) and isinstance(info["eviction_count"], int)
    assert out["no_cache"]["cache_hits"] == 1 and out["no_cache"]["read_count"] == 4
    assert out["configured"]["ttl"] == 5.0 and out["configured"]["max_size"] == 10000
    assert out["configured"]["eviction_policy"] == "lru"


def test_monitoring_methods_asyncio(server: EmbeddedServer) -> None:
    check_monitoring_methods(on_asyncio(monitoring_methods, server.target))


async def test_monitoring_methods_trio(server: EmbeddedServer) -> None:
    check_monitoring_methods(await on_trio(monitoring_methods, server.target))


async def variable_cache_methods(rt: Runtime) -> dict[str, Any]:
    cache = VariableCache()
    defaults = (cache.ttl, cache.max_size)
    for key, name in (("var_model_1", "model"), ("var_temperature_2", "temperature"),
                      ("var_model_size_3", "model_size")):
        cache.put(key, {"value": name}, name=name)
    invalidated: list[tuple[str, str]] = []

    async def on_invalidate(var_id: str, reason: str) -> None:
        invalidated.append((var_id, reason))

    sub = cache.subscribe_invalidation("var_model_1", on_invalidate)
    batch = await cache.get_batch(["var_model_1", "var_temperature_2", "var_unknown_9"])
    removed = await cache.invalidate_pattern(r"^model.*$", reason="model_switch")
    left = await cache.get_batch(["var_model_1", "var_temperature_2", "var_model_size_3"])
    return {"defaults": defaults, "sub": sub, "batch": batch, "removed": removed,
            "invalidated": invalidated, "left": left}


def check_variable_cache_methods(out: dict[str, Any]) -> None:
    assert out["defaults"] == (1.0, 1000)  # the spec's defaults for a standalone cache
    assert isinstance(out["sub"], str)
    assert out["batch"] == {"var_model_1": {"value": "model"},
                            "var_temperature_2": {"value": "temperature"}}
    assert out["removed"] == 2  # the regex matched model and model_size, by name
    assert out["invalidated"] == [("var_model_1", "model_switch")]
    assert out["left"] == {"var_temperature_2": {"value": "temperature"}}


def test_variable_cache_methods_asyncio() -> None:
    check_variable_cache_methods(on_asyncio(variable_cache_methods))


async def test_variable_cache_methods_trio() -> None:
    check_variable_cache_methods(await on_trio(variable_cache_methods))


async def dspy_bridge_methods(rt: Runtime, target: str) -> dict[str, Any]:
    import dspy
    from dspy.teleprompt import BootstrapFewShot
    from dspy_helpers import TRAIN, examples

    from dspex_rx.dspy import DSPyOptimizationBridge, plain

    lm = dspy.utils.DummyLM({q: {"answer": a} for q, a in TRAIN})

    def accuracy_metric(example: Any, prediction: Any, trace: Any = None) -> bool:
        return bool(example.answer == prediction.answer)

    async with dspex_rx.connect(target) as session:
        await session.register_variables([
            {"name": "temperature", "type": "float", "initial_value": 0.3,
             "constraints": {"min": 0.0, "max": 2.0}},
            {"name": "max_demos", "type": "integer", "initial_value": 2},
        ])
        bridge = DSPyOptimizationBridge(session)
        same = bridge.session_context is session
        with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
            optimizer = await bridge.create_variable_aware_optimizer(
                BootstrapFewShot,
                variable_mappings={"teacher_temperature": "temperature",
                                   "max_bootstrapped_demos": "max_demos"},
                metric=accuracy_metric)
            student = dspy.Predict("question -> answer")
            optimized_program = await optimizer.compile(student, trainset=examples(TRAIN))

            cot = dspy.ChainOfThought("question -> answer")
            mappings = await bridge.sync_dspy_parameters(cot, variable_prefix="cot_")
        demos = await session.get_variable("dspy.demos.self")
        bridge.unbind_dspy_parameters()
    return {"same": same, "demos": demos, "program_demos": plain(optimized_program.demos),
            "mappings": mappings}


def check_dspy_bridge_methods(out: dict[str, Any]) -> None:
    assert out["same"]
    assert out["demos"] == out["program_demos"]  # the compiled demos, written back
    # max_bootstrapped_demos came from the max_demos variable (2); the rest are labels.
    assert sum(1 for demo in out["demos"] if demo.get("augmented")) == 2
    assert {"cot_temperature", "cot_max_tokens"} <= set(out["mappings"])
    assert not any(name.startswith("cot_cot_") for name in out["mappings"])


def test_dspy_bridge_methods_asyncio(server: EmbeddedServer) -> None:
    pytest.importorskip("dspy")
    check_dspy_bridge_methods(on_asyncio(dspy_bridge_methods, server.target))


async def test_dspy_bridge_methods_trio(server: EmbeddedServer) -> None:
    pytest.importorskip("dspy")
    check_dspy_bridge_methods(await on_trio(dspy_bridge_methods, server.target))


TRIO_ASYNCIO_PROGRAM = """
import asyncio, sys
import trio_asyncio  # noqa: F401 - importing it used to break connect()
import dspex_rx

async def main():
    async with dspex_rx.connect(sys.argv[1]) as session:
        await session.register_variable("temperature", "float", 0.7)
        print(await session.get_variable("temperature"))

asyncio.run(main())
"""


def test_importing_trio_asyncio_breaks_no_asyncio_program(server: EmbeddedServer) -> None:
    """The issue: importing trio_asyncio made connect() fail (its own process: the import
    changes asyncio's loop policy for everything after it)."""
    done = subprocess.run(
        [sys.executable, "-c", TRIO_ASYNCIO_PROGRAM, server.target], capture_output=True,
        text=True, timeout=HANG_GUARD, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0.7"]
