"""DSPy integration end to end, with real DSPy modules and optimizers: the variable-aware
optimizer (settings from variables, a lease while it runs, results and history written
back), live parameter binding across connections, the module resolver, the adaptive
example. LMs: DSPy's DummyLM, and dspy.LM against a loopback OpenAI stub (nothing leaves
the machine)."""

from __future__ import annotations

import inspect
import os
import re
import runpy
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm loads

import pytest

dspy = pytest.importorskip("dspy")

import trio  # noqa: E402
import trio.testing  # noqa: E402
from dspy_helpers import TRAIN, MultiHop, exact, examples, hold_answers, stub_lm  # noqa: E402
from openai_stub import OpenAIStub, arithmetic, question_of  # noqa: E402

import dspex_rx  # noqa: E402
import dspex_rx.dspy  # noqa: E402
import dspex_rx.integrations.dspy.resolver  # noqa: E402
from dspex_rx import OptimizationLockedError  # noqa: E402
from dspex_rx.dspy import (  # noqa: E402
    DSPyOptimizationBridge,
    ModuleVariableResolver,
    VariableAwareOptimizer,
    default_prefix,
    parameter_variables,
    plain,
    run_in_thread,
)
from dspex_rx.server import EmbeddedServer  # noqa: E402

# No disk or memory cache: every call must reach the LM (and the stub must see it).
dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# The last label is wrong on purpose: the stub answers 12, so the score is 2 of 3.
DEV = [("What is 3 + 3?", "6"), ("What is 5 + 2?", "7"), ("What is 7 + 5?", "13")]


@pytest.fixture
def lm(stub: OpenAIStub) -> Any:
    # DSPy's real LM path, pointed at the loopback stub; no cache, no retries.
    return dspy.LM("openai/test-model", api_base=stub.api_base, api_key="x", cache=False,
                   num_retries=0, temperature=0.9)


@pytest.fixture
async def three(
    server: EmbeddedServer,
) -> AsyncIterator[tuple[dspex_rx.SessionContext, ...]]:
    """Three connections to one session."""
    async with dspex_rx.connect(server.target) as a:  # noqa: SIM117
        async with dspex_rx.connect(server.target, session_id=a.session_id, token=a.token) as b:
            async with dspex_rx.connect(server.target, session_id=a.session_id, token=a.token) as c:
                yield a, b, c


async def register_inputs(session: dspex_rx.SessionContext) -> None:
    await session.register_variables([
        {"name": "temperature", "type": "float", "initial_value": 0.3,
         "constraints": {"min": 0.0, "max": 2.0}},
        {"name": "max_demos", "type": "integer", "initial_value": 2,
         "constraints": {"min": 0, "max": 8}},
    ])


# ------------------------------------------------------------- variable-aware optimizer


async def test_bootstrap_reads_its_settings_from_variables_and_writes_results_back(
    session: dspex_rx.SessionContext, stub: OpenAIStub, lm: Any
) -> None:
    await register_inputs(session)
    bridge = DSPyOptimizationBridge(session)
    optimizer = await bridge.create_variable_aware_optimizer(
        dspy.BootstrapFewShot,
        {"teacher_temperature": "temperature", "max_bootstrapped_demos": "max_demos"},
        metric=exact,
    )
    # The student's own config (0.8) would win over the teacher LM's temperature: the
    # bridge must keep it out of the teacher, and keep it for the student's evaluation.
    student = dspy.ChainOfThought("question -> answer", temperature=0.8)
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        compiled = await optimizer.compile(student, trainset=examples(TRAIN),
                                           devset=examples(DEV))

    run = optimizer.last_run
    assert run is not None
    bodies = stub.bodies()
    train_questions = {q for q, _ in TRAIN}
    teacher = [b for b in bodies if question_of(b) in train_questions]
    evaluation = [b for b in bodies if question_of(b) in {q for q, _ in DEV}]
    assert len(teacher) == 2  # stops after max_demos (2) bootstrapped traces
    assert [b["temperature"] for b in teacher] == [0.3, 0.3]
    assert len(evaluation) == 3 and {b["temperature"] for b in evaluation} == {0.8}
    assert len(bodies) == 5

    # Demos per predictor: 2 bootstrapped (with reasoning) + 2 labeled.
    demos = await session.get_variable("dspy.demos.predict")
    assert demos == plain(compiled.predict.demos) == run.demos["predict"]
    assert len(demos) == 4
    assert [d.get("augmented") for d in demos[:2]] == [True, True]
    assert demos[0]["reasoning"].startswith("Adding gives")
    assert await session.get_variable("dspy.score") == pytest.approx(66.67) == run.score

    settings = await session.get_variable("dspy.settings")
    assert settings["teacher_temperature"] == 0.3
    assert settings["max_bootstrapped_demos"] == 2
    assert settings["optimizer"] == "BootstrapFewShot" and settings["run_id"] == run.run_id

    # The results are one write whose metadata names the run.
    for name in ("dspy.demos.predict", "dspy.score"):
        (latest,) = await session.get_variable_history(name, limit=1)
        assert latest["metadata"]["dspy_run"] == run.run_id
        assert latest["metadata"]["optimization_ids"] == run.optimization_ids
        assert latest["revision"] == (await session.get_variable_history(
            "dspy.demos.predict", limit=1))[0]["revision"]

    # The run is in the optimization history of each input and of the settings variable.
    assert set(run.optimization_ids) == {"temperature", "max_demos", "dspy.settings"}
    for variable, value in [("temperature", 0.3), ("max_demos", 2),
                            ("dspy.settings", settings)]:
        (entry,) = await session.get_optimization_history(variable)
        assert entry["optimization_id"] == run.optimization_ids[variable]
        assert entry["optimizer_type"] == "dspy.BootstrapFewShot"
        assert entry["value"] == value
        assert entry["score"] == pytest.approx(66.67)
        assert entry["metrics"]["run_id"] == run.run_id
        assert entry["metrics"]["demos"] == 4
        status = await session.get_optimization_status(variable)
        assert status["state"] == "completed" and not status["is_optimizing"]
        (final,) = await session.get_variable_history(variable, limit=1)
        assert final["metadata"]["final"] is True
        assert final["metadata"]["optimization_id"] == run.optimization_ids[variable]
    # Released: anyone may change the inputs again.
    await session.set_variable("temperature", 0.5)


