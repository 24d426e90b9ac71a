"""Session lifetime: a session whose clients are all gone is kept for the store's
``session_ttl`` (and joined again meanwhile), then removed; ``create=False`` joins only a
live session and otherwise changes nothing. Store tests run on an injected clock; client
tests against an embedded server whose store keeps sessions for an hour."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from helpers import Clock, beat_until, expire_client

import dspex_rx
from dspex_rx.errors import AuthenticationError, InvalidValueError, SessionNotFoundError
from dspex_rx.server import EmbeddedServer
from dspex_rx.store import MemoryStore, VariableSpec
from dspex_rx.store.memory.backend import MemoryBackend

TTL = 100.0


class TouchLog(MemoryBackend):
    """A memory backend that records each ``touch`` (what a durable one would write)."""

    def __init__(self) -> None:
        super().__init__()
        self.touched: list[str] = []

    def touch(self, session_id: str, var_id: str = "") -> None:
        self.touched.append(session_id)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryStore:
    return MemoryStore(clock=clock, default_ttl=10.0, session_ttl=TTL)


def _state(store: MemoryStore) -> tuple[list[str], int, int, int]:
    # Everything a refused call must leave as it was.
    return (store.session_ids(), store.revision, store.used_bytes, len(store._retired))


# -- store: the session TTL ------------------------------------------------------------


def test_a_session_whose_last_client_closed_is_kept_for_the_ttl_with_its_variables(
    store: MemoryStore, clock: Clock
) -> None:
    session, client_id, _ = store.initialize_session("s")
    store.register("s", [VariableSpec("t", "float", 0.5)], actor="a")
    assert store.close_session("s", client_id) is False
    assert store.session_ids() == ["s"]
    assert session.clients == {} and session.idle_since == clock.now
    assert store.get("s", "t").value == 0.5


def test_an_idle_session_is_removed_once_the_ttl_has_passed_not_before(
    store: MemoryStore, clock: Clock
) -> None:
    _, client_id, _ = store.initialize_session("s")
    store.close_session("s", client_id)
    clock.now += TTL  # exactly the TTL: still kept
    assert store.expire() == [] and store.session_ids() == ["s"]
    clock.now += 0.5
    assert store.expire() == ["s"] and store.session_ids() == []
    with pytest.raises(SessionNotFoundError):
        store.session("s")
    # It ended as a session always ends: its id is retired under its token.
    assert store.claimed("s")


def test_joining_an_idle_session_resets_its_ttl(store: MemoryStore, clock: Clock) -> None:
    session, first, _ = store.initialize_session("s")
    store.register("s", [VariableSpec("t", "integer", 7)], actor="a")
    store.close_session("s", first)
    clock.now += TTL - 1
    again, second, created = store.initialize_session(
        "s", token=session.token, require_token=True
    )
    assert again is session and created is False and session.idle_since is None
    assert store.get("s", "t").value == 7
    clock.now += TTL + 50  # past the first idle period's end, but a client is attached
    store.heartbeat("s", second)
    assert store.expire() == []
    # It is idle again from its second client's close, and the TTL counts from there.
    store.close_session("s", second)
    assert session.idle_since == clock.now
    clock.now += TTL
    assert store.expire() == []
    clock.now += 1
    assert store.expire() == ["s"]


def test_a_session_whose_last_client_expired_is_kept_from_that_expiry(
    store: MemoryStore, clock: Clock
) -> None:
    session, _, _ = store.initialize_session("s", ttl=10)
    clock.now += 11
    assert store.expire() == []
    assert session.clients == {} and session.idle_since == clock.now
    clock.now += TTL
    assert store.expire() == []
    clock.now += 1
    assert store.expire() == ["s"]


def test_closing_the_last_client_ends_its_optimization_leases_though_the_session_stays(
    store: MemoryStore,
) -> None:
    _, client_id, _ = store.initialize_session("s")
    store.register("s", [VariableSpec("t", "float", 0.5)], actor="a")
    lease, _ = store.start_optimization("s", "t", optimizer_type="grid", client_id=client_id)
    store.close_session("s", client_id)
    assert lease.state == "failed" and "closed its connection" in lease.end_reason
    assert store.session("s").running == {}


def test_an_expired_last_client_ends_its_optimization_leases_though_the_session_stays(
    store: MemoryStore, clock: Clock
) -> None:
    _, client_id, _ = store.initialize_session("s", ttl=10)
    store.register("s", [VariableSpec("t", "float", 0.5)], actor="a")
    lease, _ = store.start_optimization(
        "s", "t", optimizer_type="grid", client_id=client_id, ttl=1000
    )
    clock.now += 11
    assert store.expire() == []
    assert lease.state == "expired" and "stopped heartbeating" in lease.end_reason
    assert store.session("s").running == {}


def test_with_a_zero_ttl_a_session_goes_with_its_last_client_as_before(clock: Clock) -> None:
    store = MemoryStore(clock=clock, default_ttl=10.0)
    assert store.session_ttl == 0.0
    _, first, _ = store.initialize_session("s")
    assert store.close_session("s", first) is True and store.session_ids() == []
    session, _, _ = store.initialize_session("e", ttl=10)
    assert session.idle_since is None
    clock.now += 11
    assert store.expire() == ["e"] and store.session_ids() == []


def test_a_session_with_two_clients_is_not_idle_while_one_remains(
    store: MemoryStore, clock: Clock
) -> None:
    session, first, _ = store.initialize_session("s")
    _, second, _ = store.initialize_session("s")
    assert store.close_session("s", first) is False
    assert session.idle_since is None and list(session.clients) == [second]
    clock.now += 10 * TTL
    store.heartbeat("s", second)
    assert store.expire() == [] and session.idle_since is None


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan, "60", None, True])
def test_a_bad_session_ttl_is_refused_naming_it(bad: Any) -> None:
    with pytest.raises(InvalidValueError, match="session_ttl"):
        MemoryStore(session_ttl=bad)


def test_every_in_place_change_of_a_sessions_clients_tells_the_backend(clock: Clock) -> None:
    backend = TouchLog()
    store = MemoryStore(clock=clock, default_ttl=10.0, session_ttl=TTL, backend=backend)
    _, first, _ = store.initialize_session("s", ttl=10)
    assert backend.touched == ["s"]  # attached
    store.initialize_session("s", ttl=10)
    assert backend.touched == ["s"] * 2
    store.close_session("s", first)
    assert backend.touched == ["s"] * 3  # one left; the session is not idle
    clock.now += 11
    store.expire()  # the other expired (one touch), and the session became idle (one)
    assert backend.touched == ["s"] * 5 and store.session("s").idle_since == clock.now
    store.initialize_session("s")  # attached again: no longer idle
    assert backend.touched == ["s"] * 6 and store.session("s").idle_since is None


# -- store: create=False ---------------------------------------------------------------


def test_create_false_joins_a_live_session(store: MemoryStore) -> None:
    session, _, _ = store.initialize_session("s")
    joined, client_id, created = store.initialize_session(
        "s", token=session.token, require_token=True, create=False
    )
    assert joined is session and created is False and client_id in session.clients


def test_create_false_joins_an_idle_session(store: MemoryStore) -> None:
    session, first, _ = store.initialize_session("s")
    store.close_session("s", first)
    joined, _, created = store.initialize_session("s", create=False)
    assert joined is session and created is False and session.idle_since is None


def test_create_false_on_an_unknown_id_is_refused_and_changes_nothing(
    store: MemoryStore,
) -> None:
    store.initialize_session("other")
    before = _state(store)
    with pytest.raises(SessionNotFoundError, match=r"no session 'ghost' to join.*create=True"):
        store.initialize_session("ghost", create=False)
    assert _state(store) == before and not store.claimed("ghost")


def test_create_false_does_not_revive_an_ended_id_even_with_its_token(
    store: MemoryStore, clock: Clock
) -> None:
    session, client_id, _ = store.initialize_session("s")
    store.close_session("s", client_id)
    clock.now += TTL + 1
    assert store.expire() == ["s"]
    before = _state(store)
    with pytest.raises(SessionNotFoundError, match="to join"):
        store.initialize_session("s", token=session.token, require_token=True, create=False)
    # Refused as missing, not by the claim check (the token is right), and still claimed.
    assert _state(store) == before and store.claimed("s")
    with pytest.raises(SessionNotFoundError):
        store.initialize_session("s", token="wrong", require_token=True, create=False)
    with pytest.raises(AuthenticationError):  # creating it again still needs the token
        store.initialize_session("s", token="wrong", require_token=True)


@pytest.mark.parametrize("empty", [None, ""])
def test_create_false_without_a_session_id_is_invalid(store: MemoryStore, empty: Any) -> None:
    before = _state(store)
    with pytest.raises(InvalidValueError, match=r"create=False.*session_id"):
        store.initialize_session(empty, create=False)
    assert _state(store) == before


# -- client: two programs one after the other -------------------------------------------


@pytest.fixture(scope="module")
def durable() -> Any:
    with EmbeddedServer(store=MemoryStore(session_ttl=3600)) as embedded:
        yield embedded


@pytest.fixture
async def program_a(durable: EmbeddedServer) -> AsyncIterator[tuple[str, str | None]]:
    """Program A: writes a variable to a session of its own, then exits (closes)."""
    sid = f"run_{time.monotonic_ns()}"
    async with dspex_rx.connect(durable.target, session_id=sid) as a:
        await a.register_variable("learning_rate", "float", 0.01)
        await a.set_variable("learning_rate", 0.02)
        token = a.token
    yield sid, token


async def test_a_second_program_joins_the_session_the_first_left_and_reads_its_variable(
    durable: EmbeddedServer, program_a: tuple[str, str | None]
) -> None:
    sid, token = program_a
    assert durable.call(lambda: durable.store.session(sid).clients) == {}
    async with dspex_rx.connect(durable.target, session_id=sid, token=token,
                                create=False) as b:
        assert b.created is False
        assert await b.get_variable("learning_rate") == 0.02
    assert sid in durable.call(durable.store.session_ids)  # kept again for the next one


async def test_connect_with_create_false_to_an_unknown_id_raises_session_not_found(
    durable: EmbeddedServer,
) -> None:
    sid = f"ghost_{time.monotonic_ns()}"
    with pytest.raises(SessionNotFoundError, match=f"no session '{sid}' to join"):
        async with dspex_rx.connect(durable.target, session_id=sid, create=False):
            pytest.fail("joined a session that does not exist")
    assert sid not in durable.call(durable.store.session_ids)


@pytest.mark.parametrize("empty", [None, ""])
async def test_create_false_without_a_session_id_fails_before_any_call(empty: Any) -> None:
    # No target: opening would start an embedded server; the check comes before.
    with pytest.raises(InvalidValueError, match=r"create=False.*session_id"):
        dspex_rx.SessionContext(empty, create=False)
    with pytest.raises(InvalidValueError, match=r"create=False.*session_id"):
        async with dspex_rx.connect(session_id=empty, create=False):
            pytest.fail("opened a session without an id to join")


async def test_create_must_be_a_bool() -> None:
    with pytest.raises(InvalidValueError, match="create must be True or False"):
        dspex_rx.SessionContext("s", create="no")  # type: ignore[arg-type]


async def test_a_reattach_after_the_session_ended_does_not_recreate_it(
    mock_clock: trio.testing.MockClock,
) -> None:
    clock = Clock()
    with EmbeddedServer(store=MemoryStore(session_ttl=60, clock=clock)) as srv:
        sid = f"ended_{time.monotonic_ns()}"
        a = await dspex_rx.SessionContext(sid, srv.target, ttl_seconds=30.0).initialize()
        try:
            await a.register_variable("x", "integer", 1)
            # a pauses: its lease lapses and the session is kept, idle; then its TTL ends.
            assert expire_client(srv, sid, a._client_id) == []
            clock.now += 61
            assert srv.call(srv.store.expire) == [sid]
            await a._reattach()
            assert a.lost and a._stray is None and a.reattached == 0
            assert sid not in srv.call(srv.store.session_ids)
            with pytest.raises(SessionNotFoundError, match="is lost"):
                await a.get_variable("x")
        finally:
            await a.close()
        assert sid not in srv.call(srv.store.session_ids)


async def test_a_paused_client_reattaches_to_its_idle_session_while_the_ttl_runs(
    durable: EmbeddedServer, mock_clock: trio.testing.MockClock,
) -> None:
    sid = f"paused_{time.monotonic_ns()}"
    a = await dspex_rx.SessionContext(sid, durable.target, ttl_seconds=30.0).initialize()
    try:
        await a.register_variable("x", "integer", 1)
        assert expire_client(durable, sid, a._client_id) == []  # kept, idle
        await beat_until(a, mock_clock, lambda: a.reattached > 0 or a.lost)
        assert not a.lost and a.reattached == 1
        assert await a.get_variable("x") == 1
        assert durable.call(lambda: durable.store.session(sid).idle_since) is None
    finally:
        await a.close()
