"""A ``direct_writes`` client over replicas sends its writes to the write leader its own
replica named, on a stream of its own: each write made once, a read after it on its own
replica shows it, and a leader it cannot reach, or one that stops, leaves its writes on
its own replica meanwhile, as before.

Real-time loops are hang guards only (replicas hear each other through etcd).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from helpers import until
from test_etcd_replicas import replica
from test_write_leader import (  # noqa: F401 - fixtures
    HeldWatch,
    clients,
    elected,
    forwarder,
    pair,
    prefix,
    replicas,
    three,
    write_on_each,
    writes_sent,
)

import dspex_rx
from dspex_rx.client.leader_route import LeaderRoute
from dspex_rx.client.updates import VariableUpdate
from dspex_rx.errors import InvalidValueError
from dspex_rx.server import EmbeddedServer
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire import codec
from dspex_rx.wire.channel import (
    ASKS_LEADER,
    LEADER_KEY,
    POSITION_KEY,
    SERVICE_NAME,
    position_in,
)
from dspex_rx.wire.security import token_metadata


def route_of(session: dspex_rx.SessionContext) -> LeaderRoute:
    route = session._conn.route
    assert route is not None, "a direct_writes session over a pipeline has a route"
    return route


def leader_up(route: LeaderRoute) -> bool:
    leg = route._leg
    return leg is not None and leg.pipeline is not None and leg.pipeline.connected


@pytest.fixture
async def on_follower(pair: tuple[EmbeddedServer, EmbeddedServer],  # noqa: F811
                      ) -> AsyncIterator[dspex_rx.SessionContext]:
    """A direct_writes session on the follower with ``t`` = 0, once its first write
    (forwarded) named the leader and the stream to it is up."""
    _, follower = pair
    async with dspex_rx.connect(follower.target, session_id="direct",
                                direct_writes=True) as session:
        await session.register_variable("t", "integer", 0)
        route = route_of(session)
        await until(lambda: leader_up(route), "the stream to the leader is up", 20)
        yield session


async def test_writes_after_the_first_forwarded_one_go_to_the_leader_itself(
    pair: tuple[EmbeddedServer, EmbeddedServer],  # noqa: F811
    on_follower: dspex_rx.SessionContext,
) -> None:
    leader, follower = pair
    route = route_of(on_follower)
    assert route.address == leader.target
    assert route.methods == {"RegisterVariable"}
    link = forwarder(follower)
    # The first SetVariable learns its way through the follower; the rest go direct.
    versions = [await on_follower.set_variable("t", k) for k in range(1, 7)]
    assert versions == list(range(2, 8))
    assert writes_sent(link) == 2  # the registration and the first set
    assert route.sent == 5
    assert "SetVariable" in route.methods
    assert await on_follower.get_variable("t", bypass_cache=True) == 6
    assert [s.call(lambda s=s: s.store.conflicts) for s in pair] == [0, 0]


async def test_a_read_after_a_direct_write_waits_until_the_replica_holds_it(
    pair: tuple[EmbeddedServer, EmbeddedServer],  # noqa: F811
    on_follower: dspex_rx.SessionContext,
) -> None:
    # Guards: the leader answered the write, and the session's next read on its own
    # replica, whose watch had not brought it yet, showed the value before it.
    _, follower = pair
    await on_follower.set_variable("t", 1)  # learns that SetVariable goes to the leader
    # A read after it waits until the follower holds it: nothing of it is left to hold.
    assert await on_follower.get_variable("t", bypass_cache=True) == 1
    watch = HeldWatch(follower)
    backend = watch.backend
    assert await on_follower.set_variable("t", 2) == 3
    assert route_of(on_follower).sent == 1
    read: list[int] = []

    async def read_after() -> None:
        read.append(await on_follower.get_variable("t", bypass_cache=True))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_after)
        await until(lambda: len(backend._head_waiters) > 0,
                    "the read waits for the follower to hold the write", 20)
        assert read == []
        watch.release()
    assert read == [2]


async def test_writes_go_through_the_replica_while_the_named_leader_cannot_be_reached(
    pair: tuple[EmbeddedServer, EmbeddedServer],  # noqa: F811
    on_follower: dspex_rx.SessionContext,
) -> None:
    leader, follower = pair
    route = route_of(on_follower)
    await on_follower.set_variable("t", 1)
    route._follow("127.0.0.1:1")  # as a replica names a leader the client cannot reach
    await until(lambda: route._leg is not None and route._leg.probe_at > 0,
                "the client failed to reach it", 20)
    link = forwarder(follower)
    before = writes_sent(link)
    assert await on_follower.set_variable("t", 2) == 3
    # Made through the follower, whose answer names the real leader again.
    assert writes_sent(link) == before + 1
    assert route.address == leader.target
    await until(lambda: leader_up(route), "the stream to the leader is up again", 20)
    sent = route.sent
    assert await on_follower.set_variable("t", 3) == 4
    assert route.sent == sent + 1
    assert await on_follower.get_variable("t", bypass_cache=True) == 3


async def test_when_the_leader_stops_direct_writes_follow_the_new_one(
    etcd_endpoint: str, prefix: str,  # noqa: F811
) -> None:
    servers = [replica(etcd_endpoint, prefix) for _ in range(3)]
    stopped: list[EmbeddedServer] = []
    try:
        leader, (follower, other) = await elected(servers)
        async with dspex_rx.connect(follower.target, session_id="direct",
                                    direct_writes=True) as session:
            await session.register_variable("t", "integer", 0)
            route = route_of(session)
            assert await session.set_variable("t", 1) == 2
            await until(lambda: leader_up(route), "the stream to the leader is up", 20)
            assert await session.set_variable("t", 2) == 3
            # Its lease revoked, the others campaign at once; the client's stream to it
            # stays up through the stop's grace (so not from the trio thread, which the
            # client needs meanwhile). A write sent as that stream breaks fails
            # UNAVAILABLE, as one a replica forwards as its link breaks does.
            await trio.to_thread.run_sync(leader.stop)
            stopped.append(leader)
            await until(lambda: not leader_up(route), "the client saw its stream end", 20)
            new_leader, _ = await elected([follower, other])
            versions = [await session.set_variable("t", k) for k in range(3, 9)]
            assert versions == list(range(4, 10))
            # Through the new leader; or made by the session's own replica, if it leads.
            assert route.address == ("" if new_leader is follower else new_leader.target)
            if new_leader is not follower:
                await until(lambda: leader_up(route), "the stream to the new one is up", 20)
                sent = route.sent
                assert await session.set_variable("t", 9) == 10
                assert route.sent == sent + 1
            assert await session.get_variable("t", bypass_cache=True) == (
                8 if new_leader is follower else 9)
    finally:
        for server in servers:
            if server not in stopped:
                server.stop()


async def test_a_leader_that_no_longer_leads_relays_a_direct_write_and_names_the_new_one(
    three: tuple[EmbeddedServer, EmbeddedServer, EmbeddedServer],  # noqa: F811
) -> None:
    old, follower, new = three
    async with dspex_rx.connect(follower.target, session_id="direct",
                                direct_writes=True) as session:
        await session.register_variable("t", "integer", 0)
        route = route_of(session)
        assert await session.set_variable("t", 1) == 2
        await until(lambda: leader_up(route) and route.address == old.target,
                    "the stream to the leader is up", 20)
        # An election the old leader lost, as the two of them hear of it.
        new.call(lambda: forwarder(new).set_leader(new.target))
        link = forwarder(old)
        old.call(lambda: link.set_leader(new.target))
        await until(lambda: link.active, "the old leader's link to the new one is up", 20)
        before = writes_sent(link)
        assert await session.set_variable("t", 2) == 3
        assert writes_sent(link) == before + 1  # relayed by the old leader
        assert route.address == new.target
        await until(lambda: leader_up(route), "the stream to the new leader is up", 20)
        sent = route.sent
        assert await session.set_variable("t", 3) == 4
        assert (route.sent, writes_sent(link)) == (sent + 1, before + 1)
        assert await session.get_variable("t", bypass_cache=True) == 3


async def test_direct_writes_on_one_server_change_nothing() -> None:
    async with dspex_rx.connect(direct_writes=True) as session:
        await session.register_variable("t", "integer", 0)
        assert [await session.set_variable("t", k) for k in (1, 2)] == [2, 3]
        route = route_of(session)
        assert (route.address, route.methods, route.sent) == ("", set(), 0)


async def test_a_follower_names_the_leader_only_to_a_client_that_asks(
    pair: tuple[EmbeddedServer, EmbeddedServer],  # noqa: F811
) -> None:
    # The leader's address is the one replicas advertise to each other: a follower puts
    # it in its answer to a relayed write for direct_writes clients only.
    leader, follower = pair
    async with dspex_rx.connect(follower.target, session_id="plain") as session:
        await session.register_variable("t", "integer", 0)
        transport = session._conn.transport
        told: list[dict[str, str]] = []
        for asks in ((), ASKS_LEADER):
            trailers: list[tuple[str, str]] = []
            await transport.unary(
                f"/{SERVICE_NAME}/SetVariable",
                pb.SetVariableRequest(session_id="plain", ref="t", value=codec.encode(1)),
                pb.SetVariableResponse, metadata=token_metadata(session.token) + asks,
                trailers=trailers)
            told.append(dict(trailers))
        assert [LEADER_KEY in answer for answer in told] == [False, True]
        assert told[1][LEADER_KEY] == leader.target
        assert all(int(answer[POSITION_KEY]) > 0 for answer in told)
        assert route_of(session).address == ""  # (and it never follows one)


async def test_direct_writes_must_be_a_bool() -> None:
    with pytest.raises(InvalidValueError, match="direct_writes must be True or False"):
        dspex_rx.SessionContext(direct_writes="yes")  # type: ignore[arg-type]


class FakePipeline:
    """A Calls stream that answers every call with ``trailers`` (and a store revision far
    above any position) and keeps each call's method and ``after``."""

    def __init__(self, trailers: list[tuple[str, str]]) -> None:
        self.connected = True
        self.trailers = trailers
        self.sent: list[tuple[str, int]] = []
        self.position = 0  # the highest an answer carried, as Pipeline keeps it

    async def call(self, method: str, request: Any, response_type: Any, timeout: Any,
                   after: int = 0, trailers: list[tuple[str, str]] | None = None) -> Any:
        self.sent.append((method, after))
        if trailers is not None:
            trailers.extend(self.trailers)
        self.position = max(self.position, position_in(self.trailers, POSITION_KEY))
        return response_type(revision=9_999)


