"""Owns the durable-write benchmark: set_variable calls/s on a SQLite server against an
in-memory server in the same run, and a plain SQLite insert+fsync loop beside them.

Two servers run as child processes at once (``dspex-rx serve --storage memory`` and
``--storage sqlite --data-dir <tmp>``, from ``_common.server_process``); one trio client
program has one session on each. Each figure is one JSON line on stdout; progress goes to
stderr.

Figures:

* ``{"bench": "durable", ...}`` per storage and mode: ``sequential`` (one call at a time)
  and ``concurrent`` (``--concurrency`` calls in flight, trio tasks in one nursery).
  ``ratio_to_memory`` = the sqlite server's calls/s / the memory server's in the same
  mode, same run; goals: >= 0.4 sequential, >= 0.6 with 32 in flight (group commit: many
  writes share one fsync). ``ratio_to_fsync_loop`` = calls/s / the plain loop's rows/s.
* ``{"bench": "fsync_loop", ...}``: Python's ``sqlite3`` on the same filesystem, WAL,
  ``synchronous=FULL``, one ``INSERT`` + ``COMMIT`` per row (one fsync each): what one
  durable write costs with no server, no batching.
* ``{"bench": "environment", ...}``.

Repeats interleave memory, sqlite and the loop, so load from other processes hits them
alike; each figure is the median run.

Run::

    .venv/bin/python benchmarks/bench_durable.py            # full, about 40 s on 2 cores
    .venv/bin/python benchmarks/bench_durable.py --quick    # a few seconds, a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from _common import (
    Op,
    add_rate_flags,
    emit,
    environment,
    finish_rate_args,
    make_note,
    quiet_logging,
    run_concurrent,
    run_sequential,
    server_process,
)

import dspex_rx

GOAL_SEQUENTIAL = 0.4
GOAL_CONCURRENT = 0.6
STORAGES = ("memory", "sqlite")


note = make_note("bench_durable")


def fsync_loop(path: Path, rows: int) -> float:
    """Seconds for ``rows`` committed inserts, one fsync each (WAL, synchronous=FULL)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB)")
        # About what one set_variable stores: a record with a small encoded value.
        payload = bytes(64)
        start = time.perf_counter()
        for _ in range(rows):
            db.execute("BEGIN")
            db.execute("INSERT INTO t (v) VALUES (?)", (payload,))
            db.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        db.close()


def make_set(session: dspex_rx.SessionContext) -> Op:
    values = (0.5, 0.6)  # alternate, so every set is a real change within [0, 2]

    async def set_variable(i: int) -> Any:
        return await session.set_variable("temperature", values[i & 1])

    return set_variable


async def client_main(targets: dict[str, str], loop_dir: Path, args: argparse.Namespace) -> None:
    async with contextlib.AsyncExitStack() as stack:
        ops: dict[str, Op] = {}
        for storage, target in targets.items():
            session = await stack.enter_async_context(
                dspex_rx.connect(target, client_name=f"bench_durable[{storage}]")
            )
            await session.register_variable(
                "temperature", "float", 0.7, constraints={"min": 0.0, "max": 2.0}
            )
            ops[storage] = make_set(session)
        modes = {"sequential": args.calls, "concurrent": args.concurrent_calls}

        note(f"warm-up: {args.warmup} calls per storage and mode")
        for op in ops.values():
            await run_sequential(op, args.warmup)
            warm = max(args.concurrency, args.warmup // args.concurrency * args.concurrency)
            await run_concurrent(op, warm, args.concurrency)
        fsync_loop(loop_dir / "warmup.sqlite3", max(10, args.warmup // 10))

        seconds: dict[tuple[str, str], list[float]] = {}
        loop_seconds: list[float] = []
        for repeat in range(args.repeats):
            for mode, calls in modes.items():
                for storage, op in ops.items():
                    gc.collect()
                    if mode == "sequential":
                        taken = await run_sequential(op, calls)
                    else:
                        taken = await run_concurrent(op, calls, args.concurrency)
                    seconds.setdefault((storage, mode), []).append(taken)
                    note(f"repeat {repeat + 1}/{args.repeats} {mode:<10} {storage:<6} "
                         f"{calls / taken:8.0f} set/s")
            path = loop_dir / f"loop-{repeat}.sqlite3"
            taken = await trio.to_thread.run_sync(fsync_loop, path, args.loop_rows)
            loop_seconds.append(taken)
            note(f"repeat {repeat + 1}/{args.repeats} fsync loop        "
                 f"{args.loop_rows / taken:8.0f} rows/s")

    loop_rate = args.loop_rows / statistics.median(loop_seconds)
    emit({
        "bench": "fsync_loop", "rows": args.loop_rows, "repeats": args.repeats,
        "seconds": round(statistics.median(loop_seconds), 4),
        "rows_per_s": round(loop_rate, 1),
        "runs_rows_per_s": [round(args.loop_rows / s, 1) for s in loop_seconds],
        "journal_mode": "wal", "synchronous": "full", "commit_per_row": True,
    })
    for mode, calls in modes.items():
        rates = {
            storage: calls / statistics.median(seconds[(storage, mode)]) for storage in ops
        }
        goal = GOAL_SEQUENTIAL if mode == "sequential" else GOAL_CONCURRENT
        for storage in ops:
            ratio = rates[storage] / rates["memory"]
            record: dict[str, Any] = {
                "bench": "durable", "op": "set_variable", "storage": storage, "mode": mode,
                "in_flight": 1 if mode == "sequential" else args.concurrency,
                "calls": calls, "repeats": args.repeats,
                "seconds": round(statistics.median(seconds[(storage, mode)]), 4),
                "calls_per_s": round(rates[storage], 1),
                "runs_calls_per_s": [round(calls / s, 1) for s in seconds[(storage, mode)]],
                "ratio_to_memory": round(ratio, 3),
                "ratio_to_fsync_loop": round(rates[storage] / loop_rate, 3),
            }
            if storage != "memory":
                record.update(goal=goal, meets_goal=ratio >= goal)
            emit(record)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Durable-write benchmark of dspex-rx: set_variable calls/s on a SQLite server vs "
            "an in-memory server (sequential and concurrent), beside a plain SQLite "
            "insert+fsync loop. One JSON line per figure."
        ),
    )
    add_rate_flags(parser, calls=1000, factor=4, warmup_divisor=5,
                   warmup_per="storage and mode")
    parser.add_argument("--loop-rows", type=int, default=None,
                        help="rows of the plain fsync loop per repeat (default --calls)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="where the plain loop's files go (default a temp dir; put it "
                        "on the disk the server's --data-dir would use)")
    parser.add_argument("--quick", action="store_true",
                        help="short smoke run: 200 sequential / 640 concurrent, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.repeats = 200, 1
        args.concurrent_calls = args.concurrent_calls or 640
    finish_rate_args(parser, args, factor=4, warmup_divisor=5)
    if args.loop_rows is None:
        args.loop_rows = args.calls
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logging()
    emit(environment())
    with contextlib.ExitStack() as stack:
        targets = {
            storage: stack.enter_context(server_process(note, storage=storage))
            for storage in STORAGES
        }
        if args.data_dir:
            loop_dir = Path(args.data_dir)
            loop_dir.mkdir(parents=True, exist_ok=True)
        else:
            loop_dir = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="dspex-rx-fsync-")))
        trio.run(client_main, targets, loop_dir, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
