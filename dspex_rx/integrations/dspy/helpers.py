"""Helpers shared by the DSPy integration: ``run_in_thread`` (DSPy calls in a worker thread),
``plain`` (DSPy values as variable values) and reading variable descriptions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import dspy
import numpy as np
import trio

from dspex_rx.core.types import INT64_MAX, INT64_MIN
from dspex_rx.errors import VariableTypeError

if TYPE_CHECKING:
    from dspex_rx.client import SessionContext


__all__ = [
    "plain",
    "run_in_thread",
]


T = TypeVar("T")


async def run_in_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run a synchronous DSPy call (a module, ``optimizer.compile``, ``dspy.Evaluate``) in
    a trio worker thread and return its result.

    The thread runs in a copy of the calling task's context, so ``dspy.context(lm=...)``
    entered in trio applies. With no adapter configured, DSPy's ``ChatAdapter`` is used
    explicitly (DSPy 3.5 changes the default). DSPy calls cannot be interrupted: a
    cancellation waits until the call returns, then raises ``Cancelled`` (the result is
    dropped, so nothing after the ``await`` runs for a cancelled caller).

    >>> async def ask() -> str:
    ...     with dspy.context(lm=dspy.utils.DummyLM([{"answer": "4"}])):
    ...         predict = dspy.Predict("question -> answer")
    ...         return (await run_in_thread(predict, question="2 + 2?")).answer
    >>> trio.run(ask)
    '4'
    """


    def call() -> T:
        if dspy.settings.adapter is None:
            with dspy.context(adapter=dspy.ChatAdapter()):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    result = await trio.to_thread.run_sync(call)
    # to_thread.run_sync(abandon_on_cancel=False) ignores a cancel that comes while the
    # thread runs and returns normally; the cancel is still pending, and lands here.
    await trio.lowlevel.checkpoint()
    return result


def plain(value: Any) -> Any:
    """A DSPy value (an ``Example``, a ``Prediction``, a pydantic model, numpy scalars)
    as the JSON-like value a ``list`` or ``dict`` variable stores; anything else becomes
    its ``str``.

    >>> plain(dspy.Example(question="2 + 2?", answer="4", augmented=True))
    {'question': '2 + 2?', 'answer': '4', 'augmented': True}
    >>> plain({"n": np.int64(3), "x": float("nan"), "t": (1, 2)})
    {'n': 3, 'x': 'nan', 't': [1, 2]}
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if hasattr(value, "toDict"):
        return plain(value.toDict())
    if hasattr(value, "model_dump"):
        return plain(value.model_dump())
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return str(value)


_ABSENT: Any = object()


async def _existing(
    session: SessionContext, names: Sequence[str]
) -> dict[str, dict[str, Any] | None]:
    """name -> description of the variables that exist (read from the server: system
    fields such as ``type`` and ``constraints``, the user's under ``'metadata'``), None for
    the others."""
    found = await session.get_variables(
        list(names), defaults=dict.fromkeys(names, _ABSENT), include_metadata=True
    )
    return {
        name: None if entry is _ABSENT else entry for name, entry in found.items()
    }


def _check_type(name: str, metadata: Mapping[str, Any], expected: str, why: str) -> None:
    if metadata["type"] != expected:
        raise VariableTypeError(
            f"variable {name!r} exists with type {metadata['type']}, but {why} needs a "
            f"{expected} variable"
        )
