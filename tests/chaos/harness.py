"""The chaos run: writers and watchers talking to a durable (SQLite) ``dspex-rx serve`` child
through the chaos proxy, which cuts, delays and black-holes their connections at random while
the server is now and then killed (SIGKILL) and restarted; then the checker's verdict. The same
run drives replicas over etcd (``cluster.Cluster``).

One ``Chaos`` keeps the server and the proxy across its runs (starting a server costs a
second); each run has its own session, variables, clients and seeded RNG, so a failing run
replays alone with its seed. ``tests/chaos/test_chaos.py`` and ``benchmarks/chaos.py`` run it.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
import trio
from checks import KINDS, ChaosLedger, Verdict, check_run
from crash_checks import INITIAL_VALUE, Entry
from crash_harness import ServerProcess
from proxy import ChaosProxy

import dspex_rx
from dspex_rx.client.actors import VariableUpdate
from dspex_rx.errors import ConflictError, DspexError, InvalidValueError, StorageError

T = TypeVar("T")
VALUE_BASE = 1_000_000  # writer task t writes (t + 1) * VALUE_BASE + n: every value unique
PLANTS = ("", "duplicate", "drop", "phantom", "lose_ack", "show_refused")


@dataclass(frozen=True)
class ChaosConfig:
    """What each run does. ``ops`` operations per writer (sets, CAS, atomic batches);
    a fault every 0 to ``fault_pause`` s; a server restart in a share ``restart_share`` of
    runs; ``plant`` a bug planted in the recording, to prove the checker catches it.

    >>> ChaosConfig(seed=1).watchers
    2
    """

    seed: int
    variables: int = 3
    writers: int = 2
    watchers: int = 2
    ops: int = 25
    refuse_share: float = 0.1
    fault_pause: float = 0.08
    max_delay: float = 0.15
    restart_share: float = 0.25
    # The fault step a run's restart comes at (0: a seeded one from 2 to 11, which a short
    # run may end before).
    restart_step: int = 0
    keepalive_time: float = 1.0
    keepalive_timeout: float = 1.0
    # After each acknowledged set, the writer reads the variable's newest version back.
    read_your_writes: bool = False
    plant: str = ""
    # Hang guards, not timings.
    guard: float = 30.0

    def __post_init__(self) -> None:
        if self.plant not in PLANTS:
            raise ValueError(f"plant must be one of {PLANTS}, got {self.plant!r}")
        for name in ("variables", "writers", "watchers", "ops"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class RunResult:
    """One run: its seed, what the faults did, what the clients did, the verdict."""

    seed: int
    faults: Counter[str]
    restarts: int
    acked: int
    deliveries: int
    resyncs: int
    verdict: Verdict
    seconds: float


@dataclass
class Summary:
    """Every run so far, added up; ``line()`` is the one summary line.

    >>> Summary().line().split(" restarts")[0]
    'chaos: runs=0 cuts=0 delays=0 black_holes=0'
    """

    runs: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    acked: int = 0
    deliveries: int = 0
    resyncs: int = 0
    violations: Counter[str] = field(default_factory=Counter)
    failed_seeds: list[int] = field(default_factory=list)

    def add(self, result: RunResult) -> None:
        """Count one run in."""
        self.runs += 1
        self.faults.update(result.faults)
        self.restarts += result.restarts
        self.acked += result.acked
        self.deliveries += result.deliveries
        self.resyncs += result.resyncs
        counts = result.verdict.by_kind()
        self.violations.update({k: n for k, n in counts.items() if n})
        if result.verdict.violations:
            self.failed_seeds.append(result.seed)

    def line(self) -> str:
        """runs, cuts, restarts, writes acked, deliveries, violations by kind."""
        total = sum(self.violations.values())
        kinds = " ".join(f"{k}={self.violations[k]}" for k in KINDS if self.violations[k])
        return (f"chaos: runs={self.runs} cuts={self.faults['cut']} "
                f"delays={self.faults['delay']} black_holes={self.faults['black_hole']} "
                f"restarts={self.restarts} acked={self.acked} deliveries={self.deliveries} "
                f"resyncs={self.resyncs} violations={total} ({kinds or 'none'})")


async def retrying(call: Callable[[], Awaitable[T]], guard: float) -> T:
    """``await call()`` again while the connection fails (a restart, a cut); hang guard."""
    with trio.fail_after(guard):
        while True:
            try:
                return await call()
            except (grpc.aio.AioRpcError, dspex_rx.ServerUnavailableError, ConnectionError):
                await trio.sleep(0.05)  # paces the retries; nothing is timed


class Chaos:
    """A server and a proxy for many runs. Example, in a trio run::

        async with trio.open_nursery() as nursery:
            chaos = await Chaos.start(workdir, nursery)
            result = await chaos.run(ChaosConfig(seed=7))
            await chaos.stop()
    """

    def __init__(self, server: ServerProcess, proxy: ChaosProxy) -> None:
        self.server = server
        self.proxy: Any = proxy
        self.runs = 0

    @property
    def direct_target(self) -> str:
        """Where the run's owner connects, past the proxy."""
        return self.server.target

    def proxied_target(self, client: int) -> str:
        """Where writers and watchers connect, through the proxy (the same for all)."""
        return f"127.0.0.1:{self.proxy.port}"

    @classmethod
    async def start(cls, workdir: Path, nursery: trio.Nursery) -> Chaos:
        """Start the SQLite server in ``workdir`` and the proxy in front of it."""
        server = ServerProcess(workdir, "sqlite", history_size=100_000)
        await server.start()
        proxy = ChaosProxy(lambda: ("127.0.0.1", server.port))
        await nursery.start(proxy.serve)
        return cls(server, proxy)

    async def stop(self) -> None:
        """Stop the server (the proxy ends with the caller's nursery)."""
        await self.server.stop()

    async def restart(self, rng: random.Random | None = None) -> str:
        """SIGKILL the server and start it again on the same port and data; what it did."""
        self.server.kill()
        await self.server.reap()
        await self.server.start()
        return "restart"

    async def run(self, config: ChaosConfig) -> RunResult:
        """One seeded run; its verdict says what broke (empty: nothing)."""
        self.runs += 1
        return await _Run(self, config, f"c{self.runs}").go()


