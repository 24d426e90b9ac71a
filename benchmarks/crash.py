"""Owns the long crash run: the suite's crash test (``tests/crash_harness.py``) with more
kills, one summary JSON line on stdout; the run's problems, if any, on stderr.

A server in a child process is killed with SIGKILL at seeded points while writers and
watchers run, and restarted on the same port and data dir; after the last restart every
acknowledged write must be in the history, nothing refused anywhere, versions and
revisions never back, watchers without a gap. Exit status 1 if a check failed.

Run::

    .venv/bin/python benchmarks/crash.py --kills 200 --seed 7
    .venv/bin/python benchmarks/crash.py --kills 20 --storage memory   # the harness alone
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from pathlib import Path

import trio
from _common import REPO_ROOT, emit, make_note, quiet_logging

# The harness lives with the tests that run it in CI.
sys.path.insert(0, str(REPO_ROOT / "tests"))
from crash_harness import (
    STORAGES,
    CrashConfig,
    run_crash,
    seed_from_env,
    storage_available,
)

note = make_note("crash")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100, help="SIGKILLs (default 100)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the kill points and writes (default: DSPEX_CRASH_SEED, "
                        "else random; printed in the summary)")
    parser.add_argument("--storage", choices=STORAGES, default="sqlite",
                        help="server storage (default sqlite; memory checks only the last "
                        "session)")
    parser.add_argument("--max-writes-before-kill", type=int, default=40,
                        help="a kill comes 1 to N writes after the server is back (default 40)")
    parser.add_argument("--writers", type=int, default=2, help="writer connections (default 2)")
    parser.add_argument("--tasks-per-writer", type=int, default=4,
                        help="writes in flight per writer connection (default 4)")
    parser.add_argument("--watchers", type=int, default=2,
                        help="watcher connections (default 2)")
    parser.add_argument("--keep", metavar="DIR",
                        help="run in DIR and keep it (data dir, server.log) instead of a "
                        "temporary dir")
    args = parser.parse_args(argv)
    if args.kills < 0:
        parser.error("--kills must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Every kill makes each client log its reconnects; only errors (a lost session) stay.
    quiet_logging(logging.ERROR)
    if not storage_available(args.storage):
        note(f"storage {args.storage!r} is not available in this tree")
        return 2
    with contextlib.ExitStack() as stack:
        endpoint = ""
        if args.storage == "etcd":
            # The member the killed replica keeps its rows in: it stays up all run.
            from etcd_service import running_member

            etcd_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="dspex-etcd-"))
            endpoint = stack.enter_context(running_member(Path(etcd_dir))).endpoint
        config = CrashConfig(
            seed=args.seed if args.seed is not None else seed_from_env(),
            kills=args.kills, storage=args.storage,
            max_writes_before_kill=args.max_writes_before_kill, writers=args.writers,
            tasks_per_writer=args.tasks_per_writer, watchers=args.watchers,
            etcd_endpoint=endpoint,
        )
        note(f"seed {config.seed}, {config.kills} kills, storage {config.storage}")
        if args.keep:
            workdir = Path(args.keep)
            workdir.mkdir(parents=True, exist_ok=True)
            report = trio.run(run_crash, config, workdir)
        else:
            with tempfile.TemporaryDirectory(prefix="dspex-rx-crash-") as tmp:
                report = trio.run(run_crash, config, Path(tmp))
    emit(report.summary())
    for problem in report.problems:
        print(f"[crash] problem: {problem}", file=sys.stderr)
    if report.problems and report.server_log:
        print("[crash] server log tail:\n" + report.server_log, file=sys.stderr)
    if report.problems:
        note(f"FAILED: replay with --seed {config.seed} --kills {config.kills} "
             f"--storage {config.storage}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
