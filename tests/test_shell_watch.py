"""The shell's long-running commands: ``watch`` and ``optimize start|report|stop|status|
watch``, run as the real ``dspex-rx`` against a real server, read line by line, and ended
by ``--count``, by the run's end, or by SIGINT/SIGTERM (exit 0)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from shell_run import HANG_GUARD, Shell, read_line


@pytest.fixture
def child(sh: Shell) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``dspex-rx ARGS`` as ``sh``'s session; children still running are killed."""
    children: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        children.append(sh.popen(*args))
        return children[-1]

    yield start
    for proc in children:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_watch_prints_current_values_then_each_change_as_json_lines(
    sh: Shell, child: Callable[..., subprocess.Popen[str]]
) -> None:
    sh("set", "a", "1", "--type", "integer")
    sh("set", "b", "x", "--type", "string")
    watcher = child("watch", "a", "b", "-o", "json", "--count", "4")
    first = [json.loads(read_line(watcher)) for _ in range(2)]
    assert sorted((e["name"], e["value"], e["update_type"]) for e in first) == [
        ("a", 1, "initial"), ("b", "x", "initial")]
    sh("set", "a", "2")
    changed = json.loads(read_line(watcher))
    assert (changed["name"], changed["value"], changed["version"], changed["update_type"]) == (
        "a", 2, 2, "value_change")
    sh("rm", "b")
    deleted = json.loads(read_line(watcher))
    assert (deleted["name"], deleted["update_type"]) == ("b", "deleted")
    assert watcher.wait(timeout=HANG_GUARD) == 0  # --count 4 reached
    assert watcher.stdout is not None and watcher.stdout.read() == ""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_watch_runs_until_a_signal_then_exits_zero(
    sh: Shell, child: Callable[..., subprocess.Popen[str]], signum: int
) -> None:
    sh("set", "t", "0.5", "--type", "float")
    watcher = child("watch", "t")
    assert read_line(watcher) == "t = 0.5 (version 1)"
    sh("set", "t", "0.75")
    assert read_line(watcher) == "t = 0.75 (version 2)"
    watcher.send_signal(signum)
    assert watcher.wait(timeout=HANG_GUARD) == 0
    assert watcher.stderr is not None and "Traceback" not in watcher.stderr.read()


def test_watch_of_a_missing_variable_is_refused(sh: Shell) -> None:
    done = sh("watch", "ghost", "--count", "1", check=False)
    assert done.returncode == 1
    assert "no variable(s) 'ghost'" in done.stderr


EVALUATE = (f"{sys.executable} -c \"import json, os; "
            "print(1 - abs(json.loads(os.environ['DSPEX_RX_VALUE']) - 0.4))\"")


def test_optimize_start_evaluates_each_proposal_with_a_command(sh: Shell) -> None:
    sh("set", "t", "0.5", "--type", "float", "--constraints", '{"min": 0, "max": 1}')
    done = sh("optimize", "start", "t", "grid_search", "--config",
              '{"choices": [0.2, 0.4, 0.6]}', "--evaluate", EVALUATE)
    assert done.stdout.splitlines() == [
        'iteration 1: 0.2 -> {"score": 0.8}',
        'iteration 2: 0.4 -> {"score": 1.0}',
        'iteration 3: 0.6 -> {"score": 0.8}',
        "t: completed, iteration 3/100, best 0.4 (score 1): the search space is exhausted",
    ]
    status = sh.json("optimize", "status", "t")
    assert (status["state"], status["best_value"], status["iteration"]) == (
        "completed", 0.4, 3)
    assert "state: completed" in sh("optimize", "status", "t").stdout.splitlines()


def test_optimize_start_waits_for_reports_from_another_program(
    sh: Shell, child: Callable[..., subprocess.Popen[str]]
) -> None:
    sh("set", "t", "0.5", "--type", "float", "--constraints", '{"min": 0, "max": 1}')
    runner = child("optimize", "start", "t", "grid_search", "-o", "json", "--config",
                   '{"choices": [0.3, 0.7]}')
    proposal = json.loads(read_line(runner))
    assert (proposal["event"], proposal["iteration"], proposal["value"]) == (
        "proposal", 1, 0.3)
    follower = child("optimize", "watch", "t", "-o", "json")
    assert json.loads(read_line(follower))["state"] == "running"

    stale = sh("optimize", "report", "t", "0.1", "--version", str(proposal["version"] - 1),
               check=False)
    assert stale.returncode == 1
    assert stale.stderr.startswith("dspex-rx optimize report: error: variable 't': the report "
                                   "is for a stale proposal")
    sh("optimize", "report", "t", "0.5")  # the current proposal, from the status
    assert json.loads(read_line(runner))["event"] == "evaluated"
    second = json.loads(read_line(runner))
    assert (second["event"], second["value"]) == ("proposal", 0.7)
    sh("optimize", "report", "t", '{"score": 0.9}', "--version", str(second["version"]))
    assert json.loads(read_line(runner))["metrics"] == {"score": 0.9}
    ended = json.loads(read_line(runner))
    assert ended["event"] == "ended"
    assert (ended["status"]["state"], ended["status"]["best_value"]) == ("completed", 0.7)
    assert runner.wait(timeout=HANG_GUARD) == 0

    states = []
    while not states or states[-1] == "running":
        states.append(json.loads(read_line(follower))["state"])
    assert states[-1] == "completed"
    assert follower.wait(timeout=HANG_GUARD) == 0  # the watch ends with the run
    nothing = sh("optimize", "report", "t", "0.2", check=False)
    assert nothing.returncode == 1 and "awaits a report" in nothing.stderr


def test_optimize_start_interrupted_ends_the_run_as_stopped(
    sh: Shell, child: Callable[..., subprocess.Popen[str]]
) -> None:
    sh("set", "t", "0.5", "--type", "float", "--constraints", '{"min": 0, "max": 1}')
    runner = child("optimize", "start", "t", "grid_search", "--config",
                   '{"choices": [0.3, 0.7]}')
    assert read_line(runner) == "proposal 1: t = 0.3 (version 2)"
    runner.send_signal(signal.SIGINT)
    assert runner.wait(timeout=HANG_GUARD) == 0
    assert runner.stdout is not None
    assert runner.stdout.read().startswith("t: stopped, iteration 0/100")
    assert sh.json("optimize", "status", "t")["state"] == "stopped"


def test_optimize_stop_from_another_program_ends_the_run(
    sh: Shell, child: Callable[..., subprocess.Popen[str]]
) -> None:
    sh("set", "t", "0.5", "--type", "float", "--constraints", '{"min": 0, "max": 1}')
    runner = child("optimize", "start", "t", "grid_search", "--config",
                   '{"choices": [0.3, 0.7]}')
    assert read_line(runner).startswith("proposal 1:")
    stopped = sh("optimize", "stop", "t", "--reason", "budget spent")
    assert stopped.stdout.startswith("t: stopped")
    assert "budget spent" in stopped.stdout
    assert runner.wait(timeout=HANG_GUARD) == 0
    assert runner.stdout is not None and "t: stopped" in runner.stdout.read()
