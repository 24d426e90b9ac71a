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

import bisect
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TextIO

import grpc
import trio

import dspex_rx
from dspex_rx.client.actors import VariableUpdate
from dspex_rx.errors import DspexError, InvalidValueError, SessionNotFoundError

STORAGES = ("memory", "sqlite")
SEED_ENV = "DSPEX_CRASH_SEED"
# Every writer's values are unique: (task number + 1) * VALUE_BASE + its sequence number.
# A refused write sends the negative of its unique value, against the constraint min 0.
VALUE_BASE = 1_000_000
INITIAL_VALUE = 0
# How long a writer waits before retrying after a transport error: a pace against a dead
# server (a failing call returns at once), not a timing anything depends on.
RETRY_PAUSE = 0.02
# Update types a watcher of these variables may see (no deletes, no dependencies).
WATCH_TYPES = ("initial", "value_change", "resync")
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

    def __post_init__(self) -> None:
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
    return storage == "memory" or "--data-dir" in serve_help()


def server_command(storage: str, data_dir: Path, history_size: int, port: int,
                   port_file: Path) -> list[str]:
    """``python -m dspex_rx.server.cli serve`` for ``storage`` in ``data_dir`` on ``port``
    (a tree without storage flags serves memory only)."""
    command = [sys.executable, "-m", "dspex_rx.server.cli", "serve", "--port", str(port),
               "--port-file", str(port_file), "--log-level", "warning", "--auth", "token",
               "--history-size", str(history_size)]
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
                 start_guard: float = 30.0) -> None:
        self.workdir = workdir
        self.storage = storage
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
                             port_file)
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


# ----------------------------------------------------------------------------- what happened


@dataclass
class Write:
    """One set_variable a writer made, and what it was told. ``outcome``: ``pending``,
    ``acked`` (the server answered with ``version``), ``refused`` (validation said no, so
    it must never appear), ``maybe`` (a transport error: it may or may not have committed)
    or ``error`` (an answer nothing expected; also of unknown outcome)."""

    writer: str
    name: str
    value: int
    meant_to_refuse: bool
    sent: int
    epoch: int
    outcome: str = "pending"
    version: int | None = None
    done: int | None = None
    error: str = ""


@dataclass(frozen=True)
class Delivery:
    """One update a watcher's observer got."""

    watcher: str
    name: str
    version: int
    revision: int
    value: Any
    update_type: str
    conflated: bool
    tick: int


@dataclass(frozen=True)
class Entry:
    """One version of a variable as its history tells it after the last restart."""

    version: int
    value: Any
    revision: int


class Ledger:
    """Everything the clients did and were told, in one order (``tick``): writes sent and
    answered, watcher deliveries, client failures. ``on_event`` is called after each send
    and each acknowledgement: the kill switch lives there.

    >>> ledger = Ledger()
    >>> w = ledger.send("w0", "x", 1_000_001, False)
    >>> ledger.ack(w, 2)
    >>> (w.outcome, w.version, ledger.acks)
    ('acked', 2, 1)
    """

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self.deliveries: list[Delivery] = []
        self.watch_errors: list[str] = []
        self.client_problems: list[str] = []
        self.tick = 0
        self.sends = 0
        self.acks = 0
        self.epoch = 0
        self.on_event: Callable[[str], None] | None = None
        # Set when going on is pointless (a durable server lost the session): the phases
        # waiting for progress give up at once instead of at their hang guard.
        self.fatal = trio.Event()

    def _next(self) -> int:
        self.tick += 1
        return self.tick

    def send(self, writer: str, name: str, value: int, meant_to_refuse: bool) -> Write:
        """Record a write about to be sent."""
        write = Write(writer, name, value, meant_to_refuse, self._next(), self.epoch)
        self.writes.append(write)
        self.sends += 1
        if self.on_event is not None:
            self.on_event("send")
        return write

    def ack(self, write: Write, version: int) -> None:
        """The server acknowledged ``write`` at ``version``."""
        write.outcome, write.version, write.done = "acked", version, self._next()
        self.acks += 1
        if self.on_event is not None:
            self.on_event("ack")

    def finish(self, write: Write, outcome: str, error: BaseException | str) -> None:
        """``write`` ended without an acknowledgement: ``refused``, ``maybe`` or ``error``."""
        write.outcome, write.done = outcome, self._next()
        write.error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"

    def deliver(self, watcher: str, update: VariableUpdate) -> None:
        """A watcher's observer got ``update``."""
        self.deliveries.append(Delivery(
            watcher, update.name, update.version, update.revision, update.value,
            update.update_type, update.conflated, self._next(),
        ))

    def count(self, outcome: str) -> int:
        """How many writes ended with ``outcome``."""
        return sum(1 for w in self.writes if w.outcome == outcome)


