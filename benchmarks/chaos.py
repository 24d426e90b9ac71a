"""Owns the long chaos run: the suite's chaos test (``tests/chaos/``) for N seeded runs, its
summary as one line on stderr and one JSON line on stdout; failing runs' violations on stderr.

Writers (sets, compare-and-sets, atomic batches) and watchers talk to a SQLite server
through a proxy that cuts, delays and black-holes their connections at random, while the
server is now and then killed (SIGKILL) and restarted; after each run a checker compares
what every client was told with the history. Exit status 1 if any run broke a promise.

Run::

    .venv/bin/python benchmarks/chaos.py --runs 1000 --seed 7
    .venv/bin/python benchmarks/chaos.py --minutes 15          # as many runs as fit
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import trio
from _common import REPO_ROOT, emit, quiet_logging

# The harness lives with the tests that run it in CI.
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT / "tests" / "chaos"))
from crash_harness import seed_from_env
from harness import Chaos, ChaosConfig, Summary

# Seeds of run i: seed * 1_000_000 + i, so one failing run replays alone (--first i --runs 1).
SEED_STRIDE = 1_000_000


def note(message: str) -> None:
    """One progress line on stderr."""
    print(f"[chaos] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="seeded runs (default 100)")
    parser.add_argument("--seed", type=int, default=None,
                        help="base seed (default: DSPEX_CRASH_SEED, else random; printed)")
    parser.add_argument("--first", type=int, default=0,
                        help="index of the first run (to replay run i: --first i --runs 1)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop starting runs after this long (default: no limit)")
    parser.add_argument("--restart-share", type=float, default=0.25,
                        help="share of runs that SIGKILL and restart the server (default 0.25)")
    parser.add_argument("--ops", type=int, default=25, help="operations per writer per run")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.ops < 1 or args.first < 0:
        parser.error("--runs and --ops must be at least 1, --first not negative")
    if not 0.0 <= args.restart_share <= 1.0:
        parser.error("--restart-share must be in [0, 1]")
    return args


async def run_all(args: argparse.Namespace, seed: int, workdir: Path) -> Summary:
    summary = Summary()
    stop_at = time.monotonic() + args.minutes * 60 if args.minutes else float("inf")
    async with trio.open_nursery() as nursery:
        chaos = await Chaos.start(workdir, nursery)
        try:
            for i in range(args.first, args.first + args.runs):
                if time.monotonic() > stop_at:
                    note(f"--minutes {args.minutes} reached after {summary.runs} runs")
                    break
                config = ChaosConfig(seed=seed * SEED_STRIDE + i, ops=args.ops,
                                     restart_share=args.restart_share)
                result = await chaos.run(config)
                summary.add(result)
                for violation in result.verdict.violations[:10]:
                    note(f"run {i} (seed {config.seed}) {violation.kind}: {violation.text}")
                if summary.runs % 50 == 0:
                    note(summary.line())
        finally:
            await chaos.stop()
            nursery.cancel_scope.cancel()
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Every fault makes the clients log reconnects; only errors stay.
    quiet_logging(logging.ERROR)
    seed = args.seed if args.seed is not None else seed_from_env()
    note(f"seed {seed}, {args.runs} runs from {args.first}")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dspex-rx-chaos-") as tmp:
        summary = trio.run(run_all, args, seed, Path(tmp))
    seconds = time.monotonic() - began
    note(summary.line())
    emit({
        "bench": "chaos", "seed": seed, "runs": summary.runs, "seconds": round(seconds, 1),
        "cuts": summary.faults["cut"], "delays": summary.faults["delay"],
        "black_holes": summary.faults["black_hole"], "restarts": summary.restarts,
        "acked": summary.acked, "deliveries": summary.deliveries, "resyncs": summary.resyncs,
        "violations": dict(summary.violations), "failed_seeds": summary.failed_seeds[:20],
        "passed": not summary.failed_seeds,
    })
    if summary.failed_seeds:
        note(f"FAILED: replay one with --seed {seed} --first <i> --runs 1")
    return 1 if summary.failed_seeds else 0


if __name__ == "__main__":
    raise SystemExit(main())