async def test_positions_not_revisions_tell_each_replica_what_to_hold_first() -> None:
    # Guards: the leader was told the session's highest store revision, a number of
    # another space than its position, and held every direct write 5 s waiting for it.
    async with trio.open_nursery() as nursery:
        home = FakePipeline([("x-dspex-leader", "10.0.0.2:1"), ("x-dspex-position", "40")])
        route = LeaderRoute(lambda address: trio.sleep(0), (("token", "t"),), nursery,
                            home)  # type: ignore[arg-type]
        route._probe = lambda leg: None  # type: ignore[method-assign]
        await route.call("SetVariable", pb.SetVariableRequest(),
                         pb.SetVariableResponse, 5.0)
        assert (route.address, route.methods) == ("10.0.0.2:1", {"SetVariable"})
        leader = FakePipeline([("x-dspex-position", "55")])
        assert route._leg is not None
        route._leg.pipeline = leader  # type: ignore[assignment]
        for _ in range(2):
            await route.call("SetVariable", pb.SetVariableRequest(),
                             pb.SetVariableResponse, 5.0)
        home.trailers = []
        await route.call("GetVariable", pb.GetVariableRequest(),
                         pb.GetVariableResponse, 5.0)
        # The leader hears what the session's replica stored, that replica what the
        # leader stored (each stream sends it only once: test_calls_positions.py).
        assert leader.sent == [("SetVariable", 40), ("SetVariable", 55)]
        assert home.sent == [("SetVariable", 0), ("GetVariable", 55)]


