"""Owns the peers bench_peers.py measures dspex-rx against: a Redis server it starts and
stops, the raw etcd and Redis clients (asyncio) and the loop thread they run on.

etcd's calls are bench_etcd_raw.py's (its ``Ops``, ``run_concurrent`` and
``watch_latency``), so the raw etcd figures here and there come from the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import bench_etcd_raw
from _common import run_sequential, stop_child
from bench_etcd_raw import Ops, etcd_service

T = TypeVar("T")
PAYLOAD = bench_etcd_raw.PAYLOAD  # 64 bytes, about what one set_variable stores
REDIS_BINARY_ENV = "DSPEX_REDIS_BIN"
REDIS_START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
WAIT_TIMEOUT = 30.0  # seconds one expected watch event may take before the run fails
# Keyspace notifications for string commands only: SET publishes on
# __keyspace@0__:<key>, so the watcher sees the write itself, as etcd's watch does.
NOTIFY_EVENTS = "K$"
Op = Callable[[int], Awaitable[Any]]


class PeerUnavailable(RuntimeError):
    """A peer that is not installed here; the message says what is missing."""


async def time_rate(make_op: Callable[[int], Op], mode: str, calls: int,
                    concurrency: int) -> float:
    """Seconds for ``calls`` calls: one at a time on task 0's op, or over ``concurrency``
    asyncio tasks, task ``t`` on ``make_op(t)``."""
    if mode == "sequential":
        return await run_sequential(make_op(0), calls)
    return await bench_etcd_raw.run_concurrent(make_op, calls, concurrency)


# ----------------------------------------------------------------------------- etcd


class EtcdPeer:
    """Raw etcd through ``dspex_rx.etcd_v3``'s stubs on grpc.aio: Put, Range, put -> Watch
    (bench_etcd_raw.py's calls). Open, use and close it on one asyncio loop."""

    name = "etcd"
    calls = {"write": "Put", "read": "Range (linearizable)"}
    watch = "Put -> Watch on a channel of its own (bench_etcd_raw.watch_latency)"

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._stack = contextlib.AsyncExitStack()
        self._ops: Ops | None = None
        self._kv: Any = None

    async def open(self) -> None:
        stubs = await self._stack.enter_async_context(etcd_service.stubs(self.endpoint))
        self._kv = stubs.kv
        self._ops = Ops(stubs)

    async def close(self) -> None:
        await self._stack.aclose()

    def factory(self, op: str) -> Callable[[int], Op]:
        assert self._ops is not None, "open() first"
        return self._ops.put if op == "write" else self._ops.get

    async def rate(self, op: str, mode: str, calls: int, concurrency: int) -> float:
        return await time_rate(self.factory(op), mode, calls, concurrency)

    async def latencies(self, samples: int, warmup: int) -> list[float]:
        # watch_latency opens the watcher's channel each time: its warm-up runs on it too.
        await bench_etcd_raw.watch_latency(self.endpoint, self._kv, max(1, warmup))
        return await bench_etcd_raw.watch_latency(self.endpoint, self._kv, samples)


# ----------------------------------------------------------------------------- Redis


def redis_binary() -> str:
    """The redis-server to run: ``$DSPEX_REDIS_BIN``, else ``redis-server`` on PATH or in
    /usr/bin; ``PeerUnavailable`` naming what is missing (also when redis-py is)."""
    named = os.environ.get(REDIS_BINARY_ENV)
    if named:
        if not (os.path.isfile(named) and os.access(named, os.X_OK)):
            raise PeerUnavailable(f"{REDIS_BINARY_ENV}={named} is not an executable file")
        found: str | None = named
    else:
        found = shutil.which("redis-server") or shutil.which("redis-server",
                                                             path="/usr/bin:/usr/local/bin")
    if found is None:
        raise PeerUnavailable("no redis-server on PATH (Debian: apt-get install redis-server, "
                              "or `make redis`)")
    try:
        import redis.asyncio  # noqa: F401
    except ImportError as missing:
        raise PeerUnavailable(f"redis-py is not installed ({missing}); pip install "
                              "'dspex-rx[bench]'") from None
    return found


def redis_version(binary: str) -> str:
    """``redis-server --version``'s ``v=`` field ("Redis server v=7.0.15 sha=..." -> 7.0.15)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    return next((w[2:] for w in out.stdout.split() if w.startswith("v=")), out.stdout.strip())


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(binary: str, note: Callable[[str], None]) -> Iterator[int]:
    """A ``redis-server`` on 127.0.0.1 (a free port, a temp dir, no persistence, keyspace
    notifications for string commands) for the ``with`` block; yields its port and stops it
    after (SIGTERM, then SIGKILL), also on failure or Ctrl-C."""
    with tempfile.TemporaryDirectory(prefix="dspex-redis-bench-") as tmp:
        port = etcd_service.free_port()
        log = Path(tmp) / "redis.log"
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", tmp, "--logfile", str(log),
               "--daemonize", "no", "--notify-keyspace-events", NOTIFY_EVENTS]
        proc = subprocess.Popen(cmd, stdout=sys.stderr, stderr=sys.stderr)
        try:
            deadline = time.monotonic() + REDIS_START_TIMEOUT
            while not _pong(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    raise RuntimeError(f"redis-server did not start on port {port} "
                                       f"(exit code {proc.poll()}):\n{tail}")
                time.sleep(0.02)
            note(f"redis-server pid {proc.pid} on 127.0.0.1:{port}, dir {tmp}")
            yield port
        finally:
            stop_child(proc, STOP_TIMEOUT)


class RedisPeer:
    """Redis through redis-py's asyncio client: SET, GET, SET -> keyspace notification.
    One client (its connection pool grows to the calls in flight) for the calls, a second
    one for the subscriber. Open, use and close it on one asyncio loop."""

    name = "redis"
    calls = {"write": "SET", "read": "GET"}
    watch = (f"SET -> keyspace notification (notify-keyspace-events {NOTIFY_EVENTS}) to a "
             "subscriber on a client of its own; one SET at a time, the next once it arrived")

    def __init__(self, port: int) -> None:
        self.port = port
        self._client: Any = None
        self._subscriber: Any = None

    async def open(self) -> None:
        import redis.asyncio as aioredis

        self._client = aioredis.Redis(host="127.0.0.1", port=self.port)
        self._subscriber = aioredis.Redis(host="127.0.0.1", port=self.port)
        await self._client.ping()
        for task in range(64):  # the read rows' keys exist before the first GET
            await self._client.set(b"bench/kv/%d" % task, PAYLOAD)

    async def close(self) -> None:
        for client in (self._client, self._subscriber):
            if client is not None:
                await client.aclose()

    def factory(self, op: str) -> Callable[[int], Op]:
        client = self._client

        def make(task: int) -> Op:
            key = b"bench/kv/%d" % task
            if op == "write":
                async def write(i: int) -> Any:
                    return await client.set(key, PAYLOAD)
                return write

            async def read(i: int) -> Any:
                return await client.get(key)
            return read

        return make

    async def rate(self, op: str, mode: str, calls: int, concurrency: int) -> float:
        return await time_rate(self.factory(op), mode, calls, concurrency)

    async def latencies(self, samples: int, warmup: int) -> list[float]:
        key = b"bench/latency"
        pubsub = self._subscriber.pubsub()
        await pubsub.subscribe(b"__keyspace@0__:" + key)
        arrivals: list[float] = []
        arrived = asyncio.Event()

        async def listen() -> None:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    arrivals.append(time.perf_counter())
                    arrived.set()

        listener = asyncio.create_task(listen())
        latencies: list[float] = []
        try:
            for i in range(warmup + samples):
                arrived.clear()
                seen = len(arrivals)
                before = time.perf_counter()
                await self._client.set(key, b"%d" % i)
                while len(arrivals) == seen:
                    await asyncio.wait_for(arrived.wait(), WAIT_TIMEOUT)
                if i >= warmup:
                    latencies.append(arrivals[seen] - before)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await pubsub.aclose()
        if len(arrivals) != warmup + samples:
            raise RuntimeError(f"the subscriber saw {len(arrivals)} notifications for "
                               f"{warmup + samples} SETs")
        return latencies
