"""The write-leader election over real etcd: of two candidates one leads and both know it;
a leader that stops revokes its lease so another takes over at once; a follower (no
address) learns who leads and never campaigns; a lease lost behind the leader's back and
etcd down longer than the TTL both end in the candidate leading again; a restarted
replica takes its crashed run's key over; the leader key stays outside its store's prefix.

The tests are plain functions running one ``asyncio.run`` each (grpc.aio needs asyncio).
Real-time loops are hang guards only: the candidates hear each other through etcd's watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import etcd_service
import pytest
from etcd_service import EtcdMember, Stubs
from test_etcd_replicas import eventually

from dspex_rx.etcd import EtcdBackend, WriteLeader, leader_key
from dspex_rx.etcd_v3 import rpc_pb2
from dspex_rx.store import MemoryStore, VariableSpec

T = TypeVar("T")
# A hang guard, not a timing claim: a campaign or a watch event takes milliseconds.
GUARD = 10.0
# Long enough that only a revoke, never an expiry, explains a takeover within GUARD / 2.
LONG_TTL = 30


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(scenario(), GUARD * 3))


# Poll a condition while the elections run (a hang guard, no timing).
until = functools.partial(eventually, guard=GUARD)


@pytest.fixture
def key() -> bytes:
    return leader_key(f"elect-{uuid.uuid4().hex}/".encode())


class Candidate:
    """One replica's election running as a task, with the leaders its callbacks heard."""

    def __init__(self, endpoint: str, key: bytes, address: str, ttl: int = LONG_TTL) -> None:
        self.election = WriteLeader(endpoint, key, address, ttl=ttl)
        self.heard: list[str] = []
        self.election.on_change(self.heard.append)
        self.task = asyncio.create_task(self.election.run())

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def candidates(endpoint: str, key: bytes, *addresses: str,
                     ttl: int = LONG_TTL) -> AsyncIterator[list[Candidate]]:
    running = [Candidate(endpoint, key, address, ttl) for address in addresses]
    try:
        yield running
    finally:
        for candidate in running:
            await candidate.stop()


async def holder(etcd: Stubs, key: bytes) -> tuple[str, int]:
    """The leader key's value and lease in etcd (("", 0) when nobody holds it)."""
    answer = await etcd.kv.Range(rpc_pb2.RangeRequest(key=key))
    return (answer.kvs[0].value.decode(), answer.kvs[0].lease) if answer.kvs else ("", 0)


def test_of_two_candidates_exactly_one_leads_and_both_know_it(
    etcd_endpoint: str, key: bytes,
) -> None:
    async def scenario() -> None:
        async with candidates(etcd_endpoint, key, "a:1", "b:2") as (a, b):
            await until(lambda: a.election.leader and a.election.leader == b.election.leader,
                        "both candidates know one leader")
            await until(lambda: a.election.leading or b.election.leading, "one leads")
            winner, loser = (a, b) if a.election.leading else (b, a)
            assert not loser.election.leading
            assert winner.election.leader == loser.election.leader == (
                "a:1" if winner is a else "b:2")
            assert winner.heard == loser.heard == [winner.election.leader]
            async with etcd_service.stubs(etcd_endpoint) as etcd:
                value, lease = await holder(etcd, key)
                assert value == winner.election.leader and lease == winner.election._lease
                # The loser gave its unused lease back rather than leave it to expire.
                assert loser.election._lease == 0

    run(scenario)


def test_a_stopping_leader_revokes_and_the_other_takes_over_before_the_ttl(
    etcd_endpoint: str, key: bytes,
) -> None:
    async def scenario() -> None:
        async with candidates(etcd_endpoint, key, "a:1") as (a,):
            await until(lambda: a.election.leading, "a leads")
            async with candidates(etcd_endpoint, key, "b:2") as (b,):
                await until(lambda: b.election.leader == "a:1", "b knows a leads")
                assert not b.election.leading
                stopped = time.monotonic()
                await a.stop()
                assert not a.election.leading and a.heard == ["a:1", ""]
                await until(lambda: b.election.leading, "b leads", guard=GUARD / 2)
                assert time.monotonic() - stopped < LONG_TTL  # only the revoke explains it
                assert b.election.leader == "b:2"
                assert b.heard == ["a:1", "", "b:2"]

    run(scenario)


def test_a_follower_learns_each_leader_and_never_leads(
    etcd_endpoint: str, key: bytes,
) -> None:
    async def scenario() -> None:
        follower = Candidate(etcd_endpoint, key, "")
        leading: list[bool] = []
        follower.election.on_change(lambda _: leading.append(follower.election.leading))
        try:
            await until(lambda: follower.election._up, "the follower read the key")
            assert follower.election.leader == "" and follower.heard == []
            async with candidates(etcd_endpoint, key, "a:1") as (a,):
                await until(lambda: follower.election.leader == "a:1", "it learns a leads")
                await a.stop()
                await until(lambda: follower.election.leader == "", "it hears a is gone")
            async with candidates(etcd_endpoint, key, "b:2") as (b,):
                await until(lambda: follower.election.leader == "b:2", "it learns b leads")
                assert b.election.leading
                async with etcd_service.stubs(etcd_endpoint) as etcd:
                    assert (await holder(etcd, key))[0] == "b:2"
            await until(lambda: follower.election.leader == "", "it hears b is gone")
            assert follower.heard == ["a:1", "", "b:2", ""]
            assert leading == [False] * 4 and not follower.election.leading
            assert follower.election._lease == 0
        finally:
            await follower.stop()

    run(scenario)


