"""What the DSPy tests share: the arithmetic train set, DSPy examples from pairs, an exact
metric, a stub that holds its answers until the test releases them, a ``dspy.LM`` pointed at
the stub, and a program with a list of predictors. Import it after
``pytest.importorskip("dspy")``; the ``stub`` fixture (the loopback OpenAI stub answering
sums) is in conftest.py."""

from __future__ import annotations

import threading
from typing import Any

import dspy
from openai_stub import OpenAIStub, arithmetic

TRAIN = [("What is 2 + 3?", "5"), ("What is 4 + 4?", "8"), ("What is 1 + 6?", "7"),
         ("What is 9 + 1?", "10")]


def examples(pairs: list[tuple[str, str]]) -> list[Any]:
    """DSPy examples with ``question`` as the input."""
    return [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in pairs]


def exact(example: Any, prediction: Any, trace: Any = None) -> bool:
    """The metric: the predicted answer is exactly the expected one."""
    return bool(example.answer == prediction.answer)


def hold_answers(stub: OpenAIStub) -> tuple[threading.Event, threading.Event]:
    """Make the stub answer sums only once ``release`` is set; ``entered`` is set when a
    request arrives (so the test knows DSPy is inside a call)."""
    entered, release = threading.Event(), threading.Event()

    def held(body: dict[str, Any], fields: list[str]) -> dict[str, str]:
        entered.set()
        release.wait(30)
        return arithmetic(body, fields)

    stub.answer = held
    return entered, release


def stub_lm(stub: OpenAIStub, **kwargs: Any) -> Any:
    """DSPy's real LM path pointed at the loopback stub: no cache, no retries."""
    return dspy.LM("openai/test-model", api_base=stub.api_base, api_key="x", cache=False,
                   num_retries=0, **kwargs)


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
