"""A variable-aware DSPy compile at its edges: teacher settings with a program's own LM,
programs with lists of predictors, results naming their run, scores, and a stopped or
cancelled compile that writes nothing. Real DSPy, against DummyLM or the loopback stub."""

from __future__ import annotations

import math
import os
import threading
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm loads

import pytest

dspy = pytest.importorskip("dspy")

import trio  # noqa: E402
from dspy_helpers import TRAIN, MultiHop, exact, examples, hold_answers, stub_lm  # noqa: E402
from openai_stub import OpenAIStub, question_of  # noqa: E402

import dspex_rx  # noqa: E402
from dspex_rx import OptimizationLockedError  # noqa: E402
from dspex_rx.dspy import DSPyOptimizationBridge, plain, run_in_thread  # noqa: E402

# No disk or memory cache: every call must reach the LM (and the stub must see it).
dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)

DEV = [("What is 3 + 3?", "6"), ("What is 5 + 2?", "7")]


def dummy_lm() -> Any:
    answers = {q: {"reasoning": "Count.", "answer": a} for q, a in TRAIN + DEV}
    return dspy.utils.DummyLM(answers)


# Guards: a teacher with its own LM (set_lm) never got teacher_settings' temperature.
async def test_teacher_temperature_reaches_a_teacher_with_its_own_lm(
    session: dspex_rx.SessionContext, stub: OpenAIStub
) -> None:
    # DSPy 3's usual way to pick a model is program.set_lm(lm): the predictor's own LM
    # wins over dspy.settings.lm, so teacher_settings['lm'] = lm.copy(temperature=0.3)
    # never reaches the teacher, which keeps sending the LM's 0.9.
    await session.register_variable("temperature", "float", 0.3)
    lm = stub_lm(stub, temperature=0.9)
    optimizer = await DSPyOptimizationBridge(session).create_variable_aware_optimizer(
        dspy.BootstrapFewShot, {"teacher_temperature": "temperature"}, metric=exact,
        max_bootstrapped_demos=2, max_labeled_demos=0,
    )
    student = dspy.Predict("question -> answer")
    student.set_lm(lm)
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        await optimizer.compile(student, trainset=examples(TRAIN))
    teacher = [b for b in stub.bodies() if question_of(b) in {q for q, _ in TRAIN}]
    assert len(teacher) == 2
    assert [b["temperature"] for b in teacher] == [0.3, 0.3]


# Guards: result names like 'dspy.demos.hops[0]' were invalid: the compile failed at once.
async def test_a_program_with_a_list_of_predictors_compiles_and_gets_its_demos(
    session: dspex_rx.SessionContext,
) -> None:
    # Result variables are <prefix>demos.<predictor>: 'dspy.demos.hops[0]' is not a
    # valid name, so the compile fails before it starts. max_bootstrapped_demos 0:
    # labeled demos only, no LM call needed.
    await session.register_variable("max_demos", "integer", 0)
    optimizer = await DSPyOptimizationBridge(session).create_variable_aware_optimizer(
        dspy.BootstrapFewShot, {"max_bootstrapped_demos": "max_demos"}, metric=exact,
        max_labeled_demos=2,
    )
    program = MultiHop()
    compiled = await optimizer.compile(program, trainset=examples(TRAIN))
    run = optimizer.last_run
    assert run is not None
    demo_roles = sorted(role for role in run.variables if role.startswith("demos."))
    assert demo_roles == ["demos.final", "demos.hops[0]", "demos.hops[1]"]
    for name, predictor in compiled.named_predictors():
        assert len(predictor.demos) == 2
        assert await session.get_variable(run.variables[f"demos.{name}"]) == plain(
            predictor.demos)


# Guards: <prefix>settings was written by the lease's finish without dspy_run metadata.
async def test_the_settings_result_names_the_run_in_its_metadata(
    session: dspex_rx.SessionContext,
) -> None:
    # Issue #7: results (demos, score, the chosen settings) are written "with metadata
    # naming the run". Demos and score carry dspy_run; <prefix>settings is written by
    # the lease's finish, later and apart, with only the lease's own metadata.
    await session.register_variable("max_demos", "integer", 0)
    optimizer = await DSPyOptimizationBridge(session).create_variable_aware_optimizer(
        dspy.BootstrapFewShot, {"max_bootstrapped_demos": "max_demos"}, max_labeled_demos=1)
    await optimizer.compile(dspy.Predict("question -> answer"), trainset=examples(TRAIN))
    run = optimizer.last_run
    assert run is not None
    (demos,) = await session.get_variable_history("dspy.demos.self", limit=1)
    (settings,) = await session.get_variable_history("dspy.settings", limit=1)
    assert demos["metadata"]["dspy_run"] == run.run_id
    assert settings["value"]["run_id"] == run.run_id
    assert settings["metadata"].get("dspy_run") == run.run_id


