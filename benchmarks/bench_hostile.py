"""Hostile clients under load (issue #17): does the server keep answering while it works?

Two phases against one ``dspex-rx serve`` child process, each for a bounded time, while a
health prober (its own process, so client-side work never delays it) calls
``grpc.health.v1.Health/Check`` every ``--probe-interval`` seconds and times each answer:

The health figures count the probes a stall kept from being sent (a probe that waited
2 s stands for the 200 due meanwhile, ``corrected``), so one long stall weighs as long as
it lasted, not as one sample.

* ``large_values``: one client writes and reads back a list of ``--items`` items (a
  million by default, the most ``max_collection_items`` allows) in a loop.
* ``mixed_under_flood``: ``--clients`` sessions (50), each on its own connection, make
  mixed calls (set, get, atomic batch + read back; each watches its own variables) while
  a flooder process sends malformed traffic: raw bytes that are not HTTP/2, an HTTP/2
  preface followed by garbage frames, unary calls whose body is not protobuf, and
  messages over the size limit. Every well-formed client checks its invariants: a read
  returns the value it last wrote (it is its variables' only writer), a batch reads back
  whole, and its watch sees versions strictly increasing and only values it wrote.

stdout: one JSON object per figure (``make bench > x.jsonl`` stays JSON Lines); progress
on stderr. Exit status 1 if an invariant broke. Run as a file:
``python benchmarks/bench_hostile.py [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import grpc
import trio
from _common import emit, environment, make_note, percentile, quiet_logging, server_process
from grpc_health.v1 import health_pb2, health_pb2_grpc

import dspex_rx
from dspex_rx.wire.channel import SERVICE_NAME

note = make_note("hostile")
PROBE_TIMEOUT = 10.0


# ------------------------------------------------------------------ child processes


def probe(target: str, seconds: float, interval: float, out: str) -> None:
    """The prober: Health/Check every ``interval`` s for ``seconds``; writes the latencies
    (ms, a timeout counted as its full wait) as one JSON object to the file ``out``."""
    channel = grpc.insecure_channel(target)
    stub = health_pb2_grpc.HealthStub(channel)
    stub.Check(health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT)  # connected first
    print("ready", file=sys.stderr, flush=True)
    latencies: list[float] = []
    failures = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        try:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT)
        except grpc.RpcError:
            failures += 1
        latencies.append((time.perf_counter() - start) * 1000)
        time.sleep(interval)
    channel.close()
    Path(out).write_text(json.dumps({"latencies": latencies, "failures": failures}))


def _http2_garbage(rng: random.Random) -> bytes:
    # The client preface, then frames with random types, flags, stream ids and payloads
    # (bad HPACK, wrong lengths, frames on stream 0 that must not be there...).
    out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    for _ in range(rng.randint(1, 8)):
        payload = rng.randbytes(rng.randint(0, 300))
        length = len(payload) if rng.random() < 0.7 else rng.randint(0, (1 << 24) - 1)
        header = length.to_bytes(3, "big") + bytes([rng.randint(0, 12), rng.randint(0, 255)])
        out += header + rng.randint(0, (1 << 31) - 1).to_bytes(4, "big") + payload
    return out


def flood(target: str, seconds: float, seed: int, oversize_every: float, out: str) -> None:
    """The flooder: malformed traffic for ``seconds``; writes what it sent as one JSON
    object to the file ``out``."""
    rng = random.Random(seed)
    host, port = target.rsplit(":", 1)
    sent: dict[str, int] = defaultdict(int)
    answers: dict[str, int] = defaultdict(int)
    channel = grpc.insecure_channel(target, options=[
        ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
    ])
    methods = ["SetVariable", "UpdateVariables", "RegisterVariable", "GetVariable",
               "InitializeSession", "Echo"]
    calls = {
        m: channel.unary_unary(f"/{SERVICE_NAME}/{m}", request_serializer=None,
                               response_deserializer=None)
        for m in methods
    }
    end = time.monotonic() + seconds
    next_oversize = time.monotonic() + oversize_every
    while time.monotonic() < end:
        kind = rng.choice(["raw_bytes", "http2_garbage", "bad_protobuf", "bad_protobuf"])
        if time.monotonic() >= next_oversize:
            kind, next_oversize = "oversized", time.monotonic() + oversize_every
        if kind in ("raw_bytes", "http2_garbage"):
            data = rng.randbytes(rng.randint(1, 4096)) if kind == "raw_bytes" else (
                _http2_garbage(rng))
            try:
                with socket.create_connection((host, int(port)), timeout=2) as sock:
                    sock.sendall(data)
                    sock.settimeout(0.2)
                    with contextlib.suppress(TimeoutError, OSError):
                        sock.recv(4096)
            except OSError:
                answers["socket_error"] += 1
        else:
            method = rng.choice(methods)
            data = (rng.randbytes(rng.randint(1, 2048)) if kind == "bad_protobuf"
                    else b"\x1a" + b"\xff" * 9 + rng.randbytes(65 * 1024 * 1024))
            try:
                calls[method](data, timeout=10)
                answers["OK"] += 1
            except grpc.RpcError as exc:
                answers[exc.code().name] += 1
        sent[kind] += 1
    channel.close()
    Path(out).write_text(json.dumps({"sent": dict(sent), "answers": dict(answers)}))


class Child:
    """A child process of this script (prober or flooder) that writes one JSON object to
    a file (its stdout and stderr are not ours: stdout carries only our JSON lines)."""

    def __init__(self, *args: str) -> None:
        self.out = Path(tempfile.mkdtemp(prefix="dspex-rx-hostile-")) / "result.json"
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *args, "--out", str(self.out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )

    def wait_ready(self) -> None:
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the prober did not start: {line}{self.proc.stderr.read()}")

    def result(self, timeout: float) -> dict[str, Any]:
        _, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise RuntimeError(f"child {self.proc.args} failed: {err}")
        result = json.loads(self.out.read_text())
        shutil.rmtree(self.out.parent, ignore_errors=True)
        return result  # type: ignore[no-any-return]


def corrected(latencies: list[float], interval_ms: float) -> list[float]:
    """Latencies with the probes a stall kept from being sent put back (coordinated
    omission): a probe that waited L ms stood for the ones due every ``interval_ms`` in
    that time, which would have waited L - interval, L - 2 x interval, ...

    >>> corrected([5.0, 35.0], 10.0)
    [5.0, 35.0, 25.0, 15.0, 5.0]
    """
    out = []
    for latency in latencies:
        out.append(latency)
        missed = latency - interval_ms
        while missed > 0:
            out.append(missed)
            missed -= interval_ms
    return out


def health_figures(result: dict[str, Any], interval: float) -> dict[str, Any]:
    probes = result["latencies"]
    latencies = corrected(probes, interval * 1000)
    return {
        "health_probes": len(probes),
        "health_failures": result["failures"],
        "health_p50_ms": round(percentile(latencies, 50), 2),
        "health_p99_ms": round(percentile(latencies, 99), 2),
        "health_max_ms": round(max(latencies), 2),
    }


# ------------------------------------------------------------------ phase 1: large values


async def large_values(target: str, args: argparse.Namespace) -> dict[str, Any]:
    prober = Child("--role", "probe", "--target", target, "--seconds", str(args.seconds),
                   "--probe-interval", str(args.probe_interval))
    prober.wait_ready()
    writes = reads = 0
    wrong = 0
    async with dspex_rx.connect(target) as session:
        await session.register_variable("big", "list", [])
        end = trio.current_time() + args.seconds
        while trio.current_time() < end:
            value = list(range(writes, writes + args.items))
            await session.set_variable("big", value)
            writes += 1
            if trio.current_time() >= end:
                break
            back = await session.get_variable("big", bypass_cache=True)
            reads += 1
            wrong += back != value
    figures = health_figures(
        await trio.to_thread.run_sync(prober.result, args.seconds + 60), args.probe_interval
    )
    note(f"large values: {writes} writes and {reads} reads of {args.items} items; health "
         f"p99 {figures['health_p99_ms']} ms, max {figures['health_max_ms']} ms")
    return {"bench": "hostile", "phase": "large_values", "items": args.items,
            "seconds": args.seconds, "writes": writes, "reads": reads,
            "violations": wrong, **figures}


# ------------------------------------------------------------------ phase 2: flood


class Client:
    """One well-formed client: its own connection and session, its calls and checks."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.violations: list[str] = []
        self.written: set[int] = {0}
        self.last = 0
        self.watch_versions = 0
        self.deliveries = 0

    def violation(self, what: str) -> None:
        if len(self.violations) < 5:
            self.violations.append(f"client {self.index}: {what}")
        else:
            self.violations.append("")

    async def timed(self, kind: str, call: Any) -> Any:
        start = time.perf_counter()
        result = await call
        self.latencies[kind].append((time.perf_counter() - start) * 1000)
        return result

    async def watch(self, session: dspex_rx.SessionContext, ready: trio.Event) -> None:
        async with session.watch_variable("x") as updates:
            ready.set()
            async for update in updates:
                self.deliveries += 1
                if update.version <= self.watch_versions:
                    self.violation(f"watch version {update.version} after "
                                   f"{self.watch_versions}")
                self.watch_versions = update.version
                if update.value not in self.written:
                    self.violation(f"watch saw {update.value!r}, never written")

    async def run(self, target: str, end: float, rng: random.Random) -> None:
        async with dspex_rx.connect(target) as session:
            await session.register_variables([
                {"name": "x", "type": "integer", "initial_value": 0},
                {"name": "a", "type": "integer", "initial_value": 0},
                {"name": "b", "type": "integer", "initial_value": 0},
            ])
            async with trio.open_nursery() as nursery:
                ready = trio.Event()
                nursery.start_soon(self.watch, session, ready)
                await ready.wait()
                n = 0
                while trio.current_time() < end:
                    n += 1
                    op = rng.choice(["set", "get", "get", "batch"])
                    if op == "set":
                        self.written.add(n)
                        await self.timed("set", session.set_variable("x", n))
                        self.last = n
                    elif op == "get":
                        got = await self.timed(
                            "get", session.get_variable("x", bypass_cache=True))
                        if got != self.last:
                            self.violation(f"read {got!r}, last wrote {self.last!r}")
                    else:
                        await self.timed("batch", session.update_variables({"a": n, "b": -n}))
                        both = await self.timed(
                            "read_batch", session.get_variables(["a", "b"]))
                        if both != {"a": n, "b": -n}:
                            self.violation(f"batch read back {both!r}, wrote {n}, {-n}")
                await trio.sleep(0.5)  # the last writes' events reach the watch
                nursery.cancel_scope.cancel()