async def test_the_inputs_are_locked_while_the_compile_runs(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext], lm: Any, stub: OpenAIStub
) -> None:
    session, other = two
    await register_inputs(session)
    assert await session.get_variable("temperature") == 0.3  # now in session's cache
    await other.set_variable("temperature", 0.4)  # the compile must read this, not 0.3
    entered, release = hold_answers(stub)
    optimizer = await DSPyOptimizationBridge(session).create_variable_aware_optimizer(
        dspy.BootstrapFewShot, {"teacher_temperature": "temperature"}, metric=exact,
        max_bootstrapped_demos=1,
    )
    refused: list[str] = []

    async def meddle() -> None:
        await trio.to_thread.run_sync(entered.wait, 30)
        try:
            await other.set_variable("temperature", 1.5)
        except OptimizationLockedError as exc:
            refused.append(str(exc))
        status = await other.get_optimization_status("temperature")
        assert status["is_optimizing"] and status["optimizer_type"] == "dspy.BootstrapFewShot"
        release.set()

    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(meddle)
            await optimizer.compile(dspy.Predict("question -> answer"),
                                    trainset=examples(TRAIN))
    assert refused and "locked for optimization" in refused[0]
    assert await other.get_variable("temperature") == 0.4
    assert {b["temperature"] for b in stub.bodies()} == {0.4}
    # Without a devset there is no score: the recorded target is the demo count.
    (entry,) = await other.get_optimization_history("temperature")
    assert "score" not in entry["metrics"] and entry["score"] == entry["metrics"]["demos"]
    assert optimizer.last_run is not None and optimizer.last_run.score is None
    assert "score" not in optimizer.last_run.variables


async def test_random_search_with_dummy_lm(session: dspex_rx.SessionContext) -> None:
    await session.register_variables([
        {"name": "max_demos", "type": "integer", "initial_value": 2},
        {"name": "candidates", "type": "integer", "initial_value": 1},
    ])
    answers = {q: {"reasoning": "Count.", "answer": a} for q, a in TRAIN + DEV[:2]}
    answers["What is 7 + 5?"] = {"reasoning": "Count.", "answer": "12"}
    optimizer = await DSPyOptimizationBridge(session).create_variable_aware_optimizer(
        dspy.BootstrapFewShotWithRandomSearch,
        {"max_bootstrapped_demos": "max_demos", "num_candidate_programs": "candidates"},
        metric=exact, result_prefix="qa.",
    )
    lm = dspy.utils.DummyLM(answers)
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        compiled = await optimizer.compile(dspy.Predict("question -> answer"),
                                           trainset=examples(TRAIN), devset=examples(DEV))
    run = optimizer.last_run
    assert run is not None
    # Seeds -3 (zero-shot), -2 (labels), -1 (unshuffled) and 0: four candidates.
    assert run.metrics["candidates"] == 4
    assert run.metrics["best_candidate_score"] == 100.0
    assert run.settings["num_candidate_programs"] == 1
    assert run.settings["chosen_candidate"]["score"] == 100.0
    assert await session.get_variable("qa.demos.self") == plain(compiled.demos)
    assert await session.get_variable("qa.score") == pytest.approx(66.67)
    (entry,) = await session.get_optimization_history("qa.settings")
    assert entry["metrics"]["candidates"] == 4


