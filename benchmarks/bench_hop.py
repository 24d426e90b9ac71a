"""Owns the loop-host benchmark: what the trio <-> asyncio thread hop costs a grpc.aio call.

Against one ``dspex-rx serve`` child process, the same three workloads through three hosts of
grpc.aio, interleaved (a, b, c, a, b, c ...; the figure is each row's median):

* ``thread``: today's bridge, the loop on a private thread (``Transport(host="thread")``);
* ``trio``: the loop hosted in the trio run on the same thread (``Transport(host="trio")``,
  trio-asyncio);
* ``asyncio``: for reference, plain grpc.aio on a plain asyncio loop, no trio at all.

Figures (one JSON line each; progress on stderr):

* ``{"bench": "hop", "host": ..., "op": "echo", "mode": "sequential"|"concurrent"}``:
  Echo unary calls/s, one at a time and ``--concurrency`` in flight;
* ``{"bench": "hop", ..., "op": "stream_round_trip", "mode": "sequential"}``: Session-stream
  ping -> pong round trips/s, one in flight;
* ``cpu_us_per_call``: CPU time of the whole client process (every thread) per call, the
  figure that moves least when other programs share the cores;
* ``ratio_to_thread`` / ``cpu_ratio_to_thread``: the row's calls/s (CPU per call) over the
  ``thread`` host's in the same repeat, median over the repeats.

Run::

    .venv/bin/python benchmarks/bench_hop.py            # full
    .venv/bin/python benchmarks/bench_hop.py --quick    # a few seconds, for a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import trio
from _common import (
    add_rate_flags,
    emit,
    environment,
    finish_rate_args,
    make_note,
    quiet_logging,
    require_positive,
    server_process,
)

from dspex_rx.client.transport import Transport, plain_event_loop
from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire.channel import SERVICE_NAME
from dspex_rx.wire.security import token_metadata

ECHO = f"/{SERVICE_NAME}/Echo"
INIT = f"/{SERVICE_NAME}/InitializeSession"
SESSION = f"/{SERVICE_NAME}/Session"
HOSTS = ("thread", "trio", "trio_asyncio", "asyncio")

note = make_note("bench_hop")

# ----------------------------------------------------------------------------- trio hosts


async def _timed_trio(op: Callable[[], Awaitable[Any]], calls: int,
                      concurrency: int) -> tuple[float, float]:
    gc.collect()
    per_task = calls // concurrency
    start, cpu = time.perf_counter(), time.process_time()
    if concurrency == 1:
        for _ in range(calls):
            await op()
    else:
        async def worker() -> None:
            for _ in range(per_task):
                await op()

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    return _figures(per_task * concurrency, start, cpu)


def _figures(calls: int, start: float, cpu: float) -> tuple[float, float]:
    # calls/s of wall time, and CPU microseconds per call over every thread of this
    # process (the loop thread and gRPC's poller included): the second moves far less
    # than the first when other programs share the cores.
    return (calls / (time.perf_counter() - start),
            (time.process_time() - cpu) / calls * 1e6)


Figures = dict[str, tuple[float, float]]  # "op/mode" -> (calls/s, CPU us per call)


async def trio_client(target: str, host: str, args: argparse.Namespace) -> Figures:
    transport = Transport(target, timeout=30.0, host=host)
    await transport.open()
    try:
        async def echo() -> Any:
            return await transport.unary(ECHO, pb.EchoRequest(), pb.EchoResponse)

        await _timed_trio(echo, args.warmup, 1)
        figures = {
            "echo/sequential": await _timed_trio(echo, args.calls, 1),
            "echo/concurrent": await _timed_trio(echo, args.concurrent_calls,
                                                 args.concurrency),
        }
        reply = await transport.unary(INIT, pb.InitializeSessionRequest(client_name="hop"),
                                      pb.InitializeSessionResponse)
        stream = await transport.open_stream(SESSION, spb.ServerMessage,
                                             metadata=token_metadata(reply.session_token))
        try:
            await stream.send(spb.ClientMessage(open=spb.OpenStream(
                session_id=reply.session_id, client_id=reply.client_id)))
            nonce = 0

            async def until(control: str) -> None:
                while True:
                    batch = await stream.receive_batch()
                    assert batch is not None, "the stream ended"
                    if any(m.WhichOneof("control") == control for m in batch):
                        return

            await until("opened")

            async def ping() -> None:
                nonlocal nonce
                nonce += 1
                await stream.send(spb.ClientMessage(ping=spb.Ping(nonce=nonce)))
                await until("pong")

            await _timed_trio(ping, args.warmup, 1)
            figures["stream_round_trip/sequential"] = await _timed_trio(
                ping, args.stream_round_trips, 1)
        finally:
            await stream.close()
        return figures
    finally:
        await transport.close()


# ----------------------------------------------------------------------------- plain asyncio


async def _timed_aio(op: Callable[[], Awaitable[Any]], calls: int,
                     concurrency: int) -> tuple[float, float]:
    gc.collect()
    per_task = calls // concurrency

    async def worker() -> None:
        for _ in range(per_task):
            await op()

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _figures(per_task * concurrency, start, cpu)


async def asyncio_client(target: str, args: argparse.Namespace) -> Figures:
    async with grpc.aio.insecure_channel(target) as channel:
        echo_method = channel.unary_unary(
            ECHO, request_serializer=pb.EchoRequest.SerializeToString,
            response_deserializer=pb.EchoResponse.FromString)

        async def echo() -> Any:
            return await echo_method(pb.EchoRequest(), timeout=30.0)

        await _timed_aio(echo, args.warmup, 1)
        figures = {
            "echo/sequential": await _timed_aio(echo, args.calls, 1),
            "echo/concurrent": await _timed_aio(echo, args.concurrent_calls,
                                                args.concurrency),
        }
        init = channel.unary_unary(
            INIT, request_serializer=pb.InitializeSessionRequest.SerializeToString,
            response_deserializer=pb.InitializeSessionResponse.FromString)
        reply = await init(pb.InitializeSessionRequest(client_name="hop"))
        call = channel.stream_stream(
            SESSION, request_serializer=spb.ClientMessage.SerializeToString,
            response_deserializer=spb.ServerMessage.FromString,
        )(metadata=token_metadata(reply.session_token))
        await call.write(spb.ClientMessage(open=spb.OpenStream(
            session_id=reply.session_id, client_id=reply.client_id)))
        nonce = 0

        async def until(control: str) -> None:
            while (await call.read()).WhichOneof("control") != control:
                pass

        await until("opened")

        async def ping() -> None:
            nonlocal nonce
            nonce += 1
            await call.write(spb.ClientMessage(ping=spb.Ping(nonce=nonce)))
            await until("pong")

        await _timed_aio(ping, args.warmup, 1)
        figures["stream_round_trip/sequential"] = await _timed_aio(
            ping, args.stream_round_trips, 1)
        call.cancel()
        return figures


def run_host(host: str, target: str, args: argparse.Namespace) -> Figures:
    """One fresh run of ``host``'s client (its own trio run or asyncio loop)."""
    if host == "asyncio":
        # A plain selector loop, not asyncio.run's: with trio_asyncio imported (the trio
        # host imports it) asyncio's loop factory would make a trio-driven loop.
        with asyncio.Runner(loop_factory=plain_event_loop) as runner:
            return runner.run(asyncio_client(target, args))
    return trio.run(trio_client, target, host, args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logging()
    emit(environment())
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with server_process(note) as target:
        for repeat in range(args.repeats):
            for host in args.hosts:
                note(f"repeat {repeat + 1}/{args.repeats}: {host}")
                for key, figures in run_host(host, target, args).items():
                    runs.setdefault((host, key), []).append(figures)
    for (host, key), figures in runs.items():
        op, mode = key.split("/")
        rates, cpus = [f[0] for f in figures], [f[1] for f in figures]
        base = runs.get(("thread", key))
        record: dict[str, Any] = {
            "bench": "hop", "host": host, "op": op, "mode": mode,
            "concurrency": args.concurrency if mode == "concurrent" else 1,
            "per_s": round(statistics.median(rates), 1), "runs": [round(r) for r in rates],
            "cpu_us_per_call": round(statistics.median(cpus), 1),
        }
        if base:
            # Each repeat against the thread host's run just before it, then the median:
            # pairs share the machine's load of the moment.
            record["ratio_to_thread"] = round(statistics.median(
                r / b[0] for r, b in zip(rates, base, strict=True)), 3)
            record["cpu_ratio_to_thread"] = round(statistics.median(
                c / b[1] for c, b in zip(cpus, base, strict=True)), 3)
        emit(record)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The trio <-> asyncio hop: Echo calls/s and stream round trips/s through "
        "the loop-thread bridge, a loop hosted in trio, and plain asyncio; one JSON line each.")
    add_rate_flags(parser, calls=3000, factor=2, warmup_divisor=10, repeats=None)
    parser.add_argument("--stream-round-trips", type=int, default=3000,
                        help="ping -> pong round trips per stream row (default 3000)")
    parser.add_argument("--hosts", default=",".join(HOSTS),
                        help=f"comma-separated hosts to measure (default {','.join(HOSTS)})")
    parser.add_argument("--quick", action="store_true",
                        help="short smoke run: 200 calls, 320 concurrent, 200 round trips")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.stream_round_trips = 200, 200
        args.concurrent_calls = args.concurrent_calls or 320
        args.repeats = args.repeats or 1
    finish_rate_args(parser, args, factor=2, warmup_divisor=10,
                     positive=("stream_round_trips",))
    args.hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    unknown = sorted(set(args.hosts) - set(HOSTS))
    if unknown or not args.hosts:
        parser.error(f"--hosts takes {', '.join(HOSTS)}; got {unknown or 'none'}")
    require_positive(parser, args, "warmup")
    return args


if __name__ == "__main__":
    raise SystemExit(main())
