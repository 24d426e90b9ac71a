"""Owns the raw etcd benchmark: what one Python process gets from etcd itself through
grpc.aio and dspex_rx.etcd_v3's stubs, the figures the etcd backend is measured against.

It starts its own etcd member (tests/etcd_service.py: one member on loopback, free ports, a
temp data dir, the etcd that ``make test`` installs) and stops it afterwards. One asyncio
program; the writes and reads share one channel, the watcher has a channel of its own.

Figures (JSON lines on stdout, progress on stderr):

* ``{"bench": "etcd_raw", "op": ..., "mode": ...}``: calls/s of ``put`` (one key per
  task), ``txn`` (one compare + one put: ``mod_revision(key) == the revision this task last
  wrote``, as the backend's commit will be; every one must succeed), and ``get`` (a
  linearizable ``Range`` of one key). ``sequential`` is one call at a time; ``concurrent``
  is ``--concurrency`` (32) asyncio tasks, each with its own key.
* ``{"bench": "etcd_raw_watch", ...}``: put -> watcher latency, from just before the
  ``Put`` call to the watcher receiving its event on its own channel, one put at a time;
  median and p99 in ms.
* ``{"bench": "environment", ...}`` with the etcd version.

Repeats interleave the ops; each calls/s figure is the median run.

Run::

    .venv/bin/python benchmarks/bench_etcd_raw.py            # full, about 30 s on 2 cores
    .venv/bin/python benchmarks/bench_etcd_raw.py --quick    # a few seconds, a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import (
    REPO_ROOT,
    add_rate_flags,
    emit,
    environment,
    finish_rate_args,
    make_note,
    percentile,
    quiet_logging,
    run_sequential,
)

# The etcd member the tests use, reused as they run it.
sys.path.insert(0, str(REPO_ROOT / "tests"))
import etcd_service

from dspex_rx.etcd_v3 import rpc_pb2

note = make_note("bench_etcd_raw")
# About what one set_variable will store: a small encoded record.
PAYLOAD = bytes(64)
Op = Callable[[int], Awaitable[Any]]
Compare = rpc_pb2.Compare


async def run_concurrent(make_op: Callable[[int], Op], calls: int, concurrency: int) -> float:
    """Seconds for ``calls`` calls over ``concurrency`` asyncio tasks, task ``t`` calling
    ``make_op(t)`` (``calls`` divisible by ``concurrency``)."""
    per_task = calls // concurrency

    async def worker(op: Op, offset: int) -> None:
        for i in range(offset, offset + per_task):
            await op(i)

    ops = [make_op(task) for task in range(concurrency)]
    start = time.perf_counter()
    await asyncio.gather(*(worker(op, t * per_task) for t, op in enumerate(ops)))
    return time.perf_counter() - start


class Ops:
    """The measured calls; each factory gives task ``t`` an op on a key of its own."""

    def __init__(self, etcd: etcd_service.Stubs) -> None:
        self.kv = etcd.kv
        self.txn_revisions: dict[bytes, int] = {}
        self.txn_refused = 0

    def put(self, task: int) -> Op:
        request = rpc_pb2.PutRequest(key=b"bench/put/%d" % task, value=PAYLOAD)

        async def op(i: int) -> Any:
            return await self.kv.Put(request)

        return op

    def get(self, task: int) -> Op:
        request = rpc_pb2.RangeRequest(key=b"bench/put/%d" % task)

        async def op(i: int) -> Any:
            return await self.kv.Range(request)

        return op

    def txn(self, task: int) -> Op:
        key = b"bench/txn/%d" % task
        put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=PAYLOAD))

        async def op(i: int) -> Any:
            compare = Compare(key=key, target=Compare.MOD, result=Compare.EQUAL,
                              mod_revision=self.txn_revisions.get(key, 0))
            answer = await self.kv.Txn(rpc_pb2.TxnRequest(compare=[compare], success=[put]))
            if answer.succeeded:
                self.txn_revisions[key] = answer.header.revision
            else:
                self.txn_refused += 1
            return answer

        return op


async def watch_latency(endpoint: str, kv: Any, samples: int) -> list[float]:
    """Seconds from just before each ``Put`` to the watcher (own channel) seeing it."""
    prefix = b"bench/latency/"
    sent: dict[int, float] = {}
    seen: dict[int, float] = {}
    async with etcd_service.stubs(endpoint) as watcher:
        stream = watcher.watch.Watch()
        await stream.write(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=prefix, range_end=prefix[:-1] + b"0")))
        created = await stream.read()
        assert created.created, created
        done = asyncio.Event()

        async def listen() -> None:
            while len(seen) < samples:
                response = await stream.read()
                now = time.perf_counter()
                for event in response.events:
                    seen[event.kv.mod_revision] = now
            done.set()

        listener = asyncio.create_task(listen())
        try:
            for i in range(samples):
                before = time.perf_counter()
                answer = await kv.Put(rpc_pb2.PutRequest(key=prefix + b"k", value=b"%d" % i))
                sent[answer.header.revision] = before
            await asyncio.wait_for(done.wait(), 30)
        finally:
            listener.cancel()
            stream.cancel()
    missing = sorted(set(sent) - set(seen))
    if missing:
        raise RuntimeError(f"the watcher missed {len(missing)} puts, first {missing[:5]}")
    return [seen[rev] - sent[rev] for rev in sent]


async def raw_figures(endpoint: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every raw etcd figure against ``endpoint``, as JSON-ready records (also for a
    script that measures the backend beside raw etcd in the same run)."""
    records: list[dict[str, Any]] = []
    async with etcd_service.stubs(endpoint) as etcd:
        ops = Ops(etcd)
        names = ("put", "txn", "get")
        modes = {"sequential": args.calls, "concurrent": args.concurrent_calls}
        note(f"warm-up: {args.warmup} calls per op and mode")
        for name in names:
            factory = getattr(ops, name)
            await run_sequential(factory(0), args.warmup)
            warm = max(args.concurrency, args.warmup // args.concurrency * args.concurrency)
            await run_concurrent(factory, warm, args.concurrency)

        seconds: dict[tuple[str, str], list[float]] = {}
        for repeat in range(args.repeats):
            for mode, calls in modes.items():
                for name in names:
                    factory = getattr(ops, name)
                    gc.collect()
                    if mode == "sequential":
                        taken = await run_sequential(factory(0), calls)
                    else:
                        taken = await run_concurrent(factory, calls, args.concurrency)
                    seconds.setdefault((name, mode), []).append(taken)
                    note(f"repeat {repeat + 1}/{args.repeats} {mode:<10} {name:<4} "
                         f"{calls / taken:8.0f} calls/s")
        if ops.txn_refused:
            raise RuntimeError(f"{ops.txn_refused} txns were refused: their compare failed")
        for mode, calls in modes.items():
            for name in names:
                runs = seconds[(name, mode)]
                records.append({
                    "bench": "etcd_raw", "op": name, "mode": mode,
                    "in_flight": 1 if mode == "sequential" else args.concurrency,
                    "calls": calls, "repeats": args.repeats,
                    "seconds": round(statistics.median(runs), 4),
                    "calls_per_s": round(calls / statistics.median(runs), 1),
                    "runs_calls_per_s": [round(calls / s, 1) for s in runs],
                })

        note(f"put -> watcher latency: {args.latency_samples} puts, one at a time")
        await watch_latency(endpoint, etcd.kv, max(10, args.latency_samples // 10))  # warm-up
        gc.collect()
        latencies = await watch_latency(endpoint, etcd.kv, args.latency_samples)
    ms = [s * 1000 for s in latencies]
    records.append({
        "bench": "etcd_raw_watch", "op": "put_to_watcher", "samples": len(ms),
        "median_ms": round(statistics.median(ms), 3), "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3), "max_ms": round(max(ms), 3),
        "watcher_channel": "own",
    })
    return records


def etcd_version(binary: str) -> str:
    """The first line of ``etcd --version`` ("etcd Version: 3.4.23" -> "3.4.23")."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0].split(":")[-1].strip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Raw etcd from one Python process (grpc.aio): put/txn/get calls/s, "
        "sequential and concurrent, and put -> watcher latency. One JSON line per figure.",
    )
    add_rate_flags(parser, calls=2000, factor=4, warmup_divisor=5)
    parser.add_argument("--latency-samples", type=int, default=2000,
                        help="puts timed to the watcher (default 2000)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="where etcd's member dir goes (default a temp dir; put it on "
                        "the disk a real etcd would use)")
    parser.add_argument("--quick", action="store_true",
                        help="short smoke run: 200 sequential / 640 concurrent, 200 latency "
                        "samples, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.repeats, args.latency_samples = 200, 1, 200
        args.concurrent_calls = args.concurrent_calls or 640
    finish_rate_args(parser, args, factor=4, warmup_divisor=5, positive=("latency_samples",))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logging()
    binary = etcd_service.find_binary()
    # The member removes its work dir (data and log) when it stops.
    workdir = Path(tempfile.mkdtemp(prefix="dspex-etcd-bench-", dir=args.data_dir))
    with etcd_service.running_member(workdir) as member:
        note(f"etcd pid {member.pid} on {member.endpoint}, data in {member.data_dir}")
        emit({**environment(), "etcd": etcd_version(binary),
              "etcd_progress_notify_interval": etcd_service.PROGRESS_NOTIFY_INTERVAL})
        for record in asyncio.run(raw_figures(member.endpoint, args)):
            emit(record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