async def test_a_failed_compile_releases_the_leases_and_writes_nothing(
    session: dspex_rx.SessionContext,
) -> None:
    await register_inputs(session)
    optimizer = await DSPyOptimizationBridge(session).create_variable_aware_optimizer(
        dspy.BootstrapFewShot, {"teacher_temperature": "temperature"}, metric=exact
    )
    # No LM anywhere: the teacher temperature has nothing to go on.
    with pytest.raises(ValueError, match="no LM to set it on"):
        await optimizer.compile(dspy.Predict("question -> answer"), trainset=examples(TRAIN))
    status = await session.get_optimization_status("temperature")
    assert status["state"] == "failed" and not status["is_optimizing"]
    assert await session.get_variable("dspy.demos.self") == []
    assert await session.get_optimization_history("temperature") == []
    await session.set_variable("temperature", 0.4)  # not locked any more


async def test_bad_mappings_are_refused_before_anything_runs(
    session: dspex_rx.SessionContext,
) -> None:
    bridge = DSPyOptimizationBridge(session)
    with pytest.raises(ValueError, match="not an argument of BootstrapFewShot"):
        await bridge.create_variable_aware_optimizer(dspy.BootstrapFewShot, {"max_demos": "x"})
    with pytest.raises(ValueError, match="both mapped"):
        await bridge.create_variable_aware_optimizer(
            dspy.BootstrapFewShot, {"max_rounds": "x"}, max_rounds=2)
    with pytest.raises(ValueError, match="unexpected keyword"):
        await bridge.create_variable_aware_optimizer(dspy.BootstrapFewShot, {}, rounds=2)
    with pytest.raises(ValueError, match="takes no teacher_settings"):
        await bridge.create_variable_aware_optimizer(dspy.LabeledFewShot,
                                                     {"teacher_temperature": "t"})
    clashing = await bridge.create_variable_aware_optimizer(
        dspy.BootstrapFewShot, {"max_bootstrapped_demos": "dspy.settings"})
    with pytest.raises(ValueError, match="cannot also be mapped inputs"):
        await clashing.compile(dspy.Predict("question -> answer"), trainset=[])
    # A result variable of the wrong type is found before the compile starts.
    await session.register_variable("dspy.score", "string", "n/a")
    optimizer = await bridge.create_variable_aware_optimizer(dspy.BootstrapFewShot, {},
                                                             metric=exact)
    with pytest.raises(TypeError, match=re.escape("'dspy.score' exists with type string")):
        await optimizer.compile(dspy.Predict("question -> answer"), trainset=[],
                                devset=[])


