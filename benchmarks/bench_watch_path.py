"""Owns the watch-path breakdown: where the time goes between a write by client A and the
callback of client B's watch, stage by stage, and the before/after comparison of two trees.

Every stamp is ``time.perf_counter_ns()`` (CLOCK_MONOTONIC on Linux, so the server child's
stamps compare with the client's). The stamps are monkeypatched in by this script, in the
server child (``--serve-child``) and in the client; the product code has no switch for them.
Stamps are keyed by the probe variable's version, so each write's stages line up.

Stages, in order (each figure is the median of the time from the stage before):

* ``call_start``: A calls ``set_variable`` (the bench, trio thread).
* ``handler_entry``: the server's ``SetVariable`` method starts (grpc.aio handler).
* ``commit``: the store calls the stream's listener, right after the state changed.
* ``fanout_queued``: ``Subscriber`` queued the frame and woke the sender.
* ``sender_drained``: the stream's sender task runs again and starts encoding.
* ``encoded``: the frame is a ``ServerMessage``.
* ``reader_got``: B's transport reader on the loop thread has the message.
* ``trio_batch``: B's trio side took the batch from the inbox (for the hub's listener).
* ``decoded``: the hub decoded the event into a ``VariableUpdate``.
* ``callback``: B's ``observe(name).subscribe(callback)`` callback runs.

Off the chain (``{"bench": "watch_path_side"}``, timed from the stage named): ``handler_exit``
(A's answer leaves the handler, from ``fanout_queued``) and ``written`` (grpc.aio asks the
sender for its next message: the frame's write returned, from ``encoded``).

Output (JSON lines): ``{"bench": "watch_path_stage"}`` per stage, one
``{"bench": "watch_path"}`` summary, and with ``--compare TREE`` one
``{"bench": "watch_path_compare"}`` line: plain (unstamped) write -> callback medians of
this tree and TREE, runs interleaved (TREE, this, TREE, this...) and their ratio.

Run::

    .venv/bin/python benchmarks/bench_watch_path.py                 # about 5 s
    .venv/bin/python benchmarks/bench_watch_path.py --quick         # about 2 s
    .venv/bin/python benchmarks/bench_watch_path.py --compare /work/main --rounds 4
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio
from _common import (
    emit,
    environment,
    make_note,
    percentile,
    port_from_file,
    quiet_logging,
    stop_child,
)

import dspex_rx

HERE = Path(__file__).resolve()
WAIT_TIMEOUT = 10.0
START_TIMEOUT = 20.0
STAGES = [
    "call_start", "handler_entry", "commit", "fanout_queued", "sender_drained", "encoded",
    "reader_got", "trio_batch", "decoded", "callback",
]
# Off the chain above (B's reader may have the frame before the server's write returns),
# each timed from a stage of the chain: A's handler returned its answer (grpc.aio sends
# it next), and grpc.aio's write of the frame returned.
SIDE_STAGES = {"handler_exit": "fanout_queued", "written": "encoded"}
SERVER_STAGES = {"handler_exit", "handler_entry", "commit", "fanout_queued", "sender_drained",
                 "encoded", "written"}
PROBE = "watch_path_probe"
now = time.perf_counter_ns

# stage -> version -> ns; the first stamp of a version wins.
STAMPS: dict[str, dict[int, int]] = {s: {} for s in [*STAGES, *SIDE_STAGES]}


def stamp(stage: str, version: int, t: int) -> None:
    """Record ``t`` for ``stage`` of the write that made ``version`` (first one wins)."""
    STAMPS[stage].setdefault(version, t)


def message_versions(message: Any) -> Iterator[int]:
    """The versions a ``ServerMessage`` carries (none for control notes)."""
    for frame in getattr(message, "frames", ()):  # a Calls stream's ReplyFrame has none
        for event in frame.events:
            yield event.version


# ----------------------------------------------------------------------------- server child


def instrument_server() -> None:
    """Wrap the server's watch path with stamps (in the server child, before it starts)."""
    from dspex_rx.server import fanout, stream
    from dspex_rx.server.service import VariablesService

    entry: list[int] = []
    unary = VariablesService.__dict__["SetVariable"]
    set_method = unary.method

    async def set_variable(service: Any, request: Any, context: Any) -> Any:
        entry.append(now())
        response = await set_method(service, request, context)
        stamp("handler_exit", response.variable.version, now())
        return response

    unary.method = set_variable

    on_commit = fanout.Subscriber.on_commit
    deliver = fanout.Subscriber._deliver

    def commit(self: Any, c: Any) -> None:
        t = now()
        if c is not None:
            for event in c.events:
                stamp("commit", event.record.version, t)
                if entry:
                    stamp("handler_entry", event.record.version, entry[-1])
        on_commit(self, c)

    def delivered(self: Any, c: Any, foreign: bool) -> None:
        queued = self.queued
        deliver(self, c, foreign)
        if self.queued > queued:
            t = now()
            for event in c.events:
                stamp("fanout_queued", event.record.version, t)

    fanout.Subscriber.on_commit = commit  # type: ignore[method-assign]
    fanout.Subscriber._deliver = delivered  # type: ignore[method-assign]

    packed = stream._packed

    def packed_stamped(items: list[Any], limits: Any) -> Any:
        t = now()
        out = packed(items, limits)
        t2 = now()
        for item in items:
            for event in getattr(item, "events", ()):
                stamp("sender_drained", event.record.version, t)
                stamp("encoded", event.record.version, t2)
        return out

    stream._packed = packed_stamped  # type: ignore[assignment]

    session = VariablesService.__dict__["Session"]

    async def session_stamped(service: Any, requests: Any, context: Any) -> Any:
        async for message in session(service, requests, context):
            yield message
            t = now()  # grpc.aio resumes the generator once the write returned
            for version in message_versions(message):
                stamp("written", version, t)

    VariablesService.Session = session_stamped  # type: ignore[assignment]


