"""The shell's ``optimize`` commands: ``start`` a run in the foreground (each proposal
evaluated by an ``--evaluate`` command, or reported by another program), ``report`` a
proposal's metrics, ``stop``, ``status`` and ``watch``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import trio

from dspex_rx.errors import InvalidValueError
from dspex_rx.shell.render import dumps, plain, text, when
from dspex_rx.shell.runner import UsageError, emit, joined, until_signal
from dspex_rx.shell.variables import parse_json_flag, parse_value

ENDED = ("completed", "stopped", "expired", "failed")
STATUS_FIELDS = ("variable", "state", "optimizer_type", "iteration", "max_iterations",
                 "best_value", "best_score", "awaiting_report", "proposal_version",
                 "end_reason", "optimization_id")


def metrics_of(output: str) -> Any:
    """An evaluation's result from a command's stdout: its last non-empty line, a number
    or a JSON object of metrics.

    >>> metrics_of("loading...\\n0.82\\n"), metrics_of('{"accuracy": 0.9}')
    (0.82, {'accuracy': 0.9})
    """
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        raise InvalidValueError("the --evaluate command printed nothing; it must print a "
                                "number or a JSON object of metrics as its last line")
    result = parse_value(lines[-1].strip())
    if isinstance(result, bool) or not isinstance(result, int | float | dict):
        raise InvalidValueError(f"the --evaluate command's last line {lines[-1].strip()!r} is "
                                "neither a number nor a JSON object of metrics")
    return result


def evaluator(command: str) -> Any:
    """An async objective that runs ``command`` in a shell with the proposal in
    ``DSPEX_RX_VALUE`` (JSON) and reads its result with ``metrics_of``.

    Example: ``evaluator('python score.py')`` is the objective of ``optimize start
    --evaluate 'python score.py'``.
    """

    async def objective(value: Any) -> Any:
        env = {**os.environ, "DSPEX_RX_VALUE": dumps(value)}
        done = await trio.run_process(command, shell=True, env=env, capture_stdout=True,
                                      check=False)
        if done.returncode != 0:
            raise InvalidValueError(f"the --evaluate command exited {done.returncode} for "
                                    f"value {text(plain(value))}")
        return metrics_of(done.stdout.decode("utf-8", "replace"))

    return objective


def status_line(status: dict[str, Any]) -> str:
    """A status as one human line.

    >>> status_line({"variable": "t", "state": "running", "iteration": 2,
    ...              "max_iterations": 5, "best_value": 0.3, "best_score": 0.9})
    't: running, iteration 2/5, best 0.3 (score 0.9)'
    """
    line = (f"{status['variable']}: {status['state']}, iteration {status['iteration']}/"
            f"{status['max_iterations']}")
    if status.get("best_value") is not None:
        line += f", best {text(plain(status['best_value']))} (score {status['best_score']:g})"
    if status.get("end_reason"):
        line += f": {status['end_reason']}"
    return line


def _config(args: argparse.Namespace) -> dict[str, Any] | None:
    config = parse_json_flag("--config", args.config)
    if config is not None and not isinstance(config, dict):
        raise UsageError(f"--config must be a JSON object, got {args.config!r}")
    return config


async def start(args: argparse.Namespace) -> int:
    """``dspex-rx optimize start NAME OPTIMIZER``: run an optimization in the foreground
    until it ends; Ctrl-C/SIGTERM stops it (state ``stopped``). Each proposal is evaluated
    by ``--evaluate CMD``, or printed and awaited from another program (``optimize
    report``).

    Example: ``dspex-rx optimize start temperature grid_search --config '{"values":
    [0.1, 0.5]}' --evaluate 'python score.py'``.
    """
    config = _config(args)
    json_lines = args.output == "json"
    async with joined(args) as session:

        def show(event: str, **fields: Any) -> None:
            if json_lines:
                print(dumps({"event": event, **fields}), flush=True)
            elif event == "proposal":
                print(f"proposal {fields['iteration']}: {args.name} = "
                      f"{text(plain(fields['value']))} (version {fields['version']})",
                      flush=True)
            elif event == "evaluated":
                print(f"iteration {fields['iteration']}: {text(plain(fields['value']))} -> "
                      f"{text(plain(fields['metrics']))}", flush=True)

        async def callback(iteration: int, value: Any, metrics: dict[str, Any]) -> None:
            show("evaluated", iteration=iteration, value=value, metrics=metrics)

        await session.start_optimization(
            args.name, args.optimizer, config, max_iterations=args.max_iterations,
            convergence_threshold=args.convergence_threshold, callback=callback,
            objective=evaluator(args.evaluate) if args.evaluate else None,
        )

        async def follow() -> None:
            if not args.evaluate:
                proposal: Any  # a Watch of proposals yields Proposal, not VariableUpdate
                async with session.proposals(args.name) as proposals:
                    async for proposal in proposals:
                        show("proposal", iteration=proposal.iteration,
                             version=proposal.version, value=proposal.value,
                             optimization_id=proposal.optimization_id)
            await session.wait_for_optimization(args.name)

        if await until_signal(follow):
            with trio.CancelScope(shield=True):
                await session.stop_optimization(args.name, reason="interrupted in the shell")
        status = await session.get_optimization_status(args.name)
    if json_lines:
        print(dumps({"event": "ended", "status": status}), flush=True)
    else:
        print(status_line(status), flush=True)
    return 0 if status["state"] in ("completed", "stopped") else 1


async def report(args: argparse.Namespace) -> int:
    """``dspex-rx optimize report NAME METRICS``: report the evaluation (a number or a JSON
    object) of the proposal the run waits on (``--version`` names it; default: the one the
    status says is current).

    Example: ``dspex-rx optimize report temperature '{"accuracy": 0.9}' --version 3``.
    """
    metrics = parse_value(args.metrics)
    if isinstance(metrics, bool) or not isinstance(metrics, int | float | dict):
        raise UsageError(f"METRICS must be a number or a JSON object, got {args.metrics!r}")
    async with joined(args) as session:
        version = args.version
        if version is None:
            current = await session.get_optimization_status(args.name)
            if not current["awaiting_report"]:
                raise InvalidValueError(
                    f"no proposal of {args.name!r} awaits a report (state "
                    f"{current['state']!r})")
            version = current["proposal_version"]
        status = await session.report_metrics(args.name, metrics, version=version)
    emit(args, status, lambda: print(status_line(status)))
    return 0


async def stop(args: argparse.Namespace) -> int:
    """``dspex-rx optimize stop NAME``: revoke the run's lease (``--apply-best`` writes the
    best value so far).

    Example: ``dspex-rx optimize stop temperature --reason 'budget spent'``.
    """
    async with joined(args) as session:
        await session.stop_optimization(args.name, args.reason, apply_best=args.apply_best)
        status = await session.get_optimization_status(args.name)
    emit(args, status, lambda: print(status_line(status)))
    return 0


async def status(args: argparse.Namespace) -> int:
    """``dspex-rx optimize status NAME``: the variable's optimization status.

    Example: ``dspex-rx optimize status temperature -o json``.
    """
    async with joined(args) as session:
        found = await session.get_optimization_status(args.name)

    def human() -> None:
        for key in STATUS_FIELDS:
            value = found.get(key)
            if value is not None and value != "":
                print(f"{key}: {text(plain(value))}")
        for key in ("started_at", "ended_at"):
            if found.get(key) is not None:
                print(f"{key}: {when(found[key])}")

    emit(args, found, human)
    return 0


async def watch(args: argparse.Namespace) -> int:
    """``dspex-rx optimize watch NAME``: one line per status change (the current status
    first) until the run ends, Ctrl-C/SIGTERM, or ``--count`` lines.

    Example: ``dspex-rx optimize watch temperature -o json``.
    """
    async with joined(args) as session:

        async def follow() -> None:
            printed = 0
            found: Any  # the status watch yields dicts, not VariableUpdate
            async with session.watch_optimization(args.name) as statuses:
                async for found in statuses:
                    print(dumps(found) if args.output == "json" else status_line(found),
                          flush=True)
                    printed += 1
                    if args.count is not None and printed >= args.count:
                        return
                    if found["state"] in ENDED and found.get("optimization_id"):
                        return

        await until_signal(follow)
    return 0

