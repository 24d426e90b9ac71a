"""Replicas over one etcd store elect a write leader and forward their write RPCs to it:
no replica's flush conflicts with another's, a caller's read after its write on a
follower shows it, refusals come back as the leader made them, and a leader that stops
or cannot be reached costs no acknowledged write.

Real-time loops are hang guards only (replicas hear each other through etcd).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing
from chaos.proxy import ChaosProxy
from helpers import Clock, until
from test_etcd_replicas import replica

import dspex_rx
from dspex_rx.client.updates import VariableUpdate
from dspex_rx.core.limits import Limits
from dspex_rx.errors import StorageError
from dspex_rx.etcd import EtcdBackend
from dspex_rx.server import EmbeddedServer, forward, offload
from dspex_rx.server.forward import Forwarder
from dspex_rx.server.leader_link import NotSent
from dspex_rx.store import MemoryStore
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.channel import AFTER_KEY, position_in
from dspex_rx.wire.security import SESSION_TOKEN_KEY


@pytest.fixture
def prefix() -> str:
    return f"leader-{uuid.uuid4().hex}/"


@pytest.fixture
async def pair(etcd_endpoint: str, prefix: str,
               ) -> AsyncIterator[tuple[EmbeddedServer, EmbeddedServer]]:
    """Two replicas over one prefix, once they elected a leader and the follower's link
    to it is up: the leader and the follower."""
    with replicas(etcd_endpoint, prefix, 2) as servers:
        leader, (follower,) = await elected(servers)
        yield leader, follower


@pytest.fixture
async def three(etcd_endpoint: str, prefix: str,
                ) -> AsyncIterator[tuple[EmbeddedServer, EmbeddedServer, EmbeddedServer]]:
    """Three replicas over one prefix, once elected: the leader, the follower a test
    writes through, and the other follower (the leader a test moves that one to)."""
    with replicas(etcd_endpoint, prefix, 3) as servers:
        old, (follower, new) = await elected(servers)
        yield old, follower, new


class Writes:
    """Writes of ``t`` through one client: each value's version as answered."""

    def __init__(self, session: dspex_rx.SessionContext) -> None:
        self.session = session
        self.versions: dict[int, int] = {}

    async def write(self, value: int) -> None:
        self.versions[value] = await self.session.set_variable("t", value)


async def write_after_moving(nursery: trio.Nursery, follower: EmbeddedServer,
                             new: EmbeddedServer, writes: Writes, value: int) -> None:
    """Move ``follower``'s link to ``new``, then start ``writes.write(value)``; returns
    once that write reached the follower (waiting in the session's lane, or answered)."""
    link = forwarder(follower)
    follower.call(lambda: link.set_leader(new.target))
    await until(lambda: link.active, "the link to the new leader is up", 20)
    nursery.start_soon(writes.write, value)
    lanes = offload.lanes_of(follower.service)
    await until(lambda: value in writes.versions or "shared" in lanes._tails,
                "the next write reached the follower", 20)


@contextlib.contextmanager
def replicas(endpoint: str, prefix: str, count: int) -> Iterator[list[EmbeddedServer]]:
    servers = [replica(endpoint, prefix) for _ in range(count)]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def forwarder(server: EmbeddedServer) -> Forwarder:
    found = server.service.forwarder
    assert found is not None, "a replica over etcd forwards its writes"
    return found


def writes_sent(link: Forwarder) -> int:
    """The write RPCs a replica forwarded (not its clients' heartbeats and closes)."""
    return sum(n for method, n in link.sent.items()
               if method not in ("Heartbeat", "CloseSession"))


def agreed(servers: list[EmbeddedServer]) -> str:
    """The leader every replica names, or "" while they do not agree yet."""
    leaders = {forwarder(s).leader for s in servers}
    return leaders.pop() if len(leaders) == 1 else ""


class HeldWatch:
    """A replica's etcd watch held back: what it brings waits (its ``backend``'s
    ``_post``) until ``release()``, which hands it all over on the replica's loop."""

    def __init__(self, server: EmbeddedServer) -> None:
        self.server = server
        self.backend: Any = server.store._backend
        self.events: list[tuple[int, Any]] = []
        self._post = self.backend._post
        server.call(lambda: setattr(self.backend, "_post",
                                    lambda *event: self.events.append(event)))

    def release(self) -> None:
        def hand_over() -> None:
            self.backend._post = self._post
            for event in self.events:
                self._post(*event)

        self.server.call(hand_over)


async def old_leader_holding_back(old: EmbeddedServer, follower: EmbeddedServer,
                                  on_follower: dspex_rx.SessionContext) -> HeldWatch:
    """The old leader's watch held back after a write made on the follower (``t`` = 1,
    the link down for it): the old leader keeps the next forwarded write until its watch
    brings that one. Returns the held watch, the follower's link to ``old`` up again."""
    watch = HeldWatch(old)
    link = forwarder(follower)
    follower.call(lambda: link.set_leader(""))
    assert await on_follower.set_variable("t", 1) == 2
    follower.call(lambda: link.set_leader(old.target))
    await until(lambda: link.active, "the link to the old leader is up", 20)
    return watch


