"""The quickstart behind `make demo` runs to the end and shows what it promises."""

from __future__ import annotations

import json
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


async def test_optimization_workflow_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await _load("optimization_workflow.py")["main"](tmp_path)  # type: ignore[operator]
    final, history, values = result["final"], result["history"], result["values"]
    n = final["iteration"]
    assert final["state"] == "completed" and not final["is_optimizing"]
    assert final["optimization_id"] == result["optimization_id"]
    assert 1 <= n <= 25
    assert result["callback_iterations"] == list(range(1, n + 1))
    assert [entry["iteration"] for entry in history] == list(range(1, n + 1))
    assert {entry["optimization_id"] for entry in history} == {result["optimization_id"]}

    best_quality = max(entry["metrics"]["quality"] for entry in history)
    assert 0.0 <= final["best_value"] <= 2.0
    assert final["best_metrics"]["quality"] == final["best_score"] == best_quality
    assert any(e["value"] == final["best_value"] for e in history if e["score"] == best_quality)

    # The variable ends at the optimizer's recommendation: its last write, marked final,
    # of a value it evaluated.
    kept = result["recommended"]
    assert kept["metadata"]["final"] is True
    assert kept["metadata"]["optimization_id"] == result["optimization_id"]
    assert values["base_temperature"] == kept["value"]
    assert kept["value"] in [entry["value"] for entry in history]
    assert values["effective_temperature"] == round(
        values["base_temperature"] * values["style_modifier"], 6
    )
    assert values["style_modifier"] == 0.8

    # The second connection: refused while the run held the lease; its poll saw the run
    # going and ended on the final state; its watch saw every iteration.
    assert "locked for optimization by " + result["optimization_id"] in result["refused"][0]
    polled = result["monitor"]
    assert polled[0][0] == "running"
    assert polled[-1] == ("completed", n)
    assert all(state == "running" for state, _ in polled[:-1])
    watched = result["watched"]
    assert watched[0] == ("idle", 0) and watched[-1] == ("completed", n)
    assert {iteration for _, iteration in watched} == set(range(n + 1))

    export = json.loads(result["json_path"].read_text())
    assert result["json_path"] == tmp_path / "optimization_results.json"
    assert export["format_version"] == 1
    assert export["optimization_id"] == result["optimization_id"]
    assert export["status"]["state"] == "completed"
    assert len(export["history"]) == n
    assert export["variables"]["base_temperature"] == values["base_temperature"]
    assert result["png_path"] == tmp_path / "optimization_progress.png"
    assert result["png_path"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # Not a terminal: one plain progress line per iteration, no carriage returns.
    out = capsys.readouterr().out
    assert "\r" not in out
    assert [line.split("/")[0].strip() for line in out.splitlines() if "/25 " in line] == [
        str(i) for i in range(1, n + 1)
    ]