async def test_the_factory_is_awaited_and_takes_variable_mappings_by_keyword(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("max_demos", "integer", 1)
    bridge = DSPyOptimizationBridge(session)
    pending = bridge.create_variable_aware_optimizer(
        dspy.BootstrapFewShot, variable_mappings={"max_bootstrapped_demos": "max_demos"},
        metric=exact)
    assert inspect.isawaitable(pending)  # the spec awaits it
    optimizer = await pending
    assert isinstance(optimizer, VariableAwareOptimizer)
    assert optimizer.variable_mappings == {"max_bootstrapped_demos": "max_demos"}
    assert optimizer.kwargs == {"metric": exact}

    lm = dspy.utils.DummyLM({q: {"answer": a} for q, a in TRAIN})
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        compiled = await optimizer.compile(dspy.Predict("question -> answer"),
                                           trainset=examples(TRAIN))
    # BootstrapFewShot's default is 4 bootstrapped demos; the variable said 1.
    augmented = [d for d in compiled.demos if d.get("augmented")]
    assert len(augmented) == 1 and len(compiled.demos) == 4
    assert optimizer.last_run is not None
    assert optimizer.last_run.settings["max_bootstrapped_demos"] == 1
    assert await session.get_variable("dspy.demos.self") == plain(compiled.demos)


async def test_the_bridge_names_its_session_session_context(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
) -> None:
    session, other = two
    bridge = DSPyOptimizationBridge(session)
    assert bridge.session_context is session is bridge.session
    # One attribute under two names: assigning either moves both.
    bridge.session_context = other
    assert bridge.session is other and bridge.session_context is other


# ------------------------------------------------------------------------ live binding


async def test_sync_binds_chain_of_thought_settings_live_across_connections(
    three: tuple[dspex_rx.SessionContext, ...], stub: OpenAIStub, lm: Any
) -> None:
    session, other, control = three
    cot = dspy.ChainOfThought("question -> answer")
    bridge = DSPyOptimizationBridge(session)
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        ids = await bridge.sync_dspy_parameters(cot)
        assert set(ids) == {"cot_temperature", "cot_max_tokens", "cot_instructions"}
        assert all(i.startswith(f"var_{name}_") for name, i in ids.items())
        values = await other.get_variables(list(ids))
        # Started from what the next request would have used: the LM's temperature, the
        # default max_tokens, the signature's instructions.
        assert values["cot_temperature"] == 0.9
        assert values["cot_max_tokens"] == 1024
        assert values["cot_instructions"] == cot.predict.signature.instructions

        await run_in_thread(cot, question="What is 2 + 3?")
        assert stub.bodies()[-1]["temperature"] == 0.9

        await other.set_variable("cot_temperature", 0.2)
        await other.set_variable("cot_max_tokens", 64)
        await other.set_variable("cot_instructions", "Add the two numbers.")
        await session.sync()
        prediction = await run_in_thread(cot, question="What is 4 + 4?")
        body = stub.bodies()[-1]
        assert body["temperature"] == 0.2
        assert body.get("max_completion_tokens", body.get("max_tokens")) == 64
        assert "Add the two numbers." in body["messages"][0]["content"]
        assert prediction.answer == "8"

        # A second copy bound through a third connection is the control: it shows the
        # next change does travel, while the closed connection's module keeps its value.
        control_cot = dspy.ChainOfThought("question -> answer")
        await DSPyOptimizationBridge(control).sync_dspy_parameters(control_cot)
        assert control_cot.predict.config["temperature"] == 0.2  # the shared value won

        await session.close()
        assert bridge.bound_variables() == []  # the watches completed with the session
        await other.set_variable("cot_temperature", 1.5)
        await control.sync()
        assert control_cot.predict.config["temperature"] == 1.5
        assert cot.predict.config["temperature"] == 0.2
        await run_in_thread(cot, question="What is 1 + 6?")
        assert stub.bodies()[-1]["temperature"] == 0.2


async def test_sync_names_every_predictor_of_a_multi_step_module(
    session: dspex_rx.SessionContext,
) -> None:
    react = dspy.ReAct("question -> answer", tools=[len])
    bridge = DSPyOptimizationBridge(session)
    with dspy.context(lm=dspy.utils.DummyLM([])):
        ids = await bridge.sync_dspy_parameters(react, variable_prefix="agent.")
    # The prefix is the whole start of each name (issue #12): no 'react.' after it.
    assert sorted(ids) == sorted(parameter_variables(react, "agent.")) == [
        "agent.extract.predict_instructions", "agent.extract.predict_max_tokens",
        "agent.extract.predict_temperature", "agent.react_instructions",
        "agent.react_max_tokens", "agent.react_temperature",
    ]
    assert react.react.config["temperature"] == 0.0  # DummyLM's own default
    await session.set_variable("agent.react_temperature", 0.6)
    await session.sync()
    assert react.react.config["temperature"] == 0.6
    assert react.extract.predict.config["temperature"] == 0.0
    assert bridge.unbind_dspy_parameters(react) == 6
    await session.set_variable("agent.react_temperature", 0.1)
    await session.sync()
    assert react.react.config["temperature"] == 0.6


async def test_an_existing_variable_sets_the_module_and_a_wrong_type_is_refused(
    session: dspex_rx.SessionContext,
) -> None:
    await session.register_variable("cot_temperature", "float", 0.1)
    cot = dspy.ChainOfThought("question -> answer", temperature=1.0)
    bridge = DSPyOptimizationBridge(session)
    with dspy.context(lm=dspy.utils.DummyLM([])):
        await bridge.sync_dspy_parameters(cot)
        assert cot.predict.config["temperature"] == 0.1
        await session.register_variable("predict_max_tokens", "string", "lots")
        with pytest.raises(TypeError, match="'predict_max_tokens' exists with type string"):
            await bridge.sync_dspy_parameters(dspy.Predict("question -> answer"))


async def test_prefix_cot_gives_exactly_the_spec_names(
    session: dspex_rx.SessionContext,
) -> None:
    # Guards issue #12: variable_prefix="cot_" made cot_cot_temperature.
    cot = dspy.ChainOfThought("question -> answer")
    bridge = DSPyOptimizationBridge(session)
    with dspy.context(lm=dspy.utils.DummyLM([])):
        ids = await bridge.sync_dspy_parameters(cot, variable_prefix="cot_")
    assert sorted(ids) == ["cot_instructions", "cot_max_tokens", "cot_temperature"]
    assert sorted(v["name"] for v in await session.list_variables()) == sorted(ids)
    await session.set_variable("cot_temperature", 0.35)
    await session.sync()
    assert cot.predict.config["temperature"] == 0.35

    qa = dspy.ChainOfThought("question -> answer")
    with dspy.context(lm=dspy.utils.DummyLM([])):
        renamed = await DSPyOptimizationBridge(session).sync_dspy_parameters(
            qa, variable_prefix="qa.")
    assert sorted(renamed) == ["qa.instructions", "qa.max_tokens", "qa.temperature"]


async def test_no_prefix_names_a_module_by_its_class(
    session: dspex_rx.SessionContext,
) -> None:
    bridge = DSPyOptimizationBridge(session)
    with dspy.context(lm=dspy.utils.DummyLM([])):
        cot_ids = await bridge.sync_dspy_parameters(dspy.ChainOfThought("question -> answer"))
        predict_ids = await bridge.sync_dspy_parameters(dspy.Predict("text -> label"))
    # The same names as the spec's explicit prefix: a ported program shares them.
    assert sorted(cot_ids) == ["cot_instructions", "cot_max_tokens", "cot_temperature"]
    assert sorted(predict_ids) == [
        "predict_instructions", "predict_max_tokens", "predict_temperature"]
    assert default_prefix(dspy.ChainOfThought("question -> answer")) == "cot_"


class DraftThenAnswer(dspy.Module):
    """Two predictors: a draft step and a ChainOfThought answer step."""

    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict("question -> draft")
        self.answer = dspy.ChainOfThought("question, draft -> answer")

    def forward(self, question: str) -> Any:
        draft = self.draft(question=question).draft
        return self.answer(question=question, draft=draft)


async def test_two_predictors_get_their_predictor_names_after_the_prefix(
    session: dspex_rx.SessionContext,
) -> None:
    settings = ["instructions", "max_tokens", "temperature"]
    program, other = DraftThenAnswer(), DraftThenAnswer()
    bridge = DSPyOptimizationBridge(session)
    with dspy.context(lm=dspy.utils.DummyLM([])):
        default = await bridge.sync_dspy_parameters(program)
        prefixed = await bridge.sync_dspy_parameters(other, variable_prefix="cot_")
    assert sorted(default) == sorted(
        [f"draft_then_answer.answer.predict_{s}" for s in settings]
        + [f"draft_then_answer.draft_{s}" for s in settings])
    assert sorted(prefixed) == sorted(
        [f"cot_answer.predict_{s}" for s in settings] + [f"cot_draft_{s}" for s in settings])
    # Each name drives its own predictor only.
    await session.set_variable("cot_draft_temperature", 0.15)
    await session.set_variable("draft_then_answer.answer.predict_temperature", 1.25)
    await session.sync()
    assert other.draft.config["temperature"] == 0.15
    assert other.answer.predict.config["temperature"] == 0.0  # DummyLM's own
    assert program.answer.predict.config["temperature"] == 1.25
    assert program.draft.config["temperature"] == 0.0


async def test_another_module_synced_under_a_taken_prefix_is_refused(
    session: dspex_rx.SessionContext,
) -> None:
    cot = dspy.ChainOfThought("question -> answer")
    predict = dspy.Predict("question -> answer")
    bridge = DSPyOptimizationBridge(session)
    with dspy.context(lm=dspy.utils.DummyLM([])):
        await bridge.sync_dspy_parameters(cot, variable_prefix="cot_")
        with pytest.raises(ValueError, match=r"'cot_temperature' is the temperature of "
                                             r"predictor 'predict' \(question -> reasoning"):
            await bridge.sync_dspy_parameters(predict, variable_prefix="cot_")
        # Another bridge finds the owner in the variables' metadata.
        with pytest.raises(ValueError, match=r"predictor 'predict' of a ChainOfThought"):
            await DSPyOptimizationBridge(session).sync_dspy_parameters(
                predict, variable_prefix="cot_")
    assert "temperature" not in predict.config  # not bound to the other module's value
    assert sorted(bridge.bound_variables()) == [
        "cot_instructions", "cot_max_tokens", "cot_temperature"]


# Guards: binding added temperature 0.7 and max_tokens 1024 to every request.
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


# Guards: predictor names like 'hops[0]' made invalid variable names: no sync at all.
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


# Guards: a second ChainOfThought synced to cot_instructions took the first one's prompt.
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


# Guards: a re-sync refused for a bad prefix dropped the bindings it was to replace.
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


# Guards: each setting swapped predictor.config alone: a call between sent one old, one new.
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


# Guards: a sync raced by another connection registering the same names failed.
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


# Guards: the README named the module keyword differently from the code.
async def test_sync_and_unbind_take_the_documented_dspy_module_keyword(
    session: dspex_rx.SessionContext,
) -> None:
    # README said bridge.sync_dspy_parameters(module, variable_prefix="") and
    # bridge.unbind_dspy_parameters(module=None); the code calls it dspy_module. Issue #7
    # names it dspy_module (sync_dspy_parameters(dspy_module, variable_prefix='')), so
    # the README now says dspy_module, and this checks the documented keyword works.
    cot = dspy.ChainOfThought("question -> answer")
    bridge = DSPyOptimizationBridge(session)
    with dspy.context(lm=dspy.utils.DummyLM([])):
        await bridge.sync_dspy_parameters(dspy_module=cot)
    assert bridge.unbind_dspy_parameters(dspy_module=cot) == 3


# --------------------------------------------------------------------- module resolver


async def test_resolver_switches_from_predict_to_chain_of_thought(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext], stub: OpenAIStub, lm: Any
) -> None:
    session, other = two
    await session.register_variable(
        "strategy", "module", "Predict",
        constraints={"choices": ["Predict", "ChainOfThought"]})
    qa = await ModuleVariableResolver(session).create_module("strategy", "question -> answer")
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        first = await qa.forward(question="What is 2 + 3?")
        assert type(await qa.module()) is dspy.Predict and qa.last_class == "Predict"
        assert first.answer == "5" and "reasoning" not in first
        assert "reasoning" not in stub.bodies()[-1]["messages"][-1]["content"]

        await other.set_variable("strategy", "ChainOfThought")  # another connection
        await session.sync()
        second = await qa.forward(question="What is 4 + 4?")
        assert type(await qa.module()) is dspy.ChainOfThought
        assert qa.last_class == "ChainOfThought"
        assert second.reasoning == "Adding gives 8." and second.answer == "8"
        assert "[[ ## reasoning ## ]]" in stub.bodies()[-1]["messages"][-1]["content"]

        await session.set_variable("strategy", "Predict")  # own writes apply at once
        third = await qa.forward(question="What is 1 + 6?")
        assert qa.last_class == "Predict" and "reasoning" not in third
    assert set(qa.instances) == {"Predict", "ChainOfThought"}  # kept, one per class

    await session.close()
    with pytest.raises(RuntimeError, match="session is closed"):
        await qa.forward(question="What is 9 + 1?")


