"""The Makefile as a new user meets it: `make demo` installs only what the demos import and
says what it is doing; `make bench > results.jsonl` gets only JSON lines. Runs make itself,
with a stand-in pip and python in a scratch virtualenv folder (no network, no install)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")

# Stand-ins: pip logs its arguments and prints what pip prints; python logs the benchmark
# it was asked to run and answers as a benchmark does (JSON to stdout, text to stderr).
FAKE_PIP = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/../pip-calls"
echo "Collecting numpy>=1.26 (from dspex-rx==0.1.0)"
echo "  Downloading numpy-2.0-cp311.whl (18 MB)"
echo "Installing collected packages: numpy"
if [ -n "$FAKE_PIP_FAILS" ]; then echo "ERROR: no matching distribution for numpy"; exit 1; fi
echo "Successfully installed numpy-2.0"
"""
FAKE_PYTHON = """#!/bin/sh
echo "{\\"script\\": \\"$1\\", \\"args\\": \\"$2\\"}"
echo "[bench] human progress text" >&2
"""


def _make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS",
                                                             "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})})


def _venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, text in (("pip", FAKE_PIP), ("python", FAKE_PYTHON)):
        script = venv / "bin" / name
        script.write_text(text)
        script.chmod(0o755)
    return venv


def _pip_installs(dry_run: str) -> list[str]:
    return [line for line in dry_run.splitlines() if re.search(r"/pip install ", line)]


# Guards: `make demo` installed every extra (dev, parquet, torch...: ~900 MB) for four demos.
def test_make_demo_installs_only_what_the_demos_import(tmp_path: Path) -> None:
    dry = _make("-n", "demo", f"VENV={tmp_path / 'none'}")
    assert dry.returncode == 0, dry.stderr
    installs = _pip_installs(dry.stdout)
    assert len(installs) == 2
    assert "--upgrade pip" in installs[0]
    assert "-e '.[plot,dspy]'" in installs[1]
    for extra in ("dev", "parquet", "torch", "etcd", "web", "bench"):
        assert extra not in installs[1]
    # The rest comes with `make test`, web and bench (redis-py, for bench_peers) included.
    test_installs = _pip_installs(_make("-n", "test", f"VENV={tmp_path / 'none'}").stdout)
    assert ("-e '.[dev,plot,parquet,dspy,torch,etcd,web,bench]' 'torch==2.13.0'"
            in test_installs[-1])


# Guards: the first `make demo` was ~80 s of silence (pip --quiet, no word of what ran).
def test_the_demo_install_says_each_step_and_shows_pips_progress(tmp_path: Path) -> None:
    venv = _venv(tmp_path)
    stamp = venv / ".demo-installed"
    done = _make(str(stamp), f"VENV={venv}")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0] == "upgrading pip"
    assert lines[1:3] == ["    Collecting numpy>=1.26", "    Installing collected packages: numpy"]
    assert lines[3].startswith("installing the demo's dependencies: runtime, plot, dspy "
                               "(about 600 MB")
    assert lines[5:] == ["    Collecting numpy>=1.26", "    Installing collected packages: numpy"]
    assert (venv / "pip-calls").read_text().splitlines() == [
        "install --progress-bar off --upgrade pip",
        "install --progress-bar off -e .[plot,dspy]",
    ]
    assert stamp.exists()


def test_a_failing_pip_fails_the_step_with_the_end_of_its_log(tmp_path: Path) -> None:
    venv = _venv(tmp_path)
    done = _make(str(venv / ".demo-installed"), f"VENV={venv}", env={"FAKE_PIP_FAILS": "1"})
    assert done.returncode != 0
    assert "ERROR: no matching distribution for numpy" in done.stderr
    assert not (venv / ".demo-installed").exists()


# Guards: `make bench > results.jsonl` got make's echoed recipe lines among the JSON.
def test_make_bench_writes_only_the_benchmarks_json_lines_to_stdout(tmp_path: Path) -> None:
    venv = _venv(tmp_path)
    for stamp in (".demo-installed", ".installed"):
        (venv / stamp).touch()  # newer than pyproject.toml: nothing to install
    # The peers are "there" (named binaries): the etcd and redis prerequisites install nothing.
    done = _make("bench", f"VENV={venv}", "BENCH_ARGS=--quick",
                 env={"DSPEX_ETCD_BIN": "/bin/true", "DSPEX_REDIS_BIN": "/bin/true"})
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["script"] for r in records] == [
        f"benchmarks/{name}.py" for name in (
            "bench_unary", "bench_reactive", "bench_batch", "bench_optimizer_quality",
            "bench_optimize", "bench_derive_failover", "bench_durable", "bench_etcd_raw",
            "bench_replicas", "bench_hostile", "bench_peers", "bench_watch_path",
            "bench_asyncio")
    ]
    assert {r["args"] for r in records} == {"--quick"}
    assert done.stderr.count("[bench] human progress text") == 13
    assert "--- benchmarks/bench_unary.py" in done.stderr


# Guards: bench_peers.py (#18) found no Redis or etcd on a fresh machine: `make bench` gets
# both first, and says what it does on stderr, never among the JSON lines.
def test_make_bench_gets_etcd_and_redis_first_saying_so_only_on_stderr() -> None:
    dry = _make("-n", "bench", "VENV=/nonexistent-venv")
    assert dry.returncode == 0, dry.stderr
    recipe = dry.stdout
    etcd = recipe.find("--no-install-recommends etcd-server")
    redis = recipe.find("--no-install-recommends redis-server")
    assert -1 < etcd < redis < recipe.find("benchmarks/$name.py")
    for line in recipe.splitlines():
        if line.lstrip().startswith(("echo ", "tail ")):
            assert ">&2" in line or line.rstrip().endswith("\\"), line