async def elected(servers: list[EmbeddedServer]) -> tuple[EmbeddedServer, list[EmbeddedServer]]:
    """The leader, once every replica names the same one and each follower's link to it
    is up, and the followers."""
    await until(lambda: agreed(servers) in {s.target for s in servers},
                "the replicas agreed on a leader", 20)
    leader = next(s for s in servers if s.target == agreed(servers))
    followers = [s for s in servers if s is not leader]
    await until(lambda: all(forwarder(s).active for s in followers),
                "every follower's link to the leader is up", 20)
    return leader, followers


@contextlib.asynccontextmanager
async def clients(servers: list[EmbeddedServer], names: list[str], **options: Any,
                  ) -> AsyncIterator[list[dspex_rx.SessionContext]]:
    """One client per server on session "shared", its integer variables ``names`` (all
    0) registered through the first; ``options`` go to every client's connection."""
    async with dspex_rx.connect(servers[0].target, session_id="shared", **options) as first:
        await first.register_variables(
            [{"name": n, "type": "integer", "initial_value": 0} for n in names])
        for server in servers[1:]:
            await until(lambda s=server: "shared" in s.call(s.store.session_ids),
                        "the session reached every replica", 20)
        others = [await dspex_rx.SessionContext("shared", s.target, token=first.token,
                                                create=False, **options).initialize()
                  for s in servers[1:]]
        try:
            yield [first, *others]
        finally:
            for client in others:
                await client.close()


async def write_on_each(sessions: list[dspex_rx.SessionContext], names: list[str],
                        seen: dict[int, list[VariableUpdate]]) -> None:
    """Client ``i`` watches ``names[i]`` into ``seen[i]`` and writes it 1..20, all at
    once: each write acknowledged once, every watcher hears its last, every client reads
    the same final values."""
    for i, session in enumerate(sessions):
        session.observe(names[i]).subscribe(seen[i].append)
    acked: dict[int, list[int]] = {i: [] for i in range(len(sessions))}

    async def writer(i: int) -> None:
        for k in range(1, 21):
            acked[i].append(await sessions[i].set_variable(names[i], k))

    async with trio.open_nursery() as nursery:
        for i in range(len(sessions)):
            nursery.start_soon(writer, i)
    for i in range(len(sessions)):
        assert acked[i] == list(range(2, 22))  # versions, each acknowledged once
    await until(lambda: all(seen[i] and seen[i][-1].version == 21 for i in seen),
                "every watcher saw its variable's last write", 20)
    for session in sessions:
        assert [await session.get_variable(n, bypass_cache=True)
                for n in names] == [20] * len(names)


async def test_writes_through_every_replica_are_made_by_the_leader_without_conflicts(
    etcd_endpoint: str, prefix: str,
) -> None:
    names = ["a", "b", "c"]
    with replicas(etcd_endpoint, prefix, 3) as servers:
        _, followers = await elected(servers)
        seen: dict[int, list[VariableUpdate]] = {i: [] for i in range(3)}
        async with clients(servers, names) as sessions:
            before = [writes_sent(forwarder(s)) for s in followers]
            await write_on_each(sessions, names, seen)
        # Every write through a follower went to the leader: none conflicted anywhere.
        through = [writes_sent(forwarder(s)) - n for s, n in zip(followers, before, strict=True)]
        assert through == [20, 20]
        assert [s.call(lambda s=s: s.store.conflicts) for s in servers] == [0, 0, 0]
    for i in range(3):
        versions = [u.version for u in seen[i]]
        assert versions == sorted(set(versions))
        assert [u.value for u in seen[i] if u.update_type == "value_change"][-1] == 20


async def test_a_call_after_a_forwarded_write_on_the_same_follower_sees_that_write(
    pair: tuple[EmbeddedServer, EmbeddedServer],
) -> None:
    leader, follower = pair
    async with clients([leader, follower], ["t"]) as (_, on_follower):
        read: list[int] = []

        async def read_after() -> None:
            read.append(await on_follower.get_variable("t", bypass_cache=True))

        for k in range(1, 11):

            # The read is sent while the write is still on the leader: it runs
            # after it, as it would on one server.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(on_follower.set_variable, "t", k)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(read_after)
            assert read[-1] == k
    assert read == list(range(1, 11))
    assert writes_sent(forwarder(follower)) == 10