# Guards: a run without a devset left dspy.score at the previous run's value.
async def test_an_unscored_run_does_not_leave_the_previous_runs_score(
    session: dspex_rx.SessionContext,
) -> None:
    # Run 1 is scored (66.67 -> dspy.score). Run 2 has no devset: it writes new demos but
    # leaves dspy.score at run 1's value, so the score variable describes demos that
    # are gone. "Not scored" is NaN in this design, never a stale number.
    optimizer = await DSPyOptimizationBridge(session).create_variable_aware_optimizer(
        dspy.BootstrapFewShot, {}, metric=exact, max_bootstrapped_demos=1,
        max_labeled_demos=1,
    )
    with dspy.context(lm=dummy_lm(), adapter=dspy.ChatAdapter()):
        await optimizer.compile(dspy.Predict("question -> answer"),
                                trainset=examples(TRAIN), devset=examples(DEV))
        first = optimizer.last_run
        assert first is not None and first.score == 100.0
        await optimizer.compile(dspy.Predict("question -> answer"),
                                trainset=examples(TRAIN[2:]))
    second = optimizer.last_run
    assert second is not None and second.score is None
    (demos,) = await session.get_variable_history("dspy.demos.self", limit=1)
    assert demos["metadata"]["dspy_run"] == second.run_id
    assert math.isnan(await session.get_variable("dspy.score"))


# Guards: a compile whose lease was stopped still wrote its demos (unfenced) before noticing.
async def test_a_stopped_lease_writes_no_results(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext], stub: OpenAIStub
) -> None:
    # stop_optimization revokes the lease mid-compile, and then anyone may change the
    # input. The compile still writes its demos (unfenced update_variables) before the
    # first lease call notices, so results of a run that ended "failed" are published,
    # computed with a setting that is no longer the variable's value.
    session, other = two
    await session.register_variable("temperature", "float", 0.3)
    entered, release = hold_answers(stub)
    optimizer = await DSPyOptimizationBridge(session).create_variable_aware_optimizer(
        dspy.BootstrapFewShot, {"teacher_temperature": "temperature"}, metric=exact,
        max_bootstrapped_demos=1, max_labeled_demos=0,
    )

    async def stop_it() -> None:
        await trio.to_thread.run_sync(entered.wait, 30)
        assert await other.stop_optimization("temperature", reason="operator") is None
        await other.set_variable("temperature", 1.5)
        release.set()

    refused: list[OptimizationLockedError] = []

    async def compile_it() -> None:
        try:
            await optimizer.compile(dspy.Predict("question -> answer"),
                                    trainset=examples(TRAIN))
        except OptimizationLockedError as exc:
            refused.append(exc)

    with dspy.context(lm=stub_lm(stub), adapter=dspy.ChatAdapter()):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_it)
            nursery.start_soon(compile_it)
    assert len(refused) == 1 and optimizer.last_run is None
    assert await other.get_variable("dspy.demos.self") == []
    assert await other.get_variable("temperature") == 1.5


# Guards: run_in_thread ignored a cancel and returned the result to the cancelled caller.
async def test_run_in_thread_raises_cancelled_once_the_call_returns() -> None:
    # Its docstring: "a cancellation waits until the call returns, then raises
    # Cancelled". trio.to_thread.run_sync(abandon_on_cancel=False) instead ignores the
    # cancel and returns the result, so the caller's next lines run as if not cancelled.
    entered, release = threading.Event(), threading.Event()
    after: list[str] = []

    def work() -> str:
        entered.set()
        release.wait(30)
        return "done"

    async def call() -> None:
        result = await run_in_thread(work)
        after.append(result)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await trio.to_thread.run_sync(entered.wait, 30)
        nursery.cancel_scope.cancel()
        release.set()
    assert after == []


# Guards: a compile cancelled while DSPy ran still went on to write its results.
async def test_a_cancelled_compile_writes_no_results(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext], stub: OpenAIStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Cancelled while DSPy runs: the compile cannot stop the thread, but once it returns
    # nothing may be written. It goes on to the results write, whose RPC is sent before
    # the pending cancel lands, so the demos of a run whose leases end "failed" may be
    # committed (whether they land is a race; that the write is attempted is not).
    session, other = two
    await session.register_variable("temperature", "float", 0.3)
    entered, release = hold_answers(stub)
    optimizer = await DSPyOptimizationBridge(session).create_variable_aware_optimizer(
        dspy.BootstrapFewShot, {"teacher_temperature": "temperature"}, metric=exact,
        max_bootstrapped_demos=1,
    )
    writes: list[dict[str, Any]] = []
    real_update = session.update_variables

    async def counted(updates: Any, *args: Any, **kwargs: Any) -> Any:
        writes.append(dict(updates))
        return await real_update(updates, *args, **kwargs)

    monkeypatch.setattr(session, "update_variables", counted)

    async def cancel_it(scope: trio.CancelScope) -> None:
        await trio.to_thread.run_sync(entered.wait, 30)
        scope.cancel()
        release.set()

    with dspy.context(lm=stub_lm(stub), adapter=dspy.ChatAdapter()):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_it, nursery.cancel_scope)
            await optimizer.compile(dspy.Predict("question -> answer"),
                                    trainset=examples(TRAIN))
    assert optimizer.last_run is None
    for variable in ("temperature", "dspy.settings"):
        status = await other.get_optimization_status(variable)
        # Cancelled, so "stopped" (issue #16): a cancellation is not a failure.
        assert status["state"] == "stopped" and not status["is_optimizing"]
    assert writes == []
    assert await other.get_variable("dspy.demos.self") == []
