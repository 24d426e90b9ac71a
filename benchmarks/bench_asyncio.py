"""Owns the asyncio-program benchmark: get_variable calls/s from an ``asyncio.run`` program
beside the same calls from trio, against one server, to show what the portal costs.

An asyncio program reaches the client through the portal (a trio run on a thread of its
own, ``client/portal.py``): every call crosses from the program's loop thread to that run
and back. A trio program calls the same client on its own thread. ``asyncio_guest`` is
what the portal could become, not what ``connect`` does from asyncio today: the trio
program's calls as a trio guest run (``trio.lowlevel.start_guest_run``) on an asyncio
program's loop, so no second thread sits between the program and the client. All use
the default client (pipelined calls, the trio-hosted grpc.aio loop); the server runs in a
separate process (``--storage memory``). Repeats interleave the programs; each figure is
the median run.

Figures: ``{"bench": "asyncio", "program": "asyncio"|"trio"|"asyncio_guest", "mode":
"sequential"|"concurrent", "calls_per_s", "runs_calls_per_s"}`` (``concurrent``:
``--concurrency`` tasks in flight), then ``{"bench": "asyncio_ratio"}`` per mode
(``asyncio_over_trio``, ``guest_over_trio``), and ``{"bench": "environment"}``.

Run::

    .venv/bin/python benchmarks/bench_asyncio.py            # about 15 s
    .venv/bin/python benchmarks/bench_asyncio.py --quick    # smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from _common import (
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

note = make_note("bench_asyncio")
NAME = "temperature"


async def _aio_timed(op: Callable[[], Awaitable[Any]], calls: int, concurrency: int) -> float:
    per_task = calls // concurrency

    async def worker() -> None:
        for _ in range(per_task):
            await op()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


def asyncio_program(target: str, args: argparse.Namespace) -> dict[str, float]:
    """One run from an ``asyncio.run`` program: seconds per mode."""

    async def main() -> dict[str, float]:
        async with dspex_rx.connect(target) as session:
            await session.register_variable(NAME, "float", 0.5)

            async def get() -> Any:
                return await session.get_variable(NAME, bypass_cache=True)

            await _aio_timed(get, args.warmup, 1)
            return {
                "sequential": await _aio_timed(get, args.calls, 1),
                "concurrent": await _aio_timed(get, args.concurrent_calls, args.concurrency),
            }

    return asyncio.run(main())


async def _trio_calls(target: str, args: argparse.Namespace) -> dict[str, float]:
    # The calls of a trio program: seconds per mode.
    async with dspex_rx.connect(target) as session:
        await session.register_variable(NAME, "float", 0.5)

        async def get(_: int) -> Any:
            return await session.get_variable(NAME, bypass_cache=True)

        await run_sequential(get, args.warmup)
        return {
            "sequential": await run_sequential(get, args.calls),
            "concurrent": await run_concurrent(get, args.concurrent_calls, args.concurrency),
        }


def trio_program(target: str, args: argparse.Namespace) -> dict[str, float]:
    """The same run from a trio program: seconds per mode."""
    return trio.run(_trio_calls, target, args)


def asyncio_guest_program(target: str, args: argparse.Namespace) -> dict[str, float]:
    """The trio program's run as a trio guest on an ``asyncio.run`` program's loop."""

    async def main() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        trio.lowlevel.start_guest_run(
            _trio_calls, target, args, run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=done.set_result, host_uses_signal_set_wakeup_fd=True)
        result: dict[str, float] = (await done).unwrap()
        return result

    return asyncio.run(main())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: the calls/s flags, and ``--quick``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_rate_flags(parser, calls=2000, factor=2, warmup_divisor=10, repeats=None)
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 calls, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls = 200
        args.repeats = args.repeats or 1
    finish_rate_args(parser, args, factor=2, warmup_divisor=10, warmup_min=20)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run both programs against one server child, interleaved, and print the figures."""
    args = parse_args(argv)
    quiet_logging()
    emit(environment())
    programs = {"asyncio": asyncio_program, "trio": trio_program,
                "asyncio_guest": asyncio_guest_program}
    seconds: dict[tuple[str, str], list[float]] = {}
    calls = {"sequential": args.calls, "concurrent": args.concurrent_calls}
    with server_process(note) as target:
        for repeat in range(args.repeats):
            for program, run in programs.items():
                for mode, taken in run(target, args).items():
                    seconds.setdefault((program, mode), []).append(taken)
                    note(f"repeat {repeat + 1}/{args.repeats} {program:<8} {mode:<10} "
                         f"{calls[mode] / taken:8.0f} calls/s")
    rates = {key: calls[key[1]] / statistics.median(values) for key, values in seconds.items()}
    for (program, mode), rate in rates.items():
        emit({"bench": "asyncio", "program": program, "mode": mode, "calls": calls[mode],
              "in_flight": 1 if mode == "sequential" else args.concurrency,
              "calls_per_s": round(rate, 1),
              "runs_calls_per_s": [round(calls[mode] / s, 1)
                                   for s in seconds[(program, mode)]]})
    for mode in calls:
        trio_rate = rates[("trio", mode)]
        emit({"bench": "asyncio_ratio", "mode": mode,
              "asyncio_over_trio": round(rates[("asyncio", mode)] / trio_rate, 3),
              "guest_over_trio": round(rates[("asyncio_guest", mode)] / trio_rate, 3)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