async def test_a_write_made_while_the_link_was_down_never_waits_for_a_later_forwarded_one(
    pair: tuple[EmbeddedServer, EmbeddedServer],
) -> None:
    # Guards: a write made on the follower took its turn, then waited for every forwarded
    # write of its session, one behind it in the lane too (waiting for its turn): a hang.
    leader, follower = pair
    link = forwarder(follower)
    async with clients([leader, follower], ["t"]) as (_, on_follower):
        lanes = offload.lanes_of(follower.service)
        # An earlier write of the session, not yet at its store call, holds the line.
        earlier = follower.call(lambda: lanes.enter("shared"))
        follower.call(lambda: link.set_leader(""))  # no leader: writes made here
        versions: list[int] = []

        async def write(value: int) -> None:
            versions.append(await on_follower.set_variable("t", value))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, 1)
            await until(lambda: lanes._tails["shared"] is not earlier._done,
                        "the write made here waits in the lane", 20)
            follower.call(lambda: link.set_leader(leader.target))
            await until(lambda: link.active, "the link to the leader is up", 20)
            nursery.start_soon(write, 2)
            await until(lambda: bool(link.holding("shared")),
                        "the forwarded write waits behind it", 20)
            follower.call(earlier.leave)
            await until(lambda: len(versions) == 2, "both writes were answered", 20)
        assert versions == [2, 3]
        assert await on_follower.get_variable("t", bypass_cache=True) == 2
    assert writes_sent(link) == 1


async def test_a_session_made_on_a_follower_takes_a_write_through_it_at_once(
    pair: tuple[EmbeddedServer, EmbeddedServer],
) -> None:
    _, follower = pair
    # The leader runs the forwarded writes only once it holds the session the
    # follower made just before (it hears of it through etcd's watch).
    for n in range(5):
        async with dspex_rx.connect(follower.target, session_id=f"new-{n}") as session:
            await session.register_variable("t", "integer", 0)
            assert await session.set_variable("t", n) == 2
    assert writes_sent(forwarder(follower)) == 10


async def test_a_forwarded_write_waits_until_the_leader_holds_what_its_follower_did(
    pair: tuple[EmbeddedServer, EmbeddedServer],
) -> None:
    # Guards: the leader ran a forwarded write before its watch brought the session the
    # follower had just made, and refused it as "no session".
    leader, follower = pair
    watch = HeldWatch(leader)
    backend = watch.backend
    async with dspex_rx.connect(follower.target, session_id="fresh") as session:
        versions: list[int] = []

        async def register() -> None:
            await session.register_variable("t", "integer", 0)
            versions.append(await session.set_variable("t", 1))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(register)
            await until(lambda: len(backend._head_waiters) > 0,
                        "the forwarded write waits for the session", 20)

            watch.release()
        assert versions == [2]


async def test_writes_queued_together_for_the_leader_leave_in_frames_it_accepts(
    etcd_endpoint: str, prefix: str,
) -> None:
    # Guards: every request queued on the link left in one frame, above the leader's
    # message limit: the leader refused it, and the link failed each write it carried.
    limits = Limits(max_message_bytes=800 * 1024, max_value_bytes=320 * 1024)
    servers = [EmbeddedServer(store=MemoryStore(backend=EtcdBackend(
        [etcd_endpoint], prefix=prefix), session_ttl=3600), limits=limits)
        for _ in range(2)]
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        leader, (follower,) = await elected(servers)
        link = forwarder(follower)
        names = ["a", "b", "c"]
        async with dspex_rx.connect(leader.target, session_id="big") as session:
            await session.register_variables(
                [{"name": n, "type": "string", "initial_value": ""} for n in names])
            metadata = [(SESSION_TOKEN_KEY, session.token)]
            requests = [pb.SetVariableRequest(session_id="big", ref=name,
                                              value=codec.encode(name * 300_000))
                        for name in names]
            # Queued in one loop turn: together on the link before it writes any.
            answers = follower.call(lambda: [
                link.send("SetVariable", r.SerializeToString(), metadata) for r in requests])
            await until(lambda: all(a.done() for a in answers), "the leader answered", 20)
            assert [a.exception() for a in answers] == [None, None, None]
            assert [a.result().code for a in answers] == [0, 0, 0]
            assert [len(await session.get_variable(n, bypass_cache=True))
                    for n in names] == [300_000] * 3
        assert link.failed == 0


async def test_a_refusal_by_the_leader_reaches_the_caller_on_a_follower_as_made(
    pair: tuple[EmbeddedServer, EmbeddedServer],
) -> None:
    leader, follower = pair
    async with clients([leader, follower], ["t"]) as (on_leader, on_follower):
        errors = []
        for session in (on_leader, on_follower):
            with pytest.raises(dspex_rx.VariableTypeError) as caught:
                await session.set_variable("t", "not a number")
            errors.append(str(caught.value))
        assert errors[0] == errors[1]
        assert "'t'" in errors[1]
        with pytest.raises(dspex_rx.VariableNotFoundError):
            await on_follower.set_variable("missing", 1)
        assert await on_follower.get_variable("t", bypass_cache=True) == 0
    assert writes_sent(forwarder(follower)) == 2


