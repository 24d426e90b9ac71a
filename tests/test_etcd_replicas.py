"""Several replicas over one etcd store: each sees the others' writes, in revision order,
and tells its watchers; of two replicas writing from the same state one conflicts, reads
the new state and runs its call again; through servers, watchers on every replica see
every acknowledged write once, in order, and all replicas end with the same values.

Real-time loops are hang guards only (replicas hear each other through etcd's watch).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import trio
from dns_service import TYPE_A, DnsService
from helpers import through_reconnect, until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_durable_store import dump, run_step, steps
from test_property_wire import LIMITS

import dspex_rx
from dspex_rx.client.updates import VariableUpdate
from dspex_rx.errors import StorageError
from dspex_rx.etcd import EtcdBackend
from dspex_rx.etcd_v3 import rpc_pb2 as etcd_rpc
from dspex_rx.server import EmbeddedServer
from dspex_rx.server.metrics import count
from dspex_rx.store import MemoryStore, VariableSpec, accounts
from dspex_rx.store.backend import RevisionConflict
from dspex_rx.store.durable import follow
from dspex_rx.store.records import Commit


@pytest.fixture
def prefix() -> str:
    return f"replicas-{uuid.uuid4().hex}/"


@pytest.fixture
def pair(etcd_endpoint: str, prefix: str) -> Iterator[tuple[MemoryStore, MemoryStore]]:
    a = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix))
    b = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix))
    yield a, b
    a.close()
    b.close()


# A store writing to etcd, and another replica's backend on the same prefix.
WriterFollower = tuple[MemoryStore, EtcdBackend]


@pytest.fixture
def writer_and_follower(etcd_endpoint: str, prefix: str,
                        ) -> Iterator[WriterFollower]:
    """A store writing to etcd under ``prefix`` and a second replica's backend on the same
    prefix (not watching until bound to a loop), both closed after the test."""
    writer = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix))
    follower = EtcdBackend([etcd_endpoint], prefix=prefix)
    try:
        yield writer, follower
    finally:
        writer.close()
        follower.close()


def sync(store: MemoryStore) -> None:
    asyncio.run(store.sync(store.revision))


def share_one_variable(a: MemoryStore, b: MemoryStore) -> None:
    """Session "shared" with an integer "t" (version 1, value 0), made on ``a``; ``b``
    has read it."""
    a.initialize_session("shared")
    a.register("shared", [VariableSpec("t", "integer", 0)], actor="a")
    sync(a)
    b._backend.catch_up()


def test_a_replica_catches_up_with_another_and_tells_its_watchers_in_order(
    pair: tuple[MemoryStore, MemoryStore],
) -> None:
    a, b = pair
    a.initialize_session("shared")
    a.register("shared", [VariableSpec("t", "integer", 0)], actor="a")
    sync(a)
    b._backend.catch_up()  # what b's watch does when it sees a's write
    heard: list[Commit | None] = []
    b.add_listener("shared", heard.append)
    for value in (1, 2, 3):
        a.set("shared", "t", value, actor="a")
        sync(a)
    b._backend.catch_up()
    assert b.get("shared", "t").value == 3
    assert [c.events[0].record.value for c in heard if c] == [1, 2, 3]
    assert [c.revision for c in heard if c] == [a.revision - 2, a.revision - 1, a.revision]
    assert b.revision == a.revision
    b.check_accounts()


def test_a_full_catch_up_tells_watchers_their_session_ended_when_its_id_came_back(
    pair: tuple[MemoryStore, MemoryStore],
) -> None:
    # Guards a bug: a full read carried watchers to the stored session of the same id
    # although it was another incarnation, so they heard the new session's commits.
    a, b = pair
    _, client, _ = a.initialize_session("s")
    a.register("s", [VariableSpec("t", "integer", 0)], actor="a")
    sync(a)
    b._backend.catch_up()
    heard: list[Commit | None] = []
    b.add_listener("s", heard.append)
    assert a.close_session("s", client)
    sync(a)
    a.initialize_session("s")
    a.register("s", [VariableSpec("u", "integer", 7)], actor="a")
    sync(a)
    b._backend.catch_up()  # one full read sees only the new incarnation
    assert heard == [None]
    assert b.session("s").incarnation == a.session("s").incarnation
    assert not b.session("s").listeners
    b.check_accounts()


def test_of_two_replicas_writing_from_one_state_the_second_conflicts_and_reruns(
    pair: tuple[MemoryStore, MemoryStore],
) -> None:
    a, b = pair
    share_one_variable(a, b)
    a.set("shared", "t", 1, actor="a", expected_version=1)
    b.set("shared", "t", 2, actor="b", expected_version=1)  # both saw version 1
    sync(a)
    with pytest.raises(RevisionConflict):
        sync(b)
    # b's write was undone and b now holds a's: run against it, its CAS fails honestly.
    assert (b.get("shared", "t").value, b.get("shared", "t").version) == (1, 2)
    with pytest.raises(dspex_rx.ConflictError):
        b.set("shared", "t", 2, actor="b", expected_version=1)
    b.set("shared", "t", 2, actor="b", expected_version=2)
    sync(b)
    a._backend.catch_up()
    assert a.get("shared", "t").value == 2 and a.revision == b.revision


def test_a_replica_that_lost_a_race_keeps_its_watchers_and_names_what_it_undid(
    pair: tuple[MemoryStore, MemoryStore],
) -> None:
    a, b = pair
    share_one_variable(a, b)
    stored = b.revision
    heard: list[Commit | None] = []
    undone: list[int] = []
    b.add_listener("shared", heard.append)
    b.on_undo(undone.append)
    a.set("shared", "t", 1, actor="a")
    b.set("shared", "t", 2, actor="b")  # heard at once; undone by the conflict below
    sync(a)
    with pytest.raises(RevisionConflict):
        sync(b)
    # Every commit above what b had stored was undone; its watchers were not dropped:
    # they heard a's commit (b read it back), then b's write run again.
    assert undone == [stored]
    b.set("shared", "t", 2, actor="b")
    sync(b)
    values = [(c.revision, c.events[0].record.value) for c in heard if c is not None]
    assert None not in heard
    assert values == [(stored + 1, 2), (stored + 1, 1), (stored + 2, 2)]
    assert b.generation == 0  # no stream of b's has to end for it


def test_a_watcher_from_another_session_leaves_no_count_behind_after_a_conflict(
    pair: tuple[MemoryStore, MemoryStore],
) -> None:
    # Guards a bug (found in review): the stored copy of a session took over its listeners
    # but the count of other sessions' watchers was copied, and the remover counted down
    # on the old object: the owner's own stream limit then came out too generous.
    a, b = pair
    share_one_variable(a, b)
    remove = b.add_listener("shared", lambda commit: None, foreign=True)
    a.set("shared", "t", 1, actor="a")
    b.set("shared", "t", 2, actor="b")
    sync(a)
    with pytest.raises(RevisionConflict):
        sync(b)  # b's sessions are now the stored copies
    remove()
    session = b._backend._sessions["shared"]
    assert (len(session.listeners), session.foreign_listeners) == (0, 0)


def replica(endpoint: str, prefix: str, host: str = "127.0.0.1", port: int = 0,
            *, write_leader: bool = True) -> EmbeddedServer:
    server = EmbeddedServer(host, port, store=MemoryStore(
        backend=EtcdBackend([endpoint], prefix=prefix), session_ttl=3600),
        write_leader=write_leader)
    server.start()
    return server


@contextlib.contextmanager
def replicas(endpoint: str, prefix: str, count: int, *, write_leader: bool = True,
             ) -> Iterator[list[EmbeddedServer]]:
    """``count`` replicas over one etcd prefix, stopped after the block; with
    ``write_leader=False`` each makes its own writes (the races between them)."""
    servers = [replica(endpoint, prefix, write_leader=write_leader) for _ in range(count)]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


async def test_watchers_on_every_replica_see_every_write_once_in_order(
    etcd_endpoint: str, prefix: str,
) -> None:
    servers = [replica(etcd_endpoint, prefix) for _ in range(3)]
    names = ["a", "b", "c"]
    seen: dict[int, dict[str, list[VariableUpdate]]] = {i: {n: [] for n in names}
                                                        for i in range(3)}
    acked: dict[str, list[tuple[int, int]]] = {n: [] for n in names}
    try:
        async with dspex_rx.connect(servers[0].target, session_id="shared") as first:
            await first.register_variables(
                [{"name": n, "type": "integer", "initial_value": 0} for n in names])
            token = first.token
            for server in servers[1:]:
                await until(lambda s=server: "shared" in s.call(s.store.session_ids),
                            "the session reached every replica", 30)
            clients = [first] + [
                await dspex_rx.SessionContext("shared", s.target, token=token,
                                              create=False).initialize()
                for s in servers[1:]
            ]
            try:
                for i, client in enumerate(clients):
                    for name in names:
                        client.observe(name).subscribe(seen[i][name].append)

                async def writer(i: int, name: str) -> None:
                    for k in range(1, 16):
                        value = (i + 1) * 1000 + k
                        while True:
                            try:
                                version = await clients[i].set_variable(name, value)
                                break
                            except dspex_rx.ConflictError:
                                await trio.sleep(0)  # another replica kept winning
                        acked[name].append((version, value))

                async with trio.open_nursery() as nursery:
                    for i in range(3):
                        nursery.start_soon(writer, i, names[i])
                        nursery.start_soon(writer, i, names[(i + 1) % 3])
                finals = {n: max(acked[n])[0] for n in names}
                await until(lambda: all(
                    seen[i][n] and seen[i][n][-1].version == finals[n]
                    for i in range(3) for n in names), "every watcher saw the last write", 60)
                for client in clients:
                    values = await client.get_variables(names)
                    assert values == {n: max(acked[n])[1] for n in names}
            finally:
                for client in clients[1:]:
                    await client.close()
    finally:
        for server in servers:
            server.stop()
    for name in names:
        written = dict(acked[name])
        assert len(written) == 30  # versions 2..31, each acknowledged once
        for i in range(3):
            versions = [u.version for u in seen[i][name]]
            assert versions == sorted(set(versions)), (i, name, versions)
            for update in seen[i][name]:
                if update.update_type == "value_change":
                    assert written[update.version] == update.value
            revisions = [u.revision for u in seen[i][name]]
            assert revisions == sorted(revisions)


def test_with_etcd_down_writes_and_reads_are_refused_clearly_and_nothing_unstored_shows(
    etcd_member: Any,
) -> None:
    store = MemoryStore(backend=EtcdBackend([etcd_member.endpoint], prefix="down/",
                                            timeout=1.0))
    store.initialize_session("s")
    store.register("s", [VariableSpec("t", "integer", 0)], actor="s")
    sync(store)
    etcd_member.stop()
    store.set("s", "t", 1, actor="s")
    with pytest.raises(StorageError, match=r"etcd at .* did not answer the write"):
        sync(store)
    # etcd cannot even be read back: the unstored 1 must not show; every answer waits.
    assert store.pending
    with pytest.raises(StorageError):
        sync(store)
    etcd_member.start()
    guard = time.monotonic() + 30  # a hang guard: the channel reconnects after a backoff
    while store.pending:
        assert time.monotonic() < guard, "the store never read etcd back"
        with pytest.raises(StorageError):  # the sync that reads etcd back undoes the 1
            sync(store)
    assert store.get("s", "t").value == 0
    store._backend._refusing_until = 0.0
    store.set("s", "t", 2, actor="s")
    sync(store)
    store.close()
    again = MemoryStore(backend=EtcdBackend([etcd_member.endpoint], prefix="down/"))
    assert again.get("s", "t").value == 2
    again.close()


def test_with_etcd_down_a_refused_writes_read_back_is_awaited_and_shared(
    etcd_member: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Guards a bug: the read-back after a refused write (and every answer's retry of it
    # while etcd stayed unreadable) was a blocking Range on the loop, which froze the
    # whole replica for up to the call timeout with etcd slow or without a quorum.
    store = MemoryStore(backend=EtcdBackend([etcd_member.endpoint], prefix="down/",
                                            timeout=1.0))
    backend: Any = store._backend
    store.initialize_session("s")
    store.register("s", [VariableSpec("t", "integer", 0)], actor="s")
    sync(store)
    blocking: list[Any] = []
    monkeypatch.setattr(backend._kv, "Range", lambda *a, **k: blocking.append(a))
    reads: list[int] = []
    read_back = backend._read_back

    async def counted() -> Any:
        reads.append(1)
        return await read_back()

    monkeypatch.setattr(backend, "_read_back", counted)

    async def run() -> None:
        etcd_member.stop()
        store.set("s", "t", 1, actor="s")
        with pytest.raises(StorageError, match="did not answer the write"):
            await store.sync(store.revision)
        assert store.pending and len(reads) == 1  # unreadable: broken
        answers = await asyncio.gather(*(store.sync(store.revision) for _ in range(3)),
                                       return_exceptions=True)
        assert all(isinstance(a, StorageError) for a in answers)
        assert len(reads) == 2  # the three answers waited on one read-back
        etcd_member.start()
        guard = time.monotonic() + 30  # a hang guard: the channel reconnects after a backoff
        while store.pending:
            assert time.monotonic() < guard, "the store never read etcd back"
            with pytest.raises(StorageError):  # the sync that reads etcd back undoes the 1
                await store.sync(store.revision)
            await asyncio.sleep(0.05)

    asyncio.run(run())
    assert blocking == []
    assert store.get("s", "t").value == 0
    store.close()


class AnswerLost:
    """An etcd KV stub whose Txn answers time out: after etcd applied it (``sent``), or
    before it reached etcd."""

    def __init__(self, kv: Any, *, sent: bool) -> None:
        self.kv, self.sent = kv, sent

    async def Txn(self, request: Any, timeout: float) -> Any:
        if self.sent:
            await self.kv.Txn(request, timeout=timeout)
        raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(),
                                   grpc.aio.Metadata(), details="Deadline Exceeded")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kv, name)


@pytest.mark.parametrize("outcome", ["applied", "another_first", "unknown"])
def test_a_write_whose_txn_was_not_answered_is_never_called_lost(
    etcd_endpoint: str, prefix: str, monkeypatch: pytest.MonkeyPatch, outcome: str,
) -> None:
    # Guards a bug: a txn etcd applied whose answer timed out was reported as "nothing
    # of it was kept", yet the read-back found it stored.
    backend = EtcdBackend([etcd_endpoint], prefix=prefix, timeout=0.5)
    store, other = MemoryStore(backend=backend), MemoryStore(
        backend=EtcdBackend([etcd_endpoint], prefix=prefix))
    store.initialize_session("s")
    store.register("s", [VariableSpec("t", "integer", 0)], actor="s")
    sync(store)
    kv = backend._aio_kv
    monkeypatch.setattr(backend, "_aio_kv", lambda: AnswerLost(kv(), sent=outcome == "applied"))
    if outcome == "another_first":
        other._backend.catch_up()
        other.set("s", "t", 2, actor="other")
        sync(other)
    store.set("s", "t", 1, actor="s")
    try:
        if outcome == "applied":  # found stored: answered as stored
            sync(store)
            assert store.generation == 0 and not store._backend.pending
        elif outcome == "another_first":  # it never applies: the call runs again
            with pytest.raises(RevisionConflict):
                sync(store)
        else:
            with pytest.raises(StorageError, match="kept or not") as told:
                sync(store)
            assert "nothing of it was kept" not in str(told.value)
        monkeypatch.undo()
        assert store.get("s", "t").value == {"applied": 1, "another_first": 2,
                                             "unknown": 0}[outcome]
        other._backend.catch_up()
        assert other.get("s", "t").value == store.get("s", "t").value
    finally:
        store.close()
        other.close()


async def test_a_client_of_two_replicas_moves_on_when_its_replica_dies_and_loses_no_event(
    etcd_endpoint: str, prefix: str,
) -> None:
    seen: list[VariableUpdate] = []
    with replicas(etcd_endpoint, prefix, 2) as (first, second):
        async with dspex_rx.connect([first.target, second.target],
                                    session_id="failover") as watcher:
            await watcher.register_variable("t", "integer", 0)
            watcher.observe("t").subscribe(seen.append)
            await until(lambda: bool(seen), "the initial value", 30)
            await loses_no_event_when_its_replica_dies(watcher, first, second, seen)
    assert_every_value_once(seen)


async def loses_no_event_when_its_replica_dies(
    watcher: dspex_rx.SessionContext, dying: EmbeddedServer, left: EmbeddedServer,
    seen: list[VariableUpdate], moved: Callable[[], bool] = lambda: True,
) -> None:
    """Through ``left``, write 1 (the watcher hears it through ``dying``, its replica),
    stop ``dying``, write 2-4, wait until ``moved()``; then the watcher writes 5 itself,
    through the replica left."""
    sid = watcher.session_id
    await until(lambda: sid in left.call(left.store.session_ids),
                "the session reached the other replica", 30)
    async with dspex_rx.connect(left.target, session_id=sid, token=watcher.token,
                                create=False) as writer:
        await writer.set_variable("t", 1)
        await until(lambda: seen[-1].value == 1, "1 through the watcher's replica", 30)
        await trio.to_thread.run_sync(dying.stop)
        for value in (2, 3, 4):
            await writer.set_variable("t", value)
        await until(lambda: seen[-1].value == 4, "4 after the failover", 30)
        await until(moved, "the stream on the replica left", 30)
    await through_reconnect(lambda: watcher.set_variable("t", 5))
    await until(lambda: seen[-1].value == 5, "its own write", 30)


def assert_every_value_once(seen: list[VariableUpdate]) -> None:
    """The watcher saw 0-5, each once, in order, versions dense, and no resync."""
    assert [u.value for u in seen] == [0, 1, 2, 3, 4, 5]
    assert [u.version for u in seen] == [1, 2, 3, 4, 5, 6]
    assert "resync" not in {u.update_type for u in seen}



def watching(server: EmbeddedServer) -> bool:
    """Whether a client watches a variable through this server (a stream on it)."""
    return server.call(lambda: any(sub.watched for sub in server.service.subscribers))


# Guards a bug: a resume answered by a replica still behind the client's revision resynced
# to its older value (the value went back), then brought the same versions again.
async def test_a_client_that_moves_to_a_replica_behind_it_sees_no_value_twice_or_go_back(
    etcd_endpoint: str, prefix: str,
) -> None:
    seen: list[VariableUpdate] = []
    with replicas(etcd_endpoint, prefix, 2) as (first, second):
        async with dspex_rx.connect([first.target, second.target],
                                    session_id="lagging") as watcher:
            await watcher.register_variable("t", "integer", 0)
            watcher.observe("t").subscribe(seen.append)
            await until(lambda: second.call(
                lambda: "lagging" in second.store.session_ids()), "the session on B", 30)
            # B hears nothing more from etcd until released: it falls behind.
            backend = second.store._backend
            held: list[tuple[Any, ...]] = []
            real_post = backend._post  # type: ignore[attr-defined]
            second.call(lambda: setattr(backend, "_post", lambda *a: held.append(a)))
            async with dspex_rx.connect(first.target, session_id="lagging",
                                        token=watcher.token, create=False) as writer:
                for value in (1, 2, 3):
                    await writer.set_variable("t", value)
            await until(lambda: seen[-1].value == 3, "3 through A", 30)
            await trio.to_thread.run_sync(first.stop)
            # The resume reached B (old code: answered at once, with a resync).
            await until(lambda: second.call(lambda: bool(second.store._reaching))
                        or watching(second), "the resume on B", 30)

            def release() -> None:
                backend._post = real_post  # type: ignore[attr-defined]
                for args in held:
                    real_post(*args)
            second.call(release)
            await until(lambda: watching(second), "the resume answered", 30)
            await through_reconnect(lambda: watcher.set_variable("t", 4))
            await until(lambda: seen[-1].value == 4, "its own write through B", 30)
    assert [(u.value, u.version) for u in seen] == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert "resync" not in {u.update_type for u in seen}


async def test_a_client_of_a_dns_name_with_two_addresses_moves_on_when_its_replica_dies(
    etcd_endpoint: str, prefix: str,
) -> None:
    # Two replicas on one port at two loopback addresses (Linux routes 127/8 to lo), one
    # name with both as A records, on a DNS server of our own that gRPC's c-ares resolver
    # asks (the target's authority; grpcio's default resolver: GRPC_DNS_RESOLVER=native
    # ignores the authority, and connect fails saying so): a real lookup, no /etc/hosts.
    first = replica(etcd_endpoint, prefix, "127.0.0.1")
    port = int(first.target.rpartition(":")[2])
    second = replica(etcd_endpoint, prefix, "127.0.0.2", port)
    servers = [first, second]
    seen: list[VariableUpdate] = []
    try:
        with DnsService({"replicas.dspex.test": ["127.0.0.1", "127.0.0.2"]}) as dns:
            target = f"dns://{dns.address}/replicas.dspex.test:{port}"
            async with dspex_rx.connect(target, session_id="dns-failover") as watcher:
                assert watcher.target == target
                assert ("replicas.dspex.test", TYPE_A) in dns.queries
                await watcher.register_variable("t", "integer", 0)
                watcher.observe("t").subscribe(seen.append)
                await until(lambda: bool(seen), "the initial value", 30)
                await until(lambda: [watching(s) for s in servers].count(True) == 1,
                            "the watch stream on one replica", 30)
                dying, left = servers if watching(first) else servers[::-1]
                # It moves to the other address the name resolves to.
                await loses_no_event_when_its_replica_dies(
                    watcher, dying, left, seen, moved=lambda: watching(left))
                assert await watcher.get_variable("t") == 5
    finally:
        first.stop()
        second.stop()
    assert_every_value_once(seen)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(steps(), min_size=5, max_size=30))
def test_a_replica_that_applies_the_others_rows_holds_exactly_the_stored_state(
    etcd_endpoint: str, ops: list[tuple[str, str, Any]],
) -> None:
    prefix = f"replay-{uuid.uuid4().hex}/"
    options: dict[str, Any] = {"limits": LIMITS, "log_size": 5, "history_size": 3}
    writer = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix), **options)
    follower = EtcdBackend([etcd_endpoint], prefix=prefix)
    heard: list[int] = []

    async def run() -> None:
        follower.bind_loop(asyncio.get_running_loop())
        session, client, _ = writer.initialize_session()
        follower_store = MemoryStore(backend=follower, **options)
        state: dict[str, Any] = {"sid": session.id, "client": client}
        await writer.sync(writer.revision)
        await _caught_up(follower, writer)
        follower_store.add_listener(session.id, lambda c: heard.append(c.revision) if c else None)
        for op, name, value in ops:
            with contextlib.suppress(dspex_rx.DspexError):  # refused steps change nothing
                run_step(writer, state, op, name, value)
            await writer.sync(writer.revision)
            await _caught_up(follower, writer)
            assert dump(follower) == dump(writer._backend), op
            follower_store.check_accounts()

    try:
        asyncio.run(run())
    finally:
        writer.close()
        follower.close()
    assert heard == sorted(set(heard))  # every commit once, in order


def test_a_replica_follows_anothers_writes_without_recounting_whole_sessions(
    etcd_endpoint: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Guards a bug: each applied write recounted the whole session (every history entry
    # and logged commit), so a follower of a long session fell behind its writer.
    prefix = f"follow-{uuid.uuid4().hex}/"
    options: dict[str, Any] = {"log_size": 6, "history_size": 3}
    writer = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix), **options)
    follower = EtcdBackend([etcd_endpoint], prefix=prefix)
    recounted: list[str] = []
    real_recount = accounts._recount
    monkeypatch.setattr(accounts, "_recount",
                        lambda s: (recounted.append(s.id), real_recount(s))[1])

    async def run() -> None:
        follower.bind_loop(asyncio.get_running_loop())
        follower_store = MemoryStore(backend=follower, **options)
        writer.initialize_session("long")
        writer.register("long", [VariableSpec(f"v{i}", "integer", 0) for i in range(4)],
                        actor="w")
        await writer.sync(writer.revision)
        await _caught_up(follower, writer)
        recounted.clear()
        for k in range(1, 41):
            writer.set("long", f"v{k % (4 if k <= 30 else 3)}", k, actor="w")
            if k == 30:
                writer.delete("long", "v3", actor="w")
            if k % 3 == 0:  # some flushes carry several commits
                await writer.sync(writer.revision)
                await _caught_up(follower, writer)
                follower_store.check_accounts()  # every figure equals a recount
        await writer.sync(writer.revision)
        await _caught_up(follower, writer)
        follower_store.check_accounts()
        session = follower_store.session("long")
        assert session.used == writer.session("long").used
        assert len(session.superseded) <= 2 * session.history_entries + 64
        # Eviction's queue: every superseded entry still held, oldest first, as a recount
        # orders them (trimmed ones may linger: eviction skips them).
        held = sorted((after.revision, var_id, before.version)
                      for var_id, kept in session.history.items()
                      for before, after in itertools.pairwise(kept))
        assert [item for item in session.superseded if item in held] == held
        v1 = session.names["v1"]
        assert session.history[v1][-1].version == writer.session("long").variables[v1].version
        assert "v3" not in session.names

    try:
        asyncio.run(run())
    finally:
        writer.close()
        follower.close()
    assert recounted == []  # followed from the moved tails, never recounted whole


@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(steps(), min_size=1, max_size=12), st.lists(steps(), min_size=1, max_size=8),
       st.lists(steps(), min_size=1, max_size=4))
def test_a_replica_that_lost_a_race_undoes_its_changes_without_reading_the_whole_store(
    etcd_endpoint: str, before: list[tuple[str, str, Any]],
    undone: list[tuple[str, str, Any]], winning: list[tuple[str, str, Any]],
) -> None:
    # b changes the store locally while a commits first: b's flush conflicts, b goes back
    # to the stored rows re-reading only what its live objects cannot give back, then
    # applies a's write from its watch. It must then hold exactly what a holds.
    prefix = f"race-{uuid.uuid4().hex}/"
    options: dict[str, Any] = {"limits": LIMITS, "log_size": 5, "history_size": 3}
    a_backend = EtcdBackend([etcd_endpoint], prefix=prefix)
    b_backend = EtcdBackend([etcd_endpoint], prefix=prefix)
    full_reads: list[int] = []
    real_rows = b_backend._rows

    def counted_rows() -> Any:
        full_reads.append(1)
        return real_rows()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        a_backend.bind_loop(loop)
        b_backend.bind_loop(loop)
        a = MemoryStore(backend=a_backend, **options)
        b = MemoryStore(backend=b_backend, **options)
        session, client, _ = a.initialize_session()
        state: dict[str, Any] = {"sid": session.id, "client": client}
        for op, name, value in before:
            with contextlib.suppress(dspex_rx.DspexError):
                run_step(a, state, op, name, value)
        await a.sync(a.revision)
        await _caught_up(b_backend, a)
        b_state = {"sid": session.id, "client": client}
        for op, name, value in undone:
            with contextlib.suppress(dspex_rx.DspexError):
                run_step(b, b_state, op, name, value)
        for op, name, value in winning:
            with contextlib.suppress(dspex_rx.DspexError):
                run_step(a, state, op, name, value)
        won = a.pending
        await a.sync(a.revision)
        b_backend._rows = counted_rows  # type: ignore[method-assign]
        if b.pending and won:
            with pytest.raises(RevisionConflict):
                await b.sync(b.revision)
            assert full_reads == []  # only what the live objects could not give back
        await b.sync(b.revision)  # anything b still holds (nothing, or its win)
        await eventually(lambda: a_backend._head == b_backend._head,
                         "the replicas agreed on the head")
        assert dump(b_backend) == dump(a_backend)
        b.check_accounts()

    try:
        asyncio.run(run())
    finally:
        a_backend.close()
        b_backend.close()


async def eventually(done: Callable[[], bool], what: str, guard: float = 30.0) -> None:
    """Poll ``done()`` on this asyncio loop until it holds: a hang guard, no timing (a
    replica hears another's writes through etcd's watch; channels reconnect after a
    backoff)."""
    deadline = time.monotonic() + guard
    while not done():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.005)


async def _caught_up(follower: EtcdBackend, writer: MemoryStore) -> None:
    head = writer._backend._head  # type: ignore[attr-defined]
    await eventually(lambda: follower._seen >= head, "the follower caught up")


async def following(writer: MemoryStore, follower: EtcdBackend, *names: str) -> MemoryStore:
    """Start ``follower`` watching on this loop and, through ``writer``, a session "s" with
    the integer variables ``names`` at 0, synced and applied by the follower; its store."""
    follower.bind_loop(asyncio.get_running_loop())
    follower_store = MemoryStore(backend=follower)
    writer.initialize_session("s")
    writer.register("s", [VariableSpec(n, "integer", 0) for n in names], actor="w")
    await writer.sync(writer.revision)
    await _caught_up(follower, writer)
    return follower_store


def fails_once(failed: list[str], what: str, error: Exception,
               then: Callable[..., Any] = lambda *args: None) -> Callable[..., Any]:
    """A stand-in that raises ``error`` the first time (noting ``what`` in ``failed``), and
    afterwards does what ``then`` does."""
    def stand_in(*args: Any) -> Any:
        if what not in failed:
            failed.append(what)
            raise error
        return then(*args)
    return stand_in


def test_a_replica_writes_after_applying_anothers_write_without_a_conflict(
    etcd_endpoint: str, prefix: str,
) -> None:
    # Guards a bug: the head row's revision stayed where the replica last wrote or read,
    # so every write after another replica's failed its compare and re-read the store.
    a = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix))
    b_backend = EtcdBackend([etcd_endpoint], prefix=prefix)

    async def run() -> None:
        b_backend.bind_loop(asyncio.get_running_loop())
        b = MemoryStore(backend=b_backend)
        a.initialize_session("shared")
        a.register("shared", [VariableSpec("t", "integer", 0)], actor="a")
        await a.sync(a.revision)
        await _caught_up(b_backend, a)
        for round_ in range(1, 4):
            a.set("shared", "t", 2 * round_ - 1, actor="a")
            await a.sync(a.revision)
            await _caught_up(b_backend, a)  # b applied a's rows from its watch
            b.set("shared", "t", 2 * round_, actor="b")
            await b.sync(b.revision)
            a._backend.catch_up()
        assert b.generation == 0  # never reset: no write of b's met a conflict
        assert (a.get("shared", "t").value, b.get("shared", "t").version) == (6, 7)
        assert a.revision == b.revision

    try:
        asyncio.run(run())
    finally:
        a.close()
        b_backend.close()


def test_a_replica_follows_a_session_ended_and_created_again_in_one_write(
    etcd_endpoint: str, prefix: str,
) -> None:
    # Guards a bug: that write was one txn etcd refused (it deleted the session's rows
    # and put rows under the same keys); the follower's watchers of the old session must
    # hear it went, and nothing of the new one.
    writer = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix), log_size=3)
    follower = EtcdBackend([etcd_endpoint], prefix=prefix)

    async def run() -> None:
        follower.bind_loop(asyncio.get_running_loop())
        follower_store = MemoryStore(backend=follower, log_size=3)
        _, client, _ = writer.initialize_session("s")
        writer.register("s", [VariableSpec("t", "integer", 0)], actor="w")
        for value in range(1, 4):
            writer.set("s", "t", value, actor="w")
        await writer.sync(writer.revision)
        await _caught_up(follower, writer)
        heard: list[Commit | None] = []
        follower_store.add_listener("s", heard.append)
        assert writer.close_session("s", client)
        writer.initialize_session("s")
        writer.register("s", [VariableSpec("u", "integer", 7)], actor="w")
        await writer.sync(writer.revision)
        await _caught_up(follower, writer)
        assert heard == [None]
        assert dump(follower) == dump(writer._backend)
        follower_store.check_accounts()

    try:
        asyncio.run(run())
    finally:
        writer.close()
        follower.close()


def test_a_replica_behind_catches_up_with_the_next_write_its_watch_brings(
    writer_and_follower: WriterFollower, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Guards a bug: once a catch-up read failed, every write the watch brought was
    # dropped (apply_foreign returned while behind) and none tried the read again.
    writer, follower = writer_and_follower

    def unreadable() -> Any:
        raise StorageError("etcd did not answer")

    async def run() -> None:
        follower_store = await following(writer, follower, "t")
        heard: list[Commit | None] = []
        follower_store.add_listener("s", heard.append)
        with monkeypatch.context() as patch:
            patch.setattr(follower, "_rows", unreadable)
            follower.catch_up()  # fails: the replica is behind
        assert follower._behind
        for value in (1, 2, 3):
            writer.set("s", "t", value, actor="w")
            await writer.sync(writer.revision)
        await eventually(lambda: follower_store.get("s", "t").value == 3,
                         "the follower applied the writes its watch brought")
        assert [c.events[0].record.value for c in heard if c] == [1, 2, 3]
        assert not follower._behind

    asyncio.run(run())


def test_a_replica_behind_whose_reads_fail_tries_one_full_read_per_pause(
    writer_and_follower: WriterFollower, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Guards a bug: while its full reads failed, a replica behind tried one (a read of
    # the whole store) at every write its watch brought.
    writer, follower = writer_and_follower
    reads: list[int] = []

    def unreadable() -> Any:
        reads.append(1)
        raise StorageError("etcd did not answer")

    async def run() -> None:
        follower_store = await following(writer, follower, "t")
        monkeypatch.setattr(follow, "CATCH_UP_RETRY", 3600.0)
        with monkeypatch.context() as patch:
            patch.setattr(follower, "_rows", unreadable)
            follower.catch_up()  # fails: behind, and no read again for an hour
            for value in (1, 2, 3, 4):
                writer.set("s", "t", value, actor="w")
                await writer.sync(writer.revision)
            head = writer._backend._head  # type: ignore[attr-defined]
            await eventually(lambda: follower._delivered >= head, "the watch brought them")
        assert len(reads) == 1
        # The pause over (its timer comes early): the replica reads the store and catches up.
        assert follower._catch_up_timer is not None
        follower._catch_up_at = 0.0
        follower._catch_up_timer[1].cancel()
        follower._catch_up_timed()
        assert follower_store.get("s", "t").value == 4 and not follower._behind

    asyncio.run(run())


# Guards a bug: applying a write failed after the replay had raised the session's
# revision, so the full read that followed told its watchers nothing of that write.
def test_a_write_whose_applying_failed_half_way_is_told_by_the_full_read_after_it(
    writer_and_follower: WriterFollower,
) -> None:
    writer, follower = writer_and_follower
    failed: list[Any] = []

    def hook_failing_once(replicated: Any) -> None:
        if not failed:
            failed.append(replicated)
            raise RuntimeError("a bug in a hook")

    async def run() -> None:
        follower_store = await following(writer, follower, "t")
        heard: list[Commit | None] = []
        follower_store.add_listener("s", heard.append)
        follower.on_replicated(hook_failing_once)
        for value in (1, 2):
            writer.set("s", "t", value, actor="w")
            await writer.sync(writer.revision)
        await eventually(lambda: follower_store.get("s", "t").value == 2, "caught up")
        assert failed
        assert dump(follower) == dump(writer._backend)
        assert [c.events[0].record.value for c in heard if c] == [1, 2]

    asyncio.run(run())


# Guards a bug: a full read that failed at load (a row it cannot read) still moved the
# replica's head to the snapshot's, so its next flush, built on its stale state, passed
# etcd's compare: a CAS on an old version was acknowledged over another's write.
def test_a_catch_up_that_fails_to_load_keeps_the_head_so_a_stale_write_conflicts(
    etcd_endpoint: str, prefix: str, writer_and_follower: WriterFollower,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer, follower = writer_and_follower
    bad = prefix.encode() + b"zz\x00x"  # a row this server cannot read

    async def run() -> None:
        follower_store = await following(writer, follower, "t")
        monkeypatch.setattr(follow, "CATCH_UP_RETRY", 0.0)  # every write reads again
        put = follower._kv.Put(etcd_rpc.PutRequest(key=bad, value=b"?"))
        await eventually(lambda: follower._delivered >= put.header.revision, "seen")
        assert follower._behind
        writer.set("s", "t", 1, actor="w", expected_version=1)
        await writer.sync(writer.revision)
        head = writer._backend._head  # type: ignore[attr-defined]
        await eventually(lambda: follower._delivered >= head, "the write seen")
        assert follower._behind and follower_store.get("s", "t").value == 0
        follower_store.set("s", "t", 10, actor="f", expected_version=1)
        with pytest.raises((StorageError, RevisionConflict)):
            await follower_store.sync(follower_store.revision)
        follower._kv.DeleteRange(etcd_rpc.DeleteRangeRequest(key=bad))

    asyncio.run(run())
    again = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix))
    assert (again.get("s", "t").value, again.get("s", "t").version) == (1, 2)
    again.close()


# Guards a bug: a full read that failed with no write after it (the last write's apply
# failed, then its read) armed no retry: the replica stayed behind until another write.
def test_a_replica_behind_reads_again_after_the_pause_though_no_write_comes(
    writer_and_follower: WriterFollower, monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer, follower = writer_and_follower
    real_rows = follower._rows
    failed: list[str] = []
    unreadable_once = fails_once(failed, "read", StorageError("etcd did not answer"),
                                 then=real_rows)
    hook_failing_once = fails_once(failed, "hook", RuntimeError("a bug in a hook"))

    async def run() -> None:
        follower_store = await following(writer, follower, "t")
        heard: list[Commit | None] = []
        follower_store.add_listener("s", heard.append)
        monkeypatch.setattr(follow, "CATCH_UP_RETRY", 0.01)
        monkeypatch.setattr(follower, "_rows", unreadable_once)
        follower.on_replicated(hook_failing_once)
        writer.set("s", "t", 1, actor="w")  # the last write: applying it and the read fail
        await writer.sync(writer.revision)
        await eventually(lambda: failed == ["hook", "read"], "both failed")
        await eventually(lambda: not follower._behind, "read again, no other write coming")
        assert [c.events[0].record.value for c in heard if c] == [1]

    asyncio.run(run())


# Guards a bug: after a write's applying failed half-way, a local commit made before a
# full read succeeded took a revision past that write's, and the conflict that undid it
# told watchers only the commits above that: the other replica's write was never told.
def test_a_half_applied_write_is_told_though_a_local_commit_came_before_the_full_read(
    writer_and_follower: WriterFollower, monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer, follower = writer_and_follower
    real_rows = follower._rows
    failed: list[str] = []
    unreadable_once = fails_once(failed, "read", StorageError("etcd did not answer"),
                                 then=real_rows)
    hook_failing_once = fails_once(failed, "hook", RuntimeError("a bug in a hook"))

    async def run() -> None:
        follower_store = await following(writer, follower, "t", "u")
        heard: list[Commit | None] = []
        follower_store.add_listener("s", heard.append)
        monkeypatch.setattr(follower, "_rows", unreadable_once)
        follower.on_replicated(hook_failing_once)
        writer.set("s", "t", 1, actor="w")
        await writer.sync(writer.revision)
        written = writer.revision
        await eventually(lambda: failed == ["hook", "read"], "both failed")
        # Not shown as reached (a pong, a stream's progress) while its watchers lack it.
        assert follower_store.revision < written
        follower_store.set("s", "u", 5, actor="f")
        with pytest.raises(RevisionConflict):
            await follower_store.sync(follower_store.revision)
        assert written in [c.revision for c in heard if c]

    asyncio.run(run())


# Guards two bugs: an idle replica behind whose timed full read failed either tried
# again every pause for as long as etcd was slow (each try a blocking read), or, not
# trying again, stayed behind for good. The pause doubles at each failure instead.
def test_an_idle_replica_behind_tries_again_after_doubling_pauses_until_it_catches_up(
    etcd_endpoint: str, prefix: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    follower = EtcdBackend([etcd_endpoint], prefix=prefix)
    rows = follower._rows
    pauses: list[float] = []

    def unreadable_three_times() -> Any:
        if len(pauses) < 3:
            pauses.append(follower._catch_up_pause)
            raise StorageError("etcd did not answer")
        return rows()

    async def run() -> None:
        follower.bind_loop(asyncio.get_running_loop())
        monkeypatch.setattr(follow, "CATCH_UP_RETRY", 0.01)
        monkeypatch.setattr(follower, "_rows", unreadable_three_times)
        follower.catch_up()  # fails: behind, a timed try armed
        assert follower._catch_up_timer is not None
        await eventually(lambda: not follower._behind, "caught up, no write coming")
        assert pauses == [0.0, 0.02, 0.04]  # (0: the first, CATCH_UP_RETRY)
        assert follower._catch_up_pause == 0.0  # and from the start after a success

    try:
        asyncio.run(run())
    finally:
        follower.close()


# Guards a bug: a write the watch queued during a flush whose applying then failed
# (a bug in a hook) failed that flush's waiters with the hook's error, and left the
# replica unaware it lacked the write.
def test_a_queued_write_whose_applying_fails_is_read_back_and_fails_no_flush(
    writer_and_follower: WriterFollower,
) -> None:
    writer, follower = writer_and_follower
    real_store = follower._store
    failed: list[str] = []
    hook_failing_once = fails_once(failed, "hook", RuntimeError("a bug in a hook"))

    async def run() -> None:
        follower_store = await following(writer, follower, "t", "u")

        async def store_then_another_write(ops: Any) -> None:
            await real_store(ops)
            if "write" not in failed:  # the other replica writes while this flush ends
                failed.append("write")
                for _ in range(5):  # (it lost to the flush just made: as the server does)
                    writer.set("s", "t", 1, actor="w")
                    with contextlib.suppress(RevisionConflict):
                        await writer.sync(writer.revision)
                        break
                head = writer._backend._head  # type: ignore[attr-defined]
                await eventually(lambda: follower._delivered >= head, "queued")

        follower._store = store_then_another_write  # type: ignore[method-assign]
        follower.on_replicated(hook_failing_once)
        follower_store.set("s", "u", 5, actor="f")
        await follower_store.sync(follower_store.revision)
        assert failed == ["write", "hook"]
        assert follower_store.get("s", "t").value == 1 and not follower._behind
        follower_store.set("s", "u", 6, actor="f")
        revisions = [c.revision for c in follower._sessions["s"].log]
        assert len(revisions) == len(set(revisions))

    asyncio.run(run())


# Guards a bug: the writes the watch queued while a broken replica read etcd back were
# replayed one loop turn after the reset, so a newer write the watch brought in that turn
# was applied first and the queued one skipped for good (never applied, never told).
def test_a_write_queued_during_a_recovery_is_not_skipped_for_a_newer_one(
    writer_and_follower: WriterFollower,
) -> None:
    writer, follower = writer_and_follower

    async def run() -> None:
        loop = asyncio.get_running_loop()
        follower.bind_loop(loop)
        follower_store = MemoryStore(backend=follower)
        writer.initialize_session("s")
        writer.register("s", [VariableSpec("t", "integer", 0),
                              VariableSpec("u", "integer", 0)], actor="w")
        await writer.sync(writer.revision)
        await _caught_up(follower, writer)
        x_revisions: list[int] = []

        # etcd refuses one of the follower's writes and its read-back: broken.
        real_store, real_read_back, real_post = (
            follower._store, follower._read_back, follower._post)

        async def refused(ops: Any) -> None:
            raise StorageError("etcd did not take it")

        async def unreadable() -> Any:
            raise StorageError("cannot read etcd")

        follower._store = refused  # type: ignore[method-assign]
        follower._read_back = unreadable  # type: ignore[method-assign]
        follower_store.set("s", "t", 99, actor="f")
        with contextlib.suppress(StorageError):
            await follower_store.sync(follower_store.revision)
        assert follower._broken
        follower._store = real_store  # type: ignore[method-assign]

        async def read_back_as_others_write() -> Any:
            loaded = await real_read_back()  # the snapshot, before X
            # X: the other replica's write, brought by the watch while the read-back is
            # awaited (queued: the replica is broken, so pending).
            writer.set("s", "u", 10, actor="w")
            await writer.sync(writer.revision)
            x = writer._backend._head  # type: ignore[attr-defined]
            x_revisions.append(writer.revision)
            await eventually(lambda: any(r >= x for r, _ in follower._queued), "X queued")
            # Y: the next one, which the watch task hands over in the loop turn in which
            # this read-back ends (its reply was ready in the same turn).
            held: list[Any] = []
            follower._post = lambda *a: held.append(a)  # type: ignore[method-assign]
            writer.set("s", "t", 11, actor="w")
            await writer.sync(writer.revision)
            await eventually(lambda: bool(held), "Y brought")
            follower._post = real_post  # type: ignore[method-assign]
            loop.call_soon(lambda: [real_post(*a) for a in held])
            return loaded

        follower._read_back = read_back_as_others_write  # type: ignore[method-assign]
        with contextlib.suppress(StorageError):
            await follower_store.sync(follower_store.revision)  # shares the recovery
        await eventually(lambda: follower_store.get("s", "t").value == 11, "Y applied")
        # More writes of the other replica come, as usual; none touches u.
        writer.set("s", "t", 12, actor="w")
        await writer.sync(writer.revision)
        await _caught_up(follower, writer)
        logged = [c.revision for c in follower._sessions["s"].log]
        assert follower_store.get("s", "t").value == 12
        assert x_revisions[0] in logged, "X's commit is missing from the log (never told)"
        assert follower_store.get("s", "u").value == 10, "X never applied: stale for good"

    asyncio.run(run())


# Guards a bug: every call a lost race undid, its wait for the winner's write timed out,
# made a blocking full read of its own: one freeze of the loop per call with etcd slow.
def test_one_lost_race_makes_one_blocking_read_per_pause_not_one_per_call(
    writer_and_follower: WriterFollower, monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer, follower = writer_and_follower
    reads: list[float] = []

    def slow_rows() -> Any:
        reads.append(time.monotonic())
        raise StorageError("cannot read etcd: DEADLINE_EXCEEDED")

    async def run() -> None:
        follower.bind_loop(asyncio.get_running_loop())
        follower_store = MemoryStore(backend=follower)
        writer.initialize_session("s")
        writer.register("s", [VariableSpec(f"v{i}", "integer", 0) for i in range(4)],
                        actor="w")
        await writer.sync(writer.revision)
        await _caught_up(follower, writer)
        monkeypatch.setattr(follow, "CATCH_UP_RETRY", 5.0)
        # etcd goes quiet for this replica's watch (and its reads) right after a write
        # of the other replica: the follower's own writes lose the race.
        held: list[Any] = []
        follower._post = lambda *a: held.append(a)  # type: ignore[method-assign]
        writer.set("s", "v0", 100, actor="w")
        await writer.sync(writer.revision)
        await eventually(lambda: bool(held), "the watch brought it (held)")
        monkeypatch.setattr(follower, "_rows", slow_rows)
        revisions = []
        for i in range(4):
            follower_store.set("s", f"v{i}", i + 1, actor="f")
            revisions.append(follower_store.revision)

        async def call(revision: int) -> str:
            try:
                await follower_store.sync(revision)
            except RevisionConflict:
                return "conflict"
            return "stored"

        results = await asyncio.gather(*(call(r) for r in revisions))
        assert results == ["conflict"] * 4
        # One pause (5 s) has not passed: one blocking read at most.
        assert len(reads) <= 1, f"{len(reads)} blocking full reads in one pause"

    asyncio.run(run())


# Guards a bug: a session removed by a write whose applying then failed was dropped from
# the live state before its watchers were told; the full read after it never told them.
def test_watchers_of_a_session_removed_by_a_half_applied_write_hear_it_went(
    writer_and_follower: WriterFollower,
) -> None:
    bad = b"entries\x00s\x00abc\x00v\x0000000000000000000001"  # a row it cannot apply
    writer, follower = writer_and_follower

    async def run() -> None:
        follower.bind_loop(asyncio.get_running_loop())
        follower_store = MemoryStore(backend=follower)
        _, client, _ = writer.initialize_session("s")
        writer.register("s", [VariableSpec("t", "integer", 0)], actor="w")
        writer.initialize_session("other")
        await writer.sync(writer.revision)
        await _caught_up(follower, writer)
        heard: list[Commit | None] = []
        follower_store.add_listener("s", heard.append)
        real_post = follower._post

        def post_with_a_bad_row(revision: int, changes: Any) -> None:
            # The session's ending comes with a row this replica cannot apply (a newer
            # replica's row format, say), after the session's own rows in the batch.
            if changes is not None:
                changes = [*changes, (True, bad, b"x")]
            real_post(revision, changes)

        follower._post = post_with_a_bad_row  # type: ignore[method-assign]
        assert writer.close_session("s", client)
        await writer.sync(writer.revision)
        await _caught_up(follower, writer)
        await eventually(lambda: heard == [None], "the session's watchers told it went")
        assert "s" not in follower._sessions

    asyncio.run(run())


def test_an_optimizer_stopped_on_another_replica_is_fenced_on_its_own(
    pair: tuple[MemoryStore, MemoryStore],
) -> None:
    a, b = pair
    _, client, _ = a.initialize_session("shared")
    a.register("shared", [VariableSpec("t", "float", 0.5)], actor="a")
    lease, _ = a.start_optimization("shared", "t", optimizer_type="grid", max_iterations=9,
                                    client_id=client)
    sync(a)
    b._backend.catch_up()
    b.stop_optimization("shared", "t", reason="enough")
    sync(b)
    # a has not heard of the stop yet: its step commits locally, then meets b's write.
    a.optimization_step("shared", "t", lease.id, lease.token, proposal=(0.7, 1))
    with pytest.raises(RevisionConflict):
        sync(a)
    # Run again against the stored state (as the server does): the holder is fenced.
    with pytest.raises(dspex_rx.OptimizationLockedError):
        a.optimization_step("shared", "t", lease.id, lease.token, proposal=(0.7, 1))
    assert a.get("shared", "t").value == 0.5


def test_a_client_heartbeating_through_one_replica_is_not_expired_by_another(
    etcd_endpoint: str, prefix: str,
) -> None:
    # Regression: heartbeats renewed a client only where they arrived, so every other
    # replica expired it one TTL after it attached.
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    a = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix, clock=clock),
                    clock=clock)
    b = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix, clock=clock),
                    clock=clock)
    try:
        _, client, _ = a.initialize_session("s", ttl=10)
        sync(a)
        b._backend.catch_up()
        now[0] += 8
        a.heartbeat("s", client)
        assert a.pending  # the heartbeat is written to etcd, so b's watch hears of it
        sync(a)
        b._backend.catch_up()
        now[0] += 5  # 13 s after attaching, 5 after the heartbeat
        assert b.expire() == [] and client in b.session("s").clients
        now[0] += 6  # 11 s after the heartbeat: silent past its TTL
        assert b.expire() == ["s"]
    finally:
        a.close()
        b.close()


async def test_the_expiry_loop_survives_another_replica_writing_first(
    etcd_endpoint: str, prefix: str, caplog: pytest.LogCaptureFixture,
) -> None:
    # Regression: the expiry loop's sync met a RevisionConflict, the task died, and the
    # replica never expired a session again (and its stop re-raised the conflict).
    now = [1000.0]
    a = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix))
    b = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix),
                    clock=lambda: now[0])
    # The syncs (asyncio.run) on a worker thread: inside this trio test they fail once
    # another test in the process imported trio_asyncio (its running-loop lookup then
    # sees this trio run).
    await trio.to_thread.run_sync(share_one_variable, a, b)
    b.initialize_session("brief", ttl=10)  # pending on b when a writes first:
    a.set("shared", "t", 1, actor="a")
    await trio.to_thread.run_sync(sync, a)
    with EmbeddedServer(store=b, expire_interval=0.01) as server:
        # b's first expiry sync conflicts (a wrote first); the loop must go on.
        await until(lambda: server.call(lambda: not b.pending), "b caught up", 30)
        server.call(lambda: b.initialize_session("brief", ttl=10))
        now[0] += 11
        await until(lambda: server.call(lambda: "brief" not in b.session_ids()
                                        and not b.pending), "the expiry", 30)
    a.close()
    b.close()
    # A lost race is routine between replicas: counted, not warned about every second.
    assert b.conflicts >= 1
    assert not [r for r in caplog.records
                if r.levelno >= logging.WARNING and "expiry_sync" in r.getMessage()]


def test_a_derivation_renewed_on_one_replica_lapses_on_none_and_a_takeover_fences_on_all(
    etcd_endpoint: str, prefix: str,
) -> None:
    # Derivation leases (issue #17) live in the variable's row: a renewal through one
    # replica reaches the others, and so does a takeover and the old token's refusal.
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    a = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix, clock=clock),
                    clock=clock, lease_ttl=3.0)
    b = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix, clock=clock),
                    clock=clock, lease_ttl=3.0)
    try:
        _, one, _ = a.initialize_session("s", ttl=3600)
        two = a.initialize_session("s", ttl=3600, token=a.session("s").token)[1]
        a.register("s", [VariableSpec("x", "float", 1.0),
                         VariableSpec("d", "float", 3.0, metadata={"derived_from": ["x"]},
                                      dependencies=["x"])], actor="a")
        derivation, _, _ = a.claim_derivation("s", "d", ["x"], client_id=one)
        token = derivation.token
        sync(a)
        b._backend.catch_up()
        assert b.claim_derivation("s", "d", ["x"], client_id=two)[1] == "standby"
        sync(b)
        a._backend.catch_up()
        now[0] += 2
        a.renew_derivation("s", "d", client_id=one)
        sync(a)
        b._backend.catch_up()
        b.renew_derivation("s", "d", client_id=two)
        sync(b)
        now[0] += 2  # 4 s after the claim, 2 after the renewal through a
        assert b.expire() == []
        assert b.derivation_status("s", "d")[1].owner_client == one  # type: ignore[union-attr]
        sync(b)
        a._backend.catch_up()
        now[0] += 2  # one is silent past its TTL; two renews through b and takes over
        assert b.renew_derivation("s", "d", client_id=two)[1] == "owner"
        sync(b)
        a._backend.catch_up()
        seen = a.derivation_status("s", "d")[1]
        assert seen is not None and (seen.owner_client, seen.standbys) == (two, [])
        with pytest.raises(dspex_rx.DerivationFencedError, match="lapsed"):
            a.set("s", "d", 9.0, actor="a", fencing_token=token)
        assert a.set("s", "d", 4.0, actor="a", fencing_token=seen.token)[0].value == 4.0
    finally:
        a.close()
        b.close()


def hold_watch_until_conflict(backend: EtcdBackend) -> list[int]:
    """Hold back what ``backend``'s watch hears from other replicas until its next flush
    loses a race, then let it through: the write that won reaches it only after its own
    write met the conflict. Returns the list of conflicts seen (their count)."""
    held: list[tuple[Any, ...]] = []
    conflicts: list[int] = []
    post, store = backend._post, backend._store

    def holding_post(*args: Any) -> None:
        if not conflicts:
            held.append(args)
        else:
            post(*args)

    async def racing_store(ops: Any) -> None:
        try:
            await store(ops)
        except RevisionConflict:
            conflicts.append(1)
            for args in held:
                post(*args)
            raise

    backend._post = holding_post  # type: ignore[method-assign]
    backend._store = racing_store  # type: ignore[method-assign]
    return conflicts


async def test_a_stream_on_a_replica_that_lost_a_race_goes_on_without_a_reconnect(
    etcd_endpoint: str, prefix: str,
) -> None:
    # Guards a bug: a conflict ended every stream of the losing replica (its queue could
    # hold the undone commits), so under writes from several replicas watchers kept
    # reconnecting. The undone commits now leave the queues and the streams go on.
    seen: list[VariableUpdate] = []
    with replicas(etcd_endpoint, prefix, 2, write_leader=False) as (a, b):
        async with dspex_rx.connect(a.target, session_id="race") as writer_a:
            await writer_a.register_variable("t", "integer", 0)
            await until(lambda: "race" in b.call(b.store.session_ids),
                        "the session reached the other replica", 30)
            async with dspex_rx.connect(b.target, session_id="race", token=writer_a.token,
                                        create=False) as on_b:
                on_b.observe("t").subscribe(seen.append)
                await until(lambda: bool(seen), "the initial value", 30)
                streams = b.call(lambda: set(b.service.subscribers))
                conflicts = b.call(lambda: hold_watch_until_conflict(b.store._backend))
                assert await writer_a.set_variable("t", 1) == 2
                # b has not heard of a's write: its own, from version 1, loses the race,
                # is undone, and runs again once a's write arrived.
                assert await on_b.set_variable("t", 2) == 3
                await until(lambda: len(seen) == 3, "both writes through b's stream", 30)
                assert conflicts == [1]
                assert b.call(lambda: set(b.service.subscribers)) == streams
                # What an operator sees of it: one lost race on b, none on a.
                assert b.call(lambda: count(b.service).storage_conflicts) == 1
                assert a.call(lambda: count(a.service).storage_conflicts) == 0
    assert [(u.value, u.version) for u in seen] == [(0, 1), (1, 2), (2, 3)]
    assert [u.revision for u in seen] == sorted({u.revision for u in seen})


def test_a_replica_whose_watch_reopens_after_etcd_restarted_tells_its_own_writes_once(
    etcd_member: Any, prefix: str,
) -> None:
    # Guards a bug: the watch reopened from the last revision applied from *other*
    # replicas, so after an etcd restart this replica's own writes came again as others'
    # and its watchers heard each twice (and its accounts counted them twice).
    heard: list[tuple[int, int]] = []
    own = EtcdBackend([etcd_member.endpoint], prefix=prefix)
    other = MemoryStore(backend=EtcdBackend([etcd_member.endpoint], prefix=prefix))

    async def run() -> None:
        own.bind_loop(asyncio.get_running_loop())
        store = MemoryStore(backend=own)
        store.initialize_session("s")
        store.register("s", [VariableSpec("t", "integer", 0)], actor="s")
        await store.sync(store.revision)
        store.add_listener("s", lambda c: heard.append(
            (c.revision, c.events[0].record.value)) if c else None)
        for value in (1, 2, 3):
            store.set("s", "t", value, actor="s")
            await store.sync(store.revision)
        etcd_member.restart()
        # A write from another replica after the restart: once this replica's reopened
        # watch has brought it, it has brought everything before it too.
        def other_read_etcd() -> bool:
            other._backend.catch_up()  # (fails while etcd restarts)
            return "s" in other.session_ids()

        await eventually(other_read_etcd, "the other replica read etcd")
        # Its flushes' channel may still be in gRPC's reconnect backoff after the restart
        # (a read on the other channel already passed): write until etcd took it.
        deadline = time.monotonic() + 30  # a hang guard, not a timing assertion
        while True:
            try:
                if other.get("s", "t").value != 4:
                    other.set("s", "t", 4, actor="other")
                await other.sync(other.revision)
                break
            except StorageError:
                assert time.monotonic() < deadline, "the other replica never wrote"
                await asyncio.sleep(0.05)
        await eventually(lambda: store.get("s", "t").value == 4,
                         "the reopened watch brought the write")
        assert [value for _, value in heard] == [1, 2, 3, 4]
        assert [revision for revision, _ in heard] == sorted({r for r, _ in heard})
        store.check_accounts()
        store.close()

    try:
        asyncio.run(run())
    finally:
        other.close()


def test_a_replica_written_before_its_watch_started_does_not_apply_its_own_writes_again(
    etcd_endpoint: str, prefix: str,
) -> None:
    # Guards a bug: the watch opened after the last revision read or applied from
    # others, so writes this replica flushed before it existed (not known as its own)
    # came through it as another's: each logged commit and history entry twice.
    own = EtcdBackend([etcd_endpoint], prefix=prefix)
    store = MemoryStore(backend=own)
    other = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix))
    store.initialize_session("s")
    store.register("s", [VariableSpec("t", "integer", 0)], actor="s")
    for value in (1, 2):
        store.set("s", "t", value, actor="s")
    sync(store)
    logged = [c.revision for c in store.session("s").log]
    heard: list[Commit | None] = []

    async def run() -> None:
        own.bind_loop(asyncio.get_running_loop())  # as a server starting on the store
        store.add_listener("s", heard.append)
        other._backend.catch_up()
        other.set("s", "t", 3, actor="other")
        await other.sync(other.revision)
        # Once the watch brought the other's write, it brought everything before it.
        await eventually(lambda: store.get("s", "t").value == 3, "the watch brought it")

    try:
        asyncio.run(run())
        session = store.session("s")
        assert [c.revision for c in session.log] == [*logged, other.revision]
        assert [e.version for e in session.history[session.names["t"]]] == [1, 2, 3, 4]
        assert [c.revision for c in heard if c] == [other.revision]
        store.check_accounts()
    finally:
        store.close()
        other.close()


def test_a_replica_whose_watch_meets_a_row_it_cannot_apply_follows_on_after_it(
    prefix: str, writer_and_follower: WriterFollower, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Guards a bug: a malformed key (ValueError from decode_key, not CorruptRow) or any
    # other error applying a watch answer ended the watch task for good.
    writer, follower = writer_and_follower
    bad = prefix.encode() + b"entries\x00s\x00abc\x00v\x0000000000000000000001"

    def broken_once(changes: Any) -> None:
        monkeypatch.undo()
        raise RuntimeError("a bug applying it")

    async def run() -> None:
        follower_store = await following(writer, follower, "t")
        for put in (True, False):  # the row comes and goes: the watch goes on
            follower._kv.Put(etcd_rpc.PutRequest(key=bad, value=b"x")) if put else (
                follower._kv.DeleteRange(etcd_rpc.DeleteRangeRequest(key=bad)))
            writer.set("s", "t", 1 + put, actor="w")
            await writer.sync(writer.revision)
        await eventually(lambda: follower_store.get("s", "t").value == 1, "applied after it")
        monkeypatch.setattr(follower, "apply_foreign", broken_once)
        writer.set("s", "t", 3, actor="w")
        await writer.sync(writer.revision)
        await eventually(lambda: follower_store.get("s", "t").value == 3, "caught up")
        assert follower._watcher is not None and not follower._watcher.done()
        assert dump(follower) == dump(writer._backend)

    asyncio.run(run())


def test_a_flush_cancelled_while_reading_back_after_a_lost_race_reads_everything_back(
    pair: tuple[MemoryStore, MemoryStore],
) -> None:
    # Guards a bug: a cancel that came while a replica that lost a race read its rows
    # back (awaited since 8218cee) escaped the handler that marks the backend broken, so
    # its undone change stayed on show.
    a, b = pair
    a_backend: Any = a._backend

    async def lose_a_race_and_give_up() -> None:
        a_backend.bind_loop(asyncio.get_running_loop())
        a.initialize_session("s")
        a.register("s", [VariableSpec("t", "integer", 0)], actor="a")
        await a.sync(a.revision)
        b._backend.catch_up()
        a.set("s", "t", 5, actor="a")  # not flushed yet: a's watch queues what b writes
        b.set("s", "t", 1, actor="b")
        await b.sync(b.revision)

        async def never(spans: Any) -> Any:
            await asyncio.Event().wait()  # etcd never answers the read-back

        a_backend._read_at_head = never  # type: ignore[method-assign]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(a.sync(a.revision), 1.0)
        assert a.get("s", "t").value == 5  # still on show while the read-back hangs

    read_at_head = a_backend._read_at_head
    asyncio.run(lose_a_race_and_give_up())  # the loop's end cancels the flush
    a_backend._read_at_head = read_at_head
    assert a.pending
    with pytest.raises(StorageError, match="interrupted before it was known to be"):
        sync(a)
    assert a.get("s", "t").value == 1  # what etcd holds


def test_a_replica_behind_that_loses_a_race_reads_everything_back(
    etcd_endpoint: str, prefix: str, pair: tuple[MemoryStore, MemoryStore],
) -> None:
    # Guards a bug: a replica behind (a catch-up read failed, so the watch's next write
    # was dropped) that then lost a race went back only to the rows at its own head and
    # called itself caught up: the dropped write never reached it.
    a, b = pair
    a_backend: Any = a._backend

    async def run() -> None:
        a_backend.bind_loop(asyncio.get_running_loop())
        a.initialize_session("s")
        a.register("s", [VariableSpec("t", "integer", 0), VariableSpec("u", "integer", 0),
                         VariableSpec("v", "integer", 0)], actor="a")
        await a.sync(a.revision)
        b._backend.catch_up()
        rows = a_backend._rows

        def blip() -> Any:
            raise StorageError("etcd did not answer")

        a_backend._rows = blip  # type: ignore[method-assign]
        a_backend.catch_up()  # fails: a is behind
        assert a_backend._behind
        b.set("s", "t", 1, actor="b")
        await b.sync(b.revision)
        await eventually(lambda: a_backend._delivered >= b._backend._head,
                         "a's watch brought b's write")
        a_backend._rows = rows  # type: ignore[method-assign]
        # Dropped: the catch-up that write set off failed too, so a is still behind.
        assert a.get("s", "t").value == 0 and a_backend._behind
        settle = a_backend._settle_conflict

        async def another_write_first() -> None:
            # b writes again before a waits for the write that won: a's watch applies it
            # and moves a's head past the winner's, so a waits for nothing more.
            b.set("s", "v", 7, actor="b")
            await b.sync(b.revision)
            await eventually(lambda: a_backend._head >= b._backend._head,
                             "a's watch brought b's second write")
            await settle()

        a_backend._settle_conflict = another_write_first  # type: ignore[method-assign]
        a.set("s", "u", 5, actor="a")
        with pytest.raises(RevisionConflict):
            await a.sync(a.revision)
        a_backend._settle_conflict = settle  # type: ignore[method-assign]
        assert a.get("s", "t").value == 1  # read back in full, b's first write included
        assert not a_backend._behind
        a.set("s", "u", 5, actor="a")  # the rerun
        await a.sync(a.revision)

    asyncio.run(run())
    fresh = MemoryStore(backend=EtcdBackend([etcd_endpoint], prefix=prefix))
    assert [fresh.get("s", n).value for n in "tuv"] == [1, 5, 7]
    assert [a.get("s", n).value for n in "tuv"] == [1, 5, 7]
    fresh.close()
