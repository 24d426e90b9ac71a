"""Benchmarks write JSON Lines to stdout and nothing else: the cheapest run for real, every
script checked for a print that would reach stdout outside the one JSON writer."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script", ["bench_hop", "bench_optimize", "bench_optimizer_quality",
                                    "bench_unary", "bench_peers", "bench_asyncio"])
def test_a_quick_benchmark_run_prints_only_json_objects_to_stdout(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), "--quick"],
                          capture_output=True, text=True, timeout=240,
                          cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) >= 2  # the environment line and at least one figure
    records = [json.loads(line) for line in lines]
    assert all(isinstance(record, dict) for record in records)


def test_bench_peers_skips_a_peer_that_is_not_installed_and_says_so() -> None:
    missing = {"DSPEX_ETCD_BIN": "/nonexistent/etcd", "DSPEX_REDIS_BIN": "/nonexistent/redis"}
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_peers.py"), "--quick",
                           "--calls", "40", "--concurrent-calls", "64",
                           "--latency-samples", "20", "--cached-reads", "500"],
                          capture_output=True, text=True, timeout=240, cwd=BENCHMARKS.parent,
                          env={**os.environ, **missing})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipping etcd: DSPEX_ETCD_BIN=/nonexistent/etcd" in done.stderr
    assert "skipping Redis: DSPEX_REDIS_BIN=/nonexistent/redis" in done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert set(records[0]["skipped"]) == {"etcd", "redis"}
    figures = [r for r in records if r["bench"] in ("peers", "peers_watch")]
    assert {r["system"] for r in figures} == {"dspex-rx"}
    # Every ratio needs a peer: none is printed, none is made up.
    assert [r for r in records if r["bench"] == "peers_ratio"] == []
    assert [k for r in figures for k in r if k.startswith("ratio_to_")] == []
    rows = {(r["path"], r["op"], r.get("mode")) for r in figures if r["bench"] == "peers"}
    assert ("cache", "cached_read", "sequential") in rows
    for path in {r["path"] for r in figures} - {"cache"}:
        assert {(path, op, mode) for op in ("write", "read")
                for mode in ("sequential", "concurrent")} <= rows


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


def test_the_etcd_ab_benchmark_compares_two_trees_round_by_round() -> None:
    import etcd_service

    etcd_service.require_binary()
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_etcd_ab.py"),
                           "--baseline", str(BENCHMARKS.parent), "--rounds", "2",
                           "--burst", "0.2", "--concurrency", "4", "--replicas", "2"],
                          capture_output=True, text=True, timeout=240, cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in done.stdout.splitlines()]
    figures = {(r["tree"], r["mode"]): r for r in records if r["bench"] == "etcd_ab"}
    assert set(figures) == {(tree, mode) for tree in ("this", "baseline")
                            for mode in ("sequential", "concurrent")}
    # (CPU is counted in 10 ms ticks: a 0.2 s burst may show none.)
    assert all(r["writes_per_s"] > 0 and isinstance(r["server_cpu_ms_per_write"], float)
               and r["replicas"] == 2 for r in figures.values())
    ratios = {r["mode"]: r for r in records if r["bench"] == "etcd_ab_ratio"}
    assert set(ratios) == {"sequential", "concurrent"}
    assert all(len(r["per_round"]) == 2 for r in ratios.values())


def test_the_etcd_ab_benchmark_refuses_a_baseline_without_the_package(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_etcd_ab.py"),
                           "--baseline", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=BENCHMARKS.parent)
    assert done.returncode == 2
    assert f"--baseline {tmp_path} holds no dspex_rx package" in done.stderr
