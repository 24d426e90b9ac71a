"""Regressions found reviewing the DSPy integration (issue #7). Real DSPy modules and
optimizers only, against DummyLM or the loopback OpenAI stub; every test here failed on
the code as reviewed."""

from __future__ import annotations

import math
import os
import threading
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm loads

import pytest

dspy = pytest.importorskip("dspy")

import trio  # noqa: E402
import trio.testing  # noqa: E402
from dspy_helpers import TRAIN, exact, examples, hold_answers  # noqa: E402
from openai_stub import OpenAIStub, arithmetic, question_of  # noqa: E402

import dspex_rx  # noqa: E402
from dspex_rx import OptimizationLockedError  # noqa: E402
from dspex_rx.dspy import (  # noqa: E402
    DSPyOptimizationBridge,
    ModuleVariableResolver,
    parameter_variables,
    plain,
    run_in_thread,
)

dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)

DEV = [("What is 3 + 3?", "6"), ("What is 5 + 2?", "7")]


def stub_lm(stub: OpenAIStub, **kwargs: Any) -> Any:
    return dspy.LM("openai/test-model", api_base=stub.api_base, api_key="x", cache=False,
                   num_retries=0, **kwargs)


def dummy_lm() -> Any:
    answers = {q: {"reasoning": "Count.", "answer": a} for q, a in TRAIN + DEV}
    return dspy.utils.DummyLM(answers)


class MultiHop(dspy.Module):
    """The DSPy tutorials' shape: a list of per-hop predictors, then an answer step."""

    def __init__(self) -> None:
        super().__init__()
        self.hops = [dspy.Predict("question -> answer") for _ in range(2)]
        self.final = dspy.Predict("question -> answer")

    def forward(self, question: str) -> Any:
        for hop in self.hops:
            hop(question=question)
        return self.final(question=question)


# ------------------------------------------------------------------------ live binding


async def test_syncing_alone_does_not_change_what_the_next_request_carries(
    session: dspex_rx.SessionContext, stub: OpenAIStub
) -> None:
    # dspy.LM's own defaults are temperature=None, max_tokens=None: the request carries
    # neither and the provider decides. The docs promise a new variable "starts at what
    # the next request would have used"; binding must not add 0.7 / 1024 to every call
    # (1024 output tokens truncates long ChainOfThought answers).
    lm = stub_lm(stub)
    cot = dspy.ChainOfThought("question -> answer")
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        await run_in_thread(cot, question="What is 2 + 3?")
        before = stub.bodies()[-1]
        await DSPyOptimizationBridge(session).sync_dspy_parameters(cot)
        await run_in_thread(cot, question="What is 2 + 3?")
        after = stub.bodies()[-1]
    carried = ("temperature", "max_tokens", "max_completion_tokens")
    assert {k: after.get(k) for k in carried} == {k: before.get(k) for k in carried}


async def test_sync_binds_a_program_with_a_list_of_predictors(
    session: dspex_rx.SessionContext,
) -> None:
    # named_predictors() calls them 'hops[0]', 'hops[1]', 'final'; '[' and ']' are not
    # allowed in variable names, so the program cannot be synced at all.
    program = MultiHop()
    bridge = DSPyOptimizationBridge(session)
    with dspy.context(lm=dspy.utils.DummyLM([])):
        ids = await bridge.sync_dspy_parameters(program)
    assert len(ids) == 9 and len(set(ids.values())) == 9
    by_setting = {spec: name for name, spec in parameter_variables(program).items()}
    assert set(by_setting.values()) == set(ids)
    await session.set_variable(by_setting[("hops[1]", "temperature")], 0.25)
    await session.sync()
    assert program.hops[1].config["temperature"] == 0.25
    assert program.hops[0].config["temperature"] != 0.25
    assert program.final.config["temperature"] != 0.25


