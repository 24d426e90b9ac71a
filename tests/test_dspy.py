"""DSPy integration end to end, with real DSPy modules and optimizers: the variable-aware
optimizer (settings from variables, a lease while it runs, results and history written
back), live parameter binding across connections, the module resolver, the adaptive
example. LMs: DSPy's DummyLM, and dspy.LM against a loopback OpenAI stub (nothing leaves
the machine)."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm loads

import pytest

dspy = pytest.importorskip("dspy")

import trio  # noqa: E402
from dspy_helpers import TRAIN, exact, examples, hold_answers  # noqa: E402
from openai_stub import OpenAIStub, question_of  # noqa: E402

import dspex_rx  # noqa: E402
from dspex_rx import OptimizationLockedError  # noqa: E402
from dspex_rx.dspy import (  # noqa: E402
    DSPyOptimizationBridge,
    ModuleVariableResolver,
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
    optimizer = bridge.create_variable_aware_optimizer(
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
    optimizer = DSPyOptimizationBridge(session).create_variable_aware_optimizer(
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
    optimizer = DSPyOptimizationBridge(session).create_variable_aware_optimizer(
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
    optimizer = DSPyOptimizationBridge(session).create_variable_aware_optimizer(
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
        bridge.create_variable_aware_optimizer(dspy.BootstrapFewShot, {"max_demos": "x"})
    with pytest.raises(ValueError, match="both mapped"):
        bridge.create_variable_aware_optimizer(
            dspy.BootstrapFewShot, {"max_rounds": "x"}, max_rounds=2)
    with pytest.raises(ValueError, match="unexpected keyword"):
        bridge.create_variable_aware_optimizer(dspy.BootstrapFewShot, {}, rounds=2)
    with pytest.raises(ValueError, match="takes no teacher_settings"):
        bridge.create_variable_aware_optimizer(dspy.LabeledFewShot, {"teacher_temperature": "t"})
    clashing = bridge.create_variable_aware_optimizer(
        dspy.BootstrapFewShot, {"max_bootstrapped_demos": "dspy.settings"})
    with pytest.raises(ValueError, match="cannot also be mapped inputs"):
        await clashing.compile(dspy.Predict("question -> answer"), trainset=[])
    # A result variable of the wrong type is found before the compile starts.
    await session.register_variable("dspy.score", "string", "n/a")
    optimizer = bridge.create_variable_aware_optimizer(dspy.BootstrapFewShot, {}, metric=exact)
    with pytest.raises(TypeError, match=re.escape("'dspy.score' exists with type string")):
        await optimizer.compile(dspy.Predict("question -> answer"), trainset=[],
                                devset=[])


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
    assert sorted(ids) == sorted(parameter_variables(react, "agent.")) == [
        "agent.react.extract.predict_instructions", "agent.react.extract.predict_max_tokens",
        "agent.react.extract.predict_temperature", "agent.react.react_instructions",
        "agent.react.react_max_tokens", "agent.react.react_temperature",
    ]
    assert react.react.config["temperature"] == 0.0  # DummyLM's own default
    await session.set_variable("agent.react.react_temperature", 0.6)
    await session.sync()
    assert react.react.config["temperature"] == 0.6
    assert react.extract.predict.config["temperature"] == 0.0
    assert bridge.unbind_dspy_parameters(react) == 6
    await session.set_variable("agent.react.react_temperature", 0.1)
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


async def test_resolver_checks_choices_and_arguments_up_front(
    session: dspex_rx.SessionContext,
) -> None:
    resolver = ModuleVariableResolver(session)
    await session.register_variable(
        "agent", "module", "Predict", constraints={"choices": ["Predict", "ReAct"]})
    with pytest.raises(ValueError, match="ReAct, which needs tools="):
        await resolver.create_module("agent", "question -> answer")
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


# ---------------------------------------------------------------------- example, import


async def test_adaptive_example_runs_to_completion(capsys: pytest.CaptureFixture[str]) -> None:
    result = await runpy.run_path(str(EXAMPLES / "adaptive_reasoning.py"))["main"]()
    out = capsys.readouterr().out
    strategies = [row["strategy"] for row in result["answers"]]
    assert set(strategies) == {"Predict", "ChainOfThought"}
    for row in result["answers"]:
        assert row["answer"] and row["answer"] in out
        assert (row["reasoning"] is not None) == (row["strategy"] == "ChainOfThought")
    assert result["stats"]["read_count"] >= len(result["answers"])
    assert "session stats" in out


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
    assert "pip install 'dspex-rx[dspy]'" in done.stdout
