"""Owns the replicas benchmark: set_variable writes/s and write -> watcher latency through 1
and 3 dspex-rx server replicas over one etcd member, beside raw etcd in the same run.

One run starts its own etcd member (tests/etcd_service.py, ``--max-txn-ops 4096``) and four
server child processes (``python -m dspex_rx.server.cli serve --storage etcd --auth token
--etcd-max-txn-ops 4096 --port 0``): one alone on a prefix of its own (the 1-replica rows)
and three sharing another prefix (the 3-replica rows). One trio client program holds the
sessions; raw etcd (``bench_etcd_raw.raw_figures``) runs in a worker thread under asyncio
once per repeat, interleaved with the replica rows, against the same member.

Figures (JSON lines on stdout, progress on stderr):

* ``{"bench": "replicas_writes", "replicas": 1|3, "mode": ...}``: set_variable calls/s.
  ``sequential``: one call at a time (with 3 replicas call ``i`` goes to replica ``i % 3``);
  ``concurrent``: ``--concurrency`` (32) trio tasks, task ``t`` writing its own variable
  through replica ``t % replicas``; with 3 replicas that row again with every task writing
  through replica 0 (``"writing_replicas": 1``, the others only follow): the most a write
  leader could give, with no forwarding cost. ``conflict_retries``: calls the server answered
  ConflictError (it met other replicas' writes 3 times in a row) that the client made again;
  ``etcd_txns_refused``: flushes etcd refused on the head-row compare (each one a full
  re-read and a rerun in the server), ``etcd_ranges``: full reads of the prefix (catch-ups
  and re-reads after a conflict), both from etcd's own /metrics over the measured calls.
  ``ratio_to_raw_txn`` = calls/s / raw txn/s in the same mode (goal >= 0.5).
* ``{"bench": "replicas_watch", "replicas": 1|3, "watcher": "same"|"remote"}``: time from
  just before the writer's set_variable (on replica A) to the watcher's observer callback
  (its own connection, on A or on B) for that version; one write at a time, the next sent
  once every watcher had the last. ``ratio_to_raw_watch`` = median / raw put -> watch
  median (goal <= 2.0).
* ``{"bench": "replicas_floor"}``: the least a write -> watcher can cost through a
  replica whatever the server does: ``ping_median_ms`` (a ``ping``, an Echo doing no
  work, through replica A, one at a time) plus ``raw_txn_mean_ms`` (1 / the raw
  sequential txn rate) = ``floor_ms``; ``floor_ratio_to_raw_watch`` is that against the
  raw put -> watch median, the part of the 2x goal the two hops alone use up.
* ``{"bench": "replicas_store"}``: the prefix's rows and bytes in etcd after each repeat
  (what every catch-up reads in full), and what one such full read costs, timed in this
  process: ``full_read_range_ms`` (the Range of the prefix) and ``full_read_load_ms``
  (``store.durable.load`` of its rows), medians of 5.
* ``{"bench": "etcd_raw"}`` / ``{"bench": "etcd_raw_watch"}`` as bench_etcd_raw.py prints
  them, medians over the repeats; ``{"bench": "environment"}`` with the etcd version.

Run::

    .venv/bin/python benchmarks/bench_replicas.py            # full, a few minutes on 2 cores
    .venv/bin/python benchmarks/bench_replicas.py --quick    # smoke run, under a minute
    .venv/bin/python benchmarks/bench_replicas.py --profile DIR   # servers under cProfile
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import trio
from _common import (
    REPO_ROOT,
    SERVER_START_TIMEOUT,
    Op,
    add_rate_flags,
    concurrent_calls,
    emit,
    environment,
    finish_rate_args,
    make_note,
    percentile,
    port_from_file,
    quiet_logging,
    run_concurrent,
    run_sequential,
)
from bench_etcd_raw import etcd_version, raw_figures

import dspex_rx
from dspex_rx.client.updates import VariableUpdate
from dspex_rx.store.durable.load import load

# bench_etcd_raw put tests/ on sys.path for this.
import etcd_service  # isort: skip
from dspex_rx.etcd import leader_key  # isort: skip
from dspex_rx.etcd_v3 import rpc_pb2, rpc_pb2_grpc  # isort: skip

GOAL_LATENCY_RATIO = 2.0
GOAL_THROUGHPUT_RATIO = 0.5
MAX_TXN_OPS = 4096
WAIT_TIMEOUT = 60.0  # a hang guard: an expected event this late fails the run
ATTACH_TIMEOUT = 30.0  # the session reaching the other replicas through etcd's watch
REPLICAS = (1, 3)
# The concurrent row of N replicas with every write through one of them: what a write
# leader could reach at best (the others only follow), beside the row with writers on each.
ONE_WRITER = "concurrent_one_writer"
RAW_PREFIX = b"bench/"  # where bench_etcd_raw's keys live

note = make_note("bench_replicas")
# Loopback only: an http_proxy in the environment must not carry the metrics away.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_HANDLED = re.compile(
    r'^grpc_server_handled_total\{[^}]*grpc_method="(\w+)"[^}]*\}\s+([0-9.e+]+)$', re.M)


# ----------------------------------------------------------------------------- etcd side


@dataclass
class EtcdProbe:
    """Counters read from the member: RPCs handled per method (its /metrics) and the
    newest revision; the differences over a measurement say what the servers did."""

    url: str
    endpoint: str

    def counts(self) -> dict[str, float]:
        """RPCs handled so far, by method name (Txn, Range, Put, Watch...)."""
        with _NO_PROXY.open(f"{self.url}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        out: dict[str, float] = {}
        for method, value in _HANDLED.findall(text):
            out[method] = out.get(method, 0.0) + float(value)
        return out

    def leader(self, prefix: str) -> str:
        """The address the replicas of ``prefix`` elected write leader ("" for none)."""
        with grpc.insecure_channel(self.endpoint,
                                   options=[("grpc.enable_http_proxy", 0)]) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)  # type: ignore[no-untyped-call]
            reply = kv.Range(rpc_pb2.RangeRequest(key=leader_key(prefix.encode())),
                             timeout=30)
        return reply.kvs[0].value.decode() if reply.kvs else ""

    def delete_prefix(self, prefix: bytes) -> None:
        """Delete every key under ``prefix``."""
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        with grpc.insecure_channel(self.endpoint,
                                   options=[("grpc.enable_http_proxy", 0)]) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)  # type: ignore[no-untyped-call]
            kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=prefix, range_end=end), timeout=30)

    def prefix_size(self, prefix: str, reads: int) -> dict[str, Any]:
        """Rows and bytes (keys and values) under ``prefix`` and the revision; and the
        median ms of ``reads`` full reads as a catch-up makes them (one Range of the
        prefix, then ``load`` of every row into live state), in this process."""
        key = prefix.encode()
        end = key[:-1] + bytes([key[-1] + 1])
        range_ms, load_ms = [], []
        with grpc.insecure_channel(self.endpoint,
                                   options=[("grpc.enable_http_proxy", 0),
                                            ("grpc.max_receive_message_length", -1)]) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)  # type: ignore[no-untyped-call]
            for _ in range(reads):
                start = time.perf_counter()
                reply = kv.Range(rpc_pb2.RangeRequest(key=key, range_end=end), timeout=30)
                got = time.perf_counter()
                cut = len(key)
                load(sorted((item.key[cut:], item.value) for item in reply.kvs), time.time())
                range_ms.append((got - start) * 1000)
                load_ms.append((time.perf_counter() - got) * 1000)
        return {
            "rows": len(reply.kvs),
            "bytes": sum(len(item.key) + len(item.value) for item in reply.kvs),
            "etcd_revision": reply.header.revision,
            "full_read_range_ms": round(statistics.median(range_ms), 2),
            "full_read_load_ms": round(statistics.median(load_ms), 2),
        }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may hold spaces: count fields after its ')'.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this (the client) process, every thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Activity:
    """What etcd did over one measurement, from two ``EtcdProbe`` readings, and the CPU
    seconds each process group used meanwhile (``client``, ``servers``, ``etcd``)."""

    txns: int
    revisions: int
    ranges: int
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def refused(self) -> int:
        # Every successful txn makes exactly one revision, and only the servers under
        # measurement write while it runs: the other txns failed their compare.
        return self.txns - self.revisions


class Meter:
    """Wraps a measured block: etcd's counters and revision before and after, and the CPU
    time of the client, of the servers under measurement (``server_pids``) and of etcd."""

    def __init__(self, probe: EtcdProbe, prefix: str, server_pids: list[int],
                 etcd_pid: int) -> None:
        self.probe, self.prefix = probe, prefix
        self.server_pids, self.etcd_pid = server_pids, etcd_pid

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the client, the servers (summed, and each as
        ``server<i>`` in replica order) and etcd."""
        each = {f"server{i}": cpu_seconds(pid) for i, pid in enumerate(self.server_pids)}
        return {"client": own_cpu_seconds(), "servers": sum(each.values()),
                "etcd": cpu_seconds(self.etcd_pid), **each}

    async def reading(self) -> tuple[dict[str, float], int, dict[str, float]]:
        cpu = self.cpu()  # first: the probe's own calls below are not the servers' work
        counts = await trio.to_thread.run_sync(self.probe.counts)
        revision = (await trio.to_thread.run_sync(self._revision))
        return counts, revision, cpu

    def _revision(self) -> int:
        with grpc.insecure_channel(self.probe.endpoint,
                                   options=[("grpc.enable_http_proxy", 0)]) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)  # type: ignore[no-untyped-call]
            # A serializable count of nothing: the header still carries the revision.
            reply = kv.Range(rpc_pb2.RangeRequest(key=b"\0", count_only=True,
                                                  serializable=True), timeout=10)
        return int(reply.header.revision)

    def between(self, before: tuple[dict[str, float], int, dict[str, float]],
                after: tuple[dict[str, float], int, dict[str, float]]) -> Activity:
        (c0, r0, _), (c1, r1, _) = before, after
        # CPU up to the second reading's first step: its probe calls are not counted.
        cpu = {who: after[2][who] - before[2][who] for who in before[2]}
        # Less the one Range ``reading`` made itself after the first counts.
        return Activity(txns=int(c1.get("Txn", 0) - c0.get("Txn", 0)), revisions=r1 - r0,
                        ranges=int(c1.get("Range", 0) - c0.get("Range", 0)) - 1, cpu=cpu)


