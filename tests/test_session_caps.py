"""Session caps (issue #17): the client TTL a caller may ask for (``max_session_ttl``),
sessions per peer address (``max_sessions_per_peer``), idle sessions giving way at
``max_sessions``, and retired session ids charged to ``max_store_bytes``.

The store runs on a fake clock (``helpers.Clock``); calls from a second peer address go
through ``peers.from_peer`` (a relay whose connections leave from 127.0.0.2).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from helpers import Clock
from peers import from_peer, initialize, raw

from dspex_rx import Limits
from dspex_rx.errors import ResourceExhaustedError
from dspex_rx.server import EmbeddedServer
from dspex_rx.store import MemoryStore, VariableSpec
from dspex_rx.store.accounts import RETIRED_ID_COST
from dspex_rx.store.sqlite import SqliteBackend
from dspex_rx.v1 import variables_pb2 as pb

WEEK = 7 * 24 * 3600.0


# ------------------------------------------------------------ the client TTL cap (store)


def test_a_ttl_asked_above_max_session_ttl_is_granted_the_cap() -> None:
    store = MemoryStore(limits=Limits(max_session_ttl=300))
    session, client_id, _ = store.initialize_session("s", ttl=WEEK)
    assert session.clients[client_id].ttl == 300
    _, again, _ = store.initialize_session("s", ttl=120, token=session.token)
    assert session.clients[again].ttl == 120  # below the cap: as asked


def test_a_week_long_session_flood_no_longer_locks_out_new_sessions() -> None:
    # The max_sessions bug: sessions asking a 7-day TTL need no heartbeat for a week, so
    # a caller that filled max_sessions kept everybody out that long.
    clock = Clock()
    store = MemoryStore(limits=Limits(max_sessions=3), clock=clock)
    for i in range(3):
        store.initialize_session(f"flood{i}", ttl=WEEK)
    with pytest.raises(ResourceExhaustedError, match="max_sessions limit of 3"):
        store.initialize_session("victim")
    clock.now += Limits().max_session_ttl + 1  # the default cap, not a week
    assert sorted(store.expire()) == ["flood0", "flood1", "flood2"]
    _, _, created = store.initialize_session("victim")
    assert created and store.session_ids() == ["victim"]


# ------------------------------------------------ idle sessions give way at max_sessions


def test_at_max_sessions_the_longest_idle_session_gives_way_to_a_new_one() -> None:
    clock = Clock()
    store = MemoryStore(limits=Limits(max_sessions=3), clock=clock, session_ttl=86400)
    clients = {sid: store.initialize_session(sid)[1] for sid in ("a", "b", "c")}
    store.register("b", [VariableSpec("x", "integer", 1)], actor="t")
    store.close_session("b", clients["b"])  # idle first
    clock.now += 10
    store.close_session("a", clients["a"])  # idle later
    _, _, created = store.initialize_session("d")
    assert created
    assert sorted(store.session_ids()) == ["a", "c", "d"]  # b, idle longest, went
    _, _, created = store.initialize_session("e")
    assert created and sorted(store.session_ids()) == ["c", "d", "e"]
    # Every session has a client now: nothing gives way, and nothing changes.
    with pytest.raises(ResourceExhaustedError, match="holds 3 sessions, above the "
                       "max_sessions limit of 3"):
        store.initialize_session("f")
    assert sorted(store.session_ids()) == ["c", "d", "e"]
    store.check_accounts()


def test_a_refused_creation_evicts_no_idle_session() -> None:
    store = MemoryStore(limits=Limits(max_sessions=1), session_ttl=86400,
                        principals={"admin": "the-admin-key-0123456789"})
    _, client_id, _ = store.initialize_session("a")
    store.close_session("a", client_id)
    with pytest.raises(PermissionError):
        store.initialize_session("admin", principal_key="wrong-key-0123456789")
    assert store.session_ids() == ["a"]


# ------------------------------------------------ sessions per peer, through a server


async def test_a_flood_from_one_peer_is_refused_while_another_peer_still_creates() -> None:
    limits = Limits(max_sessions_per_peer=5, max_sessions=50, max_session_ttl=600)
    with EmbeddedServer(limits=limits) as server:
        flood = await initialize(server.target, 7, ttl=WEEK)
        made = [a for a in flood if isinstance(a, pb.InitializeSessionResponse)]
        assert len(made) == 5
        assert {a.ttl_seconds for a in made} == {600}  # the cap, as the answer says
        for code, message, trailing in flood[5:]:  # type: ignore[misc]
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert trailing["dspex-error-kind"] == "resource_exhausted"
            assert "127.0.0.1 already has 5 sessions with a client attached, above the " \
                   "max_sessions_per_peer limit of 5" in message
        async with from_peer(server.target, "127.0.0.2") as other:
            [answer] = await initialize(other, 1, ttl=WEEK)
        assert isinstance(answer, pb.InitializeSessionResponse) and answer.created
        # A session of the flood whose client left frees a place for its peer.
        first = made[0]
        await raw(server.target, lambda stub: stub.CloseSession(
            pb.CloseSessionRequest(session_id=first.session_id, client_id=first.client_id),
            metadata=(("x-dspex-session-token", first.session_token),)))
        [again, refused] = await initialize(server.target, 2)
        assert isinstance(again, pb.InitializeSessionResponse) and again.created
        assert refused[0] == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[index]
        assert server.call(lambda: len(server.store.session_ids())) == 6


async def test_attaching_to_a_live_session_is_not_counted_as_creating_one() -> None:
    with EmbeddedServer(limits=Limits(max_sessions_per_peer=1)) as server:
        [made] = await initialize(server.target, 1, session_id="shared")
        assert isinstance(made, pb.InitializeSessionResponse)
        token = (("x-dspex-session-token", made.session_token),)
        answers = await initialize(server.target, 3, session_id="shared", metadata=token)
        assert [a.created for a in answers] == [False] * 3  # type: ignore[union-attr]
        [refused] = await initialize(server.target, 1)
        assert refused[0] == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[index]


# ------------------------------------------------ retired ids in the store budget


def test_retired_ids_are_charged_to_the_store_budget() -> None:
    store = MemoryStore()
    for sid in ("alpha", "bravo", "charlie"):
        _, client_id, _ = store.initialize_session(sid)
        store.close_session(sid, client_id)
    assert store.used_bytes == 0  # no session is left...
    assert store.retired_bytes == 3 * RETIRED_ID_COST + len("alphabravocharlie")
    store.initialize_session("bravo", token="")  # auth off here: bravo is taken afresh
    assert store.retired_bytes == 2 * RETIRED_ID_COST + len("alphacharlie")


def test_a_write_is_refused_when_retired_ids_fill_the_store_budget() -> None:
    limits = Limits(max_store_bytes=20_000, max_value_bytes=4_000, max_message_bytes=1 << 20)
    store = MemoryStore(limits=limits)
    store.initialize_session("w")
    store.register("w", [VariableSpec("x", "string", "")], actor="t")
    store.set("w", "x", "y" * 3_000, actor="t")  # fits with no retired id
    for i in range(60):  # about 15 KB of retired ids
        _, client_id, _ = store.initialize_session(f"gone{i}")
        store.close_session(f"gone{i}", client_id)
    assert store.retired_bytes == 60 * RETIRED_ID_COST + sum(len(f"gone{i}") for i in range(60))
    with pytest.raises(ResourceExhaustedError, match="retired session ids, above the "
                       "max_store_bytes limit of 20000"):
        store.register("w", [VariableSpec("z", "string", "y" * 3_000)], actor="t")
    assert [r.name for r in store.list("w")] == ["x"]
    store.check_accounts()


def test_trimmed_retired_ids_release_their_charge() -> None:
    store = MemoryStore(limits=Limits(max_retired_sessions=10))
    for i in range(11):
        _, client_id, _ = store.initialize_session(f"s{i:02}")
        store.close_session(f"s{i:02}", client_id)
    # Past the cap of 10 the oldest are forgotten down to 9 (identity.RetiredIds.trim).
    assert len(store._retired) == 9
    assert store.retired_bytes == 9 * (RETIRED_ID_COST + 3)


def test_the_retired_charge_is_the_same_after_a_durable_store_reopens(tmp_path: Path) -> None:
    store = MemoryStore(backend=SqliteBackend(tmp_path))
    for sid in ("alpha", "bravo"):
        _, client_id, _ = store.initialize_session(sid)
        store.close_session(sid, client_id)
    expected = store.retired_bytes
    assert expected == 2 * RETIRED_ID_COST + len("alphabravo")
    asyncio.run(store.sync(store.revision))
    store.close()
    again = MemoryStore(backend=SqliteBackend(tmp_path))
    try:
        assert again.retired_bytes == expected
    finally:
        again.close()