class System(Protocol):
    """What a run needs of the servers under chaos (``Chaos``, or ``cluster.Cluster``)."""

    proxy: Any  # counts, heal_all(), random_fault(rng, max_delay)
    direct_target: str

    def proxied_target(self, client: int) -> str: ...

    async def restart(self, rng: random.Random | None = None) -> str: ...


class _Run:
    def __init__(self, chaos: System, config: ChaosConfig, prefix: str) -> None:
        self.chaos = chaos
        self.config = config
        self.rng = random.Random(config.seed)
        self.names = [f"{prefix}_{i}" for i in range(config.variables)]
        self.ledger = ChaosLedger()
        self.sessions: list[dspex_rx.SessionContext] = []
        self.restarts = 0
        self.faults: Counter[str] = Counter()
        self.restart_kinds: Counter[str] = Counter()
        self.writing = True
        self.planted = False

    async def go(self) -> RunResult:
        began = time.monotonic()
        config, chaos = self.config, self.chaos
        before = chaos.proxy.counts
        counts = (before.cut, before.delay, before.black_hole)
        try:
            owner = await retrying(lambda: self._connect(direct=True), config.guard)
            for name in self.names:
                await retrying(lambda n=name: owner.register_variable(  # type: ignore[misc]
                    n, "integer", INITIAL_VALUE, constraints={"min": 0}), config.guard)
            watchers = [await self._watcher(owner, i) for i in range(config.watchers)]
            writers = [await retrying(lambda: self._connect(owner), config.guard)
                       for _ in range(config.writers)]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._faults)
                async with trio.open_nursery() as writing:
                    for w, writer in enumerate(writers):
                        writing.start_soon(self._write, writer, w)
                self.writing = False
            chaos.proxy.heal_all()
            for watcher in watchers:
                await retrying(watcher.sync, config.guard)
            history = await self._read(owner)
            reads = await self._reads(owner, watchers)
            verdict = check_run(self.ledger, history, reads)
        finally:
            with trio.CancelScope(shield=True):
                for session in self.sessions:
                    with trio.move_on_after(5):  # a hang guard on a close nobody awaits
                        await session.close()
        after = chaos.proxy.counts
        self.faults.update(cut=after.cut - counts[0], delay=after.delay - counts[1],
                           black_hole=after.black_hole - counts[2])
        self.faults.update(self.restart_kinds)  # (what each restart restarted)
        return RunResult(
            seed=config.seed, faults=self.faults, restarts=self.restarts,
            acked=self.ledger.count("acked"), deliveries=len(self.ledger.deliveries),
            resyncs=sum(1 for d in self.ledger.deliveries if d.update_type == "resync"),
            verdict=verdict, seconds=time.monotonic() - began,
        )

    async def _connect(self, owner: dspex_rx.SessionContext | None = None,
                       direct: bool = False) -> dspex_rx.SessionContext:
        chaos = self.chaos
        target = chaos.direct_target if direct else chaos.proxied_target(len(self.sessions))
        session = dspex_rx.SessionContext(
            owner.session_id if owner else None, target,
            token=owner.token if owner else None, timeout=10.0,
            keepalive_time=self.config.keepalive_time,
            keepalive_timeout=self.config.keepalive_timeout,
        )
        await session.initialize()
        self.sessions.append(session)
        return session

    async def _watcher(self, owner: dspex_rx.SessionContext, i: int) -> dspex_rx.SessionContext:
        watcher = await retrying(lambda: self._connect(owner), self.config.guard)
        label = f"watch{i}"
        for name in self.names:
            def on_next(update: VariableUpdate) -> None:
                self._deliver(label, update)

            def on_error(error: Exception, var: str = name) -> None:
                self.ledger.watch_errors.append(f"{label} watching {var}: "
                                                f"{type(error).__name__}: {error}")

            watcher.observe(name).subscribe(on_next=on_next, on_error=on_error)
        await retrying(watcher.sync, self.config.guard)
        return watcher

    def _deliver(self, label: str, update: VariableUpdate) -> None:
        plant = self.config.plant
        self.ledger.deliver(label, update)
        if self.planted or update.update_type != "value_change":
            return
        # Planted bugs, once per run: what a broken stream or store would have shown.
        if plant == "duplicate":
            self.ledger.deliver(label, update)
        elif plant == "drop":
            self.ledger.deliveries.pop()
        elif plant == "phantom":
            self.ledger.deliveries.pop()
            self.ledger.deliver(label, dataclasses.replace(update, value=-7))
        else:
            return
        self.planted = True

    async def _write(self, session: dspex_rx.SessionContext, w: int) -> None:
        config, ledger = self.config, self.ledger
        rng = random.Random(f"{config.seed}/w{w}")
        label = f"w{w}"
        versions: dict[str, int] = {}
        for n in range(1, config.ops + 1):
            value = (w + 1) * VALUE_BASE + n * 10
            refuse = rng.random() < config.refuse_share
            op = rng.choices(("set", "cas", "batch"), (6, 2, 2))[0]
            name = rng.choice(self.names)
            if op == "batch":
                other = rng.choice([x for x in self.names if x != name] or [name])
                values = {name: -value if refuse else value, other: value + 1}
                if other == name:
                    values = {name: values[name]}
                await self._batch(session, label, values, refuse)
                continue
            write = ledger.send(label, name, -value if refuse else value, refuse)
            expected = versions.get(name) if op == "cas" else None
            try:
                version = await session.set_variable(name, write.value,
                                                     expected_version=expected)
            except ConflictError as exc:
                ledger.finish(write, "conflict", exc)
            except InvalidValueError as exc:
                ledger.finish(write, "refused", exc)
            except (grpc.aio.AioRpcError, DspexError, ConnectionError) as exc:
                ledger.finish(write, "maybe", exc)
                await trio.sleep(0.02)  # paces writes against a dead server
            else:
                versions[name] = version
                ledger.ack(write, version)
                if config.read_your_writes:
                    await self._read_back(session, label, name, version)
                if config.plant == "lose_ack" and not self.planted:
                    write.version = version + 1000  # told a version the store never made
                    self.planted = True
            if config.plant == "show_refused" and write.outcome == "acked" and not self.planted:
                write.outcome = "refused"  # the store shows a write it refused
                self.planted = True

    async def _read_back(self, session: dspex_rx.SessionContext, label: str, name: str,
                         version: int) -> None:
        # Its newest version: the write's, or a later one (another writer's). A replica
        # behind it waits up to HOLD_WAIT (5 s) for it, then answers from what it has, so
        # a replica stuck that long shows here as a stale read too.
        try:
            newest = await session.get_variable_history(name, limit=1)
        except (grpc.aio.AioRpcError, dspex_rx.ServerUnavailableError, StorageError,
                ConnectionError, TimeoutError):
            return  # a fault cut it: nothing was shown
        except DspexError as exc:  # a replica that does not know the variable (yet)
            self.ledger.stale_reads.append(
                f"{label} read {name} right after its write was acknowledged at "
                f"v{version}: {type(exc).__name__}: {exc}")
            return
        if newest and newest[0]["version"] < version:
            self.ledger.stale_reads.append(
                f"{label} read {name} at v{newest[0]['version']} right after its write was "
                f"acknowledged at v{version}")

    async def _batch(self, session: dspex_rx.SessionContext, label: str,
                     values: dict[str, int], refuse: bool) -> None:
        batch = self.ledger.send_batch(label, values, refuse)
        try:
            results = await session.update_variables(values, atomic=True)
        except (grpc.aio.AioRpcError, DspexError, ConnectionError) as exc:
            self.ledger.finish_batch(batch, "maybe", f"{type(exc).__name__}: {exc}")
            await trio.sleep(0.02)
            return
        applied = all(v is True for v in results.values())
        self.ledger.finish_batch(batch, "acked" if applied else "refused",
                                 "" if applied else str(results))

    async def _faults(self) -> None:
        config, proxy = self.config, self.chaos.proxy
        rng = random.Random(f"{config.seed}/faults")
        # Its own: how much of ``rng`` the faults use depends on which links are up.
        restart_rng = random.Random(f"{config.seed}/restart")
        restart_at = rng.randrange(2, 12) if rng.random() < config.restart_share else -1
        if restart_at > 0 and config.restart_step:
            restart_at = config.restart_step
        step = 0
        while self.writing:
            await trio.sleep(rng.uniform(0.0, config.fault_pause))
            step += 1
            if step == restart_at:
                self.restart_kinds[await self.chaos.restart(restart_rng)] += 1
                self.restarts += 1
            elif rng.random() < 0.3:
                proxy.heal_all()  # black holes and delays end; cut links stay cut
            else:
                proxy.random_fault(rng, config.max_delay)

    async def _reads(self, owner: dspex_rx.SessionContext,
                     watchers: list[dspex_rx.SessionContext]) -> dict[str, dict[str, object]]:
        """What each watcher reads (from its pushed cache) and the owner, uncached."""
        reads: dict[str, dict[str, object]] = {}
        readers = [(f"watch{i}", w, False) for i, w in enumerate(watchers)]
        for label, session, bypass in [*readers, ("owner", owner, True)]:
            reads[label] = {}
            for name in self.names:
                async def read(s: dspex_rx.SessionContext = session, n: str = name,
                               b: bool = bypass) -> object:
                    return await s.get_variable(n, bypass_cache=b)

                reads[label][name] = await retrying(read, self.config.guard)
        return reads

    async def _read(self, owner: dspex_rx.SessionContext) -> dict[str, list[Entry]]:
        history: dict[str, list[Entry]] = {}
        for name in self.names:
            got = await retrying(
                lambda n=name: owner.get_variable_history(n, limit=10_000),  # type: ignore[misc]
                self.config.guard,
            )
            history[name] = sorted(
                (Entry(i["version"], i["value"], i["revision"]) for i in got
                 if not i.get("expired")), key=lambda e: e.version)
        return history
