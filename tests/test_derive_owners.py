"""Derivation owners (issue #17): ``derive()`` takes a derivation lease; later clients
stand by; a lapsed owner is replaced by a standby that recomputes from the current inputs,
and its late writes are fenced off; with no standby the variable is marked stale (a commit
watchers hear) until an owner comes back; the lease survives a durable restart with one
owner.

Server time is a clock the test moves (the sweep never runs on its own); client timers run
on trio's ``MockClock``. Real-time waits are hang guards only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from helpers import Clock, drain, expire_client, settle, unavailable, until
from optimization_helpers import FakeClock
from test_durable_store import durable, opener  # noqa: F401 - the fixture, by name

import dspex_rx
from dspex_rx.client import derive as derive_module
from dspex_rx.client.derive import Derived
from dspex_rx.errors import (
    AlreadyExistsError,
    DerivationFencedError,
    InvalidValueError,
    SessionNotFoundError,
)
from dspex_rx.server import EmbeddedServer
from dspex_rx.store import Commit, MemoryStore, VariableSpec
from dspex_rx.store.sqlite import SqliteBackend

TTL = 3.0

# ------------------------------------------------------------------ the store's rules


def three_clients(store: MemoryStore) -> tuple[str, str, str]:
    """Session "s" with inputs a, b and a derived d (registered as derive() does), and three
    attached clients."""
    _, one, _ = store.initialize_session("s", ttl=3600)
    token = store.session("s").token
    two = store.initialize_session("s", ttl=3600, token=token)[1]
    three = store.initialize_session("s", ttl=3600, token=token)[1]
    store.register("s", [
        VariableSpec("a", "float", 1.0), VariableSpec("b", "float", 2.0),
        VariableSpec("d", "float", 3.0, metadata={"derived_from": ["a", "b"]},
                     dependencies=["a", "b"]),
    ], actor="s")
    return one, two, three


def test_the_first_claim_owns_and_later_ones_stand_by_in_order() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock, lease_ttl=TTL)
    one, two, three = three_clients(store)
    first, role1, _ = store.claim_derivation("s", "d", ["a", "b"], client_id=one)
    _, role2, _ = store.claim_derivation("s", "d", ["a", "b"], client_id=two)
    _, role3, _ = store.claim_derivation("s", "d", ["a", "b"], client_id=three)
    assert (role1, role2, role3) == ("owner", "standby", "standby")
    status = first.status("d", store.derivation_input_names("s", "d"))
    assert status["owner"] == one and status["owner_session"] == "s"
    assert status["standbys"] == [two, three]
    assert status["inputs"] == ["a", "b"]
    assert (status["ttl"], status["stale"], status["last_computed_revision"]) == (TTL, False, 0)
    assert status["expires_at"] == clock.now + TTL
    # Claiming again is idempotent: the owner keeps its token, a standby its place.
    token = first.token
    assert store.claim_derivation("s", "d", ["a", "b"], client_id=one)[1] == "owner"
    assert store.claim_derivation("s", "d", ["a", "b"], client_id=two)[1] == "standby"
    assert (first.token, [s.client for s in first.standbys]) == (token, [two, three])


def test_a_different_derivation_of_the_same_variable_is_refused_naming_both() -> None:
    store = MemoryStore(clock=Clock(), lease_ttl=TTL)
    one, two, _ = three_clients(store)
    store.claim_derivation("s", "d", ["a", "b"], client_id=one)
    with pytest.raises(InvalidValueError) as refused:
        store.claim_derivation("s", "d", ["b", "a"], client_id=two)
    message = str(refused.value)
    assert "'d'" in message and "['a', 'b']" in message and "['b', 'a']" in message
    assert [s.client for s in store.session("s").derivations[
        store.get("s", "d").id].standbys] == []
    # A variable written by hand is not taken over by a derivation.
    store.register("s", [VariableSpec("plain", "float", 0.0)], actor="s")
    with pytest.raises(AlreadyExistsError, match="'plain' already exists and is not derived"):
        store.claim_derivation("s", "plain", ["a"], client_id=one)
    with pytest.raises(SessionNotFoundError, match="not attached"):
        store.claim_derivation("s", "d", ["a", "b"], client_id="made-up")


def test_a_lapsed_owner_hands_over_to_the_first_live_standby_and_is_fenced() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock, lease_ttl=TTL)
    one, two, three = three_clients(store)
    derivation, _, _ = store.claim_derivation("s", "d", ["a", "b"], client_id=one)
    old_token = derivation.token
    store.claim_derivation("s", "d", ["a", "b"], client_id=two)
    store.claim_derivation("s", "d", ["a", "b"], client_id=three)
    record, revision, _ = store.set("s", "d", 3.5, actor="s", fencing_token=old_token)
    assert derivation.last_computed_revision == revision

    clock.now += 2.0
    store.renew_derivation("s", "d", client_id=one)
    store.renew_derivation("s", "d", client_id=three)  # two stays silent
    clock.now += TTL - 0.5
    store.expire()
    assert derivation.owner_client == one  # renewed 2.5 s ago: still within its TTL
    assert [s.client for s in derivation.standbys] == [three]  # two lapsed: dropped
    store.renew_derivation("s", "d", client_id=three)

    clock.now += 1.0  # one lapsed; two before it, so three is the heir
    store.expire()
    assert (derivation.owner_client, derivation.standbys) == (three, [])
    assert derivation.token not in (0, old_token)
    assert store.renew_derivation("s", "d", client_id=one)[1] == "none"

    with pytest.raises(DerivationFencedError) as fenced:
        store.set("s", "d", 9.0, actor="s", fencing_token=old_token)
    message = str(fenced.value)
    assert "variable 'd'" in message and "lapsed" in message and three in message
    with pytest.raises(DerivationFencedError, match="belongs to no derivation"):
        store.set("s", "d", 9.0, actor="s", fencing_token=12345)
    assert store.get("s", "d").value == 3.5  # nothing of the refused writes landed
    record, revision, _ = store.set("s", "d", 4.0, actor="s", fencing_token=derivation.token)
    assert (record.value, derivation.last_computed_revision) == (4.0, revision)


def test_no_standby_marks_the_variable_stale_in_a_commit_and_a_new_owner_clears_it() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock, lease_ttl=TTL)
    one, two, _ = three_clients(store)
    derivation, _, _ = store.claim_derivation("s", "d", ["a", "b"], client_id=one)
    heard: list[Commit] = []
    store.add_listener("s", heard.append)
    before = store.get("s", "d")

    clock.now += TTL + 0.1
    assert store.expire() == []
    assert (derivation.owned, derivation.stale) == (False, True)
    assert "no renewal from" in derivation.stale_reason
    stale = store.get("s", "d")
    assert (stale.value, stale.version, stale.metadata["stale"]) == (3.0, before.version + 1,
                                                                     True)
    assert stale.metadata["derived_from"] == ["a", "b"]  # the rest of its metadata stays
    [commit] = heard
    [event] = commit.events
    assert (event.update_type, event.source) == ("value_change", "derivation")
    assert event.metadata["derivation"] == "stale"
    assert "no renewal" in event.metadata["reason"]
    clock.now += 100.0
    store.expire()
    assert len(heard) == 1  # marked once, not on every sweep

    _, role, revision = store.claim_derivation("s", "d", ["a", "b"], client_id=two)
    assert role == "owner" and derivation.owner_client == two
    assert (derivation.stale, store.get("s", "d").metadata["stale"]) == (False, False)
    assert revision == store.revision == heard[-1].revision
    assert heard[-1].events[0].metadata["derivation"] == "owned"
    store.check_accounts()


# Guards: the scan for lapses, skipped until the earliest known expiry, must still see a
# shorter lease claimed after it was computed.
def test_a_short_lease_claimed_after_a_long_one_still_lapses_on_time() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock, lease_ttl=TTL)
    one, _, _ = three_clients(store)
    store.claim_derivation("s", "d", ["a", "b"], client_id=one, ttl=60.0)
    clock.now += 1.0
    store.expire()  # a scan: nothing lapses before 60 s from now
    store.register("s", [VariableSpec("e", "float", 0.0, metadata={"derived_from": ["a"]})],
                   actor="s")
    short, _, _ = store.claim_derivation("s", "e", ["a"], client_id=one, ttl=1.0)
    clock.now += 1.5
    store.set("s", "a", 2.0, actor="s")  # any write sees lapses first
    assert (short.owned, short.stale) == (False, True)
    assert store.get("s", "e").metadata["stale"] is True
    assert store.session("s").derivations[store.get("s", "d").id].owned  # 60 s: still held


def test_a_closing_owner_hands_over_at_once_and_a_deleted_variable_drops_its_lease() -> None:
    store = MemoryStore(clock=Clock(), lease_ttl=TTL)
    one, two, _ = three_clients(store)
    derivation, _, _ = store.claim_derivation("s", "d", ["a", "b"], client_id=one)
    store.claim_derivation("s", "d", ["a", "b"], client_id=two)
    store.close_session("s", one)
    assert (derivation.owner_client, derivation.ended[-1][1]) == (
        two, f"its holder ({one}) closed its connection"
    )
    store.release_derivation("s", "d", client_id=two)  # no standby left: stale
    assert derivation.stale and store.get("s", "d").metadata["stale"] is True
    var_id = store.get("s", "d").id
    store.delete("s", "d")
    assert var_id not in store.session("s").derivations
    store.check_accounts()


def test_a_restart_keeps_one_owner_with_its_token_and_a_fresh_window(
    tmp_path_factory: pytest.TempPathFactory, durable: str,  # noqa: F811 - the fixture
) -> None:
    open_backend = opener(durable, tmp_path_factory)
    clock = Clock()
    store = MemoryStore(backend=open_backend(), clock=clock, lease_ttl=TTL)
    one, two, _ = three_clients(store)
    derivation, _, _ = store.claim_derivation("s", "d", ["a", "b"], client_id=one)
    store.claim_derivation("s", "d", ["a", "b"], client_id=two)
    token = derivation.token
    _, written, _ = store.set("s", "d", 5.0, actor="s", fencing_token=token)
    asyncio.run(store.sync(store.revision))
    store.close()

    clock.now += 1000.0  # down far longer than the TTL
    store = MemoryStore(backend=open_backend(), clock=clock, lease_ttl=TTL)
    back = store.session("s").derivations[store.get("s", "d").id]
    assert (back.owner_client, back.token, [s.client for s in back.standbys]) == (
        one, token, [two])
    assert back.last_computed_revision == written
    assert back.expires_at == clock.now + TTL  # the downtime did not count against it
    store.expire()
    assert back.owner_client == one and not back.stale
    assert store.set("s", "d", 6.0, actor="s", fencing_token=token)[0].value == 6.0

    clock.now += TTL + 0.1  # the owner never came back: its standby takes over, alone
    store.renew_derivation("s", "d", client_id=two)
    assert (back.owner_client, back.standbys) == (two, [])
    with pytest.raises(DerivationFencedError):
        store.set("s", "d", 7.0, actor="s", fencing_token=token)
    asyncio.run(store.sync(store.revision))
    store.close()

    store = MemoryStore(backend=open_backend(), clock=clock, lease_ttl=TTL)
    again = store.session("s").derivations[store.get("s", "d").id]
    assert (again.owner_client, again.token) == (two, back.token)
    with pytest.raises(DerivationFencedError, match="lapsed"):
        store.set("s", "d", 7.0, actor="s", fencing_token=token)
    store.check_accounts()
    store.close()


def test_a_stale_mark_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    store = MemoryStore(backend=SqliteBackend(tmp_path), clock=clock, lease_ttl=TTL)
    one, _, _ = three_clients(store)
    store.claim_derivation("s", "d", ["a", "b"], client_id=one)
    clock.now += TTL + 1
    store.expire()
    asyncio.run(store.sync(store.revision))
    store.close()
    store = MemoryStore(backend=SqliteBackend(tmp_path), clock=clock, lease_ttl=TTL)
    record = store.get("s", "d")
    derivation = store.session("s").derivations[record.id]
    assert (derivation.stale, derivation.owned, record.metadata["stale"]) == (True, False, True)
    store.close()


# -------------------------------------------------------- clients over a served store


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def served(clock: FakeClock) -> Iterator[EmbeddedServer]:
    # The sweep never runs on its own: leases lapse only when the test says so.
    store = MemoryStore(clock=clock, lease_ttl=TTL)
    with EmbeddedServer(store=store, expire_interval=3600.0) as embedded:
        yield embedded


@pytest.fixture
async def pair(
    served: EmbeddedServer,
) -> AsyncIterator[tuple[dspex_rx.SessionContext, dspex_rx.SessionContext]]:
    """Two clients of one session with an input ``x`` = 2.0."""
    async with dspex_rx.connect(served.target, ttl_seconds=3600) as a, dspex_rx.connect(
        served.target, session_id=a.session_id, token=a.token, ttl_seconds=3600
    ) as b:
        await a.register_variable("x", "float", 2.0)
        yield a, b


def die(derived: Derived) -> None:
    """The derive loop stops as if its process died: no release, no more renewals."""
    derived._scope.cancel()


def triple(x: float) -> float:
    return 3 * x


async def tick(clock: FakeClock, mock_clock: trio.testing.MockClock, *keepers: Derived,
               seconds: float = TTL / 3) -> None:
    """Move server and client time by ``seconds``; wait until each live keeper renewed."""
    counts = [k.renewals for k in keepers]
    await trio.testing.wait_all_tasks_blocked()
    clock.now += seconds
    mock_clock.jump(seconds)
    for keeper, count in zip(keepers, counts, strict=True):
        await until(lambda k=keeper, c=count: k.renewals > c, "a renewal")  # type: ignore[misc]


async def test_a_standby_takes_over_within_the_ttl_and_follows_new_inputs(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    clock: FakeClock, mock_clock: trio.testing.MockClock,
) -> None:
    a, b = pair
    owner = await a.derive("d", ["x"], triple)
    standby = await b.derive("d", ["x"], triple)
    assert (owner.role, standby.role) == ("owner", "standby")
    assert await b.get_variable("d", bypass_cache=True) == 6.0
    old_token = owner._token

    die(owner)
    await until(lambda: owner.ended, "the owner's task ended")
    await a.set_variable("x", 5.0)  # nobody recomputes d now
    await settle(b)
    assert standby.recomputations == 0 and standby.writes == 0

    # The owner's last renewal was at time 0; the standby renews every TTL/3.
    elapsed = 0.0
    while standby.role != "owner":
        await tick(clock, mock_clock, standby)
        elapsed += TTL / 3
        assert elapsed <= 2 * TTL, "no takeover"
    assert TTL < elapsed <= TTL + TTL / 3  # within one renewal after the lapse
    await until(lambda: standby.writes == 1, "the new owner's write")
    assert await a.get_variable("d", bypass_cache=True) == 15.0  # from the current input
    status = await a.derivation_status("d")
    assert (status["owner"], status["standbys"], status["role"]) == (
        b._core.client_id, [], "none")
    history = await a.get_variable_history("d", limit=1)
    assert status["last_computed_revision"] == history[0]["revision"]

    await a.set_variable("x", 7.0)
    await settle(b)
    with trio.fail_after(10):
        await standby.settled()
    assert await a.get_variable("d", bypass_cache=True) == 21.0
    # The dead owner's late write is refused, naming the variable and why.
    with pytest.raises(DerivationFencedError, match=r"variable 'd'.*lapsed"):
        await a.set_variable("d", 0.0, fencing_token=old_token)
    assert await a.get_variable("d", bypass_cache=True) == 21.0


# Guards: derive() returned before its task subscribed, so settled() could return before
# the new owner's first recomputation of an existing (stale) variable was written.
async def test_without_a_standby_the_variable_goes_stale_then_a_new_owner_clears_it(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    served: EmbeddedServer, clock: FakeClock, mock_clock: trio.testing.MockClock,
) -> None:
    a, b = pair
    owner = await a.derive("d", ["x"], triple)
    watch = await b.watch_variable("d", include_initial=False)
    die(owner)
    await a.set_variable("x", 4.0)
    clock.now += TTL + 0.1
    served.call(served.store.expire)
    await settle(b)
    marks = [u for u in drain(watch) if u.metadata.get("derivation")]
    assert [(u.metadata["derivation"], u.value, u.source) for u in marks] == [
        ("stale", 6.0, "derivation")]
    info = (await b.get_variables(["d"], include_metadata=True))["d"]
    assert (info["value"], info["metadata"]["stale"]) == (6.0, True)  # still readable
    status = await b.derivation_status("d")
    assert (status["stale"], status["owner"], status["role"]) == (True, None, "none")
    assert "no renewal" in status["stale_reason"]

    back = await b.derive("d", ["x"], triple)  # an owner comes back
    assert back.role == "owner"
    await settle(b)
    with trio.fail_after(10):
        await back.settled()
    await settle(b)
    marks = [u for u in drain(watch) if u.update_type == "value_change"]
    assert [u.metadata.get("derivation") for u in marks] == ["owned", None]
    assert marks[-1].value == 12.0 and marks[-1].source == "derived"
    info = (await b.get_variables(["d"], include_metadata=True))["d"]
    assert (info["value"], info["metadata"]["stale"]) == (12.0, False)
    assert (await b.derivation_status("d"))["stale"] is False
    watch.cancel()


async def test_an_owner_whose_connection_goes_silent_is_replaced_when_its_client_expires(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    served: EmbeddedServer, clock: FakeClock, mock_clock: trio.testing.MockClock,
) -> None:
    a, b = pair
    owner = await a.derive("d", ["x"], triple)
    standby = await b.derive("d", ["x"], triple)
    die(owner)
    await a.set_variable("x", 3.0)
    # The server stops hearing from a's client (its heartbeats lapsed): its parts go with
    # it, before the derivation's own TTL would.
    expire_client(served, a.session_id, a._core.client_id)
    status = await b.derivation_status("d")
    assert (status["owner"], status["role"], status["stale"]) == (b._core.client_id, "owner",
                                                                   False)
    await tick(clock, mock_clock, standby)
    await until(lambda: standby.writes == 1, "the takeover write")
    assert await b.get_variable("d", bypass_cache=True) == 9.0


# Guards: a renewal that failed in transport (not a DspexError) ended the derive task and
# crashed the session's nursery with it.
async def test_a_failed_renewal_is_retried_and_the_owner_keeps_its_lease(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    clock: FakeClock, mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, _ = pair
    owner = await a.derive("d", ["x"], triple)
    real = derive_module.lease_call
    failures: list[str] = []

    async def flaky(core: Any, ref: str, action: str, *args: Any) -> Any:
        if action == "renew" and not failures:
            failures.append(ref)
            raise unavailable()
        return await real(core, ref, action, *args)

    monkeypatch.setattr(derive_module, "lease_call", flaky)
    await trio.testing.wait_all_tasks_blocked()
    clock.now += TTL / 3
    mock_clock.jump(TTL / 3)
    await until(lambda: len(failures) == 1, "the failed renewal")
    assert owner.renewals == 0 and not owner.ended
    for _ in range(4):  # 4 s: past the TTL, renewed every second
        await tick(clock, mock_clock, owner)
    assert (owner.role, owner.renewals, owner.ended) == ("owner", 4, False)
    assert (await a.derivation_status("d"))["owner"] == a._core.client_id
    await a.set_variable("x", 4.0)
    await settle(a)
    with trio.fail_after(10):
        await owner.settled()
    assert await a.get_variable("d", bypass_cache=True) == 12.0


async def test_cancel_hands_the_lease_over_at_once_and_status_says_who_is_who(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    clock: FakeClock, mock_clock: trio.testing.MockClock,
) -> None:
    a, b = pair
    owner = await a.derive("d", ["x"], triple, ttl=6.0)
    standby = await b.derive("d", ["x"], triple)
    seen_a, seen_b = await a.derivation_status("d"), await b.derivation_status("d")
    assert (seen_a["role"], seen_b["role"]) == ("owner", "standby")
    assert seen_a["owner"] == seen_b["owner"] == a._core.client_id
    assert seen_a["standbys"] == [b._core.client_id]
    assert (seen_a["ttl"], seen_a["inputs"], seen_a["derived"]) == (6.0, ["x"], True)
    assert seen_a["expires_at"].timestamp() == pytest.approx(clock.now + 6.0)

    owner.cancel()
    await until(lambda: owner.ended, "the owner's task ended")
    status = await b.derivation_status("d")
    assert (status["owner"], status["role"], status["stale"]) == (b._core.client_id, "owner",
                                                                   False)
    await tick(clock, mock_clock, standby, seconds=2.0)  # its next renewal learns it
    await until(lambda: standby.writes == 1, "the takeover write")
    await a.set_variable("x", 10.0)
    await settle(b)
    with trio.fail_after(10):
        await standby.settled()
    assert await a.get_variable("d", bypass_cache=True) == 30.0


async def test_a_client_deriving_another_function_of_the_variable_is_refused(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
) -> None:
    a, b = pair
    await a.register_variable("y", "float", 1.0)
    await a.derive("d", ["x"], triple)
    with pytest.raises(InvalidValueError, match=r"'d' is already derived from \['x'\]"):
        await b.derive("d", ["y"], triple)
    with pytest.raises(ValueError, match="'x' already exists and is not derived"):
        await b.derive("x", ["y"], triple)
    assert (await a.derivation_status("d"))["standbys"] == []


# Guards: a client deriving a variable twice ran two tasks under its one lease.
async def test_one_client_derives_a_variable_once_until_it_cancels(
    pair: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
) -> None:
    a, _ = pair
    first = await a.derive("d", ["x"], triple)
    with pytest.raises(AlreadyExistsError, match="'d' is already derived by this client"):
        await a.derive("d", ["x"], triple)
    assert [t.name for t in a._nursery.child_tasks  # type: ignore[union-attr]
            if "dspex-rx-derive" in t.name] == ["dspex-rx-derive[d]"]
    first.cancel()
    await until(lambda: first.ended, "the first task ended")
    again = await a.derive("d", ["x"], triple)  # it went stale; this client owns it again
    assert again.role == "owner"
    assert (await a.derivation_status("d"))["stale"] is False


def test_derivation_status_is_answered_to_asyncio_callers_too(served: EmbeddedServer) -> None:
    async def main() -> dict[str, Any]:
        async with dspex_rx.connect(served.target) as s:
            await s.register_variable("plain", "float", 1.0)
            return await s.derivation_status("plain")

    status = asyncio.run(main())
    assert (status["derived"], status["owner"], status["standbys"]) == (False, None, [])


async def test_the_servers_own_sweep_lapses_an_owner_and_marks_the_variable_stale(
    clock: FakeClock, mock_clock: trio.testing.MockClock,
) -> None:
    # No call sees the lapse: only the server's expiry loop (every 10 ms of real time)
    # does. The loop is real; the TTL is counted on the server's fake clock.
    store = MemoryStore(clock=clock, lease_ttl=TTL)
    with EmbeddedServer(store=store, expire_interval=0.01) as swept:
        async with dspex_rx.connect(swept.target, ttl_seconds=3600) as a, dspex_rx.connect(
            swept.target, session_id=a.session_id, token=a.token, ttl_seconds=3600
        ) as b:
            await a.register_variable("x", "float", 1.0)
            owner = await a.derive("d", ["x"], triple)
            await b.derive("d", ["x"], triple)
            die(owner)
            clock.now += TTL + 0.1  # a's lease lapses; b's standby entry too
            var_id = owner.var_id

            def marked() -> bool:
                # Read on the server's loop: get() never expires a lease itself.
                return bool(swept.call(lambda: store.get(a.session_id, var_id).metadata
                                       .get("stale")))

            await until(marked, "the sweep marked d stale")
            status = await a.derivation_status("d")
            assert (status["owner"], status["standbys"]) == (None, [])
            assert "no renewal from" in status["stale_reason"]
            info = (await a.get_variables(["d"], include_metadata=True))["d"]
            assert (info["value"], info["metadata"]["stale"]) == (3.0, True)