def serve_child(port_file: str, stamp_file: str) -> int:
    """The server child: instrumented unless ``stamp_file`` is empty; stamps saved at exit."""
    from dspex_rx.server.cli import main

    if stamp_file:
        instrument_server()
    with tempfile.TemporaryDirectory(prefix="dspex-rx-watchpath-") as tmp:
        code = main(["serve", "--port", "0", "--port-file", port_file, "--log-level",
                     "warning", "--storage", "memory", "--data-dir", str(Path(tmp) / "d")])
    if stamp_file:
        Path(stamp_file).write_text(json.dumps({s: STAMPS[s] for s in SERVER_STAGES}))
    return code


@contextmanager
def server(note: Callable[[str], None], stamped: bool) -> Iterator[tuple[str, Path]]:
    """Run the server child; yield its target and the file its stamps land in at exit."""
    with tempfile.TemporaryDirectory(prefix="dspex-rx-bench-") as tmp:
        port_file, stamp_file = Path(tmp) / "port", Path(tmp) / "stamps.json"
        cmd = [sys.executable, str(HERE), "--serve-child", str(port_file),
               str(stamp_file) if stamped else ""]
        proc = subprocess.Popen(cmd, stdout=sys.stderr)
        try:
            port = port_from_file(proc, port_file, START_TIMEOUT)
            note(f"server pid {proc.pid} on 127.0.0.1:{port}")
            yield f"127.0.0.1:{port}", stamp_file
        finally:
            stop_child(proc)
            if stamped and stamp_file.exists():  # written by the child as it exits
                for stage, by_version in json.loads(stamp_file.read_text()).items():
                    STAMPS[stage].update({int(v): t for v, t in by_version.items()})


# ----------------------------------------------------------------------------- client


def instrument_client() -> None:
    """Wrap the client's watch path with stamps (in this process, before connecting)."""
    from dspex_rx.client import transport, watch_hub

    kick = transport.Stream._kick

    def kicked(self: Any) -> None:
        if self._inbox:
            t = now()
            for version in message_versions(self._inbox[-1]):
                stamp("reader_got", version, t)
        kick(self)

    transport.Stream._kick = kicked  # type: ignore[method-assign]

    # Every batch leaves the inbox through _drain, for the hub's listener as for
    # receive_batch.
    drain = transport.Stream._drain

    def drained(self: Any) -> Any:
        batch = drain(self)
        t = now()
        for message in batch:
            for version in message_versions(message):
                stamp("trio_batch", version, t)
        return batch

    transport.Stream._drain = drained  # type: ignore[method-assign]

    decode = watch_hub.update_from_pb

    def decoded(event: Any, conflated: bool = False) -> Any:
        update = decode(event, conflated)
        stamp("decoded", update.version, now())
        return update

    watch_hub.update_from_pb = decoded  # type: ignore[assignment]


async def writes(target: str, samples: int, warmup: int) -> list[tuple[int, int, int]]:
    """A writes ``warmup + samples`` values one at a time, waiting each time for B's
    callback; returns (version, write -> callback ns, A's call ns) of the measured ones."""
    async with (
        dspex_rx.connect(target, client_name="bench_watch_path-a") as a,
        dspex_rx.connect(target, session_id=a.session_id, token=a.token,
                         client_name="bench_watch_path-b") as b,
    ):
        await a.register_variable(PROBE, "float", 0.0)
        wanted = 0
        arrived = trio.Event()

        def on_update(update: Any) -> None:
            stamp("callback", update.version, now())
            if update.version >= wanted:
                arrived.set()

        subscription = b.observe(PROBE, include_initial=False).subscribe(on_update)
        out = []
        try:
            await b.sync()
            for i in range(warmup + samples):
                start = now()
                version = await a.set_variable(PROBE, float(i + 1))
                returned = now()
                stamp("call_start", version, start)
                if version not in STAMPS["callback"]:
                    wanted, arrived = version, trio.Event()
                    with trio.fail_after(WAIT_TIMEOUT):
                        await arrived.wait()
                if i >= warmup:
                    out.append((version, STAMPS["callback"][version] - start,
                                returned - start))
        finally:
            subscription.dispose()
        return out


