"""A real-time adaptive system, offline: a question-answering program whose reasoning
strategy is a variable. Each question's complexity decides the strategy (Predict for
simple questions, ChainOfThought for hard ones) and, for ChainOfThought, the temperature;
the program follows both variables live, and a second connection watches the switches.
The strategy variable offers all four classes the spec lists; ReAct (which needs tools)
and ProgramOfThought (which needs an interpreter) are offered but never chosen here, so
nothing asks for their arguments.

DSPy runs on its own fake LM (DummyLM), so this needs no API key and no network:
    python examples/adaptive_reasoning.py
"""

from __future__ import annotations

from typing import Any

import dspy
import trio

import dspex_rx
from dspex_rx.dspy import DSPyOptimizationBridge, ModuleVariableResolver

# (question, reasoning, answer): what the fake LM says. Predict asks only for the answer,
# so it ignores the reasoning; ChainOfThought asks for both.
SCRIPT = [
    ("What is the capital of France?",
     "The capital of France is Paris.", "Paris"),
    ("Why does ice float on water?",
     "Water expands as it freezes into a hexagonal lattice, so ice is less dense than the "
     "liquid around it.", "Ice is about 9% less dense than liquid water."),
    ("What is 12 + 30?",
     "12 plus 30 is 42.", "42"),
    ("Explain step by step why the sum of two odd numbers is always even.",
     "Write them as 2a+1 and 2b+1; the sum is 2(a+b+1), a multiple of two.",
     "Because (2a+1) + (2b+1) = 2(a+b+1)."),
    ("Who wrote Hamlet?",
     "Hamlet is a tragedy by William Shakespeare.", "William Shakespeare"),
    ("How would you compare the difference between weather and climate, and why does it "
     "matter for planning a harvest?",
     "Weather is the short-term state; climate is its long-run statistics. Sowing dates "
     "follow climate, the harvest day follows the forecast.",
     "Plan the season by climate, pick the day by the weather."),
]

CUES = ("why", "how", "explain", "step by step", "compare", "difference")


def complexity(question: str) -> float:
    """A cheap complexity score in [0, 1]: length plus reasoning cue words."""
    text = question.lower()
    cues = sum(cue in text for cue in CUES)
    return round(min(1.0, len(question.split()) / 30 + 0.3 * cues), 2)


async def main() -> dict[str, Any]:
    """Answer the questions, switching strategy by complexity; returns what it printed."""
    lm = dspy.utils.DummyLM({q: {"reasoning": r, "answer": a} for q, r, a in SCRIPT})
    async with dspex_rx.connect() as session, dspex_rx.connect(
        session.target, session_id=session.session_id, token=session.token
    ) as monitor:
        await session.register_variables([
            {"name": "reasoning_strategy", "type": "module", "initial_value": "Predict",
             "constraints": {"choices": ["Predict", "ChainOfThought", "ReAct",
                                         "ProgramOfThought"]},
             "description": "the DSPy module class answering questions"},
            {"name": "complexity_threshold", "type": "float", "initial_value": 0.35,
             "constraints": {"min": 0.0, "max": 1.0}},
        ])
        # Another program (here: another connection) sees every switch as it happens.
        switches: list[str] = []
        watch = monitor.watch_variable("reasoning_strategy", include_initial=False)
        await monitor.sync()  # the watch is registered before the first switch

        async def strategy_watcher() -> None:
            async for update in watch:
                switches.append(update.value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(strategy_watcher)
            answers = await answer_all(session, lm)
            await monitor.sync()  # every switch has reached the watcher
            nursery.cancel_scope.cancel()

        stats = await session.get_variable_stats()
        strategy_stats = await session.get_variable_stats("reasoning_strategy")
        print(f"\nstrategy switches seen by the monitor: {' -> '.join(switches)}")
        print("session stats:")
        print(f"  reads {stats['read_count']} (cache hit rate {stats['cache_hit_rate']:.0%}), "
              f"writes {stats['write_count']}, avg read {stats['avg_read_latency_ms']:.3f} ms, "
              f"avg write {stats['avg_write_latency_ms']:.2f} ms")
        print(f"  reasoning_strategy: reads {strategy_stats['read_count']}, "
              f"writes {strategy_stats['write_count']}")
        return {"answers": answers, "stats": stats, "switches": switches}


async def answer_all(session: dspex_rx.SessionContext, lm: Any) -> list[dict[str, Any]]:
    """Answer every question of SCRIPT with the strategy its complexity picks."""
    qa = await ModuleVariableResolver(session).create_module(
        "reasoning_strategy", "question -> answer")
    # ChainOfThought's temperature lives in a variable too (cot_temperature, the spec's
    # prefix), bound to its predictor: writing the variable changes the next request.
    bridge = DSPyOptimizationBridge(session)
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        await bridge.sync_dspy_parameters(qa.instance("ChainOfThought"),
                                          variable_prefix="cot_")

        answers = []
        for question, _, _ in SCRIPT:
            score = complexity(question)
            threshold = await session.get_variable("complexity_threshold")
            strategy = "ChainOfThought" if score >= threshold else "Predict"
            if strategy != await session.get_variable("reasoning_strategy"):
                await session.set_variable("reasoning_strategy", strategy,
                                           metadata={"complexity": score})
            temperature = None
            if strategy == "ChainOfThought":
                # Harder questions get a cooler, more deterministic temperature.
                temperature = round(0.7 - 0.4 * score, 2)
                await session.set_variable("cot_temperature", temperature)
                await session.sync()  # the binding has applied it
            prediction = await qa.forward(question=question)
            sent = lm.history[-1]["kwargs"].get("temperature")
            row = {"question": question, "complexity": score, "strategy": qa.last_class,
                   "answer": prediction.answer,
                   "reasoning": prediction.get("reasoning"),
                   "temperature": sent if temperature is not None else None}
            answers.append(row)
            print(f"[{row['strategy']:<14}] complexity {score:.2f}  Q: {question}")
            if row["reasoning"] is not None:
                print(f"{'':17}temperature {sent}  reasoning: {row['reasoning']}")
            print(f"{'':17}A: {row['answer']}")

    return answers


if __name__ == "__main__":
    trio.run(main)
