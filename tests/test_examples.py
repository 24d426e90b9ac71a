"""The quickstart behind `make demo` runs to the end and shows what it promises."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


async def test_quickstart_runs(capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(QUICKSTART))
    await module["main"]()
    out = capsys.readouterr().out
    assert "registered 10 variables in one atomic call" in out
    assert "variable 'temperature': 5.0 is above max 2.0" in out
    assert "VariableTypeError: variable 'max_tokens': expected integer" in out
    assert "context_embedding  embedding v2  ndarray float32[768] |v|=1.000" in out
    assert "session revision 2;" in out


def _load(name: str) -> dict[str, object]:
    return runpy.run_path(str(QUICKSTART.parent / name))


async def test_progress_tracking_ends_at_100(autojump_clock: object) -> None:
    lines = await _load("progress_tracking.py")["main"]()  # type: ignore[operator]
    assert lines[-1].startswith("progress 100.0%")
    versions = [int(line.rsplit("version ", 1)[1].rstrip(")")) for line in lines]
    assert versions == sorted(set(versions))  # in order, never twice
    assert versions[-1] == 41  # 40 writes after registration


async def test_debounce_example_settles_on_the_last_edit(autojump_clock: object) -> None:
    settled = await _load("debounce.py")["main"]()  # type: ignore[operator]
    assert settled[-1][1] == 0.4
    assert {value for _, value in settled} <= {0.8, 0.9, 1.0, 0.5, 0.4}


async def test_optimization_workflow_example() -> None:
    result = await _load("optimization_workflow.py")["main"]()  # type: ignore[operator]
    values = result["values"]
    assert values["base_temperature"] == 0.9  # rolled back to version 2's value
    assert values["effective_temperature"] == 0.72  # 0.9 * 0.8, recomputed by derive()
    assert result["batch_recomputations"] == 1  # an atomic batch of both inputs: once
    assert result["conflicts"] == 1
    assert result["rollback_version"] == 6
    kinds = [kind for kind, _, _ in result["watched"]]
    assert kinds.count("dependency_changed") == 5 and kinds.count("value_change") == 5
