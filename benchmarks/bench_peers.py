"""Owns the peers benchmark (issue #18): dspex-rx (stream and unary call paths) beside raw
etcd and Redis in one run, with the issue's four goals as ratios measured in that run.

It starts everything it measures on loopback (free ports, temp dirs) and stops it after,
also on failure or Ctrl-C: a ``dspex-rx serve --storage memory`` child (``--storage sqlite``
for the durable store; _common), one etcd
member (tests/etcd_service.py) and one ``redis-server`` (_peers.py). A peer that is not
installed is skipped with a line on stderr. dspex-rx is driven from one trio program,
through ``dspex_rx.connect(target, pipelined=True)`` ("stream") and ``pipelined=False``
("unary"); where ``connect`` has no ``pipelined`` yet, only the unary path runs (said on
stderr; no stream rows). etcd (bench_etcd_raw.py's grpc.aio calls) and Redis (redis-py's
asyncio client) run on an asyncio loop thread; their timings are taken on that loop.

Figures (JSON lines on stdout, progress on stderr); repeats interleave the systems, each
figure is the median run:

* ``{"bench": "peers", "op": "write"|"read", "mode": "sequential"|"concurrent"}``: calls/s
  per system and path. write: set_variable / etcd Put / Redis SET; read:
  get_variable(bypass_cache=True) / etcd Range / Redis GET. ``concurrent`` is
  ``--concurrency`` (32) tasks, each on a variable or key of its own.
* ``{"bench": "peers", "op": "cached_read"}``: get_variable of a watched variable, from the
  client cache, one at a time.
* ``{"bench": "peers_watch"}``: write -> another client's watcher, median and p99 ms, one
  write at a time (samples of every repeat pooled).
* ``{"bench": "peers_ratio"}``: the issue's four goals as ratios, with ``goal`` and ``met``.
* ``{"bench": "environment"}`` with the peers' versions and what was skipped.

Run::

    .venv/bin/python benchmarks/bench_peers.py            # full, about 3 min on 2 cores
    .venv/bin/python benchmarks/bench_peers.py --quick    # smoke run, about 10 s
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    percentile,
    quiet_logging,
    run_concurrent,
    run_sequential,
    server_process,
)
from _peers import (
    EtcdPeer,
    PeerUnavailable,
    RedisPeer,
    etcd_service,
    redis_binary,
    redis_server,
    redis_version,
)
from bench_etcd_raw import etcd_version

import dspex_rx
from dspex_rx.client.actors import VariableUpdate
from dspex_rx.client.transport import LoopThread

note = make_note("bench_peers")
WAIT_TIMEOUT = 30.0  # seconds one expected observer callback may take before the run fails
OPS = ("write", "read")
# The goals: (name, numerator, denominator, goal, higher is better).
GOALS = (
    ("writes_32_in_flight_vs_etcd_put", ("write", "concurrent"), ("etcd", "write",
                                                                  "concurrent"), 1.0, True),
    ("write_to_watcher_median_vs_etcd_put_to_watch", "watch", ("etcd", "watch"), 1.0, False),
    ("sequential_get_vs_etcd_get", ("read", "sequential"), ("etcd", "read", "sequential"),
     1.0, True),
    ("cached_read_vs_redis_get", ("cached_read", "sequential"), ("redis", "read",
                                                                 "sequential"), 20.0, True),
)


# ----------------------------------------------------------------------------- dspex-rx


@dataclass
class DspexPath:
    """One call path: connection ``a`` writes and reads, ``b`` (its own connection, the same
    session) watches."""

    path: str
    a: dspex_rx.SessionContext
    b: dspex_rx.SessionContext
    values: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    name = "dspex-rx"
    calls = {"write": "set_variable", "read": "get_variable(bypass_cache=True)"}
    watch = ("connection A set_variable -> connection B (same session) "
             "observe(name).subscribe(callback); one write at a time, the next once it arrived")

    def op(self, op: str, per_task: int) -> Op:
        """Call ``i`` works on variable ``v{i // per_task}`` (run_concurrent's split)."""
        a, values = self.a, self.values
        if op == "write":
            async def write(i: int) -> Any:
                return await a.set_variable(f"v{i // per_task}", float(next(values)))
            return write

        async def read(i: int) -> Any:
            return await a.get_variable(f"v{i // per_task}", bypass_cache=True)
        return read

    async def rate(self, op: str, mode: str, calls: int, concurrency: int) -> float:
        if mode == "sequential":
            return await run_sequential(self.op(op, calls), calls)
        return await run_concurrent(self.op(op, calls // concurrency), calls, concurrency)

    async def latencies(self, samples: int, warmup: int) -> list[float]:
        """Seconds from just before A's set_variable to B's observer callback for that
        version (bench_reactive.py's set -> observer measure)."""
        arrivals: dict[int, float] = {}
        wanted = [0]
        arrived = [trio.Event()]

        def on_update(update: VariableUpdate) -> None:
            arrivals[update.version] = time.perf_counter()
            if update.version >= wanted[0]:
                arrived[0].set()

        subscription = self.b.observe("probe", include_initial=False).subscribe(on_update)
        latencies: list[float] = []
        try:
            await self.b.sync()  # the watch is in force on the server before the first write
            for i in range(warmup + samples):
                start = time.perf_counter()
                version = await self.a.set_variable("probe", float(next(self.values)))
                if version not in arrivals:
                    wanted[0], arrived[0] = version, trio.Event()
                    with trio.fail_after(WAIT_TIMEOUT):
                        await arrived[0].wait()
                if i >= warmup:
                    latencies.append(arrivals[version] - start)
        finally:
            subscription.dispose()
        return latencies

    async def cached_rate(self, calls: int) -> float:
        """Seconds for ``calls`` get_variable calls of the watched ``cached`` variable."""
        a = self.a
        start = time.perf_counter()
        for _ in range(calls):
            await a.get_variable("cached")
        return time.perf_counter() - start


async def open_path(target: str, path: str, options: dict[str, Any], concurrency: int,
                    stack: contextlib.AsyncExitStack) -> DspexPath:
    """Connections A and B (B joins A's session) with ``options``, and the variables the
    rows use: ``v0`` .. ``v{concurrency - 1}``, ``probe`` (watched) and ``cached``."""
    a = await stack.enter_async_context(dspex_rx.connect(
        target, client_name=f"bench_peers-{path}-a", **options))
    b = await stack.enter_async_context(dspex_rx.connect(
        target, session_id=a.session_id, token=a.token, client_name=f"bench_peers-{path}-b",
        **options))
    await a.register_variables(
        [{"name": f"v{t}", "type": "float", "initial_value": 0.0} for t in range(concurrency)]
        + [{"name": n, "type": "float", "initial_value": 0.0} for n in ("probe", "cached")])
    return DspexPath(path, a, b)


async def open_paths(target: str, concurrency: int,
                     stack: contextlib.AsyncExitStack) -> list[DspexPath]:
    """The stream and unary paths; the unary one only where ``pipelined`` is unknown."""
    try:
        stream = await open_path(target, "stream", {"pipelined": True}, concurrency, stack)
    except TypeError as unknown:
        if "pipelined" not in str(unknown):
            raise
        note(f"the stream path is not available ({unknown}): measuring the unary path only, "
             "no stream rows")
        return [await open_path(target, "unary", {}, concurrency, stack)]
    return [stream, await open_path(target, "unary", {"pipelined": False}, concurrency, stack)]


# ----------------------------------------------------------------------------- peers


class AsyncioPeer:
    """A peer whose client lives on the loop thread, seen from trio."""

    def __init__(self, peer: EtcdPeer | RedisPeer, loop: LoopThread) -> None:
        self.peer, self.loop = peer, loop
        self.name, self.calls, self.watch = peer.name, peer.calls, peer.watch
        self.path = "raw"

    async def _run(self, make: Callable[[], Any]) -> Any:
        return await self.loop.run(make)

    async def open(self) -> None:
        await self._run(self.peer.open)

    async def close(self) -> None:
        await self._run(self.peer.close)

    async def rate(self, op: str, mode: str, calls: int, concurrency: int) -> float:
        result: float = await self._run(lambda: self.peer.rate(op, mode, calls, concurrency))
        return result

    async def latencies(self, samples: int, warmup: int) -> list[float]:
        result: list[float] = await self._run(lambda: self.peer.latencies(samples, warmup))
        return result


System = DspexPath | AsyncioPeer


def label(system: System) -> str:
    """The key of a system in the results: ``"dspex-rx/stream"``, ``"etcd/raw"``..."""
    return f"{system.name}/{system.path}"


# ----------------------------------------------------------------------------- measuring


@dataclass
class Results:
    """Every run's figure: calls/s per (system, op, mode), latencies per system and repeat."""

    rates: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    latencies: dict[str, list[list[float]]] = field(default_factory=dict)

    def add_rate(self, key: tuple[str, str, str], rate: float) -> None:
        self.rates.setdefault(key, []).append(rate)

    def rate(self, key: tuple[str, str, str]) -> float | None:
        runs = self.rates.get(key)
        return statistics.median(runs) if runs else None

    def watch_median(self, who: str) -> float | None:
        runs = self.latencies.get(who)
        return statistics.median(itertools.chain(*runs)) if runs else None


async def warm_up(systems: list[System], args: argparse.Namespace) -> None:
    """``--warmup`` calls per system, op and mode, before anything is timed."""
    note(f"warm-up: {args.warmup} calls per system, op and mode")
    warm = max(args.concurrency, args.warmup // args.concurrency * args.concurrency)
    for system in systems:
        for op in OPS:
            await system.rate(op, "sequential", args.warmup, args.concurrency)
            await system.rate(op, "concurrent", warm, args.concurrency)


async def measure(systems: list[System], dspex: list[DspexPath],
                  args: argparse.Namespace) -> Results:
    """Every row, ``--repeats`` times, the systems interleaved within each row."""
    results = Results()
    modes = {"sequential": args.calls, "concurrent": args.concurrent_calls}
    for repeat in range(args.repeats):
        tag = f"repeat {repeat + 1}/{args.repeats}"
        for mode, calls in modes.items():
            for op in OPS:
                for system in systems:
                    gc.collect()
                    taken = await system.rate(op, mode, calls, args.concurrency)
                    results.add_rate((label(system), op, mode), calls / taken)
                    note(f"{tag} {mode:<10} {op:<5} {label(system):<15} "
                         f"{calls / taken:9.0f} calls/s")
        gc.collect()
        taken = await dspex[0].cached_rate(args.cached_reads)
        results.add_rate(("dspex-rx/cache", "cached_read", "sequential"),
                         args.cached_reads / taken)
        note(f"{tag} cached read dspex-rx/cache {args.cached_reads / taken:9.0f} calls/s")
        for system in systems:
            gc.collect()
            lat = await system.latencies(args.latency_samples, args.latency_warmup)
            results.latencies.setdefault(label(system), []).append(lat)
            note(f"{tag} write -> watcher {label(system):<15} median "
                 f"{statistics.median(lat) * 1000:.3f} ms, p99 {percentile(lat, 99) * 1000:.3f} ms")
    return results


def records(systems: list[System], results: Results,
            args: argparse.Namespace) -> list[dict[str, Any]]:
    """The figures and the goal ratios, as JSON-ready records."""
    out: list[dict[str, Any]] = []
    modes = {"sequential": args.calls, "concurrent": args.concurrent_calls}
    peer_names = [s.name for s in systems if isinstance(s, AsyncioPeer)]
    for op in OPS:
        for mode, calls in modes.items():
            for system in systems:
                runs = results.rates[(label(system), op, mode)]
                record = {
                    "bench": "peers", "system": system.name, "path": system.path, "op": op,
                    "call": system.calls[op], "mode": mode,
                    "in_flight": 1 if mode == "sequential" else args.concurrency,
                    "calls": calls, "repeats": args.repeats,
                    "calls_per_s": round(statistics.median(runs), 1),
                    "runs_calls_per_s": [round(r, 1) for r in runs],
                }
                if isinstance(system, DspexPath):  # ours / each peer's, same op and mode
                    for peer in peer_names:
                        theirs = results.rate((f"{peer}/raw", op, mode))
                        record[f"ratio_to_{peer}"] = round(statistics.median(runs) / theirs, 3)
                out.append(record)
    cached = results.rates[("dspex-rx/cache", "cached_read", "sequential")]
    out.append({
        "bench": "peers", "system": "dspex-rx", "path": "cache", "op": "cached_read",
        "call": "get_variable of a watched variable (pinned client-cache entry)",
        "mode": "sequential", "in_flight": 1, "calls": args.cached_reads,
        "repeats": args.repeats, "calls_per_s": round(statistics.median(cached), 1),
        "runs_calls_per_s": [round(r, 1) for r in cached],
    })
    for system in systems:
        runs = results.latencies[label(system)]
        ms = [s * 1000 for s in itertools.chain(*runs)]
        record = {
            "bench": "peers_watch", "system": system.name, "path": system.path,
            "what": system.watch, "samples": len(ms), "repeats": args.repeats,
            "median_ms": round(statistics.median(ms), 3),
            "p99_ms": round(percentile(ms, 99), 3), "max_ms": round(max(ms), 3),
            "runs_median_ms": [round(statistics.median(r) * 1000, 3) for r in runs],
        }
        if isinstance(system, DspexPath):  # median / each peer's median: below 1 is faster
            for peer in peer_names:
                theirs = results.watch_median(f"{peer}/raw")
                record[f"ratio_to_{peer}"] = round(statistics.median(ms) / 1000 / theirs, 3)
        out.append(record)
    out.extend(ratios(systems, results))
    return out


def ratios(systems: list[System], results: Results) -> list[dict[str, Any]]:
    """The issue's goals for each dspex-rx path measured, where the peer was measured."""
    out = []
    paths = [s.path for s in systems if isinstance(s, DspexPath)]
    for name, ours, theirs, goal, higher in GOALS:
        for path in ["cache"] if ours == ("cached_read", "sequential") else paths:
            if ours == "watch":
                num, den = (results.watch_median(f"dspex-rx/{path}"),
                            results.watch_median(f"{theirs[0]}/raw"))
                unit = "median ms"
                num, den = (None if v is None else v * 1000 for v in (num, den))
            else:
                num = results.rate((f"dspex-rx/{path}", *ours))
                den = results.rate((f"{theirs[0]}/raw", *theirs[1:]))
                unit = "calls/s"
            if num is None or den is None:
                note(f"no {name} ratio for {path}: {theirs[0]} was not measured")
                continue
            ratio = num / den
            out.append({
                "bench": "peers_ratio", "goal_name": name, "path": path,
                "ours": round(num, 3), "theirs": round(den, 3), "unit": unit,
                "ratio": round(ratio, 3), "goal": f"{'>=' if higher else '<='} {goal}",
                "met": ratio >= goal if higher else ratio <= goal,
            })
    return out


async def client_main(target: str, peers: list[EtcdPeer | RedisPeer],
                      args: argparse.Namespace) -> None:
    """Open every system, warm up, measure, check the cached reads hit, print the figures."""
    # The peers' asyncio clients run on the client's own loop thread (the transport's
    # LoopThread), timed on that loop while trio waits.
    loop = LoopThread("peers-asyncio")
    await loop.open()
    try:
        async with contextlib.AsyncExitStack() as stack:
            dspex = await open_paths(target, args.concurrency, stack)
            others = [AsyncioPeer(peer, loop) for peer in peers]
            for peer in others:
                await peer.open()
                stack.push_async_callback(peer.close)
            watch = dspex[0].a.watch_variable("cached")  # pushed and pinned: reads hit the cache
            stack.callback(watch.cancel)
            await dspex[0].a.sync()
            systems: list[System] = [*dspex, *others]
            await warm_up(systems, args)
            await dspex[0].cached_rate(args.warmup)
            before = await dspex[0].a.get_variable_stats("cached")
            results = await measure(systems, dspex, args)
            after = await dspex[0].a.get_variable_stats("cached")
            misses = after["cache_misses"] - before["cache_misses"]
            if misses:
                raise AssertionError(f"{misses} cached reads missed the client cache")
            for record in records(systems, results, args):
                emit(record)
    finally:
        await loop.close()


# ----------------------------------------------------------------------------- cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--quick`` sets small counts (a flag given beside it wins for
    ``--concurrent-calls``, ``--repeats`` and ``--warmup``)."""
    parser = argparse.ArgumentParser(
        description="dspex-rx (stream and unary paths) beside raw etcd and Redis in one run: "
        "writes/s and reads/s (sequential, 32 in flight), write -> watcher latency, cached "
        "reads, and the issue #18 goals as ratios. One JSON line per figure.",
    )
    add_rate_flags(parser, calls=2000, factor=4, warmup_divisor=5, repeats=None,
                   warmup_per="system, op and mode")
    parser.add_argument("--latency-samples", type=int, default=1000,
                        help="writes timed to the watcher per system and repeat (default 1000)")
    parser.add_argument("--cached-reads", type=int, default=100_000,
                        help="cached get_variable calls per repeat (default 100000)")
    parser.add_argument("--storage", choices=("memory", "sqlite"), default="memory",
                        help="the dspex-rx server's storage (default memory; sqlite is the "
                        "product's default and durable, as etcd's writes are)")
    parser.add_argument("--no-etcd", action="store_true", help="skip etcd")
    parser.add_argument("--no-redis", action="store_true", help="skip Redis")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 200 sequential / 320 concurrent calls, 100 latency "
                        "samples, 10000 cached reads, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.latency_samples, args.cached_reads = 200, 100, 10_000
        args.concurrent_calls = args.concurrent_calls or 320
        args.repeats = args.repeats or 1
        args.warmup = args.warmup or 32
    finish_rate_args(parser, args, factor=4, warmup_divisor=5, warmup_min=32,
                     positive=("latency_samples", "cached_reads"))
    args.latency_warmup = max(5, args.latency_samples // 10)
    return args


def main(argv: list[str] | None = None) -> int:
    """Start the server and the installed peers, run the benchmark, stop them all."""
    args = parse_args(argv)
    quiet_logging()
    env: dict[str, Any] = {**environment(), "skipped": {}, "storage": args.storage}
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(server_process(note, storage=args.storage))
        peers: list[EtcdPeer | RedisPeer] = []
        try:
            if args.no_etcd:
                raise PeerUnavailable("--no-etcd")
            binary = etcd_service.find_binary()
            workdir = Path(tempfile.mkdtemp(prefix="dspex-etcd-bench-"))
            member = stack.enter_context(etcd_service.running_member(workdir))
            note(f"etcd pid {member.pid} on {member.endpoint}, data in {member.data_dir}")
            env["etcd"] = etcd_version(binary)
            peers.append(EtcdPeer(member.endpoint))
        except (etcd_service.EtcdUnavailable, PeerUnavailable) as missing:
            note(f"skipping etcd: {missing}")
            env["skipped"]["etcd"] = str(missing)
        try:
            if args.no_redis:
                raise PeerUnavailable("--no-redis")
            binary = redis_binary()
            import redis

            port = stack.enter_context(redis_server(binary, note))
            env["redis"], env["redis_py"] = redis_version(binary), redis.__version__
            peers.append(RedisPeer(port))
        except PeerUnavailable as missing:
            note(f"skipping Redis: {missing}")
            env["skipped"]["redis"] = str(missing)
        emit(env)
        trio.run(client_main, target, peers, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