async def test_resolver_checks_choices_and_keywords_up_front(
    session: dspex_rx.SessionContext,
) -> None:
    resolver = ModuleVariableResolver(session)
    await session.register_variable(
        "agent", "module", "Predict", constraints={"choices": ["Predict", "ReAct"]})
    # ReAct without tools= is refused only when it is created (issue #12; see the tests
    # below), but a keyword no choice takes is refused here.
    with pytest.raises(ValueError, match=r"no choice .* takes tool"):
        await resolver.create_module("agent", "question -> answer", tools=[len], tool=len)
    with pytest.raises(KeyError, match="no module variable 'nope'"):
        await resolver.create_module("nope", "question -> answer")

    await session.register_variable(
        "voting", "module", "Vote", constraints={"choices": ["Vote", "Predict"]})
    with pytest.raises(ValueError, match="module 'Vote' is not known"):
        await resolver.create_module("voting", "question -> answer")

    class Vote(dspy.Module):
        def __init__(self, signature: Any, voters: int = 3) -> None:
            super().__init__()
            self.voters = voters
            self.predict = dspy.Predict(signature)

        def forward(self, **inputs: Any) -> Any:
            return self.predict(**inputs)

    resolver.register_module("Vote", Vote)
    voting = await resolver.create_module("voting", "question -> answer", voters=5,
                                          config={"temperature": 0.4})
    with dspy.context(lm=dspy.utils.DummyLM([{"answer": "yes"}])):
        prediction = await voting.forward(question="Is 2 even?")
    assert prediction.answer == "yes"
    built = voting.instances["Vote"]
    assert built.voters == 5 and built.predict.config == {"temperature": 0.4}


