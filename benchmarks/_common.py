"""Helpers shared by the benchmark scripts: JSON-line output, quiet client logs, the server in
a child process, percentiles and the environment record.

The scripts run as ``python benchmarks/<script>.py``, so this module is imported as a
top-level ``_common`` (the script's folder is first on ``sys.path``).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import structlog
import trio

import dspex_rx

SERVER_START_TIMEOUT = 20.0
REPO_ROOT = Path(__file__).resolve().parent.parent


def concurrent_calls(requested: int | None, calls: int, concurrency: int, factor: int) -> int:
    """Calls for a concurrent row: ``requested``, else ``factor`` x ``calls``, rounded up to
    a multiple of ``concurrency`` so every task makes as many.

    >>> concurrent_calls(None, 100, 32, 4), concurrent_calls(640, 100, 32, 4)
    (416, 640)
    """
    wanted = factor * calls if requested is None else requested
    return -(-wanted // concurrency) * concurrency


def add_rate_flags(parser: Any, *, calls: int, factor: int, warmup_divisor: int,
                   unit: str = "calls", warmup_per: str = "op and mode",
                   repeats: int | None = 3) -> None:
    """The flags of a calls/s benchmark: ``--calls`` (sequential row), ``--concurrent-calls``,
    ``--concurrency``, ``--warmup`` and ``--repeats``; ``finish_rate_args`` fills their
    defaults once parsed. ``repeats=None``: 3, or what ``--quick`` sets."""
    parser.add_argument("--calls", type=int, default=calls,
                        help=f"{unit} per sequential row (default {calls})")
    parser.add_argument("--concurrent-calls", type=int, default=None,
                        help=f"{unit} per concurrent row (default {factor} x --calls, rounded "
                        "up to a multiple of --concurrency)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help=f"{unit} in flight in the concurrent rows (default 32)")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"warm-up {unit} per {warmup_per} (default calls / "
                        f"{warmup_divisor})")
    parser.add_argument("--repeats", type=int, default=repeats,
                        help="runs per row, interleaved; the figure is the median (default "
                        + ("3, 1 with --quick)" if repeats is None else f"{repeats})"))


def finish_rate_args(parser: Any, args: Any, *, factor: int, warmup_divisor: int,
                     warmup_min: int = 50, positive: tuple[str, ...] = ()) -> None:
    """After ``--quick`` has had its say: ``add_rate_flags``' defaults, and each count
    (``calls``, ``concurrency``, ``repeats`` and ``positive``) at least 1."""
    if args.repeats is None:
        args.repeats = 3
    require_positive(parser, args, "calls", "concurrency", "repeats", *positive)
    args.concurrent_calls = concurrent_calls(args.concurrent_calls, args.calls,
                                             args.concurrency, factor)
    if args.warmup is None:
        args.warmup = max(warmup_min, args.calls // warmup_divisor)


def require_positive(parser: Any, args: Any, *flags: str) -> None:
    """``parser.error`` for the first of ``flags`` (argparse dest names) below 1."""
    for flag in flags:
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")


def emit(record: dict[str, Any]) -> None:
    """Print one figure as one JSON line on stdout."""
    print(json.dumps(record), flush=True)


def quiet_logging(level: int = logging.WARNING) -> None:
    """Client-side log lines: ``level`` and up, on stderr, never into the JSON lines."""
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s")
    logging.getLogger().setLevel(level)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def make_note(prefix: str) -> Callable[[str], None]:
    """A progress printer for stderr: ``[prefix] message``."""

    def note(message: str) -> None:
        print(f"[{prefix}] {message}", file=sys.stderr, flush=True)

    return note


def port_from_file(proc: subprocess.Popen[bytes], port_file: Path, timeout: float,
                   who: str = "the server") -> int:
    """The port a ``serve --port-file`` child wrote, once it did; ``RuntimeError`` if the
    child exited first, ``TimeoutError`` after ``timeout`` seconds (a hang guard).

    Example: ``port = port_from_file(proc, Path(tmp) / "port", 20.0)``.
    """
    deadline = time.monotonic() + timeout
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None:
            raise RuntimeError(f"{who} exited early with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no port file from {who} after {timeout} s")
        time.sleep(0.02)
    return int(port_file.read_text().strip())


def stop_child(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM (a server shuts down gracefully; cProfile writes its file), then SIGKILL
    after ``timeout`` seconds; reaped either way.

    Example: ``stop_child(proc)`` in a ``finally``.
    """
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def server_process(
    note: Callable[[str], None], start_timeout: float = SERVER_START_TIMEOUT,
    storage: str = "memory",
) -> Iterator[str]:
    """Run ``dspex-rx serve`` in a child process (``--storage memory`` unless told, so the
    transport is what is measured; its data dir is a temp dir); yield its target."""
    with tempfile.TemporaryDirectory(prefix="dspex-rx-bench-") as tmp:
        port_file = Path(tmp) / "port"
        cmd = [
            sys.executable, "-m", "dspex_rx.server.cli", "serve",
            "--port", "0", "--port-file", str(port_file), "--log-level", "warning",
            "--storage", storage, "--data-dir", str(Path(tmp) / "data"),
        ]
        # The server's stdout goes to our stderr so stdout stays pure JSON lines.
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=sys.stderr)
        try:
            port = port_from_file(proc, port_file, start_timeout)
            note(f"server pid {proc.pid} on 127.0.0.1:{port}")
            yield f"127.0.0.1:{port}"
        finally:
            stop_child(proc)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100): the smallest value with at least
    ``q`` percent of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def environment() -> dict[str, Any]:
    return {
        "bench": "environment",
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "grpcio": grpc.__version__,
        "trio": trio.__version__,
        "numpy": np.__version__,
        "dspex_rx": dspex_rx.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def run_benchmark(
    client_main: Callable[[str, Any], Any], args: Any, note: Callable[[str], None]
) -> int:
    """Quiet the logs, print the environment line, start a server process, and run
    ``client_main(target, args)`` under trio against it; the server stops afterwards.

    Example::

        def main(argv=None): return run_benchmark(client_main, parse_args(argv), note)
    """
    quiet_logging()
    emit(environment())
    with server_process(note) as target:
        trio.run(client_main, target, args)
    return 0


# Awaitable calls to time: ``op(i)`` makes the i-th call.
Op = Callable[[int], Awaitable[Any]]


async def run_sequential(op: Op, calls: int) -> float:
    """Seconds for ``calls`` calls made one after another."""
    start = time.perf_counter()
    for i in range(calls):
        await op(i)
    return time.perf_counter() - start


async def run_concurrent(op: Op, calls: int, concurrency: int) -> float:
    """Seconds for ``calls`` calls spread over ``concurrency`` tasks (``calls`` divisible)."""
    per_task = calls // concurrency

    async def worker(offset: int) -> None:
        for i in range(offset, offset + per_task):
            await op(i)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for task in range(concurrency):
            nursery.start_soon(worker, task * per_task)
    return time.perf_counter() - start
