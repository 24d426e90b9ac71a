"""The test etcd and the client the etcd backend builds on: one member from
tests/etcd_service.py, spoken to through dspex_rx.etcd_v3's generated stubs on grpc.aio.

What the backend relies on is proved here against the real server: a txn's header revision
(also when its compare fails), ranges at a revision, watches from a revision that see every
later change in order with a txn's changes in one response, progress notifications, the
compaction error, leases, and a member that keeps its data across kill -9.

The tests are plain functions running one ``asyncio.run`` each: grpc.aio needs asyncio,
and the suite's trio mode applies only to ``async def`` tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import etcd_service
import grpc
import pytest
from etcd_service import EtcdMember, Stubs

from dspex_rx.etcd_v3 import kv_pb2, rpc_pb2

T = TypeVar("T")
# A hang guard, not a timing claim: each awaited answer comes in milliseconds.
GUARD = 15.0
Compare = rpc_pb2.Compare


def run(endpoint: str, scenario: Callable[[Stubs], Awaitable[T]]) -> T:
    async def main() -> T:
        async with etcd_service.stubs(endpoint) as etcd:
            return await asyncio.wait_for(scenario(etcd), GUARD * 2)

    return asyncio.run(main())


async def put(etcd: Stubs, key: bytes, value: bytes, **options: Any) -> int:
    answer = await etcd.kv.Put(rpc_pb2.PutRequest(key=key, value=value, **options))
    return int(answer.header.revision)


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


class WatchStream:
    """One Watch stream: requests written, responses read one at a time under the guard."""

    def __init__(self, etcd: Stubs) -> None:
        self.call = etcd.watch.Watch()

    async def create(self, key: bytes, **options: Any) -> rpc_pb2.WatchResponse:
        request = rpc_pb2.WatchCreateRequest(key=key, **options)
        await self.call.write(rpc_pb2.WatchRequest(create_request=request))
        return await self.read()

    async def request_progress(self) -> None:
        await self.call.write(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))

    async def read(self) -> rpc_pb2.WatchResponse:
        response = await asyncio.wait_for(self.call.read(), GUARD)
        assert response is not grpc.aio.EOF, "the watch stream ended"
        return response

    async def events(self, count: int) -> list[tuple[list[kv_pb2.Event], int]]:
        """Responses until ``count`` events came: (events, header revision) per response."""
        got: list[tuple[list[kv_pb2.Event], int]] = []
        while sum(len(events) for events, _ in got) < count:
            response = await self.read()
            if response.events:
                got.append((list(response.events), response.header.revision))
        return got

    def close(self) -> None:
        self.call.cancel()


def test_a_put_is_read_back_with_its_revisions(etcd_endpoint: str) -> None:
    async def scenario(etcd: Stubs) -> None:
        first = await put(etcd, b"svc/put/a", b"one")
        second = await put(etcd, b"svc/put/a", b"two")
        assert second == first + 1
        answer = await etcd.kv.Range(rpc_pb2.RangeRequest(key=b"svc/put/a"))
        [kv] = answer.kvs
        assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (
            b"two", first, second, 2)
        assert answer.header.revision >= second

    run(etcd_endpoint, scenario)


def test_a_txn_whose_compare_fails_applies_nothing_and_says_at_which_revision(
    etcd_endpoint: str,
) -> None:
    async def scenario(etcd: Stubs) -> None:
        written = await put(etcd, b"svc/txn/a", b"old")
        stale = rpc_pb2.TxnRequest(
            compare=[Compare(key=b"svc/txn/a", target=Compare.MOD, result=Compare.EQUAL,
                             mod_revision=written - 1)],
            success=[rpc_pb2.RequestOp(
                request_put=rpc_pb2.PutRequest(key=b"svc/txn/a", value=b"new"))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"svc/txn/a"))],
        )
        refused = await etcd.kv.Txn(stale)
        assert refused.succeeded is False
        # No write: the store's revision is what it was, and the header says so.
        now = (await etcd.kv.Range(rpc_pb2.RangeRequest(key=b"svc/txn/a"))).header.revision
        assert refused.header.revision == now
        [failure] = refused.responses
        assert [kv.value for kv in failure.response_range.kvs] == [b"old"]

        fresh = rpc_pb2.TxnRequest(
            compare=[
                Compare(key=b"svc/txn/a", target=Compare.MOD, result=Compare.EQUAL,
                        mod_revision=written),
                Compare(key=b"svc/txn/a", target=Compare.VERSION, result=Compare.EQUAL,
                        version=1),
                Compare(key=b"svc/txn/a", target=Compare.VALUE, result=Compare.EQUAL,
                        value=b"old"),
                # create-if-absent: version 0 means the key does not exist
                Compare(key=b"svc/txn/b", target=Compare.VERSION, result=Compare.EQUAL,
                        version=0),
            ],
            success=[
                rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"svc/txn/a", value=b"new")),
                rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"svc/txn/b", value=b"b")),
            ],
        )
        applied = await etcd.kv.Txn(fresh)
        assert applied.succeeded is True
        # One txn, one revision: both keys carry the header's revision.
        assert applied.header.revision == now + 1
        answer = await etcd.kv.Range(
            rpc_pb2.RangeRequest(key=b"svc/txn/", range_end=prefix_end(b"svc/txn/")))
        assert [(kv.key, kv.value, kv.mod_revision) for kv in answer.kvs] == [
            (b"svc/txn/a", b"new", now + 1), (b"svc/txn/b", b"b", now + 1)]

    run(etcd_endpoint, scenario)


def test_a_range_at_a_revision_sees_the_values_of_then(etcd_endpoint: str) -> None:
    async def scenario(etcd: Stubs) -> None:
        then = await put(etcd, b"svc/at/a", b"then")
        await put(etcd, b"svc/at/a", b"now")
        await put(etcd, b"svc/at/b", b"born later")
        old = await etcd.kv.Range(rpc_pb2.RangeRequest(
            key=b"svc/at/", range_end=prefix_end(b"svc/at/"), revision=then))
        assert [(kv.key, kv.value) for kv in old.kvs] == [(b"svc/at/a", b"then")]

    run(etcd_endpoint, scenario)


def test_a_watch_from_a_revision_sees_every_later_change_in_order(etcd_endpoint: str) -> None:
    async def scenario(etcd: Stubs) -> None:
        prefix = b"svc/watch/"
        expected: list[tuple[bytes, bytes, int]] = []
        start = 0
        for i in range(10):
            revision = await put(etcd, prefix + b"k%d" % (i % 3), b"v%d" % i)
            start = start or revision
            expected.append((prefix + b"k%d" % (i % 3), b"v%d" % i, revision))
        # Two keys in one txn: one revision, both events in one response.
        both = await etcd.kv.Txn(rpc_pb2.TxnRequest(success=[
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=prefix + b"x", value=b"x")),
            rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=prefix + b"k0")),
        ]))
        expected += [(prefix + b"x", b"x", both.header.revision),
                     (prefix + b"k0", b"", both.header.revision)]

        stream = WatchStream(etcd)
        try:
            created = await stream.create(prefix, range_end=prefix_end(prefix),
                                          start_revision=start)
            assert created.created and created.compact_revision == 0
            # Changes made after the watch exists come on the same stream, after the rest.
            for i in range(10, 15):
                expected.append((prefix + b"live", b"v%d" % i,
                                 await put(etcd, prefix + b"live", b"v%d" % i)))
            responses = await stream.events(len(expected))
        finally:
            stream.close()
        seen = [(e.kv.key, e.kv.value, e.kv.mod_revision) for events, _ in responses
                for e in events]
        assert seen == expected
        kinds = [e.type for events, _ in responses for e in events]
        assert kinds.count(kv_pb2.Event.DELETE) == 1
        # A response may carry several revisions (catch-up comes batched) but never splits
        # one: both changes of the txn arrive in the same response.
        per_response = [{e.kv.mod_revision for e in events} for events, _ in responses]
        assert sum(both.header.revision in revisions for revisions in per_response) == 1
        assert sum(len(r) for r in per_response) == len({rev for *_, rev in expected})

    run(etcd_endpoint, scenario)


def test_a_watch_hears_progress_on_request_and_unasked_when_idle(etcd_endpoint: str) -> None:
    async def scenario(etcd: Stubs) -> None:
        current = await put(etcd, b"svc/progress/other", b"moves the revision")
        stream = WatchStream(etcd)
        try:
            await stream.create(b"svc/progress/idle", progress_notify=True)
            await stream.request_progress()
            asked = await stream.read()
            # The answer to a progress request: no events, the store's revision.
            assert (list(asked.events), asked.header.revision) == ([], current)
            # The member sends one unasked every PROGRESS_NOTIFY_INTERVAL on an idle watch.
            unasked = await stream.read()
            assert (list(unasked.events), unasked.header.revision) == ([], current)
        finally:
            stream.close()

    run(etcd_endpoint, scenario)


def test_a_compacted_revision_is_refused_with_the_compaction_revision(
    etcd_endpoint: str,
) -> None:
    async def scenario(etcd: Stubs) -> None:
        first = await put(etcd, b"svc/compact/a", b"1")
        await put(etcd, b"svc/compact/a", b"2")
        last = await put(etcd, b"svc/compact/a", b"3")
        await etcd.kv.Compact(rpc_pb2.CompactionRequest(revision=last, physical=True))

        stream = WatchStream(etcd)
        try:
            answer = await stream.create(b"svc/compact/a", start_revision=first)
            if answer.created and not answer.canceled:
                answer = await stream.read()  # some versions say "created" first
        finally:
            stream.close()
        assert answer.canceled and answer.compact_revision == last
        assert answer.events == []

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await etcd.kv.Range(rpc_pb2.RangeRequest(key=b"svc/compact/a", revision=first))
        assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "compacted" in (refused.value.details() or "")
        # At the compaction revision itself the value is still there.
        kept = await etcd.kv.Range(rpc_pb2.RangeRequest(key=b"svc/compact/a", revision=last))
        assert [kv.value for kv in kept.kvs] == [b"3"]

    run(etcd_endpoint, scenario)


def test_a_lease_is_granted_kept_alive_and_revoked_with_its_keys(etcd_endpoint: str) -> None:
    async def scenario(etcd: Stubs) -> None:
        granted = await etcd.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30))
        assert granted.ID != 0 and granted.TTL == 30
        claimed = await put(etcd, b"svc/lease/claim", b"holder", lease=granted.ID)

        keepalive = etcd.lease.LeaseKeepAlive()
        try:
            for _ in range(3):  # one stream carries every renewal
                await keepalive.write(rpc_pb2.LeaseKeepAliveRequest(ID=granted.ID))
                renewed = await asyncio.wait_for(keepalive.read(), GUARD)
                assert (renewed.ID, renewed.TTL) == (granted.ID, 30)
        finally:
            keepalive.cancel()

        info = await etcd.lease.LeaseTimeToLive(
            rpc_pb2.LeaseTimeToLiveRequest(ID=granted.ID, keys=True))
        assert info.keys == [b"svc/lease/claim"] and 0 < info.TTL <= 30
        claim = await etcd.kv.Range(rpc_pb2.RangeRequest(key=b"svc/lease/claim"))
        # The fencing token the backend will use: the claim key's create revision.
        assert [(kv.lease, kv.create_revision) for kv in claim.kvs] == [(granted.ID, claimed)]

        await etcd.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=granted.ID))
        gone = await etcd.kv.Range(rpc_pb2.RangeRequest(key=b"svc/lease/claim"))
        assert gone.count == 0
        after = await etcd.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=granted.ID))
        assert after.TTL == -1

    run(etcd_endpoint, scenario)


def test_a_member_killed_and_restarted_keeps_its_data_and_endpoint(
    etcd_member: EtcdMember,
) -> None:
    endpoint, pid = etcd_member.endpoint, etcd_member.pid
    written = run(endpoint, lambda etcd: put(etcd, b"svc/restart/a", b"kept"))

    etcd_member.restart()  # SIGKILL, then the same data dir and ports
    assert etcd_member.endpoint == endpoint and etcd_member.pid not in (None, pid)
    etcd_member.stop()
    assert not etcd_member.running and not etcd_member.healthy()
    etcd_member.start()

    async def read(etcd: Stubs) -> list[tuple[bytes, int]]:
        answer = await etcd.kv.Range(rpc_pb2.RangeRequest(key=b"svc/restart/a"))
        return [(kv.value, kv.mod_revision) for kv in answer.kvs]

    assert run(endpoint, read) == [(b"kept", written)]


def test_two_members_are_independent_stores(etcd_member: EtcdMember, tmp_path: Path) -> None:
    with etcd_service.running_member(tmp_path / "second", name="second") as second:
        assert second.endpoint != etcd_member.endpoint
        run(etcd_member.endpoint, lambda etcd: put(etcd, b"svc/two/a", b"first only"))

        async def count(etcd: Stubs) -> int:
            return int((await etcd.kv.Range(rpc_pb2.RangeRequest(key=b"svc/two/a"))).count)

        assert run(second.endpoint, count) == 0
        assert run(etcd_member.endpoint, count) == 1
    assert not (tmp_path / "second").exists()


@pytest.mark.parametrize("environ,outcome", [
    ({etcd_service.BINARY_ENV: "/nonexistent/etcd"}, pytest.skip.Exception),
    ({etcd_service.BINARY_ENV: "/nonexistent/etcd", "CI": "true"}, pytest.fail.Exception),
])
def test_a_missing_etcd_skips_the_tests_except_in_ci(
    environ: dict[str, str], outcome: type[BaseException],
) -> None:
    with pytest.raises(outcome, match="/nonexistent/etcd is not an executable file"):
        etcd_service.require_binary(environ)


def test_a_start_that_fails_says_why_with_the_log(tmp_path: Path) -> None:
    etcd_service.require_binary()
    member = EtcdMember(tmp_path / "bad", extra_args=["--no-such-flag"])
    with pytest.raises(RuntimeError, match="exited with code") as failed:
        member.start()
    assert "no-such-flag" in str(failed.value)
    assert not member.running