async def test_a_second_module_of_the_same_class_keeps_its_own_instructions(
    session: dspex_rx.SessionContext,
) -> None:
    # Two different ChainOfThought programs both map to cot_instructions: the second
    # sync silently replaces its prompt with the first one's ("Given the fields
    # `question`, produce the fields `answer`."), and from then on one variable drives
    # two predictors with different signatures. Refusing the clash is fine too.
    answer = dspy.ChainOfThought("question -> answer")
    classify = dspy.ChainOfThought("text -> label")
    own = classify.predict.signature.instructions
    bridge = DSPyOptimizationBridge(session)
    with dspy.context(lm=dspy.utils.DummyLM([])):
        await bridge.sync_dspy_parameters(answer)
        try:
            await bridge.sync_dspy_parameters(classify)
        except ValueError:
            refused = True
        else:
            refused = False
    assert classify.predict.signature.instructions == own
    if not refused:
        await session.set_variable("cot_instructions", "Answer in one word.")
        await session.sync()
        assert classify.predict.signature.instructions == own


async def test_a_failed_resync_keeps_the_bindings_it_was_to_replace(
    session: dspex_rx.SessionContext,
) -> None:
    cot = dspy.ChainOfThought("question -> answer")
    bridge = DSPyOptimizationBridge(session)
    with dspy.context(lm=dspy.utils.DummyLM([])):
        await bridge.sync_dspy_parameters(cot)
        with pytest.raises(ValueError):
            # A space is not allowed in a variable name: nothing can be registered.
            await bridge.sync_dspy_parameters(cot, variable_prefix="my agent ")
    assert sorted(bridge.bound_variables()) == [
        "cot_instructions", "cot_max_tokens", "cot_temperature"]
    await session.set_variable("cot_temperature", 0.25)
    await session.sync()
    assert cot.predict.config["temperature"] == 0.25


async def test_an_atomic_write_of_two_settings_never_reaches_a_call_half_applied(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext], stub: OpenAIStub
) -> None:
    # One atomic update_variables sets temperature and max_tokens together. Each setting
    # has its own binding, and each swaps predictor.config on its own: a call that a
    # worker thread starts between the two swaps (the trio thread is held there, as the
    # GIL may hold it) sends one new setting and one old one.
    session, other = two
    cot = dspy.ChainOfThought("question -> answer")
    go, sent = threading.Event(), threading.Event()

    def answer(body: dict[str, Any], fields: list[str]) -> dict[str, str]:
        sent.set()
        return arithmetic(body, fields)

    stub.answer = answer
    fired: list[str] = []

    def between(update: Any) -> None:
        # Runs in the trio thread right after the binding of the first setting applied.
        if not fired:
            fired.append(update.name)
            go.set()
            sent.wait(30)

    def call() -> Any:
        go.wait(30)
        return cot(question="What is 2 + 3?")

    with dspy.context(lm=stub_lm(stub, temperature=0.9, max_tokens=512),
                      adapter=dspy.ChatAdapter()):
        await DSPyOptimizationBridge(session).sync_dspy_parameters(cot)
        for name in ("cot_temperature", "cot_max_tokens"):
            session.observe(name, include_initial=False).subscribe(between)
        await session.sync()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_in_thread, call)
            await trio.testing.wait_all_tasks_blocked()
            results = await other.update_variables(
                {"cot_temperature": 0.2, "cot_max_tokens": 64})
            assert all(r is True for r in results.values())
            await session.sync()
    assert fired and len(stub.bodies()) == 1
    body = stub.bodies()[0]
    sent_pair = (body["temperature"], body.get("max_completion_tokens", body.get("max_tokens")))
    assert sent_pair in {(0.9, 512), (0.2, 64)}


