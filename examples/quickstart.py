"""The `make demo` job: one variable of every type on an embedded server, read, updated,
a bad write refused with its reason, and a short summary."""

from __future__ import annotations

from typing import Any

import numpy as np
import trio

import dspex_rx

VARIABLES: list[dict[str, Any]] = [
    {"name": "temperature", "type": "float", "initial_value": 0.7,
     "constraints": {"min": 0.0, "max": 2.0}},
    {"name": "max_tokens", "type": "integer", "initial_value": 256,
     "constraints": {"min": 1, "max": 4096}},
    {"name": "system_prompt", "type": "string", "initial_value": "You are concise.",
     "constraints": {"max_length": 200}},
    {"name": "use_cache", "type": "boolean", "initial_value": True},
    {"name": "model", "type": "choice", "initial_value": "gpt-4",
     "constraints": {"choices": ["gpt-4", "claude-3", "llama-3"]}},
    {"name": "strategy", "type": "module", "initial_value": "ChainOfThought",
     "constraints": {"choices": ["Predict", "ChainOfThought", "ReAct"]}},
    {"name": "context_embedding", "type": "embedding",
     "initial_value": np.random.default_rng(7).standard_normal(768).astype(np.float32),
     "constraints": {"dimensions": 768, "normalize": True}},
    {"name": "attention_bias", "type": "tensor",
     "initial_value": np.eye(4, dtype=np.float64), "constraints": {"shape": [4, 4]}},
    {"name": "stop_words", "type": "list", "initial_value": ["\n\n", "END"],
     "constraints": {"item_type": "string", "max_length": 8}},
    {"name": "retriever", "type": "dict", "initial_value": {"k": 5, "rerank": {"on": True}}},
]

UPDATES: dict[str, Any] = {
    "temperature": 0.9,
    "max_tokens": 512,
    "system_prompt": "You are concise and kind.",
    "use_cache": False,
    "model": "claude-3",
    "strategy": "ReAct",
    "context_embedding": np.ones(768, dtype=np.float32),
    "attention_bias": np.full((4, 4), 0.25),
    "stop_words": ["STOP"],
    "retriever": {"k": 8, "rerank": {"on": False}},
}


def show(value: Any) -> str:
    """A one-line rendering of a value (arrays by dtype, shape and norm)."""
    if isinstance(value, np.ndarray):
        return f"ndarray {value.dtype}{list(value.shape)} |v|={np.linalg.norm(value):.3f}"
    return repr(value)


async def main() -> None:
    """Run the tour on an embedded server."""
    async with dspex_rx.connect() as session:
        print(f"embedded server at {session.target}, session {session.session_id}\n")
        ids = await session.register_variables(VARIABLES)
        print(f"registered {len(ids)} variables in one atomic call")

        results = await session.update_variables(UPDATES, metadata={"reason": "demo"})
        assert all(ok is True for ok in results.values()), results
        print("updated all of them in one atomic batch\n")

        print("refused writes (nothing stored changes):")
        for name, bad in [("temperature", 5.0), ("max_tokens", "many"), ("model", "gpt-2")]:
            try:
                await session.set_variable(name, bad)
            except (ValueError, TypeError) as exc:
                print(f"  {type(exc).__name__}: {exc}")
        try:
            await session.get_variable("nonexistent")
        except KeyError as exc:
            print(f"  KeyError: {exc}")

        print("\nsummary:")
        rows = await session.get_variables(list(ids), include_metadata=True)
        for name, entry in rows.items():
            print(f"  {name:<18} {entry['type']:<9} v{entry['version']}  {show(entry['value'])}")
        print(f"\nsession revision {session.revision}; closing (the embedded server stops too)")


if __name__ == "__main__":
    trio.run(main)