async def mixed_under_flood(target: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    clients = [Client(i) for i in range(args.clients)]
    prober = Child("--role", "probe", "--target", target, "--seconds", str(args.seconds),
                   "--probe-interval", str(args.probe_interval))
    prober.wait_ready()
    flooder = Child("--role", "flood", "--target", target, "--seconds", str(args.seconds),
                    "--seed", str(args.seed), "--oversize-every", str(args.oversize_every))
    start = trio.current_time()
    end = start + args.seconds
    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(client.run, target, end, random.Random(rng.random()))
    elapsed = trio.current_time() - start
    flood_result = await trio.to_thread.run_sync(flooder.result, 120)
    figures = health_figures(
        await trio.to_thread.run_sync(prober.result, 120), args.probe_interval
    )
    by_kind: dict[str, list[float]] = defaultdict(list)
    for client in clients:
        for kind, values in client.latencies.items():
            by_kind[kind].extend(values)
    ops = sum(len(v) for v in by_kind.values())
    violations = [v for c in clients for v in c.violations]
    for line in [v for v in violations if v][:10]:
        note(f"VIOLATION {line}")
    note(f"{args.clients} clients: {ops} calls in {elapsed:.1f} s ({ops / elapsed:.0f}/s), "
         f"{sum(c.deliveries for c in clients)} watch deliveries, {len(violations)} "
         f"violations; health p99 {figures['health_p99_ms']} ms; flood {flood_result['sent']}")
    return {
        "bench": "hostile", "phase": "mixed_under_flood", "clients": args.clients,
        "seconds": round(elapsed, 2), "calls": ops, "calls_per_s": round(ops / elapsed, 1),
        "call_p50_ms": {k: round(percentile(v, 50), 2) for k, v in sorted(by_kind.items())},
        "call_p99_ms": {k: round(percentile(v, 99), 2) for k, v in sorted(by_kind.items())},
        "watch_deliveries": sum(c.deliveries for c in clients),
        "violations": len(violations), "flood_sent": flood_result["sent"],
        "flood_answers": flood_result["answers"], **figures,
    }


async def client_main(target: str, args: argparse.Namespace) -> None:
    results = []
    if "large" in args.phases:
        results.append(await large_values(target, args))
        emit(results[-1])
    if "flood" in args.phases:
        results.append(await mixed_under_flood(target, args))
        emit(results[-1])
    args.failed = any(r["violations"] for r in results)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 4 s per phase, 10 clients, 200,000 items")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--items", type=int, default=1_000_000,
                        help="items in the large list")
    parser.add_argument("--phases", default="large,flood", help="large, flood or both")
    parser.add_argument("--probe-interval", type=float, default=0.01)
    parser.add_argument("--oversize-every", type=float, default=2.0,
                        help="seconds between oversized (65 MiB) messages")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--role", choices=["probe", "flood"], help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.clients, args.items = 4.0, 10, 200_000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "probe":
        probe(args.target, args.seconds, args.probe_interval, args.out)
        return 0
    if args.role == "flood":
        flood(args.target, args.seconds, args.seed, args.oversize_every, args.out)
        return 0
    quiet_logging()
    emit(environment())
    args.failed = False
    with server_process(note) as target:
        trio.run(client_main, target, args)
    return 1 if args.failed else 0


if __name__ == "__main__":
    sys.exit(main())
