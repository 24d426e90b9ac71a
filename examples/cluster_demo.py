"""The `make cluster-demo` job: three `dspex-rx serve --storage etcd` replicas over one etcd
member on this machine; a writer on replica 1, watchers on replicas 2 and 3, then replica 2
is killed: its watcher's client moves to replica 3 and misses nothing; replica 2 restarted
serves what it missed.

Everything it starts (etcd, the replicas) runs in a temp dir on free loopback ports and is
stopped when it ends, also on Ctrl-C or SIGTERM. Run: ``python examples/cluster_demo.py``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import trio

import dspex_rx
from dspex_rx.client.updates import VariableUpdate

ROOT = Path(__file__).resolve().parent.parent
SESSION = "cluster_demo"
VARIABLE = "temperature"
# Hang guards, not timings: a replica serves within a couple of seconds of starting, and a
# watcher hears a write on another replica within milliseconds.
START_GUARD = 20.0
SEE_GUARD = 10.0
# etcd's default --max-txn-ops (128) is below what one busy replica's group commit can
# need; etcd and the replicas are given the same higher limit, as the README advises.
MAX_TXN_OPS = "4096"


def _etcd_service() -> ModuleType:
    # The tests' etcd launcher (free ports, temp data dir, health check), by path: the demo
    # starts etcd exactly as the etcd tests do, without making tests/ a package.
    spec = importlib.util.spec_from_file_location("etcd_service", ROOT / "tests" /
                                                  "etcd_service.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def serve_command() -> list[str]:
    """The ``dspex-rx`` command: the console script beside this Python, else ``-m``.

    >>> serve_command()[-1] in ("dspex-rx", "dspex_rx.server.cli")
    True
    """
    script = Path(sys.executable).parent / "dspex-rx"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "dspex_rx.server.cli"]


class Replica:
    """One ``dspex-rx serve --storage etcd`` process; ``start()`` returns once it serves.

    The port is picked by the server on the first start and kept, so ``start()`` after
    ``kill()`` brings the replica back at the same address.

    Example: ``Replica(2, endpoint, prefix, workdir).start().target`` is ``127.0.0.1:<port>``.
    """

    def __init__(self, number: int, endpoint: str, prefix: str, workdir: Path) -> None:
        self.number = number
        self.endpoint = endpoint
        self.prefix = prefix
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []  # every process it ever ran (checked gone at the end)

    @property
    def target(self) -> str:
        """``127.0.0.1:<port>``, the address a client connects to."""
        return f"127.0.0.1:{self.port}"

    def launch(self) -> None:
        """Start the process without waiting for it to serve (``wait_serving`` does)."""
        port_file = self.workdir / f"replica{self.number}.port"
        port_file.unlink(missing_ok=True)
        log = open(self.workdir / f"replica{self.number}.log", "ab")  # noqa: SIM115
        with log:
            self.proc = subprocess.Popen(
                [*serve_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--port-file", str(port_file), "--log-level", "warning",
                 "--storage", "etcd", "--etcd-endpoints", self.endpoint,
                 "--etcd-prefix", self.prefix, "--etcd-max-txn-ops", MAX_TXN_OPS],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        self.pids.append(self.proc.pid)

    def wait_serving(self) -> Replica:
        """Block until the process wrote its port (it serves), or raise with its log."""
        assert self.proc is not None
        port_file = self.workdir / f"replica{self.number}.port"
        deadline = time.monotonic() + START_GUARD
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.workdir / f"replica{self.number}.log").read_text(errors="replace")
                raise RuntimeError(f"replica {self.number} did not start:\n{log[-2000:]}")
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        return self

    def start(self) -> Replica:
        """``launch()`` and ``wait_serving()``."""
        self.launch()
        return self.wait_serving()

    def kill(self) -> None:
        """SIGKILL: the replica dies mid-stream, closing nothing on its way out."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 10 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


