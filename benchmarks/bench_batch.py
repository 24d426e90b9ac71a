"""Owns the batch benchmark: one ``update_variables`` / ``get_variables`` call for 100
variables against 100 single-variable calls.

The server runs in a separate process (``python -m dspex_rx.server.cli serve --port 0``), the client
is one trio program with one session on one channel. Each figure is one JSON line on stdout;
progress goes to stderr.

Figures:

* ``{"bench": "batch", "op": "update", ...}``: one atomic ``update_variables`` of
  ``--variables`` (100) float variables vs that many ``set_variable`` calls one after
  another. ``ratio`` = sequential seconds / batch seconds (medians of ``--repeats`` runs,
  interleaved, measured in the same run); goal >= 20.
* ``{"bench": "batch", "op": "get", ...}``: one ``get_variables`` of the same variables vs
  that many ``get_variable(name, bypass_cache=True)`` calls. The client cache is off for
  unwatched variables (``set_cache_config(ttl=0)``), so ``get_variables`` fetches all of
  them from the server every time; the run asserts it from ``get_variable_stats`` (no hit).
  Goal >= 20.
* ``{"bench": "environment", ...}``: Python, grpcio and CPU count.

Run::

    .venv/bin/python benchmarks/bench_batch.py            # full, about 25 s on 2 cores
    .venv/bin/python benchmarks/bench_batch.py --quick    # a few seconds, for a smoke test
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _common import emit, make_note, require_positive, run_benchmark

import dspex_rx

GOAL_RATIO = 20.0
VALUES = (0.5, 0.6)  # alternate, so every write is a real change within [0, 2]

Op = Callable[[int], Awaitable[None]]

note = make_note("bench_batch")


def make_ops(session: dspex_rx.SessionContext, names: list[str]) -> dict[str, Op]:
    """The four measured operations; each covers every variable once. ``i`` picks the
    value to write (writes alternate between two values)."""

    async def update_batch(i: int) -> None:
        value = VALUES[i & 1]
        results = await session.update_variables(dict.fromkeys(names, value))
        bad = {name: r for name, r in results.items() if r is not True}
        assert not bad, f"update_variables refused entries: {bad}"

    async def update_sequential(i: int) -> None:
        value = VALUES[i & 1]
        for name in names:
            await session.set_variable(name, value)

    async def get_batch(i: int) -> None:
        values = await session.get_variables(names)
        assert len(values) == len(names)

    async def get_sequential(i: int) -> None:
        for name in names:
            await session.get_variable(name, bypass_cache=True)

    return {
        "update_batch": update_batch,
        "update_sequential": update_sequential,
        "get_batch": get_batch,
        "get_sequential": get_sequential,
    }


async def timed(op: Op, i: int) -> float:
    gc.collect()
    start = time.perf_counter()
    await op(i)
    return time.perf_counter() - start


async def check_revisions(
    session: dspex_rx.SessionContext, names: list[str], expected: float, one_revision: bool
) -> None:
    """The values are what was last written; a batch committed them under one revision,
    sequential sets under one revision each."""
    rows = await session.get_variables(names, include_metadata=True)
    values = {row["value"] for row in rows.values()}
    assert values == {expected}, f"expected every variable at {expected}, got {values}"
    revisions = {row["revision"] for row in rows.values()}
    if one_revision:
        assert len(revisions) == 1, f"a batch spread over {len(revisions)} revisions"
    else:
        assert len(revisions) == len(names), "sequential sets shared a revision"


async def bench_batch(
    session: dspex_rx.SessionContext, args: argparse.Namespace
) -> list[dict[str, Any]]:
    names = [f"batch_{i:03d}" for i in range(args.variables)]
    await session.register_variables([
        {"name": name, "type": "float", "initial_value": 0.7,
         "constraints": {"min": 0.0, "max": 2.0}}
        for name in names
    ])
    # ttl=0: unwatched variables are not cached at all, so get_variables goes to the
    # server for every name, every time (nothing here is watched).
    session.set_cache_config(ttl=0)
    ops = make_ops(session, names)

    note(f"{args.variables} variables; warm-up: {args.warmup} runs per op")
    for i in range(args.warmup):
        for op in ops.values():
            await op(i)

    # Correctness before timing: one revision per batch, one per sequential set.
    await ops["update_batch"](0)
    await check_revisions(session, names, VALUES[0], one_revision=True)
    await ops["update_sequential"](1)
    await check_revisions(session, names, VALUES[1], one_revision=False)

    before = await session.get_variable_stats()
    seconds: dict[str, list[float]] = {name: [] for name in ops}
    for repeat in range(args.repeats):
        # Interleaved, so drift on a busy machine hits every op alike.
        for name, op in ops.items():
            seconds[name].append(await timed(op, repeat))
        if (repeat + 1) % max(1, args.repeats // 5) == 0 or repeat + 1 == args.repeats:
            medians = {k: 1000 * statistics.median(v) for k, v in seconds.items()}
            note(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
                f"{k} {v:.2f} ms" for k, v in medians.items()))
    after = await session.get_variable_stats()
    hits = after["cache_hits"] - before["cache_hits"]
    misses = after["cache_misses"] - before["cache_misses"]
    reads = 2 * args.variables * args.repeats  # get_batch + get_sequential
    assert hits == 0, f"{hits} reads were served from the client cache"
    assert misses == reads, f"expected {reads} server reads, counted {misses}"

    records = []
    for op, batch_call, single_call in (
        ("update", "update_variables", "set_variable"),
        ("get", "get_variables", "get_variable(bypass_cache=True)"),
    ):
        batch = seconds[f"{op}_batch"]
        sequential = seconds[f"{op}_sequential"]
        batch_s = statistics.median(batch)
        sequential_s = statistics.median(sequential)
        ratio = sequential_s / batch_s
        records.append({
            "bench": "batch",
            "op": op,
            "batch_call": f"1 x {batch_call}",
            "sequential_call": f"{args.variables} x {single_call}",
            "variables": args.variables,
            "repeats": args.repeats,
            "batch_seconds": round(batch_s, 6),
            "sequential_seconds": round(sequential_s, 6),
            "batch_seconds_min_max": [round(min(batch), 6), round(max(batch), 6)],
            "sequential_seconds_min_max": [round(min(sequential), 6),
                                           round(max(sequential), 6)],
            "batch_us_per_variable": round(1e6 * batch_s / args.variables, 2),
            "sequential_us_per_variable": round(1e6 * sequential_s / args.variables, 2),
            "ratio": round(ratio, 2),
            "goal": GOAL_RATIO,
            "meets_goal": ratio >= GOAL_RATIO,
        })
    return records


async def client_main(target: str, args: argparse.Namespace) -> None:
    async with dspex_rx.connect(target, client_name="bench_batch") as session:
        for record in await bench_batch(session, args):
            emit(record)


# ----------------------------------------------------------------------------- cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Batch benchmark of dspex-rx: one atomic update_variables vs N sequential "
            "set_variable calls, and one get_variables vs N uncached get_variable calls, "
            "against a server in a separate process. One JSON line per figure."
        ),
    )
    parser.add_argument("--variables", type=int, default=100,
                        help="float variables per batch (default 100)")
    parser.add_argument("--repeats", type=int, default=60,
                        help="timed runs per op, interleaved; the figure is the median "
                        "(default 60)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed runs per op before measuring (default 5)")
    parser.add_argument("--quick", action="store_true",
                        help="short smoke run: 10 repeats, 2 warm-up runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 10, 2
    require_positive(parser, args, "variables", "repeats")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(client_main, parse_args(argv), note)


if __name__ == "__main__":
    raise SystemExit(main())