FOUR = ["Predict", "ChainOfThought", "ReAct", "ProgramOfThought"]


async def register_four(session: dspex_rx.SessionContext, initial: str) -> None:
    await session.register_variable("reasoning_strategy", "module", initial,
                                    constraints={"choices": FOUR})


async def test_a_module_variable_may_offer_all_four_builtin_classes(
    session: dspex_rx.SessionContext,
) -> None:
    await register_four(session, "ChainOfThought")
    qa = await ModuleVariableResolver(session).create_module(
        "reasoning_strategy", "question -> answer")  # no tools=, no interpreter_factory=
    lm = dspy.utils.DummyLM([{"reasoning": "Two and two.", "answer": "4"}, {"answer": "5"}])
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        first = await qa.forward(question="What is 2 + 2?")
        await session.set_variable("reasoning_strategy", "Predict")
        second = await qa.forward(question="What is 2 + 3?")
    assert (first.reasoning, first.answer) == ("Two and two.", "4")
    assert second.answer == "5" and "reasoning" not in second
    assert qa.last_class == "Predict"
    assert {name: type(m) for name, m in qa.instances.items()} == {
        "ChainOfThought": dspy.ChainOfThought, "Predict": dspy.Predict}


async def test_creating_react_without_tools_fails_naming_variable_class_and_argument(
    session: dspex_rx.SessionContext,
) -> None:
    await register_four(session, "Predict")
    resolver = ModuleVariableResolver(session)
    qa = await resolver.create_module("reasoning_strategy", "question -> answer")
    await session.set_variable("reasoning_strategy", "ReAct")
    lm = dspy.utils.DummyLM([{"answer": "4"}])
    message = r"module variable 'reasoning_strategy' chose ReAct, .* without tools="
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        with pytest.raises(ValueError, match=message):
            await qa.forward(question="What is 2 + 2?")
        assert lm.history == [] and "ReAct" not in qa.instances  # nothing ran or was built
        assert await session.get_variable("reasoning_strategy") == "ReAct"  # kept
        # A module made while the variable holds ReAct fails at once.
        with pytest.raises(ValueError, match=message):
            await resolver.create_module("reasoning_strategy", "question -> answer")
        await session.set_variable("reasoning_strategy", "Predict")
        assert (await qa.forward(question="What is 2 + 2?")).answer == "4"


