"""The spec's "Complete Optimization Workflow": an LLM program's variables registered with
their dependencies and a derived ``effective_temperature``; a Bayesian optimization of
``base_temperature``, started without an objective as in the spec: the program evaluates
each proposal it sees (a simulated quality evaluation) and reports the metrics through the
server (ask/tell), with a live progress bar; a second connection that polls the run's
status and is refused a write while it runs; then the results exported as JSON (times as
ISO 8601) and plotted as a PNG. Runs on an embedded server in ~2 s.
Output goes to argv[1], else $DSPEX_RX_OUT, else ./dspex_rx_output.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import trio

import dspex_rx

TARGET = "base_temperature"
MAX_ITERATIONS = 25
STYLE = 0.8  # a terse style: the effective temperature is 80% of the base

VARIABLES: list[dict[str, Any]] = [
    {"name": "base_temperature", "type": "float", "initial_value": 1.5,
     "constraints": {"min": 0.0, "max": 2.0}, "description": "sampling temperature"},
    {"name": "style_modifier", "type": "float", "initial_value": 1.0,
     "constraints": {"min": 0.5, "max": 1.5}, "description": "per-style scaling"},
    {"name": "model", "type": "choice", "initial_value": "gpt-4",
     "constraints": {"choices": ["gpt-4", "claude-3", "llama-3"]}},
    {"name": "max_tokens", "type": "integer", "initial_value": 256,
     "constraints": {"min": 1, "max": 4096}, "dependencies": ["model"]},
    {"name": "reasoning_strategy", "type": "module", "initial_value": "ChainOfThought",
     "constraints": {"choices": ["Predict", "ChainOfThought", "ReAct"]},
     "dependencies": ["model"]},
]


def effective(base: float, style: float) -> float:
    """``effective_temperature``: the product, rounded so the printout stays readable."""
    return round(base * style, 6)


def make_evaluate(style: float, seed: int = 2024) -> Callable[[float], dict[str, float]]:
    """A stand-in for running the program on a dev set and grading the answers. Quality
    depends on the temperature the model actually gets (base * style): too cold repeats
    itself, too hot rambles; it peaks at 0.7. The noise is seeded so every run is the same."""
    rng = np.random.default_rng(seed)

    def evaluate(base: float) -> dict[str, float]:
        temperature = base * style
        quality = 0.55 + 0.38 * math.exp(-(((temperature - 0.7) / 0.4) ** 2))
        latency_ms = 900.0 + 250.0 * temperature  # hotter sampling writes longer answers
        return {
            "quality": round(quality + float(rng.normal(0.0, 0.004)), 4),
            "latency_ms": round(latency_ms + float(rng.normal(0.0, 15.0)), 1),
        }

    return evaluate


class ProgressBar:
    """The optimization callback's display: one redrawn line on a terminal, one line per
    iteration elsewhere (a log must not fill up with carriage returns)."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 25) -> None:
        self.total, self.width = total, width
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.iterations: list[int] = []
        self.best: tuple[float, float] | None = None  # (quality, value)

    def update(self, iteration: int, value: float, metrics: dict[str, Any]) -> None:
        self.iterations.append(iteration)
        quality = float(metrics["quality"])
        if self.best is None or quality > self.best[0]:
            self.best = (quality, value)
        best_quality, best_value = self.best
        if self.tty:
            done = self.width * iteration // self.total
            bar = "#" * done + "-" * (self.width - done)
            self.stream.write(f"\r  [{bar}] {iteration:>2}/{self.total}  best quality "
                              f"{best_quality:.3f} at {best_value:.3f}")
            self.stream.flush()
        else:
            print(f"  {iteration:>2}/{self.total}  {TARGET} {value:.3f} -> quality "
                  f"{quality:.3f}  (best {best_quality:.3f} at {best_value:.3f})",
                  file=self.stream)

    def close(self, final: dict[str, Any]) -> None:
        """End the display at the run's real last iteration: a run that converged early
        ends a full bar at that iteration, not a bar stuck part-way to max_iterations."""
        last, state = int(final["iteration"]), str(final["state"])
        if state == "completed" and last:
            self.total = last  # what the run needed is the whole of it
        if self.tty:
            done = self.width * last // self.total
            bar = "#" * done + "-" * (self.width - done)
            # \x1b[K: clear what a longer progress line left to the right.
            self.stream.write(f"\r  [{bar}] {last:>2}/{self.total}  {state}: "
                              f"{final['end_reason']}\x1b[K\n")
        else:
            print(f"  {state} at iteration {last}: {final['end_reason']}", file=self.stream)


