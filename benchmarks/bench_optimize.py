"""Owns the coordination-overhead benchmark: what one optimization iteration costs in
lease, fenced write and record, against a bare ``set_variable``.

The server runs in a separate process; the client is one trio program with one session.
The objective is an ``async def`` that returns at once and the optimizer is ``random``
(microseconds per ask/tell), so what is measured is coordination: per iteration one
``OptimizationStep`` (record the last result, renew the lease, write the next proposal
under the fencing token, publish the status) plus the run loop; with a callback, a second
step records the result before the callback runs. Ask/tell (no objective): a second
connection of the session watches the variable and reports each proposal with
``report_metrics``, so an iteration adds the proposal's trip to the reporter, the
``ReportMetrics`` RPC and the report's trip back to the run as a status event.

Figures (one JSON line each):

* ``{"bench": "optimize", "op": "set_variable", ...}``: seconds per bare write.
* ``{"bench": "optimize", "op": "iteration", "callback": false, ...}``: seconds per
  iteration of a full run, and ``ratio`` = iteration / set_variable (medians of
  ``--repeats`` interleaved runs).
* the same with ``"callback": true``.
* ``{"bench": "optimize", "op": "ask_tell", ...}``: the same, evaluated by reports.

Run::

    .venv/bin/python benchmarks/bench_optimize.py            # about 20 s on 2 cores
    .venv/bin/python benchmarks/bench_optimize.py --quick
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any

import trio
from _common import emit, make_note, run_benchmark

import dspex_rx

note = make_note("bench_optimize")


async def bare_writes(session: dspex_rx.SessionContext, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await session.set_variable("bare", 0.5 + (i & 1) * 0.1)
    return (time.perf_counter() - started) / n


async def optimization_iterations(
    session: dspex_rx.SessionContext, n: int, with_callback: bool
) -> float:
    async def objective(value: float) -> float:
        return -abs(value - 1.3)

    seen: list[int] = []
    started = time.perf_counter()
    await session.start_optimization(
        "tuned", "random", {"seed": 1}, max_iterations=n, convergence_threshold=0.0,
        objective=objective, callback=(lambda i, v, m: seen.append(i)) if with_callback else None,
    )
    final = await session.wait_for_optimization("tuned")
    elapsed = time.perf_counter() - started
    assert final["state"] == "completed" and final["iteration"] == n, final
    assert not with_callback or seen == list(range(1, n + 1))
    return elapsed / n


async def reported_iterations(
    session: dspex_rx.SessionContext, reporter: dspex_rx.SessionContext, n: int
) -> float:
    async def report(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with reporter.watch_variable("tuned", include_initial=False) as watch:
            await reporter.sync()
            task_status.started()
            async for update in watch:
                if update.metadata.get("final"):
                    return
                await reporter.report_metrics("tuned", -abs(update.value - 1.3),
                                              version=update.version)

    async with trio.open_nursery() as nursery:
        await nursery.start(report)
        started = time.perf_counter()
        await session.start_optimization(
            "tuned", "random", {"seed": 1}, max_iterations=n, convergence_threshold=0.0,
        )
        final = await session.wait_for_optimization("tuned")
        elapsed = time.perf_counter() - started
    assert final["state"] == "completed" and final["iteration"] == n, final
    return elapsed / n


async def client_main(target: str, args: Any) -> None:
    async with dspex_rx.connect(target) as session, dspex_rx.connect(
        target, session_id=session.session_id, token=session.token
    ) as reporter:
        bounds = {"min": 0.0, "max": 2.0}
        await session.register_variable("bare", "float", 0.5, constraints=bounds)
        await session.register_variable("tuned", "float", 0.5, constraints=bounds)
        await bare_writes(session, args.iterations // 4)  # warm up the channel
        samples: dict[str, list[float]] = {"set": [], "plain": [], "callback": [],
                                           "ask_tell": []}
        for repeat in range(args.repeats):
            gc.collect()
            samples["set"].append(await bare_writes(session, args.iterations))
            samples["plain"].append(await optimization_iterations(session, args.iterations, False))
            samples["callback"].append(
                await optimization_iterations(session, args.iterations, True)
            )
            samples["ask_tell"].append(
                await reported_iterations(session, reporter, args.iterations)
            )
            note(f"repeat {repeat + 1}/{args.repeats}: "
                 + ", ".join(f"{k} {v[-1] * 1e6:.0f} us" for k, v in samples.items()))
        base = statistics.median(samples["set"])
        emit({"bench": "optimize", "op": "set_variable", "seconds": base,
              "iterations": args.iterations, "repeats": args.repeats})
        for key, with_callback in (("plain", False), ("callback", True)):
            per_iteration = statistics.median(samples[key])
            emit({
                "bench": "optimize", "op": "iteration", "callback": with_callback,
                "seconds": per_iteration, "ratio": per_iteration / base,
                "iterations": args.iterations, "repeats": args.repeats,
            })
        per_iteration = statistics.median(samples["ask_tell"])
        emit({
            "bench": "optimize", "op": "ask_tell", "seconds": per_iteration,
            "ratio": per_iteration / base, "iterations": args.iterations,
            "repeats": args.repeats,
        })


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="50 iterations, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.repeats = 50, 2
    return args


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(client_main, parse_args(argv), note)


if __name__ == "__main__":
    raise SystemExit(main())
