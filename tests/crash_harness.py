"""The crash harness: a ``dspex-rx serve`` child process killed with SIGKILL at seeded
points while writers and watchers run, restarted on the same port and data dir, and the
checks of what survived. ``test_crash_durability.py`` and ``benchmarks/crash.py`` run it.

One run (``run_crash``) has one session on a durable server: its writers and watchers
keep their connections across every kill (the client reconnects by itself), and after
the last restart the whole history is checked against what every client was told. On
the memory server (``storage="memory"``) a kill loses the session, so each restart
starts a fresh session with fresh clients and only the last one is checked: everything
but durability.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TextIO

import grpc
import trio
from crash_checks import INITIAL_VALUE, Entry, Ledger, check

import dspex_rx
from dspex_rx.client.actors import VariableUpdate
from dspex_rx.errors import DspexError, InvalidValueError, SessionNotFoundError

STORAGES = ("memory", "sqlite", "etcd")
SEED_ENV = "DSPEX_CRASH_SEED"
# Every writer's values are unique: (task number + 1) * VALUE_BASE + its sequence number.
# A refused write sends the negative of its unique value, against the constraint min 0.
VALUE_BASE = 1_000_000
# How long a writer waits before retrying after a transport error: a pace against a dead
# server (a failing call returns at once), not a timing anything depends on.
RETRY_PAUSE = 0.02
# The tree this module belongs to: the server child runs its code, not an installed copy.
REPO_ROOT = Path(__file__).resolve().parent.parent


class HarnessError(RuntimeError):
    """The run could not go on (no progress, a server that does not start)."""


def seed_from_env(default: int | None = None) -> int:
    """The seed: ``DSPEX_CRASH_SEED`` if set, else ``default``, else a fresh random one.

    >>> seed_from_env(7) if "DSPEX_CRASH_SEED" not in os.environ else 7
    7
    """
    text = os.environ.get(SEED_ENV, "").strip()
    if text:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{SEED_ENV} must be an integer, got {text!r}") from None
    return default if default is not None else random.SystemRandom().randrange(2**31)


@dataclass(frozen=True)
class CrashConfig:
    """What one crash run does. ``kills`` SIGKILLs, each after a seeded number of writes
    sent or acknowledged since the server came up (1 to ``max_writes_before_kill``);
    ``final_acks`` writes acknowledged after the last restart before the checks.

    >>> CrashConfig(seed=1, kills=3, storage="memory").durable
    False
    """

    seed: int
    kills: int = 20
    storage: str = "sqlite"
    variables: int = 4
    writers: int = 2
    tasks_per_writer: int = 4
    watchers: int = 2
    max_writes_before_kill: int = 40
    final_acks: int = 40
    refuse_share: float = 0.1
    history_size: int = 100_000
    # Hang guards, not timings: a phase that makes no progress this long fails the run.
    progress_guard: float = 30.0
    start_guard: float = 30.0
    # With storage "etcd": the member the killed server keeps its rows in (it stays up).
    etcd_endpoint: str = ""

    def __post_init__(self) -> None:
        if self.storage == "etcd" and not self.etcd_endpoint:
            raise ValueError("storage 'etcd' needs etcd_endpoint")
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {self.storage!r}")
        for name in ("variables", "writers", "tasks_per_writer", "max_writes_before_kill",
                     "final_acks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.kills < 0 or self.watchers < 0:
            raise ValueError("kills and watchers must not be negative")
        if not 0.0 <= self.refuse_share < 1.0:
            raise ValueError(f"refuse_share must be in [0, 1), got {self.refuse_share}")

    @property
    def durable(self) -> bool:
        """Whether the server keeps the session across a kill (all but ``memory``)."""
        return self.storage != "memory"


# ----------------------------------------------------------------------------- the server


@lru_cache(maxsize=1)
def serve_help() -> str:
    """``dspex-rx serve --help``, to see which storage flags this tree has."""
    return subprocess.run(
        [sys.executable, "-m", "dspex_rx.server.cli", "serve", "--help"],
        capture_output=True, text=True, check=True, cwd=REPO_ROOT,
    ).stdout


def storage_available(storage: str) -> bool:
    """Whether ``dspex-rx serve`` here can run ``storage`` (memory always can)."""
    if storage == "etcd":
        return "--etcd-endpoints" in serve_help()
    return storage == "memory" or "--data-dir" in serve_help()


def server_command(storage: str, data_dir: Path, history_size: int, port: int,
                   port_file: Path, etcd_endpoint: str = "", etcd_prefix: str = "",
                   ) -> list[str]:
    """``python -m dspex_rx.server.cli serve`` for ``storage`` in ``data_dir`` (or, for
    etcd, under ``etcd_prefix``, by default one named after it: replicas share one) on
    ``port`` (a tree without storage flags serves memory only)."""
    command = [sys.executable, "-m", "dspex_rx.server.cli", "serve", "--port", str(port),
               "--port-file", str(port_file), "--log-level", "warning", "--auth", "token",
               "--history-size", str(history_size)]
    if storage == "etcd":
        return [*command, "--storage", "etcd", "--etcd-endpoints", etcd_endpoint,
                "--etcd-prefix", etcd_prefix or f"crash-{data_dir.parent.name}/",
                "--etcd-max-txn-ops",
                "4096"]
    if "--data-dir" in serve_help():
        return [*command, "--storage", storage, "--data-dir", str(data_dir)]
    if storage != "memory":
        raise HarnessError(f"dspex-rx serve here has no --data-dir for {storage!r}")
    return command


class ServerProcess:
    """``python -m dspex_rx.server.cli serve`` as a child process: started on port 0 the
    first time and on that same port after every kill, so clients reconnect by themselves.

    Example: ``target = await server.start()``, later ``server.kill()`` (SIGKILL) and
    ``await server.start()`` again; ``await server.stop()`` at the end.
    """

    def __init__(self, workdir: Path, storage: str, history_size: int,
                 start_guard: float = 30.0, etcd_endpoint: str = "",
                 etcd_prefix: str = "") -> None:
        self.workdir = workdir
        self.storage = storage
        self.etcd_endpoint = etcd_endpoint
        self.etcd_prefix = etcd_prefix
        self.data_dir = workdir / "data"
        self.history_size = history_size
        self.start_guard = start_guard
        self.port = 0
        self.starts = 0
        self.kills = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "server.log"
        self._log: TextIO | None = None
        self.start_seconds: list[float] = []

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> str:
        """Start the server (the same port as before, if any); returns its target once it
        serves."""
        if self.proc is not None and self.proc.poll() is None:
            raise HarnessError("the server is still running")
        self.starts += 1
        port_file = self.workdir / f"port-{self.starts}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = server_command(self.storage, self.data_dir, self.history_size, self.port,
                             port_file, self.etcd_endpoint, self.etcd_prefix)
        if self._log is None:
            self._log = self.log_path.open("a")
        self._log.write(f"--- start {self.starts}: {' '.join(cmd)}\n")
        self._log.flush()
        began = time.monotonic()
        # From the tree this module belongs to, so the server runs the code under test.
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=REPO_ROOT)
        guard = began + self.start_guard  # a hang guard, not a timing assertion
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None:
                raise HarnessError(
                    f"the server exited with code {self.proc.returncode} on start "
                    f"{self.starts}; see {self.log_path}"
                )
            if time.monotonic() > guard:
                raise HarnessError(f"no port file after {self.start_guard} s (start "
                                   f"{self.starts}); see {self.log_path}")
            await trio.sleep(0.005)  # polls another process; no timing is asserted
        self.port = int(port_file.read_text().strip())
        self.start_seconds.append(time.monotonic() - began)
        return self.target

    def kill(self) -> None:
        """SIGKILL the server now (synchronous, so it lands exactly where it is called)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.kills += 1

    async def reap(self) -> None:
        """Wait until the killed server is gone (its port is free again)."""
        proc = self.proc
        if proc is not None:
            await trio.to_thread.run_sync(proc.wait)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not end; safe to call twice."""
        proc, self.proc = self.proc, None
        with trio.CancelScope(shield=True):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    await trio.to_thread.run_sync(lambda: proc.wait(timeout=10))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    await trio.to_thread.run_sync(proc.wait)
            if self._log is not None:
                self._log.close()
                self._log = None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines the server printed (for a failure message)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Client:
    """One connection of a writer or watcher, replaced if it loses its session."""

    label: str
    session: dspex_rx.SessionContext
    observers: list[Any] = field(default_factory=list)


class SessionRun:
    """One session's clients: writer connections with several tasks each, watchers with one
    observer per variable, all recording into one ``Ledger``.

    Example: ``run = await SessionRun.open(config, target, ledger, epoch=0)``, then
    ``await nursery.start(run.write)``; ``run.stop()``; ``await run.close()``.
    """

    def __init__(self, config: CrashConfig, target: str, ledger: Ledger, epoch: int) -> None:
        self.config = config
        self.target = target
        self.ledger = ledger
        self.epoch = epoch
        self.names = [f"crash_{i}" for i in range(config.variables)]
        self.writers: list[Client] = []
        self.watchers: list[Client] = []
        self.session_id = ""
        self.token: str | None = None
        self.stopping = False
        self.closed = False
        self.cancel_scope: trio.CancelScope | None = None
        self.writers_done = trio.Event()

    @classmethod
    async def open(cls, config: CrashConfig, target: str, ledger: Ledger,
                   epoch: int) -> SessionRun:
        """Create the session, register its variables, attach writers and watchers."""
        run = cls(config, target, ledger, epoch)
        first = await run._connect("w0", create=True)
        run.writers.append(Client("w0", first))
        for name in run.names:
            # One registration per variable: each version-1 entry has its own revision.
            await first.register_variable(name, "integer", INITIAL_VALUE,
                                          constraints={"min": 0})
        for i in range(1, config.writers):
            run.writers.append(Client(f"w{i}", await run._connect(f"w{i}")))
        for i in range(config.watchers):
            watcher = Client(f"watch{i}", await run._connect(f"watch{i}"))
            run._observe(watcher)
            run.watchers.append(watcher)
        for watcher in run.watchers:
            await watcher.session.sync()  # every subscription in force before any write
        return run

    async def _connect(self, label: str, create: bool = False) -> dspex_rx.SessionContext:
        guard = time.monotonic() + self.config.progress_guard  # a hang guard
        while True:
            session = dspex_rx.SessionContext(
                None if create else self.session_id, self.target, token=self.token,
                client_name=f"crash-{label}", timeout=30.0,
            )
            try:
                await session.initialize()
                break
            except dspex_rx.ServerUnavailableError:
                # gRPC shares one subchannel per target in a process: a new channel
                # inherits the reconnect backoff the old clients ran into while the server
                # was down, and fails fast until it ends.
                if time.monotonic() > guard:
                    raise
                await trio.sleep(RETRY_PAUSE)
        if create:
            self.session_id, self.token = session.session_id, session.token
        return session

    def _observe(self, watcher: Client) -> None:
        for name in self.names:
            def on_next(update: VariableUpdate, label: str = watcher.label) -> None:
                self.ledger.deliver(label, update)

            def on_error(error: Exception, label: str = watcher.label, var: str = name) -> None:
                self.ledger.watch_errors.append(f"{label} watching {var}: "
                                                f"{type(error).__name__}: {error}")

            watcher.observers.append(
                watcher.session.observe(name).subscribe(on_next=on_next, on_error=on_error)
            )

    async def write(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run every writer task until ``stop()`` (or cancelled)."""
        try:
            with trio.CancelScope() as scope:
                self.cancel_scope = scope
                async with trio.open_nursery() as nursery:
                    for w, client in enumerate(self.writers):
                        for t in range(self.config.tasks_per_writer):
                            number = w * self.config.tasks_per_writer + t
                            nursery.start_soon(self._writer, client, number)
                    task_status.started()
        finally:
            self.writers_done.set()

    async def _writer(self, client: Client, number: int) -> None:
        label = f"{client.label}.{number}"
        rng = random.Random(f"{self.config.seed}/{self.epoch}/{label}")
        seq = 0
        while not self.stopping:
            seq += 1
            name = rng.choice(self.names)
            refuse = rng.random() < self.config.refuse_share
            value = (number + 1) * VALUE_BASE + seq
            if refuse:
                value = -value
            write = self.ledger.send(label, name, value, refuse)
            try:
                version = await client.session.set_variable(name, value)
            except InvalidValueError as exc:
                self.ledger.finish(write, "refused", exc)
            except SessionNotFoundError as exc:
                self.ledger.finish(write, "maybe", exc)
                await self._session_gone(client, exc)
            except grpc.aio.AioRpcError as exc:
                # UNAVAILABLE, DEADLINE_EXCEEDED...: it may or may not have committed.
                self.ledger.finish(write, "maybe", f"{exc.code().name}: {exc.details()}")
                await trio.sleep(RETRY_PAUSE)
            except (DspexError, RuntimeError) as exc:
                self.ledger.finish(write, "error", exc)
                await trio.sleep(RETRY_PAUSE)
            else:
                self.ledger.ack(write, version)

    async def _session_gone(self, client: Client, exc: SessionNotFoundError) -> None:
        if not self.config.durable:
            # The memory server lost the session with the kill; this run is being replaced.
            await trio.sleep(RETRY_PAUSE)
            return
        problem = f"{client.label}: session not found after a restart: {exc}"
        if problem not in self.ledger.client_problems:
            self.ledger.client_problems.append(problem)
        self.ledger.fatal.set()
        if client.session.lost:
            # Keep writing through a new connection so the run reports everything.
            old = client.session
            try:
                client.session = await self._connect(client.label)
            except (DspexError, grpc.aio.AioRpcError, RuntimeError):
                await trio.sleep(RETRY_PAUSE)
                return
            with trio.move_on_after(5):  # a hang guard for a close nobody waits on
                await old.close()
        else:
            await trio.sleep(RETRY_PAUSE)

    def stop(self) -> None:
        """Let every writer finish its current call and end."""
        self.stopping = True

    def cancel(self) -> None:
        """End every writer now (a memory server lost the session anyway)."""
        self.stopping = True
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    async def sync_watchers(self) -> None:
        """Wait until every watcher has seen everything committed so far."""
        for watcher in self.watchers:
            await watcher.session.sync()

    async def read(self) -> tuple[dict[str, list[Entry]], dict[str, Any], list[str]]:
        """Each variable's whole history (oldest first), its current value, and the names
        whose history ran into expired versions."""
        reader = self.writers[0].session
        history: dict[str, list[Entry]] = {}
        current: dict[str, Any] = {}
        expired: list[str] = []
        page = 1000
        for name in self.names:
            entries: list[Entry] = []
            offset = 0
            while True:
                got = await reader.get_variable_history(name, limit=page, offset=offset)
                for item in got:
                    if item.get("expired"):
                        expired.append(name)
                    else:
                        entries.append(Entry(item["version"], item["value"], item["revision"]))
                if len(got) < page or any(item.get("expired") for item in got):
                    break
                offset += page
            history[name] = sorted(entries, key=lambda e: e.version)
            current[name] = await reader.get_variable(name, bypass_cache=True)
        return history, current, expired

    def reconnects(self) -> int:
        """Times the watchers' streams were reopened after a break."""
        total = 0
        for client in self.watchers + self.writers:
            hub = client.session._hub
            total += getattr(hub, "reconnects", 0) if hub is not None else 0
        return total

    async def close(self) -> None:
        """Dispose every observer and close every connection (a dead server is fine);
        safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self.cancel()
        for client in self.watchers + self.writers:
            for observer in client.observers:
                observer.dispose()
            client.observers.clear()
            with trio.move_on_after(10):  # a hang guard, not a timing assertion
                await client.session.close()


# ----------------------------------------------------------------------------- the run


@dataclass
class CrashReport:
    """What a crash run did and found; ``problems`` empty means every check passed."""

    seed: int
    storage: str
    kills: int
    seconds: float
    acked: int
    maybe: int
    refused: int
    errors: int
    deliveries: int
    resyncs: int
    reconnects: int
    server_start_seconds: list[float]
    problems: list[str]
    server_log: str = ""
    # The checked session's ledger and history, to look into a failure.
    ledger: Ledger | None = None
    history: dict[str, list[Entry]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The report as one JSON-ready dict (no problem list, only their count and the
        first few)."""
        starts = sorted(self.server_start_seconds)
        return {
            "bench": "crash", "storage": self.storage, "seed": self.seed,
            "kills": self.kills, "seconds": round(self.seconds, 2),
            "acked": self.acked, "maybe": self.maybe, "refused": self.refused,
            "errors": self.errors, "deliveries": self.deliveries, "resyncs": self.resyncs,
            "stream_reconnects": self.reconnects,
            "server_start_median_s": round(starts[len(starts) // 2], 3) if starts else None,
            "problems": len(self.problems),
            # Watchers told more than the store kept, apart from writes the store lost.
            "watch_problems": sum(1 for p in self.problems if p.startswith("watch")),
            "first_problems": self.problems[:5],
            "passed": not self.problems,
        }


async def run_crash(config: CrashConfig, workdir: Path) -> CrashReport:
    """Run ``config`` against a server in a child process with its data in ``workdir``.
    A run that cannot go on (no progress, the session gone) ends with that as a problem.

    Example: ``report = await run_crash(CrashConfig(seed=1, kills=20), tmp_path)``; then
    ``assert not report.problems``.
    """
    began = time.monotonic()
    server = ServerProcess(workdir, config.storage, config.history_size, config.start_guard,
                           config.etcd_endpoint)
    crash = _Crash(config, server)
    try:
        problems = await crash.run()
    except HarnessError as exc:
        problems = [f"the run stopped: {exc}", *crash.ledgers[-1].client_problems]
    except trio.TooSlowError:
        problems = ["the run stopped: the final checks made no progress (hang guard)"]
    finally:
        with trio.CancelScope(shield=True):
            for run in crash.runs:
                await run.close()
            await server.stop()
    ledgers = crash.ledgers
    return CrashReport(
        seed=config.seed, storage=config.storage, kills=server.kills,
        seconds=time.monotonic() - began,
        acked=sum(x.count("acked") for x in ledgers),
        maybe=sum(x.count("maybe") for x in ledgers),
        refused=sum(x.count("refused") for x in ledgers),
        errors=sum(x.count("error") for x in ledgers),
        deliveries=sum(len(x.deliveries) for x in ledgers),
        resyncs=sum(1 for x in ledgers for d in x.deliveries if d.update_type == "resync"),
        reconnects=crash.reconnects, server_start_seconds=server.start_seconds,
        problems=problems, server_log=server.log_tail() if problems else "",
        ledger=ledgers[-1], history=crash.history,
    )


class _Crash:
    """The orchestration of one run: sessions, kills, restarts, the final read."""

    def __init__(self, config: CrashConfig, server: ServerProcess) -> None:
        self.config = config
        self.server = server
        self.rng = random.Random(config.seed)
        self.ledgers: list[Ledger] = [Ledger()]
        self.runs: list[SessionRun] = []
        self.reconnects = 0
        self.history: dict[str, list[Entry]] = {}

    async def _session(self, nursery: trio.Nursery, epoch: int) -> SessionRun:
        run = await SessionRun.open(self.config, self.server.target, self.ledgers[-1], epoch)
        self.runs.append(run)
        await nursery.start(run.write)
        return run

    async def run(self) -> list[str]:
        await self.server.start()
        try:
            async with trio.open_nursery() as nursery:
                problems = await self._phases(nursery)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Only the orchestration raises here (writers catch their own errors).
            first = group.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        return problems

    async def _phases(self, nursery: trio.Nursery) -> list[str]:
        config, server = self.config, self.server
        run = await self._session(nursery, 0)
        for kill in range(config.kills):
            await _kill_at_random_point(config, self.rng, run, server, kill)
            await server.reap()
            await server.start()
            if config.durable:
                run.ledger.epoch += 1
                continue
            # The memory server forgot the session: new clients, a new session.
            run.cancel()
            await run.writers_done.wait()
            await run.close()
            self.ledgers.append(Ledger())
            self.ledgers[-1].epoch = kill + 1
            run = await self._session(nursery, kill + 1)
        ledger = self.ledgers[-1]
        await _wait_acks(config, ledger, config.final_acks, "after the last restart")
        run.stop()
        with trio.fail_after(config.progress_guard):  # a hang guard
            await run.writers_done.wait()
            history, current, expired = await run.read()
            # Everything committed up to the history read has reached every watcher.
            await run.sync_watchers()
        self.reconnects = sum(r.reconnects() for r in self.runs)
        self.history = history
        return check(ledger, history, current, expired=expired)


async def _kill_at_random_point(config: CrashConfig, rng: random.Random, run: SessionRun,
                                server: ServerProcess, kill: int) -> None:
    """SIGKILL the server right after a seeded number (1 to ``max_writes_before_kill``)
    of writes sent or acknowledged. Mostly counted once the restarted server acknowledged
    a write and every watcher's stream is back (so writes are in flight and events on
    their way); one kill in eight counts sends from the restart itself, which can land
    while the server is still recovering."""
    ledger = run.ledger
    kind = rng.choice(("send", "ack", "send", "ack", "send", "ack", "send", "early"))
    count = rng.randint(1, config.max_writes_before_kill)
    if kind != "early":
        await _wait_acks(config, ledger, 1, f"kill {kill + 1}: the first write since the start")
        with trio.move_on_after(config.progress_guard) as guard:  # a hang guard
            await run.sync_watchers()
        if guard.cancelled_caught:
            raise HarnessError(f"kill {kill + 1}: the watchers' streams did not come back")
    counted = "ack" if kind == "ack" else "send"

    def so_far() -> int:
        return ledger.acks if counted == "ack" else ledger.sends

    base = so_far()
    killed = trio.Event()

    def on_event(event: str) -> None:
        if event == counted and so_far() - base >= count and not killed.is_set():
            server.kill()
            ledger.on_event = None
            killed.set()

    ledger.on_event = on_event
    if not await _progress(config, ledger, killed):
        ledger.on_event = None
        raise HarnessError(
            f"kill {kill + 1}: waited for {count} writes {counted} since the restart, got "
            f"{so_far() - base}; problems so far: {ledger.client_problems[:3]}"
        )


async def _wait_acks(config: CrashConfig, ledger: Ledger, count: int, when: str) -> None:
    base = ledger.acks
    reached = trio.Event()

    def on_event(event: str) -> None:
        if ledger.acks - base >= count:
            reached.set()

    ledger.on_event = on_event
    made = await _progress(config, ledger, reached)
    ledger.on_event = None
    if not made:
        raise HarnessError(f"{when}: waited for {count} acknowledged writes, got "
                           f"{ledger.acks - base}; problems so far: "
                           f"{ledger.client_problems[:3]}")


async def _progress(config: CrashConfig, ledger: Ledger, done: trio.Event) -> bool:
    """Wait for ``done``; False if the ledger turned fatal or the hang guard ran out."""
    async with trio.open_nursery() as nursery:
        async def give_up() -> None:
            await ledger.fatal.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(give_up)
        with trio.move_on_after(config.progress_guard):  # a hang guard
            await done.wait()
        nursery.cancel_scope.cancel()
    return done.is_set()