async def test_react_with_tools_is_created_and_calls_them(
    session: dspex_rx.SessionContext,
) -> None:
    calls: list[tuple[int, int]] = []

    def add(a: int, b: int) -> int:
        """Add two integers."""
        calls.append((a, b))
        return a + b

    await register_four(session, "ReAct")
    qa = await ModuleVariableResolver(session).create_module(
        "reasoning_strategy", "question -> answer", tools=[add], max_iters=3)
    lm = dspy.utils.DummyLM([
        {"next_thought": "Use add.", "next_tool_name": "add", "next_tool_args": {"a": 2, "b": 3}},
        {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}},
        {"reasoning": "add returned 5.", "answer": "5"},
    ])
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        prediction = await qa.forward(question="What is 2 + 3?")
    assert calls == [(2, 3)]
    assert prediction.answer == "5" and prediction.trajectory["observation_0"] == 5
    built = qa.instances["ReAct"]
    assert type(built) is dspy.ReAct and built.max_iters == 3 and set(built.tools) == {
        "add", "finish"}
    assert len(lm.history) == 3


POT_CODE = "```python\nresult = 17 * 3\nprint(result)\n```"


async def test_program_of_thought_without_deno_or_interpreter_fails_before_any_request(
    session: dspex_rx.SessionContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dspex_rx.integrations.dspy.resolver, "_deno_found", lambda: False)
    await register_four(session, "ProgramOfThought")
    qa = await ModuleVariableResolver(session).create_module(
        "reasoning_strategy", "question -> answer")
    lm = dspy.utils.DummyLM([{"reasoning": "x", "generated_code": POT_CODE}])
    refused = (r"'reasoning_strategy' chose ProgramOfThought, .* needs Deno, which is not "
               r"installed .* interpreter_factory=dspy.LocalInterpreter")
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()), pytest.raises(ValueError,
                                                                         match=refused):
        await qa.forward(question="What is 17 * 3?")
    assert lm.history == [] and qa.instances == {}
    # With Deno there, or an interpreter configured in DSPy, it is built.
    # DSPy's deprecation of ProgramOfThought reaches the user as DSPy issues it.
    monkeypatch.setattr(dspex_rx.integrations.dspy.resolver, "_deno_found", lambda: True)
    with pytest.warns(DeprecationWarning, match="ProgramOfThought is deprecated"):
        assert type(qa.instance("ProgramOfThought")) is dspy.ProgramOfThought
    qa.instances.clear()
    monkeypatch.setattr(dspex_rx.integrations.dspy.resolver, "_deno_found", lambda: False)
    with (dspy.context(interpreter_factory=dspy.LocalInterpreter),
          pytest.warns(DeprecationWarning, match="ProgramOfThought is deprecated")):
        assert type(qa.instance("ProgramOfThought")) is dspy.ProgramOfThought


async def test_program_of_thought_with_a_local_interpreter_runs_its_code(
    session: dspex_rx.SessionContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dspex_rx.integrations.dspy.resolver, "_deno_found", lambda: False)
    await register_four(session, "ProgramOfThought")
    qa = await ModuleVariableResolver(session).create_module(
        "reasoning_strategy", "question -> answer", interpreter_factory=dspy.LocalInterpreter)
    lm = dspy.utils.DummyLM([
        {"reasoning": "Multiply.", "generated_code": POT_CODE},
        {"reasoning": "The code printed 51.", "answer": "51"},
    ])
    with (dspy.context(lm=lm, adapter=dspy.ChatAdapter()),
          pytest.warns(DeprecationWarning, match="ProgramOfThought is deprecated")):
        prediction = await qa.forward(question="What is 17 * 3?")
    assert prediction.answer == "51" and qa.last_class == "ProgramOfThought"
    # The second request carries what the generated code printed when it ran.
    assert len(lm.history) == 2
    assert '[[ ## code_output ## ]]\n"51"' in lm.history[1]["messages"][-1]["content"]


# Guards: create_module raised a bare KeyError that `except VariableNotFoundError` missed.
async def test_create_module_on_a_missing_variable_raises_variable_not_found(
    session: dspex_rx.SessionContext,
) -> None:
    # Everywhere else a missing variable is dspex_rx.VariableNotFoundError (a KeyError);
    # create_module raises a bare KeyError that `except VariableNotFoundError` misses.
    with pytest.raises(dspex_rx.VariableNotFoundError):
        await ModuleVariableResolver(session).create_module("nope", "question -> answer")


# Guards: without choices, create_module demanded ReAct's tools= for a Predict switch.
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


# Guards: the instance built from a replaced custom class was kept and ran the old class.
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