# ----------------------------------------------------------------------------- the checks


def check(
    ledger: Ledger,
    history: Mapping[str, Sequence[Entry]],
    current: Mapping[str, Any],
    *,
    expired: Iterable[str] = (),
) -> list[str]:
    """Every way the store broke a promise to its clients, one line each; empty is a pass.

    ``history`` is each variable's whole history read after the last restart (oldest
    first), ``current`` each variable's value from ``get_variable``; ``expired`` names the
    variables whose history page ended in an expired marker.

    >>> ledger = Ledger()
    >>> ledger.ack(ledger.send("w0", "x", 1_000_001, False), 2)
    >>> history = {"x": [Entry(1, 0, 5), Entry(2, 1_000_001, 9)]}
    >>> check(ledger, history, {"x": 1_000_001})
    []
    >>> check(ledger, {"x": [Entry(1, 0, 5)]}, {"x": 0})
    ['lost: x acknowledged at version 2 with 1000001, history ends at version 1']
    """
    problems: list[str] = [f"history of {name} reached expired versions" for name in expired]
    problems += list(ledger.client_problems)
    problems += [f"watch ended: {error}" for error in ledger.watch_errors]
    truth: dict[str, dict[int, Entry]] = {}
    written: dict[int, Write] = {}
    for write in ledger.writes:
        written[write.value] = write
    seen_values: dict[Any, tuple[str, int]] = {}
    seen_revisions: dict[int, tuple[str, int]] = {}
    for name, entries in history.items():
        by_version: dict[int, Entry] = {}
        previous: Entry | None = None
        for entry in entries:
            if previous is not None:
                if entry.version != previous.version + 1:
                    problems.append(f"history of {name}: version {entry.version} follows "
                                    f"{previous.version}")
                if entry.revision <= previous.revision:
                    problems.append(f"history of {name}: version {entry.version} has revision "
                                    f"{entry.revision}, not above {previous.revision} of "
                                    f"version {previous.version}")
            previous = entry
            by_version[entry.version] = entry
            if entry.revision in seen_revisions:
                other = seen_revisions[entry.revision]
                problems.append(f"revision {entry.revision} used twice: {name} v{entry.version}"
                                f" and {other[0]} v{other[1]}")
            seen_revisions[entry.revision] = (name, entry.version)
            if entry.version == 1 and entry.value == INITIAL_VALUE:
                continue
            if entry.value in seen_values:
                other = seen_values[entry.value]
                problems.append(f"value {entry.value} stored twice: {name} v{entry.version} "
                                f"and {other[0]} v{other[1]}")
            seen_values[entry.value] = (name, entry.version)
            found = written.get(entry.value) if isinstance(entry.value, int) else None
            if found is None:
                problems.append(f"history of {name} v{entry.version} holds {entry.value!r}, "
                                "which no writer sent")
            elif found.meant_to_refuse:
                problems.append(f"refused value {entry.value} stored: {name} v{entry.version} "
                                f"(the writer was told {found.outcome})")
            elif found.name != name:
                problems.append(f"value {entry.value} sent to {found.name} is stored in {name}")
        truth[name] = by_version
        if entries and name in current and current[name] != entries[-1].value:
            problems.append(f"{name}: get_variable says {current[name]!r}, history's newest "
                            f"(v{entries[-1].version}) is {entries[-1].value!r}")
    problems += _check_writes(ledger.writes, truth)
    problems += _check_order(ledger.writes, truth)
    problems += _check_watchers(ledger.deliveries, truth, written)
    return problems


def _check_writes(writes: Sequence[Write], truth: Mapping[str, Mapping[int, Entry]]) -> list[str]:
    problems = []
    for write in writes:
        if write.meant_to_refuse and write.outcome == "acked":
            problems.append(f"{write.writer}: {write.name}={write.value} breaks min 0 and was "
                            f"acknowledged at version {write.version}")
        elif not write.meant_to_refuse and write.outcome == "refused":
            problems.append(f"{write.writer}: {write.name}={write.value} was refused: "
                            f"{write.error}")
        if write.outcome == "error":
            problems.append(f"{write.writer}: {write.name}={write.value} failed: {write.error}")
        if write.outcome != "acked" or write.meant_to_refuse:
            continue
        assert write.version is not None
        entries = truth.get(write.name, {})
        entry = entries.get(write.version)
        if entry is None:
            newest = max(entries, default=0)
            problems.append(f"lost: {write.name} acknowledged at version {write.version} with "
                            f"{write.value}, history ends at version {newest}")
        elif entry.value != write.value:
            problems.append(f"lost: {write.name} acknowledged at version {write.version} with "
                            f"{write.value}, history has {entry.value!r} there")
    return problems


