"""The examples behind `make demo` and `make cluster-demo` run to the end and show what they
promise; the cluster demo also stops everything it started, interrupted or not."""

from __future__ import annotations

import io
import json
import os
import re
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import etcd_service
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
    # ...and the display ends at the run's real last iteration.
    assert f"  completed at iteration {n}: {final['end_reason']}" in out.splitlines()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# Guards: a run that converged early left the bar part-way ("12/25", 12 of 25 cells).
def test_the_progress_bar_ends_full_at_the_iteration_a_converged_run_ended() -> None:
    terminal = _Terminal()
    bar = _load("optimization_workflow.py")["ProgressBar"](10, terminal, 10)  # type: ignore[operator]
    for iteration in (1, 2, 3, 4):
        bar.update(iteration, 0.1 * iteration, {"quality": 0.5 + 0.01 * iteration})
    assert terminal.getvalue().split("\r")[-1].startswith("  [####------]  4/10  best")
    bar.close({"iteration": 4, "state": "completed",
               "end_reason": "converged after 4 iterations"})
    assert terminal.getvalue().split("\r")[-1] == (
        "  [##########]  4/4  completed: converged after 4 iterations\x1b[K\n")


def test_the_progress_bar_of_a_stopped_run_stays_where_it_stopped() -> None:
    terminal = _Terminal()
    bar = _load("optimization_workflow.py")["ProgressBar"](10, terminal, 10)  # type: ignore[operator]
    for iteration in (1, 2, 3):
        bar.update(iteration, 0.1 * iteration, {"quality": 0.5})
    bar.close({"iteration": 3, "state": "stopped", "end_reason": "cancelled"})
    assert terminal.getvalue().split("\r")[-1] == (
        "  [###-------]  3/10  stopped: cancelled\x1b[K\n")


# The cluster demo (`make cluster-demo`, issue #15) starts etcd and three replicas of its own.
CLUSTER_DEMO = QUICKSTART.parent / "cluster_demo.py"
# The demo's promise to finish by itself within 30 s, held as a hang guard.
CLUSTER_DEMO_GUARD = 30


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_cluster_demo_shows_every_write_on_every_replica_and_stops_what_it_started() -> None:
    etcd_service.require_binary()
    result = _load("cluster_demo.py")["main"]()  # type: ignore[operator]
    last = result["last"]
    # Both watchers saw every version once, in order, the one whose replica was killed too:
    # its client moved to replica 3 (one broken stream) and resumed there, replaying the
    # changes rather than a resync.
    assert result["two"] == result["three"] == list(range(1, last + 1))
    assert result["missed"] == [5, 6] and result["before_kill"] == 4
    assert result["resumed"] == ["value_change"] * 3
    assert result["reconnects"] >= 1
    assert result["finals"] == [1.1, 1.1, 1.1]
    assert len(result["pids"]) == 5  # etcd, three replicas, replica 2 once more
    assert all(_gone(pid) for pid in result["pids"])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_cluster_demo_interrupted_stops_etcd_and_every_replica(signum: int) -> None:
    etcd_service.require_binary()
    demo = subprocess.Popen([sys.executable, str(CLUSTER_DEMO)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert demo.stdout is not None
        first = demo.stdout.readline()  # "etcd at H:P (pid N); replicas at H:P (pid N), ..."
        pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", first)]
        assert len(pids) == 4, first
        for line in demo.stdout:  # interrupt mid-story, watchers live
            if line.startswith("--- writes on replica 1"):
                break
        demo.send_signal(signum)
        _, err = demo.communicate(timeout=CLUSTER_DEMO_GUARD)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 130, err
    assert "interrupted: etcd and the replicas are stopped" in err
    assert all(_gone(pid) for pid in pids), [pid for pid in pids if not _gone(pid)]


def test_cluster_demo_runs_by_itself_within_its_promise() -> None:
    etcd_service.require_binary()
    done = subprocess.run([sys.executable, str(CLUSTER_DEMO)], capture_output=True, text=True,
                          timeout=CLUSTER_DEMO_GUARD)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "temperature read on replicas 1, 2, 3 at version 7: [1.1, 1.1, 1.1]" in out
    assert "watcher 2 saw versions [1, 2, 3, 4, 5, 6, 7]" in out
    assert "[a watcher's client] stream broken, reconnecting (attempt 1)" in out
    assert "[a reader on replica 2] temperature = 1.0" in out
    assert "stopped etcd and the replicas" in out


def test_cluster_demo_without_etcd_says_how_to_get_it() -> None:
    done = subprocess.run([sys.executable, str(CLUSTER_DEMO)], capture_output=True, text=True,
                          timeout=CLUSTER_DEMO_GUARD,
                          env={**os.environ, "DSPEX_ETCD_BIN": "/nonexistent/etcd"})
    assert done.returncode == 1
    assert "cluster demo: DSPEX_ETCD_BIN=/nonexistent/etcd is not an executable" in done.stderr
    assert "apt-get install etcd-server" in done.stderr