async def test_when_the_leader_stops_another_replica_takes_the_writes(
    etcd_endpoint: str, prefix: str,
) -> None:
    servers = [replica(etcd_endpoint, prefix) for _ in range(3)]
    stopped: list[EmbeddedServer] = []
    try:
        leader, followers = await elected(servers)
        async with clients(followers, ["t"]) as (writer, watcher):
            seen: list[VariableUpdate] = []
            watcher.observe("t").subscribe(seen.append)
            assert await writer.set_variable("t", 1) == 2
            leader.stop()  # revokes its lease: the others campaign at once
            stopped.append(leader)
            new_leader, _ = await elected(followers)
            assert new_leader.target != leader.target
            versions = [await writer.set_variable("t", k) for k in range(2, 12)]
            assert versions == list(range(3, 13))
            await until(lambda: seen and seen[-1].version == 12, "the watcher saw v12", 20)
            assert [u.version for u in seen] == sorted({u.version for u in seen})
            assert await watcher.get_variable("t", bypass_cache=True) == 11
    finally:
        for server in servers:
            if server not in stopped:
                server.stop()


async def test_a_follower_whose_leader_cannot_be_reached_makes_its_writes_itself(
    pair: tuple[EmbeddedServer, EmbeddedServer],
) -> None:
    leader, follower = pair
    link = forwarder(follower)
    # Told of a leader nothing listens at (as after a crash, until its lease ends).
    follower.call(lambda: link.set_leader("127.0.0.1:1"))
    await until(lambda: link.failed >= 1, "the link to the dead leader failed", 20)
    assert not link.active
    async with clients([leader, follower], ["t"]) as (_, on_follower):
        assert await on_follower.set_variable("t", 5) == 2
        assert await on_follower.get_variable("t", bypass_cache=True) == 5
    assert writes_sent(link) == 0


async def test_a_write_sent_to_a_new_leader_runs_after_the_sessions_writes_on_the_old(
    three: tuple[EmbeddedServer, EmbeddedServer, EmbeddedServer],
) -> None:
    # Guards: the next write of a session went on the new leader's link at once, and
    # the new leader ran it while the old one still held an earlier write: applied in
    # the wrong order (the earlier value won).
    old, follower, new = three
    async with clients([old, follower], ["t"]) as (_, on_follower):
        watch = await old_leader_holding_back(old, follower, on_follower)
        backend = watch.backend
        writes = Writes(on_follower)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writes.write, 2)
            await until(lambda: len(backend._head_waiters) > 0,
                        "the old leader holds the write back", 20)
            await write_after_moving(nursery, follower, new, writes, 3)

            watch.release()
        assert writes.versions == {2: 3, 3: 4}
        assert await on_follower.get_variable("t", bypass_cache=True) == 3


