"""Owns the etcd A/B benchmark: set_variable writes/s and server CPU per write of this tree's
server against another tree's, both over one etcd member, in alternating short bursts.

Why a separate script: on the shared 2-core VM the machine's speed moves 15-40% between
back-to-back runs, more than most changes to the write path are worth, so two whole
``bench_replicas.py`` runs cannot tell them apart. Here both trees' servers run at once:
``--replicas`` (1) ``dspex-rx serve --storage etcd`` children per tree (``PYTHONPATH`` =
that tree), replicas of a prefix of the tree's own, and the client writes through them in
turn, ``--burst`` seconds each, the order swapped every round, so drift hits both alike;
the verdict is the median of the per-round ratios.

Figures (JSON lines on stdout, progress on stderr):

* ``{"bench": "etcd_ab", "tree": "this"|"baseline", "mode": "sequential"|"concurrent"}``:
  median writes/s over the rounds, its range, and the servers' CPU ms per write (median,
  summed over the tree's replicas, from ``/proc/<pid>/stat``). ``concurrent``:
  ``--concurrency`` (32) trio tasks, task ``t`` writing its own variable ``v<t>`` through
  replica ``t % replicas``; ``sequential``: one write of ``v0`` at a time, write ``i``
  through replica ``i % replicas``.
* ``{"bench": "etcd_ab_ratio", "mode": ...}``: this / baseline writes/s per round, and
  their median.

Run::

    .venv/bin/python benchmarks/bench_etcd_ab.py --baseline /work/main          # ~1 min
    .venv/bin/python benchmarks/bench_etcd_ab.py --baseline ../old --rounds 20 --burst 2
    .venv/bin/python benchmarks/bench_etcd_ab.py --baseline ../old --replicas 3
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import trio
from _common import (
    REPO_ROOT,
    emit,
    make_note,
    quiet_logging,
)
from bench_replicas import MAX_TXN_OPS, Topology, cpu_seconds, open_topology, server_children

# bench_etcd_raw (imported by bench_replicas) put tests/ on sys.path for this.
import etcd_service  # isort: skip

note = make_note("bench_etcd_ab")
MODES = ("sequential", "concurrent")


async def burst(top: Topology, tasks: int, seconds: float,
                pids: list[int]) -> tuple[float, float]:
    """Writes/s and the servers' CPU ms per write (summed over the replicas) over
    ``seconds`` of writes from ``tasks`` trio tasks: task ``t`` writes ``v<t>`` through
    replica ``t % replicas``, and one task alone sends write ``i`` to replica
    ``i % replicas``."""
    replicas = top.replicas
    op = top.op(lambda i: i % replicas, lambda i: f"v{i % tasks}")
    done = 0
    start, cpu = time.monotonic(), sum(cpu_seconds(pid) for pid in pids)

    async def writer(t: int) -> None:
        nonlocal done
        i = t
        while time.monotonic() - start < seconds:
            await op(i)
            i += tasks
            done += 1

    async with trio.open_nursery() as nursery:
        for t in range(tasks):
            nursery.start_soon(writer, t)
    taken = time.monotonic() - start
    used = sum(cpu_seconds(pid) for pid in pids) - cpu
    return done / taken, 1000 * used / max(done, 1)


async def client(targets: dict[str, tuple[list[str], list[int]]],
                 args: argparse.Namespace) -> None:
    async with contextlib.AsyncExitStack() as stack:
        tops = {tree: await open_topology(addresses, "ab/", args.concurrency, stack)
                for tree, (addresses, _) in targets.items()}
        tasks = {"sequential": 1, "concurrent": args.concurrency}
        for tree, top in tops.items():  # warm-up: sessions, channels, etcd's own caches
            for mode in MODES:
                await burst(top, tasks[mode], args.burst / 2, targets[tree][1])
        rates: dict[tuple[str, str], list[float]] = {}
        cpus: dict[tuple[str, str], list[float]] = {}
        for round_ in range(args.rounds):
            order = list(tops) if round_ % 2 == 0 else list(tops)[::-1]
            for mode in MODES:
                for tree in order:
                    rate, cpu = await burst(tops[tree], tasks[mode], args.burst,
                                            targets[tree][1])
                    rates.setdefault((tree, mode), []).append(rate)
                    cpus.setdefault((tree, mode), []).append(cpu)
            note(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
                f"{mode} {rates[('this', mode)][-1] / rates[('baseline', mode)][-1]:.2f}x"
                for mode in MODES))
    for mode in MODES:
        for tree in tops:
            runs = rates[(tree, mode)]
            emit({"bench": "etcd_ab", "tree": tree, "mode": mode, "replicas": args.replicas,
                  "rounds": args.rounds,
                  "burst_s": args.burst, "writes_per_s": round(statistics.median(runs), 1),
                  "min": round(min(runs), 1), "max": round(max(runs), 1),
                  "server_cpu_ms_per_write": round(statistics.median(cpus[(tree, mode)]), 3)})
        ratios = [a / b for a, b in zip(rates[("this", mode)], rates[("baseline", mode)],
                                        strict=True)]
        emit({"bench": "etcd_ab_ratio", "mode": mode, "replicas": args.replicas,
              "median": round(statistics.median(ratios), 3),
              "per_round": [round(r, 3) for r in ratios]})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, type=Path, metavar="TREE",
                        help="the dspex-rx tree to compare this one with")
    parser.add_argument("--rounds", type=int, default=10, help="rounds (default 10)")
    parser.add_argument("--burst", type=float, default=1.0,
                        help="seconds per tree, mode and round (default 1)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="writes in flight in the concurrent mode (default 32)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="servers per tree, replicas of one prefix (default 1)")
    args = parser.parse_args(argv)
    if not (args.baseline / "dspex_rx").is_dir():
        parser.error(f"--baseline {args.baseline} holds no dspex_rx package")
    if args.rounds < 1 or args.burst <= 0 or args.concurrency < 1 or args.replicas < 1:
        parser.error("--rounds, --burst, --concurrency and --replicas must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logging()
    with tempfile.TemporaryDirectory(prefix="dspex-etcd-ab-") as tmp:
        workdir = Path(tmp)
        with etcd_service.running_member(
            workdir / "etcd", extra_args=["--max-txn-ops", str(MAX_TXN_OPS)]
        ) as member, server_children(
            member.endpoint, f"ab-this-{uuid.uuid4().hex[:8]}/", args.replicas, "this",
        ) as this, server_children(
            member.endpoint, f"ab-baseline-{uuid.uuid4().hex[:8]}/", args.replicas,
            "baseline", tree=args.baseline.resolve(),
        ) as base:
            note(f"etcd {member.endpoint}; this tree {REPO_ROOT} (pids {this[1]}), "
                 f"baseline {args.baseline} (pids {base[1]})")
            targets = {"this": this, "baseline": base}
            trio.run(client, targets, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