def run_plain(args: argparse.Namespace, note: Callable[[str], None]) -> dict[str, Any]:
    """Write -> callback with nothing stamped but the two ends."""
    with server(note, stamped=False) as (target, _):
        measured = trio.run(writes, target, args.samples, args.warmup)
    lat = [ns for _, ns, _ in measured]
    call = [ns for _, _, ns in measured]
    return {"bench": "watch_path_plain", "samples": len(lat),
            "median_ms": round(statistics.median(lat) / 1e6, 4),
            "p99_ms": round(percentile(lat, 99) / 1e6, 4),
            "writer_call_median_ms": round(statistics.median(call) / 1e6, 4)}


def run_stages(args: argparse.Namespace, note: Callable[[str], None]) -> list[dict[str, Any]]:
    """The stamped run: per-stage medians."""
    instrument_client()
    with server(note, stamped=True) as (target, _):
        measured = trio.run(writes, target, args.samples, args.warmup)
    versions = [v for v, _, _ in measured if all(v in STAMPS[s] for s in STAGES)]
    if len(versions) < len(measured) * 0.9:
        raise AssertionError(f"only {len(versions)} of {len(measured)} writes stamped fully")
    lines = []
    total = [STAMPS["callback"][v] - STAMPS["call_start"][v] for v in versions]
    for before, stage in itertools.pairwise(STAGES):
        deltas = [STAMPS[stage][v] - STAMPS[before][v] for v in versions]
        lines.append({
            "bench": "watch_path_stage", "stage": stage, "from": before,
            "where": "server" if stage in SERVER_STAGES else "client",
            "median_us": round(statistics.median(deltas) / 1e3, 1),
            "p99_us": round(percentile(deltas, 99) / 1e3, 1),
        })
    for stage, before in SIDE_STAGES.items():
        have = [v for v in versions if v in STAMPS[stage]]
        lines.append({
            "bench": "watch_path_side", "stage": stage, "from": before,
            "median_us": round(statistics.median(
                [STAMPS[stage][v] - STAMPS[before][v] for v in have]) / 1e3, 1),
        })
    lines.append({
        "bench": "watch_path", "samples": len(versions),
        "median_ms": round(statistics.median(total) / 1e6, 4),
        "p99_ms": round(percentile(total, 99) / 1e6, 4),
        "sum_of_stage_medians_ms": round(sum(
            x["median_us"] for x in lines if x["bench"] == "watch_path_stage") / 1e3, 4),
        "stamped": "every stage above (the stamps cost a little)",
    })
    return lines


def run_compare(args: argparse.Namespace, note: Callable[[str], None]) -> dict[str, Any]:
    """Plain runs of this tree and ``--compare``'s, interleaved, each in its own process."""
    ours = str(HERE.parent.parent)
    trees = {"baseline": args.compare, "this": ours}
    runs: dict[str, list[float]] = {k: [] for k in trees}
    calls: dict[str, list[float]] = {k: [] for k in trees}
    for r in range(args.rounds):
        for key, tree in trees.items():
            env = dict(os.environ, PYTHONPATH=tree)
            out = subprocess.run(
                [sys.executable, str(HERE), "--plain", "--samples", str(args.samples),
                 "--warmup", str(args.warmup)],
                env=env, check=True, capture_output=True, text=True,
            ).stdout
            line = json.loads(out.strip().splitlines()[-1])
            note(f"round {r + 1} {key}: {line['median_ms']} ms")
            runs[key].append(line["median_ms"])
            calls[key].append(line["writer_call_median_ms"])
    base, this = statistics.median(runs["baseline"]), statistics.median(runs["this"])
    return {"bench": "watch_path_compare", "baseline": args.compare, "this_tree": ours,
            "rounds": args.rounds, "samples": args.samples,
            "baseline_median_ms": round(base, 4), "this_median_ms": round(this, 4),
            "baseline_runs_ms": runs["baseline"], "this_runs_ms": runs["this"],
            "ratio_this_to_baseline": round(this / base, 3),
            "writer_call_ratio": round(statistics.median(calls["this"])
                                       / statistics.median(calls["baseline"]), 3)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000, help="measured writes")
    parser.add_argument("--warmup", type=int, default=200, help="writes before measuring")
    parser.add_argument("--quick", action="store_true", help="300 samples, 50 warm-up")
    parser.add_argument("--plain", action="store_true",
                        help="no stamps: one write -> callback line")
    parser.add_argument("--compare", metavar="TREE",
                        help="compare plain runs with the dspex-rx tree at TREE")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (--compare)")
    parser.add_argument("--serve-child", nargs=2, metavar=("PORT_FILE", "STAMP_FILE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.warmup = 300, 50
    if args.samples < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--samples and --rounds must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or the server child)."""
    args = parse_args(argv)
    if args.serve_child:
        return serve_child(*args.serve_child)
    quiet_logging()
    note = make_note("bench_watch_path")
    if args.plain:
        emit(run_plain(args, note))
        return 0
    if args.compare:
        emit(run_compare(args, note))
        return 0
    for line in run_stages(args, note):
        emit(line)
    emit({"bench": "environment", **environment()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
