"""Seeded chaos against three replicas over one etcd (issue #15's faults): writers and
watchers connect to all three, each replica behind a fault proxy that cuts, delays and
black-holes their connections, while the runs SIGKILL and restart a replica and restart
etcd. The checker (the single server's, ``checks.py``) finds no acknowledged write lost,
none twice, no delivery out of order or missing, nothing refused shown, no writer reading
less than its own write right after it (whichever replica it reached), and every watcher
on the stored value at the end.

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
            # Every run restarts something: a replica, then etcd, then a replica.
            config = ChaosConfig(seed=SEED * 1000 + run, restart_share=1.0, restart_step=2,
                                 read_your_writes=True)
            result = await cluster.run(config)
            assert result.verdict.violations == [], (config.seed, result.verdict.violations[:5])
            summary.add(result)
    print(summary.line(), f"replica_kills={cluster.kills} etcd_restarts={cluster.etcd_restarts}")
    assert summary.runs == RUNS
    assert cluster.kills >= 1 and cluster.etcd_restarts >= 1
    assert summary.faults["replica_kill"] == cluster.kills
    assert summary.faults["cut"] + summary.faults["black_hole"] > 0
    assert summary.acked > RUNS * 10
    assert summary.deliveries > summary.runs
    assert summary.line().endswith("violations=0 (none)")
