"""Replicas under chaos: three ``dspex-rx serve --storage etcd`` children over one etcd member
and one prefix, each behind a fault proxy; a restart SIGKILLs one replica and starts it
again, or restarts etcd. The chaos run (``harness._Run``) drives it as it drives one server.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio
from crash_harness import ServerProcess
from harness import ChaosConfig, RunResult, _Run
from proxy import ChaosProxy, FaultCounts, Link


class ProxyGroup:
    """The replicas' proxies as one: counts added up, faults on a link of any of them.

    >>> ProxyGroup([]).counts.total
    0
    """

    def __init__(self, proxies: list[ChaosProxy]) -> None:
        self.proxies = proxies

    @property
    def counts(self) -> FaultCounts:
        total = FaultCounts()
        for proxy in self.proxies:
            total.cut += proxy.counts.cut
            total.delay += proxy.counts.delay
            total.black_hole += proxy.counts.black_hole
        return total

    def heal_all(self) -> None:
        for proxy in self.proxies:
            proxy.heal_all()

    def random_fault(self, rng: random.Random, max_delay: float = 0.2,
                     ) -> tuple[str, Link] | None:
        # A proxy with live links (a client's connection to that replica), else none.
        live = [proxy for proxy in self.proxies if proxy.live]
        return rng.choice(live).random_fault(rng, max_delay) if live else None


class Cluster:
    """Replicas over one etcd prefix, each behind its own proxy. Example, in a trio run::

        cluster = await Cluster.start(workdir, nursery, etcd_member)
        result = await cluster.run(ChaosConfig(seed=7))
        await cluster.stop()
    """

    def __init__(self, servers: list[ServerProcess], proxies: list[ChaosProxy],
                 etcd: Any) -> None:
        self.servers = servers
        self.proxy = ProxyGroup(proxies)
        self.etcd = etcd
        self.runs = 0
        # How many of each restart (a replica's SIGKILL, etcd's) the runs asked for.
        self.kills = 0
        self.etcd_restarts = 0

    @classmethod
    async def start(cls, workdir: Path, nursery: trio.Nursery, etcd: Any,
                    replicas: int = 3) -> Cluster:
        """Start ``replicas`` servers on one prefix of ``etcd`` (an ``EtcdMember``)."""
        servers = [ServerProcess(workdir / f"r{i}", "etcd", history_size=100_000,
                                 etcd_endpoint=etcd.endpoint,
                                 etcd_prefix=f"chaos-{workdir.name}/")
                   for i in range(replicas)]
        proxies = []
        for server in servers:
            server.workdir.mkdir(parents=True, exist_ok=True)
            await server.start()
            proxy = ChaosProxy(lambda s=server: ("127.0.0.1", s.port))
            await nursery.start(proxy.serve)
            proxies.append(proxy)
        return cls(servers, proxies, etcd)

    def _targets(self) -> Iterator[str]:
        yield from (server.target for server in self.servers)

    @property
    def direct_target(self) -> str:
        """Every replica, past the proxies (the run's owner)."""
        return ",".join(self._targets())

    @property
    def proxied_target(self) -> str:
        """Every replica, each through its proxy (writers and watchers)."""
        return ",".join(f"127.0.0.1:{proxy.port}" for proxy in self.proxy.proxies)

    async def restart(self, rng: random.Random | None = None) -> str:
        """SIGKILL a replica (one ``rng`` picks) and start it again on its port, or restart
        etcd, taking turns (so two restarts make one of each); says which."""
        rng = rng or random.Random()
        if self.kills > self.etcd_restarts:
            self.etcd_restarts += 1
            await trio.to_thread.run_sync(self.etcd.stop)
            await trio.to_thread.run_sync(self.etcd.start)
            return "etcd_restart"
        # The replica most clients are on (their connections' proxy), so they fail over.
        busiest = max(len(proxy.live) for proxy in self.proxy.proxies)
        server = rng.choice([s for s, proxy in zip(self.servers, self.proxy.proxies,
                                                     strict=True) if len(proxy.live) == busiest])
        server.kill()
        await server.reap()
        await server.start()
        self.kills += 1
        return "replica_kill"

    async def stop(self) -> None:
        """Stop every replica (the proxies end with the caller's nursery)."""
        for server in self.servers:
            await server.stop()

    async def run(self, config: ChaosConfig) -> RunResult:
        """One seeded run; its verdict says what broke (empty: nothing)."""
        self.runs += 1
        return await _Run(self, config, f"c{self.runs}").go()