async def test_a_write_sent_to_a_new_leader_waits_for_no_answered_write_to_reach_its_follower(
    three: tuple[EmbeddedServer, EmbeddedServer, EmbeddedServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Guards: a write answered on the old leader's link counted as still out there until
    # the follower's watch brought it: after a leader change the session's next write
    # waited for that watch (up to HOLD_WAIT) before leaving, holding its lane.
    monkeypatch.setattr(forward, "HOLD_WAIT", 120.0)
    old, follower, new = three
    link = forwarder(follower)
    async with clients([old, follower], ["t"]) as (_, on_follower):
        # The follower's watch held back: it holds none of its forwarded writes.
        watch = HeldWatch(follower)
        assert await on_follower.set_variable("t", 1) == 2
        assert link.holding("shared")
        follower.call(lambda: link.set_leader(new.target))
        await until(lambda: link.active, "the link to the new leader is up", 20)
        versions: list[int] = []

        async def write() -> None:
            versions.append(await on_follower.set_variable("t", 2))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            await until(lambda: bool(versions), "the write after the change answered", 20)

            watch.release()
        assert versions == [3]
        assert await on_follower.get_variable("t", bypass_cache=True) == 2


async def test_a_write_given_up_on_a_follower_never_runs_after_the_sessions_next_write(
    three: tuple[EmbeddedServer, EmbeddedServer, EmbeddedServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Guards: a forwarded write its caller gave up on let go of its mark at once, while
    # the old leader still held its request: the session's next write went to a new
    # leader at once and ran first, and the given-up one ran after it (its value won).
    relay, ended = forward.relay, []

    async def tracked(*args: Any) -> Any:
        try:
            return await relay(*args)
        finally:
            ended.append(args[1])

    monkeypatch.setattr(forward, "relay", tracked)
    old, follower, new = three
    async with clients([old, follower], ["t"]) as (_, on_follower):
        watch = await old_leader_holding_back(old, follower, on_follower)
        backend = watch.backend
        writes = Writes(on_follower)
        async with trio.open_nursery() as nursery:
            given_up = trio.CancelScope()

            async def give_up() -> None:
                with given_up:
                    await writes.write(2)

            nursery.start_soon(give_up)
            await until(lambda: len(backend._head_waiters) > 0,
                        "the old leader holds the write back", 20)
            given_up.cancel()
            await until(lambda: bool(ended), "the follower gave the write up", 20)
            await write_after_moving(nursery, follower, new, writes, 3)

            watch.release()
        assert writes.versions == {3: 4}
        assert await on_follower.get_variable("t", bypass_cache=True) == 3


async def test_a_write_forwarded_once_the_link_is_up_runs_after_one_made_here_before(
    pair: tuple[EmbeddedServer, EmbeddedServer],
) -> None:
    # Guards: a write made here with the link down left the lane before it was stored;
    # the session's next write, forwarded once the link came up, ran at the leader first
    # and the earlier one, losing its flush's compare, was run again after it.
    leader, follower = pair
    link = forwarder(follower)
    async with clients([leader, follower], ["t"]) as (_, on_follower):
        backend = follower.store._backend
        gate = follower.call(asyncio.Event)
        stalled: list[object] = []
        store = backend._store

        async def gated(ops: Any) -> None:
            stalled.append(ops)
            await gate.wait()
            await store(ops)

        follower.call(lambda: setattr(backend, "_store", gated))
        follower.call(lambda: link.set_leader(""))  # no leader: writes made here
        lanes = offload.lanes_of(follower.service)
        writes = Writes(on_follower)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writes.write, 1)
            await until(lambda: bool(stalled), "the write made here is being stored", 20)
            follower.call(lambda: link.set_leader(leader.target))
            await until(lambda: link.active, "the link to the leader is up", 20)
            nursery.start_soon(writes.write, 2)
            await until(lambda: "shared" in lanes._tails or leader.call(
                lambda: leader.store.get("shared", "t").version) == 2,
                "the forwarded write waits, or ran at the leader", 20)

            def release() -> None:
                backend._store = store
                gate.set()

            follower.call(release)
        assert writes.versions == {1: 2, 2: 3}
        assert await on_follower.get_variable("t", bypass_cache=True) == 2


async def test_a_new_leader_named_while_a_retry_is_due_gets_one_link(
    pair: tuple[EmbeddedServer, EmbeddedServer],
) -> None:
    # Guards: the retry armed after the old leader's link failed still fired, opening a
    # second link to the new leader that nothing retired or closed.
    leader, follower = pair
    link = forwarder(follower)
    follower.call(lambda: link.set_leader("127.0.0.1:1"))
    # (``failed`` counts before the retry is armed, on the follower's own thread.)
    await until(lambda: link._retry is not None, "a retry of the dead link is armed", 20)
    retry = link._retry
    assert retry is not None
    follower.call(lambda: link.set_leader(leader.target))
    await until(lambda: link.active, "the link to the new leader is up", 20)
    up = link._link
    await until(lambda: follower.call(lambda: asyncio.get_running_loop().time()
                                      > retry.when()), "the retry was due", 20)
    assert follower.call(lambda: (link._link is up, len(link._links))) == (True, 1)


async def test_a_write_sent_to_a_leader_gone_silent_fails_instead_of_waiting_for_ever(
    pair: tuple[EmbeddedServer, EmbeddedServer],
) -> None:
    # Guards: the link had no keepalive: a leader whose path went silent (no reset, as
    # a partition) never answered, and the caller waited for ever (its session's next
    # calls on the follower too, behind the write).
    leader, follower = pair
    link = forwarder(follower)
    host, port = leader.target.rsplit(":", 1)
    proxy = ChaosProxy(lambda: (host, int(port)))
    async with trio.open_nursery() as nursery:
        through = f"127.0.0.1:{await nursery.start(proxy.serve)}"
        follower.call(lambda: link.set_leader(through))
        await until(lambda: link.active, "the link through the proxy is up", 20)
        async with clients([leader, follower], ["t"]) as (_, on_follower):
            proxy.black_hole_all(new_too=True)
            with trio.fail_after(30), pytest.raises(dspex_rx.StorageError,
                                                    match="did not answer"):
                await on_follower.set_variable("t", 1)
        nursery.cancel_scope.cancel()


async def test_a_forwarded_write_is_never_forwarded_again(
    etcd_endpoint: str, prefix: str,
) -> None:
    with replicas(etcd_endpoint, prefix, 2) as (one, two):
        await elected([one, two])
        # Each told the other leads (a stale view of the election): no bouncing.
        one.call(lambda: forwarder(one).set_leader(two.target))
        two.call(lambda: forwarder(two).set_leader(one.target))
        await until(lambda: forwarder(one).active and forwarder(two).active,
                    "both links are up", 20)
        async with clients([one, two], ["t"]) as (on_one, _):
            assert await on_one.set_variable("t", 3) == 2
        # The registering and the set, run by ``two`` as sent.
        assert (writes_sent(forwarder(one)), writes_sent(forwarder(two))) == (2, 0)


def test_a_replica_with_the_write_leader_off_makes_every_write_itself(
    etcd_endpoint: str, prefix: str,
) -> None:
    server = EmbeddedServer(store=MemoryStore(
        backend=EtcdBackend([etcd_endpoint], prefix=prefix)), write_leader=False)
    with server:
        assert server.service.forwarder is None


async def test_a_callers_malformed_position_on_a_request_is_no_position() -> None:
    # Guards: "²" passes str.isdigit but int() refused it: a caller's per-request
    # metadata made the Calls stream's reader fail (INTERNAL), not just its own call.
    store = MemoryStore()
    for value in ("²", "1" * 5000, "-3", ""):
        await forward.catch_up(store, ((AFTER_KEY, value),))
    assert [position_in(((AFTER_KEY, v),), AFTER_KEY)
            for v in ("²", "1" * 5000, "17")] == [0, 0, 17]


# -- the settler, with a store the test moves: what a forwarded write's mark waits for --


class Watch:
    """A follower's store as ``Forwarder`` sees it: it holds ``position`` and reaches more
    as the test says (its watch); while ``stalled`` a wait it is asked for passes at once
    on the loop's virtual ``clock`` and brings nothing."""

    def __init__(self, clock: Clock | None = None, position: int = 100) -> None:
        self.clock = clock
        self.position = position
        self.stalled = False
        self.asked: list[int] = []
        self._waits: list[tuple[int, asyncio.Future[None]]] = []

    def reach(self, position: int) -> None:
        self.position = position
        for target, waiter in self._waits:
            if target <= position and not waiter.done():
                waiter.set_result(None)

    async def holds(self, position: int, wait: float) -> bool:
        self.asked.append(position)
        if self.stalled:
            assert self.clock is not None
            self.clock.now += wait
            return self.position >= position
        waiter = asyncio.get_running_loop().create_future()
        self._waits.append((position, waiter))
        await waiter
        return True


def on_virtual_time(main: Callable[[Clock], Awaitable[Any]]) -> Any:
    """``asyncio.run(main(clock))`` with the loop's time read from ``clock``."""

    async def run() -> Any:
        loop = asyncio.get_running_loop()
        clock = Clock()
        loop.time = clock  # type: ignore[method-assign]
        try:
            return await main(clock)
        finally:
            del loop.time

    return asyncio.run(run())


def test_a_forwarded_write_not_held_here_holds_its_session_for_its_own_wait_only() -> None:
    # Guards: the settler gave each position a HOLD_WAIT in turn: on a follower whose watch
    # stalled, the third write answered held its session's next calls three waits long.
    async def main(clock: Clock) -> tuple[list[float], list[int]]:
        store = Watch(clock)
        store.stalled = True
        link = Forwarder("a:1")
        start = clock.now
        freed: list[float] = []
        marks = [link.hold(f"s{n}") for n in range(3)]
        for position, mark in zip((101, 102, 103), marks, strict=True):
            mark.add_done_callback(lambda _: freed.append(clock.now - start))
            link.held_at(store, position, mark)
        await asyncio.wait(marks)
        await link.close()
        return freed, store.asked

    assert on_virtual_time(main) == ([forward.HOLD_WAIT] * 3, [101])


async def turns() -> None:
    """Let the loop run what is ready (the settler's few steps), a bounded number of turns."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_forwarded_write_held_here_frees_its_session_while_a_later_one_is_awaited() -> None:
    # Guards: the settler, waiting for a later position, kept a write answered after that
    # one at a nearer position waiting until the later one was held (or timed out).
    async def main() -> list[tuple[bool, bool]]:
        store = Watch()
        link = Forwarder("a:1")
        later, earlier = link.hold("s"), link.hold("t")
        link.held_at(store, 120, later)
        await turns()
        link.held_at(store, 110, earlier)
        store.reach(110)
        await turns()
        seen = [(earlier.done(), later.done())]
        store.reach(120)
        await turns()
        seen.append((earlier.done(), later.done()))
        await link.close()
        return seen

    assert asyncio.run(main()) == [(True, False), (True, True)]


def test_a_store_failing_to_say_what_it_holds_frees_the_writes_it_held() -> None:
    # Guards: ``store.holds`` raising ended the settler with the marks it held unresolved:
    # their sessions' next calls on this replica waited for ever.
    class Failing(Watch):
        async def holds(self, position: int, wait: float) -> bool:
            raise StorageError("the watch of etcd failed")

    async def main() -> tuple[bool, list[asyncio.Future[None]]]:
        link = Forwarder("a:1")
        mark = link.hold("s")
        link.held_at(Failing(), 101, mark)
        await turns()
        return mark.done(), link.holding("s")

    assert asyncio.run(main()) == (True, [])


async def test_a_heartbeat_through_a_follower_is_stored_by_the_leader(
    pair: tuple[EmbeddedServer, EmbeddedServer],
) -> None:
    # Guards: a follower stored its clients' heartbeats itself, so each one raced the
    # leader's flushes for etcd's head row (bench_replicas counted 20-120 refused txns
    # per run with every write forwarded).
    leader, follower = pair
    flushes: list[int] = []
    backend = follower.store._backend
    store_rows = backend._store

    async def counted(ops: Any) -> None:
        flushes.append(len(ops))
        await store_rows(ops)

    async with dspex_rx.connect(follower.target, session_id="beats") as session:
        await session.register_variable("t", "integer", 0)
        follower.call(lambda: setattr(backend, "_store", counted))
        sent = forwarder(follower).sent["Heartbeat"]
        conn = session._conn
        for _ in range(3):
            answer = await conn.call("Heartbeat", pb.HeartbeatRequest(
                session_id="beats", client_id=conn.client_id), pb.HeartbeatResponse)
            assert answer.expires_at.seconds > 0
        assert forwarder(follower).sent["Heartbeat"] - sent == 3
        assert flushes == []
        seen = leader.call(lambda: leader.store.session("beats").clients[conn.client_id])
        assert seen.last_seen > 0


async def test_a_heartbeat_the_leader_cannot_place_yet_is_made_by_the_follower(
    pair: tuple[EmbeddedServer, EmbeddedServer], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Guards: a leader whose watch had not brought a session made on a follower ran the
    # forwarded heartbeat anyway (past HOLD_WAIT) and answered "no session": its client
    # took its live session for ended (``lose``) and refused every later call.
    monkeypatch.setattr(forward, "HOLD_WAIT", 0.2)
    leader, follower = pair
    # The leader's watch held back: it never sees the session the follower makes.
    backend = leader.store._backend
    held: list[tuple[Any, ...]] = []
    post = backend._post
    leader.call(lambda: setattr(backend, "_post", lambda *event: held.append(event)))
    async with dspex_rx.connect(follower.target, session_id="unseen") as session:
        conn = session._conn
        beat = pb.HeartbeatRequest(session_id="unseen", client_id=conn.client_id)
        # The leader says "try again"; the follower, which holds the session, makes
        # the beat itself (a heartbeat is made twice as safely as once).
        answer = await conn.call("Heartbeat", beat, pb.HeartbeatResponse)
        assert answer.expires_at.seconds > 0
        assert not conn.lost

        def release() -> None:
            backend._post = post
            for event in held:
                post(*event)

        leader.call(release)
        answer = await conn.call("Heartbeat", beat, pb.HeartbeatResponse)
        assert answer.expires_at.seconds > 0
        assert not conn.lost


async def test_a_write_whose_link_failed_before_it_left_is_made_on_the_follower(
    pair: tuple[EmbeddedServer, EmbeddedServer],
) -> None:
    # Guards: a write queued just as the leader died (the link failed before its frame
    # left) answered "nothing was sent: try again", though nothing stopped the follower
    # making it (seen in test_etcd_cli's SIGKILL test: a write right after the kill).
    leader, follower = pair
    link = forwarder(follower)
    send = link.send
    failed: list[str] = []

    def fails_once(method: str, *args: Any) -> Any:
        if failed:
            return send(method, *args)
        failed.append(method)
        answer = asyncio.get_running_loop().create_future()
        answer.set_exception(NotSent("the link failed before the frame left"))
        return answer

    async with clients([leader, follower], ["t"]) as (_, on_follower):
        follower.call(lambda: setattr(link, "send", fails_once))
        assert await on_follower.set_variable("t", 7) == 2
        assert await on_follower.set_variable("t", 8) == 3  # forwarded again
        assert failed == ["SetVariable"]
        assert await on_follower.get_variable("t", bypass_cache=True) == 8
        assert leader.call(lambda: leader.store.get("shared", "t").value) == 8
        assert follower.call(lambda: link.holding("shared")) == []


def beat_of(session: dspex_rx.SessionContext) -> tuple[Any, pb.HeartbeatRequest]:
    conn = session._conn
    return conn, pb.HeartbeatRequest(session_id=session.session_id, client_id=conn.client_id)


def last_seen(server: EmbeddedServer, session: dspex_rx.SessionContext) -> float:
    sid, cid = session.session_id, session._conn.client_id
    return float(server.call(lambda: server.store.session(sid).clients[cid].last_seen))


async def test_a_heartbeat_the_leader_does_not_answer_in_time_is_made_by_the_follower(
    pair: tuple[EmbeddedServer, EmbeddedServer],
) -> None:
    # Guards: a forwarded heartbeat waited for a slow leader until the client's beat
    # timed out (DEADLINE_EXCEEDED), and the client took its healthy connection to the
    # follower for dead: its watches left the cache and its streams were reset.
    leader, follower = pair
    stuck: list[str] = []

    async def never_answers(request: Any, context: Any) -> Any:
        stuck.append(request.client_id)
        await asyncio.Event().wait()

    async with clients([leader, follower], ["t"]) as (_, on_follower):
        leader.call(lambda: setattr(leader.service, "Heartbeat", never_answers))
        conn, beat = beat_of(on_follower)
        before = last_seen(follower, on_follower)
        # The shortest deadline a client's beat has (client/connection.py): the follower
        # waits half of it for the leader, then makes the beat itself.
        answer = await conn.call("Heartbeat", beat, pb.HeartbeatResponse, timeout=2.0)
        assert answer.expires_at.seconds > 0
        assert stuck == [conn.client_id]  # it did reach the leader first
        assert last_seen(follower, on_follower) > before  # stored by the follower
        # The stuck beat leaves the session's calls free: a write still goes through.
        assert await on_follower.set_variable("t", 5) == 2


async def test_a_heartbeat_whose_link_fails_is_made_by_the_follower(
    pair: tuple[EmbeddedServer, EmbeddedServer],
) -> None:
    # Guards: a heartbeat in flight when the leader died answered UNAVAILABLE ("may have
    # been kept or not"), which the client takes for a dead connection to its replica.
    leader, follower = pair
    link = forwarder(follower)
    send = link.send

    def dies_with_beats(method: str, *args: Any) -> Any:
        if method != "Heartbeat":
            return send(method, *args)
        answer = asyncio.get_running_loop().create_future()
        answer.set_exception(StorageError("the write leader did not answer: the "
                                          "write may have been kept or not"))
        return answer

    async with clients([leader, follower], ["t"]) as (_, on_follower):
        follower.call(lambda: setattr(link, "send", dies_with_beats))
        conn, beat = beat_of(on_follower)
        before = last_seen(follower, on_follower)
        answer = await conn.call("Heartbeat", beat, pb.HeartbeatResponse)
        assert answer.expires_at.seconds > 0
        assert last_seen(follower, on_follower) > before


async def test_a_heartbeat_on_a_follower_waits_for_no_forwarded_write_to_arrive(
    pair: tuple[EmbeddedServer, EmbeddedServer], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Guards: a forwarded heartbeat left a mark, and waited for the session's forwarded
    # writes to reach the follower (up to HOLD_WAIT each): a follower whose watch lagged
    # held its clients' beats past their timeout.
    monkeypatch.setattr(forward, "HOLD_WAIT", 60.0)
    leader, follower = pair
    async with clients([leader, follower], ["t"]) as (_, on_follower):
        watch = HeldWatch(follower)  # the write never reaches the follower meanwhile
        assert await on_follower.set_variable("t", 1) == 2
        link = forwarder(follower)
        assert follower.call(lambda: len(link.holding("shared"))) == 1
        conn, beat = beat_of(on_follower)
        with trio.fail_after(20):  # a hang guard: waiting for the mark takes 60 s
            answer = await conn.call("Heartbeat", beat, pb.HeartbeatResponse)
            assert answer.expires_at.seconds > 0
            assert follower.call(lambda: len(link.holding("shared"))) == 1  # no new mark
            follower.call(lambda: link.set_leader(""))  # now made here: no wait either
            answer = await conn.call("Heartbeat", beat, pb.HeartbeatResponse)
            assert answer.expires_at.seconds > 0
        watch.release()
        assert await on_follower.get_variable("t", bypass_cache=True) == 1


async def test_a_session_closed_through_a_follower_is_gone_for_its_next_attach_there(
    etcd_endpoint: str, prefix: str,
) -> None:
    # Guards: InitializeSession did not wait for the session's forwarded close to reach
    # the follower: making the id again there right after its last client left found
    # the old session still alive, and only its flush's conflict (a read of the whole
    # prefix, then a rerun) made it fresh.
    servers = [EmbeddedServer("127.0.0.1", 0, store=MemoryStore(
        backend=EtcdBackend([etcd_endpoint], prefix=prefix), session_ttl=0))
        for _ in range(2)]
    for server in servers:
        server.start()
    try:
        _, (follower,) = await elected(servers)
        link = forwarder(follower)
        async with dspex_rx.connect(follower.target, session_id="again") as old:
            await old.register_variable("t", "integer", 1)
            old_token = old.token
            # The close is forwarded and the session goes with its last client; the
            # follower's watch brings that only once the next InitializeSession of the
            # id asks what it must wait for.
            watch = HeldWatch(follower)
        holding = link.holding

        def released_when_asked(session_id: str) -> list[Any]:
            marks = holding(session_id)
            if session_id == "again" and watch.backend._post is not watch._post:
                watch.backend._post = watch._post
                events, watch.events = watch.events, []
                for event in events:
                    asyncio.get_running_loop().call_soon(watch._post, *event)
            return marks

        follower.call(lambda: setattr(link, "holding", released_when_asked))
        backend = follower.store._backend
        resets = follower.call(lambda: backend._resets)
        with trio.fail_after(20):
            async with dspex_rx.connect(follower.target, session_id="again",
                                        token=old_token) as new:
                # Made afresh (an ended id is made again with its own token), not
                # attached to the old session the follower had not seen end yet.
                assert new.created
                assert await new.get_variable("t", default=0) == 0
        # It waited for the close to arrive: its own flush met no conflict (which costs
        # the follower a read of the whole prefix, and the call a rerun).
        assert follower.call(lambda: backend._resets) == resets
    finally:
        for server in servers:
            server.stop()