async def test_without_direct_writes_every_call_goes_home_with_the_sessions_position(
) -> None:
    async with trio.open_nursery() as nursery:
        home = FakePipeline([("x-dspex-leader", "10.0.0.2:1"), ("x-dspex-position", "40")])
        route = LeaderRoute(None, (("token", "t"),), nursery, home)  # type: ignore[arg-type]
        for method in ("SetVariable", "SetVariable", "GetVariable"):
            await route.call(method, pb.SetVariableRequest(),
                             pb.SetVariableResponse, 5.0)
        # The leader it names is not followed; its position is kept all the same.
        assert (route.address, route.methods, route.position) == ("", set(), 40)
        assert home.sent == [("SetVariable", 0), ("SetVariable", 40), ("GetVariable", 40)]


async def test_a_heartbeat_never_waits_for_the_leaders_writes_but_other_unary_calls_do(
    on_follower: dspex_rx.SessionContext,
) -> None:
    # Guards: a heartbeat made unary carried the leader's position, and a replica
    # behind the leader held it up to 5 s, past a short beat's deadline.
    conn = on_follower._conn
    await on_follower.set_variable("t", 1)
    await until(lambda: leader_up(route_of(on_follower)), "the stream to the leader is up", 20)
    assert await on_follower.set_variable("t", 2) == 3  # direct: a position to hold
    transport = conn.transport
    sent: list[tuple[str, dict[str, str]]] = []
    unary = transport.unary

    async def recording(path: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((path.rsplit("/", 1)[-1], dict(kwargs.get("metadata") or ())))
        return await unary(path, *args, **kwargs)

    transport.unary = recording
    await conn.call("Heartbeat", pb.HeartbeatRequest(
        session_id=conn.require_session_id(), client_id=conn.client_id), pb.HeartbeatResponse)
    conn.pipeline.available = False  # the calls go unary from here
    assert await on_follower.get_variable("t", bypass_cache=True) == 2
    after = str(route_of(on_follower).position)
    assert [(method, meta.get("x-dspex-after")) for method, meta in sent] == [
        ("Heartbeat", None), ("GetVariable", after)]


async def test_a_call_without_a_valid_token_never_waits_for_a_position(
    pair: tuple[EmbeddedServer, EmbeddedServer],  # noqa: F811
) -> None:
    # Guards: the unary path waited (5 s) for any caller's x-dspex-after before the
    # token check, so a caller without a token could hold its calls there.
    import grpc

    from dspex_rx.client.transport import Transport
    from dspex_rx.wire.security import SESSION_TOKEN_KEY

    _, follower = pair
    backend = follower.store._backend
    transport = Transport(follower.target, [])
    await transport.open()
    outcome: list[grpc.StatusCode] = []
    waited: list[int] = []

    async def call() -> None:
        try:
            await transport.unary(
                "/dspex_rx.v1.Variables/GetVariable",
                pb.GetVariableRequest(session_id="nobody", ref="t"), pb.GetVariableResponse,
                timeout=30, metadata=((SESSION_TOKEN_KEY, "wrong"),
                                      ("x-dspex-after", str(10**15))))
        except grpc.aio.AioRpcError as exc:
            outcome.append(exc.code())

    def ended_or_waiting() -> bool:
        waited.append(len(backend._head_waiters))
        return bool(outcome) or waited[-1] > 0

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await until(ended_or_waiting, "the call ended or waits", 20)
    finally:
        await transport.close()
    assert outcome and outcome[0] in (grpc.StatusCode.UNAUTHENTICATED,
                                      grpc.StatusCode.NOT_FOUND)
    assert not any(waited)


async def test_direct_writers_on_every_replica_are_each_made_once_in_one_order(
    etcd_endpoint: str, prefix: str,  # noqa: F811
) -> None:
    names = ["a", "b", "c"]
    with replicas(etcd_endpoint, prefix, 3) as servers:
        leader, _ = await elected(servers)
        seen: dict[int, list[VariableUpdate]] = {i: [] for i in range(3)}
        async with clients(servers, names, direct_writes=True) as sessions:
            await write_on_each(sessions, names, seen)
            # The followers' clients went to the leader themselves once they learned where
            # it is and its stream was up (their first writes went the old way).
            direct = [route_of(s).sent for s, server in zip(sessions, servers, strict=True)
                      if server is not leader]
            assert len(direct) == 2 and all(n >= 10 for n in direct)
        assert [s.call(lambda s=s: s.store.conflicts) for s in servers] == [0, 0, 0]
    for i in range(3):
        versions = [u.version for u in seen[i]]
        assert versions == sorted(set(versions))