# ----------------------------------------------------------------------------- servers


@contextlib.contextmanager
def server_children(
    endpoint: str, prefix: str, count: int, tag: str, *, tree: Path = REPO_ROOT,
    profile: str | None = None, extra: Sequence[str] = (),
) -> Iterator[tuple[list[str], list[int]]]:
    """``count`` ``dspex-rx serve --storage etcd`` children on one prefix, running the code
    of ``tree`` (another checkout: bench_etcd_ab.py) with ``extra`` flags; yields their
    targets and pids, stops them (SIGTERM) after. With ``profile`` (a dir) each runs in
    cProfile."""
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="dspex-rx-replicas-") as tmp:
        procs: list[subprocess.Popen[bytes]] = []
        port_files = []
        try:
            for i in range(count):
                port_file = Path(tmp) / f"port-{i}"
                port_files.append(port_file)
                cmd = [sys.executable]
                if profile:
                    out = Path(profile) / f"{tag}-{i}.prof"
                    cmd += ["-m", "cProfile", "-o", str(out)]
                cmd += [
                    "-m", "dspex_rx.server.cli", "serve", "--storage", "etcd",
                    "--etcd-endpoints", endpoint, "--etcd-prefix", prefix,
                    "--etcd-max-txn-ops", str(MAX_TXN_OPS), "--auth", "token",
                    "--port", "0", "--port-file", str(port_file), "--log-level", "warning",
                    *extra,
                ]
                procs.append(subprocess.Popen(
                    cmd, cwd=tree, env={**os.environ, "PYTHONPATH": path}, stdout=sys.stderr))
            targets = [f"127.0.0.1:{port_from_file(proc, port_file, SERVER_START_TIMEOUT)}"
                       for proc, port_file in zip(procs, port_files, strict=True)]
            note(f"{tag}: {count} server(s) on prefix {prefix}: "
                 + ", ".join(f"pid {p.pid} {t}" for p, t in zip(procs, targets, strict=True)))
            yield targets, [proc.pid for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()  # SIGTERM: a graceful stop (cProfile writes its file)
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# ----------------------------------------------------------------------------- client side


@dataclass
class Topology:
    """The sessions on one set of replicas: a writer connection per replica, a watcher on
    the first replica and one on the second (3 replicas only)."""

    replicas: int
    prefix: str
    writers: list[dspex_rx.SessionContext]
    watchers: dict[str, dspex_rx.SessionContext]
    values: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    retries: int = 0

    def op(self, replica_of: Any, variable_of: Any) -> Op:
        """An op for the timing loops: call ``i`` sets ``variable_of(i)`` through replica
        ``replica_of(i)``, made again on ConflictError (counted in ``retries``)."""

        async def set_variable(i: int) -> Any:
            session = self.writers[replica_of(i)]
            name = variable_of(i)
            while True:
                try:
                    return await session.set_variable(name, float(next(self.values)))
                except dspex_rx.ConflictError:
                    self.retries += 1

        return set_variable


async def join(target: str, session_id: str, token: str | None, name: str,
               stack: contextlib.AsyncExitStack, **options: Any) -> dspex_rx.SessionContext:
    """Attach to ``session_id`` on ``target`` once the session reached that replica."""
    deadline = time.monotonic() + ATTACH_TIMEOUT
    while True:
        try:
            return await stack.enter_async_context(dspex_rx.connect(
                target, session_id=session_id, token=token, create=False, client_name=name,
                **options))
        except dspex_rx.SessionNotFoundError:
            if time.monotonic() > deadline:
                raise
            await trio.sleep(0.05)


async def open_topology(targets: list[str], prefix: str, concurrency: int,
                        stack: contextlib.AsyncExitStack, direct_writes: bool = False,
                        ) -> Topology:
    replicas = len(targets)
    session_id = f"bench-{replicas}r-{uuid.uuid4().hex[:8]}"
    first = await stack.enter_async_context(dspex_rx.connect(
        targets[0], session_id=session_id, client_name=f"writer[{replicas}r/0]",
        direct_writes=direct_writes))
    await first.register_variables(
        [{"name": f"v{t}", "type": "float", "initial_value": 0.0} for t in range(concurrency)]
        + [{"name": "probe", "type": "float", "initial_value": 0.0}])
    writers = [first]
    for i, target in enumerate(targets[1:], start=1):
        writers.append(await join(target, session_id, first.token,
                                  f"writer[{replicas}r/{i}]", stack,
                                  direct_writes=direct_writes))
    watchers = {"same": await join(targets[0], session_id, first.token,
                                   f"watcher[{replicas}r/same]", stack)}
    if replicas > 1:
        watchers["remote"] = await join(targets[1], session_id, first.token,
                                        f"watcher[{replicas}r/remote]", stack)
    return Topology(replicas, prefix, writers, watchers)


async def measure_writes(top: Topology, mode: str, calls: int, concurrency: int,
                         meter: Meter) -> dict[str, Any]:
    """One timed run of ``calls`` writes in ``mode``; seconds and what it cost in etcd."""
    n = top.replicas
    retries = top.retries
    gc.collect()
    before = await meter.reading()
    if mode == "sequential":
        taken = await run_sequential(top.op(lambda i: i % n, lambda i: "v0"), calls)
    else:
        per_task = calls // concurrency
        # Task t makes calls t*per_task .. (t+1)*per_task - 1 (run_concurrent's split);
        # with one writer every task writes through replica 0 (the others follow).
        writing = 1 if mode == ONE_WRITER else n
        op = top.op(lambda i: (i // per_task) % writing, lambda i: f"v{i // per_task}")
        taken = await run_concurrent(op, calls, concurrency)
    activity = meter.between(before, await meter.reading())
    return {"seconds": taken, "retries": top.retries - retries, "activity": activity}


async def measure_latency(top: Topology, samples: int, warmup: int,
                          meter: Meter) -> dict[str, Any]:
    """Write ``probe`` on replica A one write at a time; per watcher, seconds from just
    before each write to its observer callback for that version."""
    arrivals: dict[str, dict[int, float]] = {w: {} for w in top.watchers}
    wanted = [0]
    arrived = [trio.Event()]

    def listener(which: str) -> Any:
        def on_update(update: VariableUpdate) -> None:
            arrivals[which][update.version] = time.perf_counter()
            if all(wanted[0] in seen for seen in arrivals.values()):
                arrived[0].set()
        return on_update

    subscriptions = [s.observe("probe", include_initial=False).subscribe(listener(w))
                     for w, s in top.watchers.items()]
    latencies: dict[str, list[float]] = {w: [] for w in top.watchers}
    writer = top.writers[0]
    gc.collect()
    try:
        for watcher in top.watchers.values():
            await watcher.sync()  # the watches are in force before the first write
        before = await meter.reading()
        for i in range(warmup + samples):
            start = time.perf_counter()
            version = await writer.set_variable("probe", float(next(top.values)))
            wanted[0] = version
            if not all(version in seen for seen in arrivals.values()):
                arrived[0] = trio.Event()
                with trio.fail_after(WAIT_TIMEOUT):
                    await arrived[0].wait()
            if i >= warmup:
                for which, seen in arrivals.items():
                    latencies[which].append(seen[version] - start)
        activity = meter.between(before, await meter.reading())
    finally:
        for subscription in subscriptions:
            subscription.dispose()
    return {"latencies": latencies, "activity": activity}


async def measure_floor(top: Topology, samples: int) -> list[float]:
    """Seconds per ``ping`` (an Echo that does no work) through replica A, one at a time:
    the client <-> server round trip every write through a replica pays on top of its
    etcd txn."""
    session = top.writers[0]
    for _ in range(max(10, samples // 5)):
        await session.ping()
    out = []
    for _ in range(samples):
        start = time.perf_counter()
        await session.ping()
        out.append(time.perf_counter() - start)
    return out


def raw_namespace(args: argparse.Namespace) -> argparse.Namespace:
    """The arguments ``raw_figures`` reads: one repeat per call (the repeats interleave)."""
    return argparse.Namespace(
        calls=args.raw_calls, concurrent_calls=args.raw_concurrent_calls,
        concurrency=args.concurrency, warmup=args.raw_warmup, repeats=1,
        latency_samples=args.raw_latency_samples)


async def client_main(endpoint: str, etcd_pid: int, prefixes: dict[int, str],
                      servers: dict[int, tuple[list[str], list[int]]],
                      args: argparse.Namespace) -> None:
    probe = EtcdProbe(f"http://{endpoint}", endpoint)
    meters = {n: Meter(probe, prefixes[n], servers[n][1], etcd_pid) for n in REPLICAS}
    targets = {n: servers[n][0] for n in REPLICAS}
    modes = {"sequential": args.calls, "concurrent": args.concurrent_calls}
    raw_runs: list[list[dict[str, Any]]] = []
    writes: dict[tuple[int, str], list[dict[str, Any]]] = {}
    watches: dict[int, list[dict[str, Any]]] = {n: [] for n in REPLICAS}
    stores: list[dict[str, Any]] = []
    pings: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        tops = {n: await open_topology(targets[n], prefixes[n], args.concurrency, stack,
                                       args.direct_writes)
                for n in REPLICAS}
        note(f"warm-up: {args.warmup} writes per topology and mode")
        for top in tops.values():
            await run_sequential(top.op(lambda i, n=top.replicas: i % n, lambda i: "v0"),
                                 args.warmup)
        for repeat in range(args.repeats):
            tag = f"repeat {repeat + 1}/{args.repeats}"
            # raw_figures' txns expect their keys absent (compare mod_revision 0) when
            # it starts: clear the keys the previous repeat left.
            await trio.to_thread.run_sync(probe.delete_prefix, RAW_PREFIX)
            raw = await trio.to_thread.run_sync(
                asyncio.run, raw_figures(endpoint, raw_namespace(args)))
            raw_runs.append(raw)
            for record in raw:
                if record["bench"] == "etcd_raw" and record["op"] == "txn":
                    note(f"{tag} raw txn {record['mode']:<10} {record['calls_per_s']:8.0f}/s")
                if record["bench"] == "etcd_raw_watch":
                    note(f"{tag} raw put->watch median {record['median_ms']:.3f} ms")
            for n, top in tops.items():
                # Which replica takes the writes (None: none elected, --no-write-leader):
                # the one-writer row writes through replica 0, forwarded unless it leads.
                elected = await trio.to_thread.run_sync(probe.leader, prefixes[n])
                leader = targets[n].index(elected) if elected in targets[n] else None
                for mode, calls in modes_of(n, modes).items():
                    run = await measure_writes(top, mode, calls, args.concurrency, meters[n])
                    run["leader"] = leader
                    writes.setdefault((n, mode), []).append(run)
                    act = run["activity"]
                    note(f"{tag} {n} replica(s) {mode:<10} {calls / run['seconds']:8.1f} set/s"
                         f"  retries {run['retries']}, txns refused {act.refused}, "
                         f"ranges {act.ranges}, leader {leader}")
                run = await measure_latency(top, args.latency_samples,
                                            args.latency_warmup, meters[n])
                watches[n].append(run)
                for which, lat in run["latencies"].items():
                    note(f"{tag} {n} replica(s) write->{which} watcher median "
                         f"{statistics.median(lat) * 1000:.2f} ms, p99 "
                         f"{percentile(lat, 99) * 1000:.2f} ms")
            pings += await measure_floor(tops[1], args.latency_samples)
            for n in REPLICAS:
                size = await trio.to_thread.run_sync(probe.prefix_size, prefixes[n], 5)
                stores.append({"bench": "replicas_store", "replicas": n, "repeat": repeat + 1,
                               **size})
                note(f"{tag} {n} replica(s): prefix holds {size['rows']} rows, "
                     f"{size['bytes']} bytes; a full read {size['full_read_range_ms']} ms "
                     f"Range + {size['full_read_load_ms']} ms load")
    report(raw_runs, writes, watches, stores, pings, modes, args)


# ----------------------------------------------------------------------------- figures


def raw_medians(raw_runs: list[list[dict[str, Any]]]) -> tuple[list[dict[str, Any]],
                                                               dict[str, float], float]:
    """The raw records with medians over the repeats; txn calls/s per mode; the put ->
    watch median in ms."""
    out: list[dict[str, Any]] = []
    first = raw_runs[0]
    for i, record in enumerate(first):
        runs = [run[i] for run in raw_runs]
        merged = dict(record, repeats=len(runs))
        if record["bench"] == "etcd_raw":
            rates = [r["calls_per_s"] for r in runs]
            merged["calls_per_s"] = round(statistics.median(rates), 1)
            merged["seconds"] = round(record["calls"] / merged["calls_per_s"], 4)
            merged["runs_calls_per_s"] = rates
        else:
            for key in ("median_ms", "p99_ms", "mean_ms", "max_ms"):
                merged[key] = round(statistics.median(r[key] for r in runs), 3)
            merged["runs_median_ms"] = [r["median_ms"] for r in runs]
        out.append(merged)
    txn = {r["mode"]: r["calls_per_s"] for r in out
           if r["bench"] == "etcd_raw" and r["op"] == "txn"}
    watch = next(r["median_ms"] for r in out if r["bench"] == "etcd_raw_watch")
    return out, txn, watch


CPU_GROUPS = ("client", "servers", "etcd")


def by_role(runs: list[dict[str, Any]], replicas: int, calls: int) -> dict[str, float] | None:
    """Server CPU ms per write over every repeat: the leader's, and each follower's on
    average (what forwarding and following cost apart); None where a run had no leader.

    >>> from types import SimpleNamespace as NS
    >>> runs = [{"leader": 1, "activity": NS(cpu={"server0": 0.1, "server1": 0.3})}]
    >>> by_role(runs, 2, 1000)
    {'leader': 0.3, 'follower_each': 0.1}
    """
    if any(r["leader"] is None for r in runs):
        return None
    total = calls * len(runs)
    lead = sum(r["activity"].cpu[f"server{r['leader']}"] for r in runs)
    out = {"leader": round(1000 * lead / total, 3)}
    if replicas > 1:
        rest = sum(r["activity"].cpu[f"server{i}"] for r in runs
                   for i in range(replicas) if i != r["leader"])
        out["follower_each"] = round(1000 * rest / (total * (replicas - 1)), 3)
    return out


def modes_of(replicas: int, modes: dict[str, int]) -> dict[str, int]:
    """The write rows of a topology: calls per mode, and with several replicas the
    concurrent row again through one writer (``ONE_WRITER``)."""
    if replicas == 1:
        return modes
    return {**modes, ONE_WRITER: modes["concurrent"]}


def report(raw_runs: list[list[dict[str, Any]]],
           writes: dict[tuple[int, str], list[dict[str, Any]]],
           watches: dict[int, list[dict[str, Any]]], stores: list[dict[str, Any]],
           pings: list[float], modes: dict[str, int], args: argparse.Namespace) -> None:
    raw_records, raw_txn, raw_watch_ms = raw_medians(raw_runs)
    for record in raw_records:
        emit(record)
    for n in REPLICAS:
        for mode, calls in modes_of(n, modes).items():
            runs = writes[(n, mode)]
            rates = [calls / r["seconds"] for r in runs]
            rate = statistics.median(rates)
            raw_mode = "concurrent" if mode == ONE_WRITER else mode
            ratio = rate / raw_txn[raw_mode]
            emit({
                "bench": "replicas_writes", "op": "set_variable", "replicas": n,
                "mode": raw_mode, "writing_replicas": 1 if mode == ONE_WRITER else n,
                "write_leader": args.write_leader, "direct_writes": args.direct_writes,
                "leader_replica": [r["leader"] for r in runs],
                "in_flight": 1 if mode == "sequential" else args.concurrency,
                "calls": calls, "repeats": args.repeats,
                "calls_per_s": round(rate, 1), "runs_calls_per_s": [round(r, 1) for r in rates],
                "conflict_retries": sum(r["retries"] for r in runs),
                "etcd_txns": sum(r["activity"].txns for r in runs),
                "etcd_txns_refused": sum(r["activity"].refused for r in runs),
                "etcd_ranges": sum(r["activity"].ranges for r in runs),
                # CPU ms per write, by process group, over every repeat: on a machine
                # with few cores this, not the protocol, can bound the rate.
                "cpu_ms_per_write": {
                    who: round(1000 * sum(r["activity"].cpu[who] for r in runs)
                               / (calls * len(runs)), 3)
                    for who in CPU_GROUPS},
                "server_cpu_ms_per_write": by_role(runs, n, calls),
                "raw_txn_calls_per_s": raw_txn[raw_mode],
                "ratio_to_raw_txn": round(ratio, 3), "goal": GOAL_THROUGHPUT_RATIO,
                "meets_goal": ratio >= GOAL_THROUGHPUT_RATIO,
            })
    for n in REPLICAS:
        runs = watches[n]
        for which in runs[0]["latencies"]:
            ms = [s * 1000 for r in runs for s in r["latencies"][which]]
            median = statistics.median(ms)
            ratio = median / raw_watch_ms
            emit({
                "bench": "replicas_watch", "op": "write_to_watcher", "replicas": n,
                "watcher": which, "samples": len(ms), "repeats": args.repeats,
                "median_ms": round(median, 3), "p99_ms": round(percentile(ms, 99), 3),
                "mean_ms": round(statistics.fmean(ms), 3), "max_ms": round(max(ms), 3),
                "runs_median_ms": [round(statistics.median(r["latencies"][which]) * 1000, 3)
                                   for r in runs],
                "etcd_txns_refused": sum(r["activity"].refused for r in runs),
                "etcd_ranges": sum(r["activity"].ranges for r in runs),
                "raw_put_to_watch_median_ms": raw_watch_ms,
                "ratio_to_raw_watch": round(ratio, 3), "goal": GOAL_LATENCY_RATIO,
                "meets_goal": ratio <= GOAL_LATENCY_RATIO,
            })
    # The least a write -> watcher can take through a replica, whatever the server does:
    # one client <-> server round trip that does no work, plus one raw txn (mean, from
    # the sequential rate), against raw etcd's put -> watch.
    ping_ms = statistics.median(pings) * 1000
    txn_ms = 1000 / raw_txn["sequential"]
    emit({"bench": "replicas_floor", "ping_median_ms": round(ping_ms, 3),
          "ping_samples": len(pings), "raw_txn_mean_ms": round(txn_ms, 3),
          "floor_ms": round(ping_ms + txn_ms, 3),
          "floor_ratio_to_raw_watch": round((ping_ms + txn_ms) / raw_watch_ms, 3)})
    for record in stores:
        emit(record)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="set_variable writes/s and write -> watcher latency through 1 and 3 "
        "dspex-rx replicas over one etcd member, beside raw etcd in the same run. One JSON "
        "line per figure.",
    )
    add_rate_flags(parser, calls=300, factor=4, warmup_divisor=5, unit="writes",
                   warmup_per="topology", repeats=None)
    parser.add_argument("--latency-samples", type=int, default=300,
                        help="writes timed to the watchers per repeat (default 300)")
    parser.add_argument("--raw-calls", type=int, default=1000,
                        help="raw etcd sequential calls per op and repeat (default 1000)")
    parser.add_argument("--raw-latency-samples", type=int, default=1000,
                        help="raw etcd puts timed to a watcher per repeat (default 1000)")
    parser.add_argument("--log-size", type=int, default=None,
                        help="the servers' --log-size (default: theirs, 10000)")
    parser.add_argument("--history-size", type=int, default=None,
                        help="the servers' --history-size (default: theirs, 1000)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="where etcd's member dir goes (default a temp dir)")
    parser.add_argument("--no-write-leader", dest="write_leader", action="store_false",
                        help="serve with --no-write-leader: every replica makes its own "
                        "writes (by default followers forward theirs to an elected leader)")
    parser.add_argument("--direct-writes", action="store_true",
                        help="writers connect with direct_writes=True: their writes go to "
                        "the write leader's own stream, not through their replica")
    parser.add_argument("--profile", metavar="DIR",
                        help="run each server under cProfile, its stats in DIR/<tag>-<i>.prof")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 60 sequential / 320 concurrent writes, 60 latency "
                        "samples, 200 raw calls, 1 repeat unless --repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.latency_samples = 60, 60
        args.repeats = args.repeats or 1
        args.raw_calls, args.raw_latency_samples = 200, 200
        args.concurrent_calls = args.concurrent_calls or 320
    finish_rate_args(parser, args, factor=4, warmup_divisor=5, warmup_min=20,
                     positive=("latency_samples", "raw_calls", "raw_latency_samples"))
    args.latency_warmup = max(5, args.latency_samples // 10)
    args.raw_concurrent_calls = concurrent_calls(None, args.raw_calls, args.concurrency, 4)
    args.raw_warmup = max(50, args.raw_calls // 5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logging()
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    binary = etcd_service.find_binary()
    workdir = Path(tempfile.mkdtemp(prefix="dspex-etcd-replicas-", dir=args.data_dir))
    run = uuid.uuid4().hex[:8]
    prefixes = {n: f"bench-replicas-{run}-{n}r/" for n in REPLICAS}
    with etcd_service.running_member(
        workdir, extra_args=["--max-txn-ops", str(MAX_TXN_OPS)]
    ) as member:
        note(f"etcd pid {member.pid} on {member.endpoint}, data in {member.data_dir}")
        emit({**environment(), "etcd": etcd_version(binary),
              "etcd_max_txn_ops": MAX_TXN_OPS,
              "server_log_size": args.log_size, "server_history_size": args.history_size,
              "write_leader": args.write_leader, "direct_writes": args.direct_writes})
        with contextlib.ExitStack() as stack:
            flags: list[str] = []  # the servers' own bounds, when asked for
            if args.log_size is not None:
                flags += ["--log-size", str(args.log_size)]
            if args.history_size is not None:
                flags += ["--history-size", str(args.history_size)]
            if not args.write_leader:
                flags += ["--no-write-leader"]
            servers = {n: stack.enter_context(server_children(
                member.endpoint, prefixes[n], n, f"{n}r", profile=args.profile, extra=flags))
                for n in REPLICAS}
            trio.run(client_main, member.endpoint, member.pid, prefixes, servers, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