@contextmanager
def cluster(workdir: Path) -> Iterator[tuple[Any, list[Replica]]]:
    """One etcd member and three replicas over it (one fresh key prefix); all stopped
    after the block, however it ends.

    Example: ``with cluster(Path(tmp)) as (member, replicas): replicas[0].target``.
    """
    etcd_service = _etcd_service()
    member = etcd_service.EtcdMember(workdir / "etcd", name="dspex-demo",
                                     extra_args=["--max-txn-ops", MAX_TXN_OPS,
                                                 # as README's by-hand cluster: etcd keeps
                                                 # no revision the store does not need
                                                 "--auto-compaction-retention", "1h"])
    replicas: list[Replica] = []
    try:
        member.start()
        prefix = f"cluster-demo-{uuid.uuid4().hex[:8]}/"
        replicas = [Replica(n, member.endpoint, prefix, workdir) for n in (1, 2, 3)]
        for replica in replicas:  # all three start at once: each takes a second or so
            replica.launch()
        for replica in replicas:
            replica.wait_serving()
        yield member, replicas
    finally:
        for replica in replicas:
            replica.stop()
        member.remove()


class Watcher:
    """A client watching ``VARIABLE`` through ``targets`` (several: the first replica that
    answers, the next when it dies): prints and keeps every update.

    Example: ``nursery.start_soon(Watcher("watcher 3", [target], token).run)``.
    """

    def __init__(self, label: str, targets: list[str], token: str) -> None:
        self.label = label
        self.targets = targets
        self.token = token
        self.seen: list[VariableUpdate] = []
        self.changed = trio.Event()

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Join the session and print each update until cancelled."""
        session = await join(self.targets, self.token)
        try:
            async with session.watch_variable(VARIABLE) as watch:
                task_status.started(session)
                async for update in watch:
                    self.seen.append(update)
                    print(f"  [{self.label}] {update.name} = {update.value!r} "
                          f"(version {update.version}, revision {update.revision}, "
                          f"{update.update_type})")
                    self.changed.set()
                    self.changed = trio.Event()
        finally:
            with trio.CancelScope(shield=True):
                await session.close()

    async def wait_for(self, version: int) -> None:
        """Until this watcher has seen ``version`` (a hang guard ends the demo otherwise)."""
        with trio.fail_after(SEE_GUARD):
            while not any(u.version >= version for u in self.seen):
                await self.changed.wait()

    @property
    def versions(self) -> list[int]:
        """The versions seen, in the order seen."""
        return [u.version for u in self.seen]


async def join(target: str | list[str], token: str) -> dspex_rx.SessionContext:
    """Join the demo session through another replica (or the first of several that
    answers), once that replica has heard of it (its etcd watch brings the session over
    within milliseconds).

    Example: ``session = await join([replicas[1].target, replicas[2].target], token)``.
    """
    with trio.fail_after(SEE_GUARD):
        while True:
            session = dspex_rx.SessionContext(SESSION, target, token=token, create=False)
            try:
                return await session.initialize()
            except dspex_rx.SessionNotFoundError:
                await session.close()
                await trio.sleep(0.05)  # the replica has not caught up with etcd yet


async def read_at(target: str, token: str, version: int) -> Any:
    """``VARIABLE`` read through one replica once that replica holds ``version``.

    Example: ``await read_at(replicas[1].target, token, 7)`` is the value of version 7.
    """
    session = await join(target, token)
    try:
        with trio.fail_after(SEE_GUARD):
            while True:
                read = (await session.get_variables([VARIABLE], include_metadata=True)
                        )[VARIABLE]
                if read["version"] >= version:
                    return read["value"]
                await trio.sleep(0.01)  # its watch has not applied the write yet
    finally:
        await session.close()


async def write(writer: dspex_rx.SessionContext, value: float, *watchers: Watcher) -> int:
    """Write on replica 1 and wait until each of ``watchers`` has seen it."""
    print(f"[writer on replica 1] sets {VARIABLE} = {value!r}")
    version = await writer.set_variable(VARIABLE, value)
    for watcher in watchers:
        await watcher.wait_for(version)
    return version


async def demo(replicas: list[Replica]) -> dict[str, Any]:
    """The story, on a running cluster; returns what happened (for the test)."""
    first, second, third = replicas
    async with dspex_rx.connect(first.target, session_id=SESSION) as writer:
        await writer.register_variable(VARIABLE, "float", 0.5,
                                       constraints={"min": 0.0, "max": 2.0})
        print(f"[writer on replica 1] registered {VARIABLE} = 0.5 in session {SESSION}")
        assert writer.token is not None
        # Watcher 2 names replica 2 and then replica 3: its client uses the first that
        # answers and moves to the next when that one dies (issue #15's client failover).
        two = Watcher("watcher 2", [second.target, third.target], writer.token)
        three = Watcher("watcher 3", [third.target], writer.token)
        print("watcher 2 joins through replica 2 (replica 3 if 2 dies); watcher 3 through "
              "replica 3")
        async with trio.open_nursery() as nursery:
            await nursery.start(two.run)
            await nursery.start(three.run)
            await two.wait_for(1)
            await three.wait_for(1)

            print("\n--- writes on replica 1, seen through replicas 2 and 3 ---")
            for value in (0.6, 0.7, 0.8):
                await write(writer, value, two, three)

            print(f"\n--- replica 2 killed (SIGKILL, pid {second.pids[-1]}): watcher 2's "
                  "client moves to replica 3 and resumes from its last revision ---")
            second.kill()
            before_kill = len(two.seen)
            missed = [await write(writer, value, two, three) for value in (0.9, 1.0)]

            print(f"\n--- replica 2 restarted at {second.target}: it reads etcd and "
                  "serves what it missed ---")
            await trio.to_thread.run_sync(second.start)
            back = await join(second.target, writer.token)
            try:
                print(f"[a reader on replica 2] {VARIABLE} = "
                      f"{await back.get_variable(VARIABLE)!r}")
            finally:
                await back.close()
            last = await write(writer, 1.1, two, three)
            nursery.cancel_scope.cancel()

        # Another connection is not told the writer's positions: each replica is read
        # once its watch applied the last write (within milliseconds here).
        finals = [await read_at(replica.target, writer.token, last) for replica in replicas]
    print(f"\n{VARIABLE} read on replicas 1, 2, 3 at version {last}: {finals}")
    print(f"watcher 2 saw versions {two.versions}")
    print(f"watcher 3 saw versions {three.versions}")
    return {"two": two.versions, "three": three.versions, "finals": finals, "last": last,
            "missed": missed, "before_kill": before_kill,
            "resumed": [u.update_type for u in two.seen[before_kill:]]}


class _ReconnectNotes(logging.Handler):
    # The client logs each reconnect attempt as a long warning; the demo shows one line
    # and counts them (a failover is one: the watcher really was on the replica killed).
    reconnects = 0

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "watch_stream_reconnecting" not in text:
            print(text, file=sys.stderr)
            return
        self.reconnects += 1
        attempt = re.search(r"attempt=(\d+)", text)
        why = re.search(r'details = "([^"]*)', text)
        print(f"  [a watcher's client] stream broken, reconnecting (attempt "
              f"{attempt and attempt[1]}): {why and why[1].split('; last error')[0]}")


def _sigterm_as_ctrl_c(signum: int, frame: Any) -> None:
    # SIGTERM ends the demo the way Ctrl-C does (trio's own SIGINT handling included), so
    # the cleanup in ``cluster`` runs either way.
    os.kill(os.getpid(), signal.SIGINT)


def main() -> dict[str, Any]:
    """Start the cluster, tell the story, stop everything; returns what ``demo`` saw."""
    started = time.monotonic()
    notes = _ReconnectNotes(logging.WARNING)
    library = logging.getLogger("dspex_rx")
    library.addHandler(notes)
    library.propagate = False
    previous = signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    try:
        with tempfile.TemporaryDirectory(prefix="dspex-cluster-") as tmp, \
                cluster(Path(tmp)) as (member, replicas):
            print(f"etcd at {member.endpoint} (pid {member.pid}); replicas at "
                  + ", ".join(f"{r.target} (pid {r.pids[0]})" for r in replicas) + "\n",
                  flush=True)
            result = trio.run(demo, replicas)
            result["pids"] = [member.pid, *(pid for r in replicas for pid in r.pids)]
            result["reconnects"] = notes.reconnects
    finally:
        signal.signal(signal.SIGTERM, previous)
        library.removeHandler(notes)
        library.propagate = True
    print(f"\nstopped etcd and the replicas; {time.monotonic() - started:.1f} s in all")
    return result


if __name__ == "__main__":
    service = _etcd_service()
    try:
        service.find_binary()
    except service.EtcdUnavailable as missing:
        sys.exit(f"cluster demo: {missing}")
    try:
        main()
    except BaseException as stopped:
        # Ctrl-C arrives bare, or inside the group of a nursery it cancelled.
        interrupted = isinstance(stopped, KeyboardInterrupt) or (
            isinstance(stopped, BaseExceptionGroup)
            and stopped.subgroup(KeyboardInterrupt) is not None)
        if not interrupted:
            raise
        print("\ninterrupted: etcd and the replicas are stopped", file=sys.stderr)
        sys.exit(130)
