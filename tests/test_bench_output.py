"""Benchmarks write JSON Lines to stdout and nothing else: the cheapest run for real, every
script checked for a print that would reach stdout outside the one JSON writer."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script", ["bench_hop", "bench_optimize", "bench_optimizer_quality",
                                    "bench_unary"])
def test_a_quick_benchmark_run_prints_only_json_objects_to_stdout(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), "--quick"],
                          capture_output=True, text=True, timeout=240,
                          cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) >= 2  # the environment line and at least one figure
    records = [json.loads(line) for line in lines]
    assert all(isinstance(record, dict) for record in records)


def _stdout_prints(path: Path) -> list[int]:
    # print() calls without file=sys.stderr, and direct sys.stdout writes.
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "print":
            target = next((k.value for k in node.keywords if k.arg == "file"), None)
            if not (isinstance(target, ast.Attribute) and target.attr == "stderr"):
                found.append(node.lineno)
        elif (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute)
              and func.value.attr == "stdout" and isinstance(func.value.value, ast.Name)
              and func.value.value.id == "sys"):
            found.append(node.lineno)
    return found


def test_every_benchmark_prints_human_text_only_to_stderr() -> None:
    scripts = sorted(BENCHMARKS.glob("*.py"))
    assert len(scripts) >= 9
    leaks = {p.name: _stdout_prints(p) for p in scripts}
    # The one JSON writer: _common.emit prints json.dumps(record) to stdout.
    emit = leaks.pop("_common.py")
    assert len(emit) == 1
    assert "print(json.dumps(record), flush=True)" in (BENCHMARKS / "_common.py"
                                                         ).read_text().splitlines()[emit[0] - 1]
    assert leaks == {name: [] for name in leaks}