def _check_order(writes: Sequence[Write], truth: Mapping[str, Mapping[int, Entry]]) -> list[str]:
    """A write acknowledged before another was sent has the lower revision (store-wide)
    and, on the same variable, the lower version: neither ever goes back, restarts
    included."""
    acked = [w for w in writes if w.outcome == "acked" and not w.meant_to_refuse
             and w.version is not None and w.version in truth.get(w.name, {})]
    problems = []
    by_done = sorted(acked, key=lambda w: w.done or 0)
    done_ticks = [w.done or 0 for w in by_done]
    # Prefix maxima over acknowledgement order: the newest revision (and per variable the
    # newest version) acknowledged before each tick.
    best_rev: list[tuple[int, Write]] = []
    best_version: dict[str, list[tuple[int, int, Write]]] = {}
    top: tuple[int, Write] | None = None
    for w in by_done:
        revision = truth[w.name][w.version].revision  # type: ignore[index]
        if top is None or revision > top[0]:
            top = (revision, w)
        best_rev.append(top)
        per = best_version.setdefault(w.name, [])
        version = w.version or 0
        if not per or version > per[-1][1]:
            per.append((w.done or 0, version, w))
    for w in acked:
        index = bisect.bisect_left(done_ticks, w.sent) - 1
        revision = truth[w.name][w.version].revision  # type: ignore[index]
        if index >= 0 and best_rev[index][0] >= revision:
            before = best_rev[index][1]
            problems.append(f"revision went back: {w.name} v{w.version} (sent after "
                            f"{before.name} v{before.version} was acknowledged at revision "
                            f"{best_rev[index][0]}) has revision {revision}")
        per = best_version.get(w.name, [])
        ticks = [p[0] for p in per]
        at = bisect.bisect_left(ticks, w.sent) - 1
        if at >= 0 and per[at][1] >= (w.version or 0):
            problems.append(f"version went back: {w.name} got v{w.version} for a write sent "
                            f"after v{per[at][1]} was acknowledged")
    return problems


def _check_watchers(
    deliveries: Sequence[Delivery],
    truth: Mapping[str, Mapping[int, Entry]],
    written: Mapping[int, Write],
) -> list[str]:
    problems = []
    streams: dict[tuple[str, str], list[Delivery]] = {}
    for d in deliveries:
        streams.setdefault((d.watcher, d.name), []).append(d)
    for (watcher, name), seen in sorted(streams.items()):
        entries = truth.get(name, {})
        where = f"{watcher} watching {name}"
        previous: Delivery | None = None
        for d in seen:
            if d.update_type not in WATCH_TYPES:
                problems.append(f"{where}: unexpected {d.update_type} at v{d.version}")
            write = written.get(d.value) if isinstance(d.value, int) else None
            if write is not None and write.meant_to_refuse:
                problems.append(f"{where}: saw refused value {d.value} at v{d.version}")
            entry = entries.get(d.version)
            if entry is None:
                problems.append(f"{where}: saw v{d.version}={d.value!r}, which history "
                                "does not hold")
            elif entry.value != d.value or entry.revision != d.revision:
                problems.append(f"{where}: saw v{d.version}={d.value!r} at revision "
                                f"{d.revision}; history has {entry.value!r} at revision "
                                f"{entry.revision}")
            if previous is not None:
                if d.version <= previous.version:
                    problems.append(f"{where}: v{d.version} after v{previous.version}")
                elif (d.version != previous.version + 1 and not d.conflated
                      and d.update_type not in ("resync", "initial")):
                    problems.append(f"{where}: gap from v{previous.version} to v{d.version} "
                                    f"({d.update_type}, no resync)")
            previous = d
        newest = max(entries, default=0)
        if previous is not None and previous.version != newest:
            problems.append(f"{where}: last saw v{previous.version}, history ends at v{newest}")
    return problems


# ----------------------------------------------------------------------------- the clients


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
            except grpc.aio.AioRpcError as exc:
                # gRPC shares one subchannel per target in a process: a new channel
                # inherits the reconnect backoff the old clients ran into while the server
                # was down, and fails fast until it ends.
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > guard:
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
    server = ServerProcess(workdir, config.storage, config.history_size, config.start_guard)
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
