"""Replicas under chaos: three ``dspex-rx serve --storage etcd`` children over one etcd member
and one prefix, each behind a fault proxy; a restart SIGKILLs a replica and starts it again
(the write leader, kept down until another replica leads, or the one most clients are on), or
SIGKILLs etcd and starts it again. The chaos run (``harness._Run``) drives it as one server.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import grpc
import trio
from crash_harness import ServerProcess
from harness import ChaosConfig, RunResult, _Run
from proxy import ChaosProxy, FaultCounts, Link

from dspex_rx.etcd.election import leader_key
from dspex_rx.etcd_v3 import rpc_pb2, rpc_pb2_grpc

# A hang guard for a new leader after the old one was killed (its lease lasts 5 s).
LEADER_GUARD = 30.0


class ProxyGroup:
    """The replicas' proxies as one: counts added up, faults on a link of any of them.

    >>> ProxyGroup([]).counts.total
    0
    """

    def __init__(self, proxies: list[ChaosProxy]) -> None:
        self.proxies = proxies

    @property
    def counts(self) -> FaultCounts:
        """Every proxy's faults, added up."""
        total = FaultCounts()
        for proxy in self.proxies:
            total.cut += proxy.counts.cut
            total.delay += proxy.counts.delay
            total.black_hole += proxy.counts.black_hole
        return total

    def heal_all(self) -> None:
        """Heal every proxy's links."""
        for proxy in self.proxies:
            proxy.heal_all()

    def random_fault(self, rng: random.Random, max_delay: float = 0.2,
                     ) -> tuple[str, Link] | None:
        """A fault on a live link of a proxy that has one (None: no link is up)."""
        live = [proxy for proxy in self.proxies if proxy.live]
        return rng.choice(live).random_fault(rng, max_delay) if live else None


class Cluster:
    """Replicas over one etcd prefix, each behind its own proxy. Example, in a trio run::

        cluster = await Cluster.start(workdir, nursery, etcd_member)
        result = await cluster.run(ChaosConfig(seed=7))
        await cluster.stop()
    """

    def __init__(self, servers: list[ServerProcess], proxies: list[ChaosProxy],
                 etcd: Any, prefix: str) -> None:
        self.servers = servers
        self.proxy = ProxyGroup(proxies)
        self.etcd = etcd
        self.prefix = prefix
        self.runs = 0
        # The restarts made (a replica's SIGKILL, etcd's), and each leader seen killed
        # and the one that followed it.
        self.kills = 0
        self.etcd_restarts = 0
        self.handovers: list[tuple[str, str]] = []

    @classmethod
    async def start(cls, workdir: Path, nursery: trio.Nursery, etcd: Any,
                    replicas: int = 3) -> Cluster:
        """Start ``replicas`` servers on one prefix of ``etcd`` (an ``EtcdMember``)."""
        prefix = f"chaos-{workdir.name}/"
        servers = [ServerProcess(workdir / f"r{i}", "etcd", history_size=100_000,
                                 etcd_endpoint=etcd.endpoint, etcd_prefix=prefix)
                   for i in range(replicas)]
        proxies = []
        try:
            for server in servers:
                server.workdir.mkdir(parents=True, exist_ok=True)
                await server.start()
                proxy = ChaosProxy(lambda s=server: ("127.0.0.1", s.port))
                await nursery.start(proxy.serve)
                proxies.append(proxy)
        except BaseException:
            with trio.CancelScope(shield=True):
                for server in servers:
                    await server.stop()
            raise
        return cls(servers, proxies, etcd, prefix)

    @property
    def direct_target(self) -> str:
        """Every replica, past the proxies (the run's owner)."""
        return ",".join(server.target for server in self.servers)

    def proxied_target(self, client: int) -> str:
        """Every replica, each through its proxy, starting with a different one for each
        ``client`` (a channel connects to the first that answers): clients spread out."""
        ports = [proxy.port for proxy in self.proxy.proxies]
        first = client % len(ports)
        return ",".join(f"127.0.0.1:{port}" for port in ports[first:] + ports[:first])

    def leader(self) -> str:
        """The address the replicas elected write leader ("" for none), read from etcd."""
        with grpc.insecure_channel(self.etcd.endpoint,
                                   options=[("grpc.enable_http_proxy", 0)]) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
            reply = kv.Range(rpc_pb2.RangeRequest(key=leader_key(self.prefix.encode())),
                             timeout=10)
        return reply.kvs[0].value.decode() if reply.kvs else ""

    async def restart(self, rng: random.Random | None = None) -> str:
        """The next restart, taking turns: SIGKILL the write leader, keep it down until
        another replica leads, start it again; SIGKILL etcd and start it again; SIGKILL
        the replica most clients are on (``rng`` picks among ties) and start it again at
        once. Says which."""
        rng = rng or random.Random()
        turn = (self.kills + self.etcd_restarts) % 3
        if turn == 1:
            self.etcd_restarts += 1
            await trio.to_thread.run_sync(self.etcd.restart)
            return "etcd_restart"
        if turn == 0:
            leader = await trio.to_thread.run_sync(self.leader)
            server = next((s for s in self.servers if s.target == leader), self.servers[0])
        else:
            busiest = max(len(proxy.live) for proxy in self.proxy.proxies)
            server = rng.choice([s for s, proxy in zip(self.servers, self.proxy.proxies,
                                                         strict=True)
                                 if len(proxy.live) == busiest])
        server.kill()
        await server.reap()
        self.kills += 1
        if turn == 0:
            await self._handed_over(server.target)
        await server.start()
        return "replica_kill"

    async def _handed_over(self, old: str) -> None:
        # Until another replica leads (the old one's lease expired): a hang guard, no timing.
        guard = time.monotonic() + LEADER_GUARD
        while True:
            leader = await trio.to_thread.run_sync(self.leader)
            if leader and leader != old:
                self.handovers.append((old, leader))
                return
            assert time.monotonic() < guard, f"no replica took over from {old}"
            await trio.sleep(0.1)  # polls etcd; nothing is timed

    async def stop(self) -> None:
        """Stop every replica (the proxies end with the caller's nursery)."""
        for server in self.servers:
            await server.stop()

    async def run(self, config: ChaosConfig) -> RunResult:
        """One seeded run; its verdict says what broke (empty: nothing)."""
        self.runs += 1
        return await _Run(self, config, f"c{self.runs}").go()
