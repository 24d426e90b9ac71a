"""What the DSPy tests share: the arithmetic train set, DSPy examples from pairs, an exact
metric. Import it after ``pytest.importorskip("dspy")``; the ``stub`` fixture (the loopback
OpenAI stub answering sums) is in conftest.py."""

from __future__ import annotations

from typing import Any

import dspy

TRAIN = [("What is 2 + 3?", "5"), ("What is 4 + 4?", "8"), ("What is 1 + 6?", "7"),
         ("What is 9 + 1?", "10")]


def examples(pairs: list[tuple[str, str]]) -> list[Any]:
    """DSPy examples with ``question`` as the input."""
    return [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in pairs]


def exact(example: Any, prediction: Any, trace: Any = None) -> bool:
    """The metric: the predicted answer is exactly the expected one."""
    return bool(example.answer == prediction.answer)