async def test_two_connections_syncing_the_same_names_share_them(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "Programs syncing the same names share their settings". sync checks which
    # variables exist, then registers the others: a program on another connection that
    # registers them in between makes this sync fail with AlreadyExistsError (the
    # compile's result registration handles exactly this race; sync does not).
    first, second = two
    mine, theirs = (dspy.ChainOfThought("question -> answer") for _ in range(2))
    real = second.get_variables

    async def checked_then_raced(*args: Any, **kwargs: Any) -> Any:
        found = await real(*args, **kwargs)
        monkeypatch.setattr(second, "get_variables", real)
        await DSPyOptimizationBridge(first).sync_dspy_parameters(theirs)
        return found

    monkeypatch.setattr(second, "get_variables", checked_then_raced)
    with dspy.context(lm=dspy.utils.DummyLM([])):
        ids = await DSPyOptimizationBridge(second).sync_dspy_parameters(mine)
    assert sorted(ids) == ["cot_instructions", "cot_max_tokens", "cot_temperature"]
    await first.set_variable("cot_temperature", 0.25)
    await first.sync()
    await second.sync()
    assert mine.predict.config["temperature"] == theirs.predict.config["temperature"] == 0.25


async def test_the_documented_keyword_names_work(session: dspex_rx.SessionContext) -> None:
    # README said bridge.sync_dspy_parameters(module, variable_prefix="") and
    # bridge.unbind_dspy_parameters(module=None); the code calls it dspy_module. Issue #7
    # names it dspy_module (sync_dspy_parameters(dspy_module, variable_prefix='')), so
    # the README now says dspy_module, and this checks the documented keyword works.
    cot = dspy.ChainOfThought("question -> answer")
    bridge = DSPyOptimizationBridge(session)
    with dspy.context(lm=dspy.utils.DummyLM([])):
        await bridge.sync_dspy_parameters(dspy_module=cot)
    assert bridge.unbind_dspy_parameters(dspy_module=cot) == 3


# ------------------------------------------------------------- variable-aware optimizer


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


async def test_compile_of_a_program_with_a_list_of_predictors(
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
        assert status["state"] == "failed" and not status["is_optimizing"]
    assert writes == []
    assert await other.get_variable("dspy.demos.self") == []


# --------------------------------------------------------------------- module resolver


async def test_create_module_on_a_missing_variable_raises_variable_not_found(
    session: dspex_rx.SessionContext,
) -> None:
    # Everywhere else a missing variable is dspex_rx.VariableNotFoundError (a KeyError);
    # create_module raises a bare KeyError that `except VariableNotFoundError` misses.
    with pytest.raises(dspex_rx.VariableNotFoundError):
        await ModuleVariableResolver(session).create_module("nope", "question -> answer")


async def test_create_module_works_for_a_module_variable_without_choices(
    session: dspex_rx.SessionContext,
) -> None:
    # A 'module' variable need not list choices. create_module then treats every known
    # class as a possible choice and demands ReAct's tools= up front, so the simplest
    # use, a Predict/ChainOfThought switch, cannot be made without passing tools.
    await session.register_variable("strategy", "module", "Predict")
    qa = await ModuleVariableResolver(session).create_module("strategy", "question -> answer")
    with dspy.context(lm=dspy.utils.DummyLM([{"answer": "5"}]), adapter=dspy.ChatAdapter()):
        prediction = await qa.forward(question="What is 2 + 3?")
    assert prediction.answer == "5" and qa.last_class == "Predict"


async def test_re_registering_a_custom_class_is_used_by_the_next_call(
    session: dspex_rx.SessionContext,
) -> None:
    # register_module refuses to replace only built-in classes, so replacing a custom
    # one is allowed; but the instance built from the old class is kept per name, and
    # every later call still runs the old class (refusing the replacement would be
    # consistent too).
    class VoteV1(dspy.Module):
        def __init__(self, signature: Any) -> None:
            super().__init__()
            self.predict = dspy.Predict(signature)

        def forward(self, **inputs: Any) -> Any:
            return dspy.Prediction(answer="v1")

    class VoteV2(VoteV1):
        def forward(self, **inputs: Any) -> Any:
            return dspy.Prediction(answer="v2")

    resolver = ModuleVariableResolver(session)
    resolver.register_module("Vote", VoteV1)
    await session.register_variable(
        "voting", "module", "Vote", constraints={"choices": ["Vote", "Predict"]})
    voting = await resolver.create_module("voting", "question -> answer")
    assert (await voting.forward(question="?")).answer == "v1"
    try:
        resolver.register_module("Vote", VoteV2)
    except ValueError:
        return  # refusing to replace a registered class would be consistent too
    assert (await voting.forward(question="?")).answer == "v2"
    assert type(await voting.module()) is VoteV2