def test_a_lease_revoked_behind_the_leaders_back_ends_in_it_leading_on_a_new_lease(
    etcd_endpoint: str, key: bytes,
) -> None:
    async def scenario() -> None:
        async with candidates(etcd_endpoint, key, "a:1") as (a,), \
                etcd_service.stubs(etcd_endpoint) as etcd:
            await until(lambda: a.election.leading, "a leads")
            value, old = await holder(etcd, key)
            assert value == "a:1" and old == a.election._lease != 0
            await etcd.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=old))
            await until(lambda: a.election.leading and a.election._lease not in (0, old),
                        "a leads again on a new lease")
            assert await holder(etcd, key) == ("a:1", a.election._lease)
            assert a.heard == ["a:1", "", "a:1"]

    run(scenario)


def test_a_restarted_replica_takes_its_crashed_runs_key_over_at_once(
    etcd_endpoint: str, key: bytes,
) -> None:
    async def scenario() -> None:
        async with etcd_service.stubs(etcd_endpoint) as etcd:
            # An earlier run of "a:1" that crashed: its key, under a lease nobody revokes.
            crashed = await etcd.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=LONG_TTL))
            await etcd.kv.Put(rpc_pb2.PutRequest(key=key, value=b"a:1", lease=crashed.ID))
            async with candidates(etcd_endpoint, key, "a:1", "b:2") as (a, b):
                await until(lambda: a.election.leading, "a leads", guard=GUARD / 2)
                assert await holder(etcd, key) == ("a:1", a.election._lease)
                assert a.election._lease != crashed.ID and a.heard == ["a:1"]
                await until(lambda: b.election.leader == "a:1", "b knows a leads")
                assert not b.election.leading and b.election._lease == 0
            await etcd.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=crashed.ID))

    run(scenario)


def test_a_key_overwritten_behind_the_leaders_back_makes_it_follow_then_lead_again(
    etcd_endpoint: str, key: bytes,
) -> None:
    async def scenario() -> None:
        async with candidates(etcd_endpoint, key, "a:1") as (a,), \
                etcd_service.stubs(etcd_endpoint) as etcd:
            await until(lambda: a.election.leading, "a leads")
            await etcd.kv.Put(rpc_pb2.PutRequest(key=key, value=b"x:9"))
            await until(lambda: a.election.leader == "x:9", "a follows x")
            await until(lambda: a.election._lease == 0, "a gave its lease back")
            assert not a.election.leading
            await etcd.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=key))
            await until(lambda: a.election.leading, "a leads again once the key is free")
            assert await holder(etcd, key) == ("a:1", a.election._lease)
            assert a.heard == ["a:1", "x:9", "", "a:1"]

    run(scenario)


def test_with_etcd_down_past_the_ttl_the_leader_stops_leading_then_leads_again(
    etcd_member: EtcdMember, key: bytes, caplog: pytest.LogCaptureFixture,
) -> None:
    ttl = 2  # etcd's minimum lease TTL with its default election timing

    async def scenario() -> None:
        async with candidates(etcd_member.endpoint, key, "a:1", ttl=ttl) as (a,):
            await until(lambda: a.election.leading, "a leads")
            await asyncio.to_thread(etcd_member.stop)
            down = time.monotonic()
            await until(lambda: not a.election.leading, "a stops leading with etcd down")
            assert a.election.leader == ""
            await until(lambda: time.monotonic() - down > ttl, "etcd down past the TTL")
            assert not a.election.leading
            await asyncio.to_thread(etcd_member.start)
            await until(lambda: a.election.leading, "a leads again after the restart")
            assert a.heard == ["a:1", "", "a:1"]
            async with etcd_service.stubs(etcd_member.endpoint) as etcd:
                assert await holder(etcd, key) == ("a:1", a.election._lease)

    run(scenario)
    # Every retry while etcd was down failed; the outage was said once.
    assert [r.levelno for r in caplog.records if "etcd_election_broken" in r.getMessage()
            ] == [logging.WARNING]


def test_the_leader_key_is_outside_its_stores_prefix(etcd_endpoint: str) -> None:
    prefix = f"elect-store-{uuid.uuid4().hex}/"
    store = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix))
    store.initialize_session("s")
    store.register("s", [VariableSpec("t", "integer", 7)], actor="s")
    asyncio.run(store.sync(store.revision))
    store.close()

    def load() -> int:
        again = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix))
        try:
            return int(again.get("s", "t").value)
        finally:
            again.close()

    async def scenario() -> None:
        key = leader_key(prefix.encode())
        async with candidates(etcd_endpoint, key, "a:1") as (a,), \
                etcd_service.stubs(etcd_endpoint) as etcd:
            await until(lambda: a.election.leading, "a leads")
            assert (await holder(etcd, key))[0] == "a:1"
            rows = await etcd.kv.Range(rpc_pb2.RangeRequest(
                key=prefix.encode(), range_end=prefix[:-1].encode() + b"0", keys_only=True))
            assert rows.count > 0 and key not in [kv.key for kv in rows.kvs]
            # Another replica's full load of the prefix, with the key held, never meets it.
            assert await asyncio.to_thread(load) == 7

    run(scenario)
