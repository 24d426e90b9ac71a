"""Seeded chaos against three replicas over one etcd (issue #15's faults): writers and
watchers name all three (each client first another one), each replica behind a fault
proxy that cuts, delays and black-holes their connections, while the runs SIGKILL the
write leader (down until another replica leads), SIGKILL etcd, and SIGKILL the replica
most clients are on, each restarted. The checker (the single server's, ``checks.py``)
finds no acknowledged write lost, none twice, no delivery out of order or missing,
nothing refused shown, no writer reading less than its own write right after it, and
every watcher on the stored value at the end.

Real time (child processes and real sockets), bounded by a hang guard for the whole
file; ``DSPEX_CHAOS_SEED`` replays another seed.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from cluster import Cluster
from harness import ChaosConfig, Summary

SEED = int(os.environ.get("DSPEX_CHAOS_SEED", "17"))
RUNS = 3
WALL_GUARD = 150.0  # a hang guard for the seeded runs, not a timing assertion


@pytest.fixture
async def cluster(tmp_path: Path, etcd_member: Any) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        running = await Cluster.start(tmp_path, nursery, etcd_member)
        try:
            yield running
        finally:
            await running.stop()
            nursery.cancel_scope.cancel()


async def test_seeded_chaos_runs_over_replicas_keep_every_promise(cluster: Cluster) -> None:
    summary = Summary()
    with trio.fail_after(WALL_GUARD):
        for run in range(RUNS):
            # Every run restarts something: the leader, then etcd, then a busy replica.
            config = ChaosConfig(seed=SEED * 1000 + run, restart_share=1.0, restart_step=2,
                                 read_your_writes=True)
            result = await cluster.run(config)
            assert result.verdict.violations == [], (config.seed, result.verdict.violations[:5])
            summary.add(result)
    print(summary.line(), f"replica_kills={cluster.kills} etcd_restarts={cluster.etcd_restarts}")
    assert summary.runs == RUNS
    assert (cluster.kills, cluster.etcd_restarts) == (2, 1)
    # The leader killed was followed by another replica, which took the writes.
    assert len(cluster.handovers) == 1 and cluster.handovers[0][1] != cluster.handovers[0][0]
    assert sum(1 for proxy in cluster.proxy.proxies if proxy.links) >= 2
    assert summary.faults["cut"] + summary.faults["black_hole"] > 0
    assert summary.acked > RUNS * 10
    assert summary.deliveries > summary.runs
    assert summary.line().endswith("violations=0 (none)")
