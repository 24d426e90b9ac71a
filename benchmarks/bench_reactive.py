"""Owns the reactive-client benchmark: cached reads, set->observer latency, events/s to a
watcher under a burst, and client memory per watched variable.

The server runs in a separate process (``python -m dspex_rx.server.cli serve --port 0``); the client
is one trio program. Figures that need a writer and a watcher use two connections attached
to the same server session (the second ``connect`` passes the first one's ``session_id``),
so the write travels A -> server -> B's Session stream -> B's variable actor -> observer.
Each figure is one JSON line on stdout; progress goes to stderr.

Figures:

* ``{"bench": "cached_read"}``: ``get_variable`` of a watched variable (pushed, pinned cache
  entry) vs ``get_variable(..., bypass_cache=True)``; ``ratio`` = cached / uncached calls/s,
  goal >= 50.
* ``{"bench": "set_to_observer"}``: time from just before A's ``set_variable`` to B's
  observer callback for that version, one write in flight, against the Echo round trip
  measured interleaved with it; ``ratio_median`` = latency median / echo median, goal <= 2.
* ``{"bench": "burst"}``: events/s delivered to one watcher while a writer writes as fast as
  it can with ``--concurrency`` calls in flight (``set_variable`` of one variable, and
  ``update_variables`` of ``--burst-vars`` variables per call), through actors + ``observe``
  and through a bare ``Transport.open_stream`` reader that only counts; versions skipped
  (conflated) are counted, and the trio-thread time spent dispatching each event.
  ``ratio_to_raw`` = actor / raw events/s. No goal: see the README.
* ``{"bench": "memory"}``: ``tracemalloc`` bytes per idle watched variable on the client with
  ``--variables`` (10,000) observers (goal <= 2048), and per cached entry without observers;
  each with the bytes by package and the top 10 allocation sites (filename:lineno).
* ``{"bench": "environment"}``.

Run::

    .venv/bin/python benchmarks/bench_reactive.py            # full, 75-95 s on 2 cores
    .venv/bin/python benchmarks/bench_reactive.py --quick    # smoke run, about 10 s
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sysconfig
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from _common import (
    REPO_ROOT,
    emit,
    make_note,
    percentile,
    require_positive,
    run_benchmark,
)

import dspex_rx
from dspex_rx.client.actors import VariableUpdate
from dspex_rx.client.transport import Transport
from dspex_rx.server import SERVICE_NAME, grpc_options
from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.wire.security import token_metadata

GOAL_CACHED_RATIO = 50.0
GOAL_LATENCY_RATIO = 2.0
GOAL_BYTES_PER_WATCH = 2048
REGISTER_BATCH = 1000
WAIT_TIMEOUT = 60.0  # seconds an expected event may take before the run fails
STDLIB = Path(sysconfig.get_paths()["stdlib"])
TRACE_FRAMES = 4  # enough to find the package behind an allocation, cheap enough to run

note = make_note("bench_reactive")


def rnd(value: float, digits: int = 1) -> float:
    return round(value, digits)


# ----------------------------------------------------------------------------- 1. cached reads


async def bench_cached_read(
    session: dspex_rx.SessionContext, args: argparse.Namespace
) -> dict[str, Any]:
    name = "cached_temperature"
    var_id = await session.register_variable(
        name, "float", 0.7, constraints={"min": 0.0, "max": 2.0}
    )
    watch = session.watch_variable(name)  # keeps the entry pushed and pinned
    try:
        await session.sync()
        if not session.cache.is_pinned(var_id):
            raise AssertionError("the watched variable's cache entry is not pinned")

        async def cached(calls: int) -> float:
            start = time.perf_counter()
            for _ in range(calls):
                await session.get_variable(name)
            return time.perf_counter() - start

        async def uncached(calls: int) -> float:
            start = time.perf_counter()
            for _ in range(calls):
                await session.get_variable(name, bypass_cache=True)
            return time.perf_counter() - start

        await cached(args.warmup)
        await uncached(args.warmup)
        before = await session.get_variable_stats(name)
        runs: dict[str, list[float]] = {"cached": [], "uncached": []}
        for repeat in range(args.repeats):  # interleaved, so drift hits both alike
            for label, fn, calls in (
                ("cached", cached, args.cached_reads),
                ("uncached", uncached, args.uncached_reads),
            ):
                gc.collect()
                taken = await fn(calls)
                runs[label].append(calls / taken)
                note(f"repeat {repeat + 1}/{args.repeats} {label:<8} get_variable "
                     f"{calls / taken:10.0f} calls/s")
        after = await session.get_variable_stats(name)
    finally:
        watch.cancel()

    hits = after["cache_hits"] - before["cache_hits"]
    misses = after["cache_misses"] - before["cache_misses"]
    if hits != args.cached_reads * args.repeats or misses != args.uncached_reads * args.repeats:
        raise AssertionError(f"unexpected cache counters: {hits} hits, {misses} misses")
    cached_rate = statistics.median(runs["cached"])
    uncached_rate = statistics.median(runs["uncached"])
    ratio = cached_rate / uncached_rate
    return {
        "bench": "cached_read",
        "op": "get_variable",
        "variable": "watched float (pinned entry)",
        "cached_calls": args.cached_reads,
        "uncached_calls": args.uncached_reads,
        "repeats": args.repeats,
        "cached_calls_per_s": rnd(cached_rate),
        "uncached_calls_per_s": rnd(uncached_rate),
        "runs_cached_calls_per_s": [rnd(r) for r in runs["cached"]],
        "runs_uncached_calls_per_s": [rnd(r) for r in runs["uncached"]],
        "cached_us_per_call": rnd(1e6 / cached_rate, 2),
        "uncached_us_per_call": rnd(1e6 / uncached_rate, 1),
        "cache_hits": hits,
        "cache_misses": misses,
        "ratio": rnd(ratio, 1),
        "goal": GOAL_CACHED_RATIO,
        "meets_goal": ratio >= GOAL_CACHED_RATIO,
    }


# ----------------------------------------------------------------------------- 2. latency


async def bench_latency(
    writer: dspex_rx.SessionContext,
    watcher: dspex_rx.SessionContext,
    args: argparse.Namespace,
) -> dict[str, Any]:
    name = "latency_probe"
    await writer.register_variable(name, "float", 0.0)
    arrivals: dict[int, float] = {}
    wanted = 0
    arrived = trio.Event()

    def on_update(update: VariableUpdate) -> None:
        arrivals[update.version] = time.perf_counter()
        if update.version >= wanted:
            arrived.set()

    subscription = watcher.observe(name, include_initial=False).subscribe(on_update)
    latencies: list[float] = []
    echoes: list[float] = []
    before_return = 0
    try:
        await watcher.sync()  # the watch is in force on the server before the first write
        total = args.warmup + args.latency_samples
        for i in range(total):
            start = time.perf_counter()
            await writer.ping()
            echo = time.perf_counter() - start

            start = time.perf_counter()
            version = await writer.set_variable(name, float(i + 1))
            returned = time.perf_counter()
            if version not in arrivals:
                wanted, arrived = version, trio.Event()
                with trio.fail_after(WAIT_TIMEOUT):
                    await arrived.wait()
            if i >= args.warmup:
                echoes.append(echo)
                latencies.append(arrivals[version] - start)
                before_return += arrivals[version] <= returned
    finally:
        subscription.dispose()
    delivered = len(arrivals)
    if delivered != total or sorted(arrivals) != list(range(2, total + 2)):
        raise AssertionError(f"the observer saw {delivered} versions, expected {total}")

    def ms(seconds: float) -> float:
        return round(1000.0 * seconds, 3)

    median = statistics.median(latencies)
    echo_median = statistics.median(echoes)
    ratio = median / echo_median
    return {
        "bench": "set_to_observer",
        "writer": "connection A: set_variable, one in flight",
        "watcher": "connection B, same session: observe(name).subscribe(callback)",
        "samples": len(latencies),
        "latency_median_ms": ms(median),
        "latency_p99_ms": ms(percentile(latencies, 99)),
        "latency_max_ms": ms(max(latencies)),
        "echo_median_ms": ms(echo_median),
        "echo_p99_ms": ms(percentile(echoes, 99)),
        "arrived_before_set_returned": round(before_return / len(latencies), 3),
        "ratio_median": round(ratio, 3),
        "ratio_p99": round(percentile(latencies, 99) / percentile(echoes, 99), 3),
        "goal": GOAL_LATENCY_RATIO,
        "meets_goal": ratio <= GOAL_LATENCY_RATIO,
    }


# ----------------------------------------------------------------------------- 3. burst


@dataclass
class Tally:
    """What one watcher saw of a burst."""

    final: dict[str, int]  # variable id -> the version the burst ends at
    start: dict[str, int]  # variable id -> the version before the burst
    last: dict[str, int] = field(default_factory=dict)
    events: int = 0
    conflated_events: int = 0
    out_of_order: int = 0
    finished_at: float = 0.0
    dispatch_seconds: float = 0.0
    done: trio.Event = field(default_factory=trio.Event)
    remaining: int = field(init=False)  # variables not at their final version yet

    def __post_init__(self) -> None:
        self.remaining = len(self.final)

    def see(self, var_id: str, version: int, conflated: bool) -> None:
        self.events += 1
        self.conflated_events += conflated
        previous = self.last.get(var_id, self.start[var_id])
        if version <= previous:
            self.out_of_order += 1
            return
        self.last[var_id] = version
        if version >= self.final[var_id] > previous:
            self.remaining -= 1
            if self.remaining == 0:
                self.finished_at = time.perf_counter()
                self.done.set()

    def skipped(self) -> int:
        versions = sum(self.final[v] - self.start[v] for v in self.final)
        return versions - (self.events - self.out_of_order)


async def write_burst(
    writer: dspex_rx.SessionContext, names: Sequence[str], calls: int, concurrency: int
) -> tuple[float, float]:
    """``calls`` writes over ``concurrency`` tasks; each call writes every name once."""
    per_task = calls // concurrency

    async def task(offset: int) -> None:
        for i in range(offset, offset + per_task):
            value = float(i)
            if len(names) == 1:
                await writer.set_variable(names[0], value)
            else:
                results = await writer.update_variables({n: value for n in names})
                if not all(r is True for r in results.values()):
                    raise AssertionError(f"a burst write failed: {results}")

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for t in range(concurrency):
            nursery.start_soon(task, t * per_task)
    return start, time.perf_counter()


async def burst_actor(
    writer: dspex_rx.SessionContext,
    watcher: dspex_rx.SessionContext,
    names: Sequence[str],
    tally: Tally,
    calls: int,
    concurrency: int,
) -> tuple[float, float]:
    def on_update(update: VariableUpdate) -> None:
        tally.see(update.variable_id, update.version, update.conflated)

    subscriptions = [watcher.observe(n, include_initial=False).subscribe(on_update)
                     for n in names]
    # Instrumentation: the trio-thread time the watcher spends dispatching stream messages
    # (decode, actor, cache entry, observers), via an instance attribute over the method.
    hub: Any = watcher._hub
    handle = hub._handle

    def timed_handle(message: spb.ServerMessage) -> None:
        began = time.perf_counter()
        handle(message)
        tally.dispatch_seconds += time.perf_counter() - began

    hub._handle = timed_handle
    try:
        await watcher.sync()
        start, end = await write_burst(writer, names, calls, concurrency)
        with trio.fail_after(WAIT_TIMEOUT):
            await tally.done.wait()
    finally:
        del hub._handle
        for subscription in subscriptions:
            subscription.dispose()
        await watcher.sync()
    return start, end


async def burst_raw(
    target: str,
    writer: dspex_rx.SessionContext,
    names: Sequence[str],
    tally: Tally,
    calls: int,
    concurrency: int,
) -> tuple[float, float]:
    transport = Transport(target, grpc_options())
    await transport.open()
    try:
        stream = await transport.open_stream(
            f"/{SERVICE_NAME}/Session", spb.ServerMessage,
            metadata=token_metadata(writer.token),
        )
        try:
            await stream.send(spb.ClientMessage(
                open=spb.OpenStream(session_id=writer.session_id, client_id="bench-raw")
            ))
            await stream.send(spb.ClientMessage(subscribe=spb.Subscribe(
                request_id=1, refs=list(names), include_initial=False
            )))
            await stream.send(spb.ClientMessage(ping=spb.Ping(nonce=1)))
            while True:  # the pong comes after the Subscribed ack: the watch is in force
                batch = await stream.receive_batch()
                if batch is None:
                    raise RuntimeError("the raw stream ended before its pong")
                kinds = [m.WhichOneof("control") for m in batch]
                if "subscribed" in kinds and batch[kinds.index("subscribed")].subscribed.error:
                    raise RuntimeError(batch[kinds.index("subscribed")].subscribed.error)
                if "pong" in kinds:
                    break

            async def count() -> None:
                while not tally.done.is_set():
                    batch = await stream.receive_batch()
                    if batch is None:
                        raise RuntimeError("the raw stream ended during the burst")
                    began = time.perf_counter()
                    for message in batch:
                        for frame in message.frames:
                            conflated = frame.conflated
                            for event in frame.events:
                                tally.see(event.variable_id, event.version, conflated)
                    tally.dispatch_seconds += time.perf_counter() - began

            async with trio.open_nursery() as nursery:
                nursery.start_soon(count)
                start, end = await write_burst(writer, names, calls, concurrency)
                with trio.fail_after(WAIT_TIMEOUT):
                    await tally.done.wait()
        finally:
            await stream.close()
    finally:
        await transport.close()
    return start, end


async def bench_burst(
    target: str,
    writer: dspex_rx.SessionContext,
    watcher: dspex_rx.SessionContext,
    args: argparse.Namespace,
    write_op: str,
    names: list[str],
    calls: int,
) -> list[dict[str, Any]]:
    ids = await writer.register_variables(
        [{"name": n, "type": "float", "initial_value": 0.0} for n in names]
    )
    runs: dict[str, list[dict[str, Any]]] = {"actor": [], "raw": []}
    for repeat in range(args.repeats):
        for path in ("actor", "raw"):
            stats = await writer.get_variables(names, include_stats=True)
            start_versions = {ids[n]: stats[n]["stats"]["version"] for n in names}
            tally = Tally(
                final={v: s + calls for v, s in start_versions.items()}, start=start_versions
            )
            gc.collect()
            if path == "actor":
                began, wrote = await burst_actor(
                    writer, watcher, names, tally, calls, args.concurrency
                )
            else:
                began, wrote = await burst_raw(
                    target, writer, names, tally, calls, args.concurrency
                )
            if tally.out_of_order:
                raise AssertionError(f"{path}: {tally.out_of_order} events out of order")
            seconds = tally.finished_at - began
            run = {
                "seconds": seconds,
                "events": tally.events,
                "events_per_s": tally.events / seconds,
                "skipped": tally.skipped(),
                "conflated_events": tally.conflated_events,
                "writer_events_per_s": calls * len(names) / (wrote - began),
                "drain_lag_ms": 1000.0 * (tally.finished_at - wrote),
                "dispatch_us_per_event": 1e6 * tally.dispatch_seconds / max(tally.events, 1),
            }
            runs[path].append(run)
            note(f"repeat {repeat + 1}/{args.repeats} burst {write_op:<16} {path:<5} "
                 f"{run['events_per_s']:8.0f} events/s delivered, writer "
                 f"{run['writer_events_per_s']:8.0f}/s, skipped {run['skipped']}, "
                 f"dispatch {run['dispatch_us_per_event']:.1f} us/event")

    def median_run(items: list[dict[str, Any]]) -> dict[str, Any]:
        ordered = sorted(items, key=lambda r: r["events_per_s"])
        return ordered[(len(ordered) - 1) // 2]

    raw = median_run(runs["raw"])
    records = []
    for path in ("actor", "raw"):
        run = median_run(runs[path])
        dispatch = run["dispatch_us_per_event"]
        records.append({
            "bench": "burst",
            "write_op": write_op,
            "path": path,
            "watcher": (
                "observe() on connection B (actors, cache, rx)" if path == "actor"
                else "bare Transport.open_stream reader counting events"
            ),
            "variables": len(names),
            "events_per_write": len(names),
            "in_flight": args.concurrency,
            "events_written": calls * len(names),
            "repeats": args.repeats,
            "events_delivered": run["events"],
            "versions_skipped": run["skipped"],
            "conflated_events": run["conflated_events"],
            "seconds": round(run["seconds"], 4),
            "events_per_s": rnd(run["events_per_s"]),
            "runs_events_per_s": [rnd(r["events_per_s"]) for r in runs[path]],
            "writer_events_per_s": rnd(run["writer_events_per_s"]),
            "drain_lag_ms": round(run["drain_lag_ms"], 2),
            "dispatch_us_per_event": round(dispatch, 2),
            "dispatch_capacity_events_per_s": rnd(1e6 / dispatch) if dispatch else None,
            "ratio_to_raw": round(run["events_per_s"] / raw["events_per_s"], 3),
            "goal": None,
            "meets_goal": None,
        })
    return records


# ----------------------------------------------------------------------------- 4. memory


def _where(stat: tracemalloc.Statistic) -> str:
    frame = stat.traceback[0]
    path = Path(frame.filename)
    text = str(path)
    if "site-packages" in path.parts:
        text = "/".join(path.parts[path.parts.index("site-packages") + 1:])
    elif path.is_relative_to(REPO_ROOT):
        text = str(path.relative_to(REPO_ROOT))
    elif path.is_relative_to(STDLIB):
        text = "stdlib/" + str(path.relative_to(STDLIB))
    return f"{text}:{frame.lineno}"


def _top(snapshot: tracemalloc.Snapshot, limit: int = 10) -> list[dict[str, Any]]:
    snapshot = snapshot.filter_traces([
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
    ])
    return [
        {"where": _where(s), "bytes": s.size, "blocks": s.count}
        for s in snapshot.statistics("lineno")[:limit]
    ]


def _package(frame: tracemalloc.Frame) -> str | None:
    """``reactivex``, ``dspex_rx``, ``trio``... for a frame; None for the standard library."""
    path = Path(frame.filename)
    if "site-packages" in path.parts:
        return path.parts[path.parts.index("site-packages") + 1]
    if path.is_relative_to(REPO_ROOT):
        return path.relative_to(REPO_ROOT).parts[0]  # dspex_rx, or benchmarks (the callbacks)
    return None


def _by_package(snapshot: tracemalloc.Snapshot, per: int) -> dict[str, float]:
    """Bytes per variable by the package whose code made the allocation: the innermost
    frame outside the standard library (so an RLock made by a reactivex Disposable counts
    for reactivex)."""
    totals: dict[str, int] = {}
    for trace in snapshot.traces:
        frames = list(trace.traceback)  # oldest first
        owner = next(
            (p for p in map(_package, reversed(frames)) if p is not None), "stdlib/other"
        )
        totals[owner] = totals.get(owner, 0) + trace.size
    return {k: rnd(v / per) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


async def _traced(measure: Callable[[], Any]) -> tuple[int, tracemalloc.Snapshot]:
    """Bytes allocated by ``await measure()`` and still alive afterwards, and the snapshot."""
    gc.collect()
    tracemalloc.start(TRACE_FRAMES)
    try:
        await measure()
        gc.collect()
        current, _peak = tracemalloc.get_traced_memory()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return current, snapshot


async def bench_memory(target: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    n = args.variables
    names = [f"mem_{i:05d}" for i in range(n)]
    records = []
    async with dspex_rx.connect(target, client_name="bench_reactive-owner") as owner:
        for i in range(0, n, REGISTER_BATCH):
            await owner.register_variables(
                [{"name": name, "type": "float", "initial_value": 0.5}
                 for name in names[i:i + REGISTER_BATCH]]
            )
        note(f"memory: registered {n} variables")

        # A fresh connection, so its cache and actors start empty. Its stream is opened
        # (sync) before tracing, so the fixed cost of the stream is not counted.
        async with dspex_rx.connect(target, session_id=owner.session_id, token=owner.token,
                                    client_name="bench_reactive-watcher") as session:
            await session.sync()
            subscriptions: list[Any] = []

            async def watch_all() -> None:
                for name in names:
                    subscriptions.append(session.observe(name).subscribe(lambda u: None))
                while session.get_cache_info()["pinned"] < n:
                    await session.sync()  # every initial value has arrived and is pinned

            started = time.perf_counter()
            used, snapshot = await _traced(watch_all)
            info = session.get_cache_info()
            note(f"memory: {n} observers in {time.perf_counter() - started:.1f} s (traced)")
            per = used / n
            records.append({
                "bench": "memory",
                "what": "idle watched variable: observe(name).subscribe(lambda u: None)",
                "variables": n,
                "observers": len(subscriptions),
                "pinned_entries": info["pinned"],
                "bytes_total": used,
                "bytes_per_variable": rnd(per),
                "bytes_per_variable_by_package": _by_package(snapshot, n),
                "top_allocations": _top(snapshot),
                "goal_max_bytes": GOAL_BYTES_PER_WATCH,
                "meets_goal": per <= GOAL_BYTES_PER_WATCH,
            })
            del snapshot
            for subscription in subscriptions:
                subscription.dispose()
            await session.sync()

        # Context: the same variables cached (unpinned entries and their actors), no watch.
        async with dspex_rx.connect(target, session_id=owner.session_id, token=owner.token,
                                    client_name="bench_reactive-reader",
                                    cache_max_size=None) as session:
            await session.sync()

            async def cache_all() -> None:
                for i in range(0, n, REGISTER_BATCH):
                    await session.fetch_missing(names[i:i + REGISTER_BATCH])

            used, snapshot = await _traced(cache_all)
            info = session.get_cache_info()
            if info["size"] != n:
                raise AssertionError(f"expected {n} cached entries, found {info['size']}")
            records.append({
                "bench": "memory",
                "what": "cached variable, no observer (fetch_missing, unpinned entry)",
                "variables": n,
                "observers": 0,
                "cached_entries": info["size"],
                "bytes_total": used,
                "bytes_per_variable": rnd(used / n),
                "bytes_per_variable_by_package": _by_package(snapshot, n),
                "top_allocations": _top(snapshot),
                "goal_max_bytes": None,
                "meets_goal": None,
            })
    return records


# ----------------------------------------------------------------------------- main


async def client_main(target: str, args: argparse.Namespace) -> None:
    # B attaches to A's session (the second connect sees ``a`` already bound).
    async with (
        dspex_rx.connect(target, client_name="bench_reactive-a") as a,
        dspex_rx.connect(target, session_id=a.session_id, token=a.token,
                         client_name="bench_reactive-b") as b,
    ):
        note("1/4 cached vs uncached get_variable")
        emit(await bench_cached_read(a, args))
        note("2/4 set -> observer latency")
        emit(await bench_latency(a, b, args))
        note("3/4 burst")
        calls = args.burst_writes // args.concurrency * args.concurrency
        for record in await bench_burst(target, a, b, args, "set_variable",
                                        ["burst_single"], calls):
            emit(record)
        calls = args.burst_events // args.burst_vars // args.concurrency * args.concurrency
        names = [f"burst_{i:03d}" for i in range(args.burst_vars)]
        for record in await bench_burst(target, a, b, args, "update_variables",
                                        names, calls):
            emit(record)
    note("4/4 memory per watched variable")
    for record in await bench_memory(target, args):
        emit(record)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Reactive-client benchmark of dspex-rx against a server in a separate process: "
            "cached vs uncached get_variable, set->observer latency vs the echo round trip, "
            "events/s delivered to one watcher under a write burst (actors vs a bare "
            "stream reader), and client memory per watched variable. One JSON line per figure."
        ),
    )
    parser.add_argument("--cached-reads", type=int, default=100_000,
                        help="cached get_variable calls per run (default 100000)")
    parser.add_argument("--uncached-reads", type=int, default=2000,
                        help="get_variable(bypass_cache=True) calls per run (default 2000)")
    parser.add_argument("--latency-samples", type=int, default=2000,
                        help="set->observer samples, each with one echo sample (default 2000)")
    parser.add_argument("--burst-writes", type=int, default=3200,
                        help="set_variable calls in the single-variable burst (default 3200)")
    parser.add_argument("--burst-events", type=int, default=64_000,
                        help="events in the update_variables burst (default 64000)")
    parser.add_argument("--burst-vars", type=int, default=100,
                        help="variables written by each update_variables call (default 100)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="writes in flight during a burst (default 32)")
    parser.add_argument("--variables", type=int, default=10_000,
                        help="watched variables in the memory figure (default 10000)")
    parser.add_argument("--warmup", type=int, default=100,
                        help="warm-up calls / samples before measuring (default 100)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of the read and burst rows, interleaved; the figure is the "
                        "median (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="short smoke run: fewer calls, samples and variables, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.cached_reads, args.uncached_reads, args.latency_samples = 20_000, 300, 200
        args.burst_writes, args.burst_events, args.variables = 320, 6400, 1000
        args.warmup, args.repeats = 20, 1
    require_positive(parser, args, "cached_reads", "uncached_reads", "latency_samples",
                     "concurrency", "variables", "repeats", "burst_vars")
    if args.burst_writes < args.concurrency:
        parser.error("--burst-writes must be at least --concurrency")
    if args.burst_events < args.burst_vars * args.concurrency:
        parser.error("--burst-events must be at least --burst-vars x --concurrency")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(client_main, parse_args(argv), note)


if __name__ == "__main__":
    raise SystemExit(main())