async def poll_status(other: dspex_rx.SessionContext, seen: list[tuple[str, int]]) -> None:
    """What a dashboard in another process would do: poll until the run has ended."""
    while True:
        status = await other.get_optimization_status(TARGET)
        seen.append((status["state"], status["iteration"]))
        if not status["is_optimizing"] and status["state"] != "idle":
            break
        await trio.sleep(0.05)


async def follow_status(
    other: dspex_rx.SessionContext, seen: list[tuple[str, int]], ready: trio.Event
) -> None:
    """Watch instead of poll: the current status first, then every change, none missed."""
    async with other.watch_optimization(TARGET) as watch:
        async for status in watch:
            seen.append((status["state"], status["iteration"]))
            ready.set()
            if not status["is_optimizing"] and status["state"] != "idle":
                break


async def evaluate_proposals(
    session: dspex_rx.SessionContext, evaluate: Callable[[float], dict[str, float]],
) -> None:
    """The program's side of ask/tell: evaluate every proposal the optimizer writes and
    report its metrics; ``proposals`` yields the one already waiting first, so starting
    after the run misses nothing, and it ends when the run ends."""
    async with session.proposals(TARGET) as proposals:
        async for proposal in proposals:
            # Evaluating is slow, synchronous work (an LLM over a dev set): a thread.
            await proposal.report(await trio.to_thread.run_sync(evaluate, proposal.value))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def default_out_dir() -> Path:
    return Path(os.environ.get("DSPEX_RX_OUT") or "dspex_rx_output")