# ---------------------------------------------------------------------- example, import


async def test_adaptive_example_runs_to_completion(capsys: pytest.CaptureFixture[str]) -> None:
    result = await runpy.run_path(str(EXAMPLES / "adaptive_reasoning.py"))["main"]()
    out = capsys.readouterr().out
    strategies = [row["strategy"] for row in result["answers"]]
    assert set(strategies) == {"Predict", "ChainOfThought"}
    for row in result["answers"]:
        assert row["answer"] and row["answer"] in out
        assert (row["reasoning"] is not None) == (row["strategy"] == "ChainOfThought")
    # The watcher on the other connection saw each switch, in order (from Predict).
    expected = [s for previous, s in zip(["Predict", *strategies], strategies, strict=False)
                if s != previous]
    assert result["switches"] == expected and len(expected) >= 2
    assert "strategy switches seen by the monitor: " + " -> ".join(expected) in out
    assert result["stats"]["read_count"] >= len(result["answers"])
    assert "session stats" in out


SIMPLE_Q = "What is 2+2?"
COMPLEX_Q = ("Explain the philosophical implications of consciousness in artificial "
             "intelligence systems")
LONGER_Q = ("Explain step by step how a heat pump can move more heat into a house than "
            "the electricity it uses")


async def test_the_spec_adaptive_system_flips_strategy_by_complexity_and_is_watched(
    session: dspex_rx.SessionContext,
) -> None:
    # The spec's Real-Time Adaptive System with its calls as written, on trio and DummyLM.
    await session.register_variable(
        "reasoning_strategy", "module", "ChainOfThought",
        constraints={"choices": ["Predict", "ChainOfThought", "ReAct", "ProgramOfThought"]})
    await session.register_variable("complexity_threshold", "float", 0.5,
                                    constraints={"min": 0.0, "max": 1.0})
    resolver = ModuleVariableResolver(session)
    seen: list[str] = []
    watching = trio.Event()

    async def strategy_watcher() -> None:
        async for update in session.watch_variable("reasoning_strategy"):
            seen.append(update.value)
            watching.set()

    used: list[tuple[float, str | None]] = []

    async def answer_question(question: str) -> Any:
        complexity = len(question.split()) / 20.0
        threshold = await session.get_variable("complexity_threshold")
        if complexity > threshold:
            await session.set_variable("reasoning_strategy", "ChainOfThought")
        else:
            await session.set_variable("reasoning_strategy", "Predict")
        qa_module = await resolver.create_module("reasoning_strategy", "question -> answer")
        prediction = await qa_module.forward(question=question)
        used.append((complexity, qa_module.last_class))
        return prediction

    lm = dspy.utils.DummyLM({
        SIMPLE_Q: {"reasoning": "Two plus two.", "answer": "4"},
        COMPLEX_Q: {"reasoning": "It depends on what experience is.", "answer": "Open."},
        LONGER_Q: {"reasoning": "It moves heat rather than making it.", "answer": "COP > 1"},
    })
    async with trio.open_nursery() as nursery:
        nursery.start_soon(strategy_watcher)
        await watching.wait()  # the initial value: the watch is in place
        with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
            simple_ans = await answer_question(SIMPLE_Q)
            complex_ans = await answer_question(COMPLEX_Q)
            longer_ans = await answer_question(LONGER_Q)
            again_ans = await answer_question(SIMPLE_Q)
        await session.sync()
        nursery.cancel_scope.cancel()

    # The spec's "complex" question has 10 words: 0.5 is not above the 0.5 threshold, so
    # it stays with Predict; the 20-word one goes to ChainOfThought.
    assert used == [(0.15, "Predict"), (0.5, "Predict"), (1.0, "ChainOfThought"),
                    (0.15, "Predict")]
    assert (simple_ans.answer, complex_ans.answer) == ("4", "Open.")
    assert "reasoning" not in simple_ans and "reasoning" not in complex_ans
    assert (longer_ans.reasoning, longer_ans.answer) == (
        "It moves heat rather than making it.", "COP > 1")
    assert again_ans.answer == "4" and "reasoning" not in again_ans
    assert len(lm.history) == 4
    # Every write is a new version, so the second Predict (the same value) is seen too.
    assert seen == ["ChainOfThought", "Predict", "Predict", "ChainOfThought", "Predict"]


def test_dspex_rx_imports_without_dspy() -> None:
    code = (
        "import sys\n"
        "import dspex_rx\n"
        "assert 'dspy' not in sys.modules, 'import dspex_rx pulled in dspy'\n"
        "sys.modules['dspy'] = None  # as if DSPy were not installed\n"
        "try:\n"
        "    import dspex_rx.dspy\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    # Guards: it said pip install 'dspex-rx[dspy]', which fails: no index has dspex-rx.
    assert "pip install -e '.[dspy]'" in done.stdout
    assert "dspex-rx[dspy]" not in done.stdout