def plot(history: list[dict[str, Any]], best: dict[str, Any], kept: float, path: Path) -> None:
    """Value and quality per iteration, the best evaluation starred."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    iterations = [entry["iteration"] for entry in history]
    values = [entry["value"] for entry in history]
    quality = [entry["metrics"]["quality"] for entry in history]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 5), layout="constrained")
    top.plot(iterations, values, "o-", color="tab:blue", label="proposed")
    top.axhline(kept, color="tab:green", linestyle="--", label=f"kept {kept:.3f}")
    top.plot(best["iteration"], best["value"], "*", color="tab:red", markersize=14,
             label="best quality")
    top.set_ylabel(TARGET)
    top.legend(loc="upper right", fontsize="small")
    bottom.plot(iterations, quality, "o-", color="tab:orange", label="quality")
    bottom.plot(iterations, np.maximum.accumulate(quality), color="gray", label="best so far")
    bottom.plot(best["iteration"], best["metrics"]["quality"], "*", color="tab:red",
                markersize=14)
    bottom.set_xlabel("iteration")
    bottom.set_ylabel("quality")
    bottom.legend(loc="lower right", fontsize="small")
    fig.suptitle(f"Bayesian optimization of {TARGET}")
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def main(out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run the workflow on an embedded server, writing the JSON export and the plot into
    ``out_dir``; returns what the run, the callback and the monitor saw."""
    out = Path(out_dir) if out_dir is not None else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)

    async with dspex_rx.connect(client_name="tuner") as session:
        print(f"embedded server at {session.target}, session {session.session_id}")
        await session.register_variables(VARIABLES)
        derived = await session.derive(
            "effective_temperature", ["base_temperature", "style_modifier"], effective,
            type="float", constraints={"min": 0.0, "max": 3.0},
            description="base_temperature * style_modifier",
        )
        await session.set_variable("style_modifier", STYLE)
        await session.sync()
        await derived.settled()
        start = await session.get_variables([TARGET, "effective_temperature"])
        print(f"registered {len(VARIABLES)} variables (max_tokens and reasoning_strategy "
              "depend on model)")
        print(f"effective_temperature = base_temperature * style_modifier = "
              f"{start[TARGET]} * {STYLE} = {start['effective_temperature']}  (derived)\n")

        # The evaluation runs in a worker thread, so it gets the style as a plain value.
        style = (await session.get_variables(["style_modifier"]))["style_modifier"]
        evaluate = make_evaluate(style)
        bar = ProgressBar(MAX_ITERATIONS)
        polled: list[tuple[str, int]] = []
        watched: list[tuple[str, int]] = []
        refused: list[str] = []

        assert session.target is not None
        async with (
            dspex_rx.connect(session.target, session_id=session.session_id,
                             token=session.token, client_name="monitor") as other,
            trio.open_nursery() as nursery,
        ):
            watching = trio.Event()
            nursery.start_soon(follow_status, other, watched, watching)
            await watching.wait()  # so the watch sees the run from its very start

            async def on_iteration(iteration: int, value: float, metrics: dict[str, Any]) -> None:
                bar.update(iteration, value, metrics)
                if iteration == 1:
                    # The callback runs under the lease, so this write is surely refused.
                    try:
                        await other.set_variable(TARGET, 1.0)
                    except ValueError as exc:
                        refused.append(f"{type(exc).__name__}: {exc}")

            print(f"optimizing {TARGET} (bayesian, expected improvement, "
                  f"at most {MAX_ITERATIONS} iterations):")
            opt_id = await session.start_optimization(
                TARGET, "bayesian",
                {"acquisition_function": "ei", "n_initial_points": 5, "seed": 7,
                 "metric": "quality", "mode": "max"},
                max_iterations=MAX_ITERATIONS, convergence_threshold=0.001,
                callback=on_iteration,
            )
            nursery.start_soon(evaluate_proposals, session, evaluate)
            # Started after the run, not before: the first poll then cannot come too late.
            nursery.start_soon(poll_status, other, polled)
            final = await session.wait_for_optimization(TARGET)
            bar.close(final)

        await session.sync()
        await derived.settled()
        derived.cancel()
        values = await session.get_variables(
            [str(v["name"]) for v in VARIABLES] + ["effective_temperature"]
        )
        last_write = (await session.get_variable_history(TARGET, limit=1))[0]
        history = await session.get_optimization_history(TARGET, limit=100)

    best = max(history, key=lambda entry: entry["metrics"]["quality"])
    kept = values[TARGET]
    print(f"\n{final['state']}: {final['end_reason']} ({opt_id})")
    print(f"best quality {final['best_score']:.4f} at {TARGET} {final['best_value']:.6f} "
          f"(latency {final['best_metrics']['latency_ms']:.0f} ms)")
    source = next(e["iteration"] for e in history if e["value"] == kept)
    print(f"kept {TARGET} = {kept:.6f} from iteration {source} (the optimizer's final write, "
          f"v{last_write['version']}):\n  the evaluated value with the best posterior mean"
          + ("" if source == best["iteration"] else
             f", not iteration {best['iteration']}'s luckier single score"))
    print(f"effective_temperature followed: {kept:.6f} * {values['style_modifier']} = "
          f"{values['effective_temperature']}")
    print(f"while it ran, the monitor's write was refused: {refused[0]}"
          if refused else "the monitor's write was not refused")
    shown = ", ".join(f"{state} {iteration}" for state, iteration in polled)
    print(f"the monitor polled {len(polled)} times: {shown}")
    missed = set(range(1, final["iteration"] + 1)) - {iteration for _, iteration in watched}
    print(f"its watch got {len(watched)} statuses, {watched[0][0]} to {watched[-1][0]}: "
          + (f"missed iterations {sorted(missed)}" if missed else "every iteration, none missed"))
    print("\ntop 3 evaluations:")
    for entry in sorted(history, key=lambda e: -e["metrics"]["quality"])[:3]:
        metrics = entry["metrics"]
        print(f"  iteration {entry['iteration']:>2}  {TARGET} {entry['value']:.6f}  quality "
              f"{metrics['quality']:.4f}  latency {metrics['latency_ms']:.0f} ms")

    json_path = out / "optimization_results.json"
    export = {"format_version": 1, "optimization_id": opt_id, "status": final,
              "history": history, "variables": values}
    json_path.write_text(json.dumps(export, indent=2, default=_json_default) + "\n")
    png_path = out / "optimization_progress.png"
    plot(history, best, kept, png_path)
    print(f"\nwrote {json_path} ({len(history)} iterations) and {png_path}")

    return {
        "optimization_id": opt_id,
        "final": final,
        "history": history,
        "callback_iterations": bar.iterations,
        "monitor": polled,
        "watched": watched,
        "refused": refused,
        "recommended": last_write,
        "json_path": json_path,
        "png_path": png_path,
        "values": values,
    }


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else None)
