"""The reactive client against a real server: observe() on trio time, watch_variable(s)
with filter/throttle/debounce at exact virtual times, ordering and exactly-once delivery,
one wire subscription per variable, slow consumers, and clean teardown."""

from __future__ import annotations

from typing import Any

import pytest
import reactivex
import trio
import trio.testing
from helpers import drain, settle
from reactivex import operators as ops

import dspex_rx
from dspex_rx import SessionContext
from dspex_rx.client.actors import VariableUpdate
from dspex_rx.server import EmbeddedServer
from dspex_rx.store import MemoryStore

# ------------------------------------------------------------------ virtual time


async def test_observe_debounce_runs_on_trio_time_without_a_scheduler(
    two: tuple[SessionContext, SessionContext], mock_clock: trio.testing.MockClock
) -> None:
    writer, watcher = two
    await writer.register_variable("temperature", "float", 0.1)
    t0 = trio.current_time()
    seen: list[tuple[float, float]] = []
    watcher.observe("temperature", include_initial=False).pipe(
        ops.debounce(0.5), ops.map(lambda u: u.value)
    ).pipe(ops.map(lambda v: v * 10)).subscribe(
        lambda v: seen.append((round(trio.current_time() - t0, 6), v))
    )
    await settle(watcher)
    # Steps are binary fractions so virtual deadlines compare exactly.
    for step, value in ((0.0, 0.2), (0.25, 0.3), (0.25, 0.4)):
        mock_clock.jump(step)
        await writer.set_variable("temperature", value)
        await settle(watcher)
    assert seen == []  # every change came within 0.5 s of the previous one
    mock_clock.jump(0.375)
    await settle(watcher)
    assert seen == []
    mock_clock.jump(0.125)  # exactly 0.5 s after the last change, at t = 1.0
    await settle(watcher)
    assert seen == [(1.0, 4.0)]


async def test_watch_throttle_emits_first_at_once_and_latest_at_window_end(
    two: tuple[SessionContext, SessionContext], mock_clock: trio.testing.MockClock
) -> None:
    writer, watcher = two
    await writer.register_variable("progress", "float", 0.0)
    watch = await watcher.watch_variable("progress", include_initial=False, throttle_ms=1000)
    t0 = trio.current_time()
    times: list[tuple[float, float]] = []

    async def consume() -> None:
        async for update in watch:
            times.append((round(trio.current_time() - t0, 6), update.value))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        for i in range(1, 11):  # 10 updates, 0.25 s apart: t = 0 .. 2.25
            await writer.set_variable("progress", i * 10.0)
            await settle(watcher)
            mock_clock.jump(0.25)
        await settle(watcher)  # t = 2.5
        mock_clock.jump(0.5)  # t = 3.0: the third window closes
        await settle(watcher)
        watcher.cancel_watch(watch)
    # First at once; then the latest of each 1 s window at its end (a window closes when
    # the clock reaches it, before the write made at that same instant); 100.0 arrives.
    assert times == [(0.0, 10.0), (1.0, 40.0), (2.0, 80.0), (3.0, 100.0)]


async def test_watch_variables_debounce_emits_latest_per_variable_in_revision_order(
    two: tuple[SessionContext, SessionContext], mock_clock: trio.testing.MockClock
) -> None:
    writer, watcher = two
    await writer.register_variables(
        [{"name": n, "type": "integer", "initial_value": 0} for n in ("a", "b", "c")]
    )
    watch = await watcher.watch_variables(["a", "b", "c"], include_initial=False,
                                          debounce_ms=250)
    t0 = trio.current_time()
    await writer.set_variable("b", 1)
    await writer.set_variable("a", 1)
    await writer.set_variable("b", 2)
    await settle(watcher)
    mock_clock.jump(0.125)
    await writer.set_variable("a", 2)
    await settle(watcher)
    mock_clock.jump(0.125)  # t = 0.25: settled only 0.125 s
    await settle(watcher)
    assert drain(watch) == []
    mock_clock.jump(0.125)  # t = 0.375: 0.25 s after the last change
    await settle(watcher)
    got = drain(watch)
    assert [(u.name, u.value) for u in got] == [("b", 2), ("a", 2)]
    assert got[0].revision < got[1].revision
    assert trio.current_time() - t0 == 0.375
    watch.cancel()


# ---------------------------------------------------------------- filters, initial


async def test_filter_fn_forms_and_initial_not_filtered(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variables(
        [{"name": "x", "type": "integer", "initial_value": 100},
         {"name": "y", "type": "integer", "initial_value": 100}]
    )
    only_up = await watcher.watch_variable("x", filter_fn=lambda old, new: new > old)
    only_y = await watcher.watch_variables(
        ["x", "y"], include_initial=False, filter_fn=lambda name, old, new: name == "y"
    )
    for value in (50, 60, 40, 70):
        await writer.update_variables({"x": value, "y": value})
    await settle(watcher)
    assert [(u.update_type, u.value) for u in drain(only_up)] == [
        ("initial", 100), ("value_change", 60), ("value_change", 70)
    ]
    assert [(u.name, u.old_value, u.value) for u in drain(only_y)] == [
        ("y", 100, 50), ("y", 50, 60), ("y", 60, 40), ("y", 40, 70)
    ]


async def test_include_initial_on_and_off(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variable("m", "string", "gpt-4")
    with_initial = await watcher.watch_variable("m")
    without = await watcher.watch_variable("m", include_initial=False)
    late = await watcher.watch_variable("m")  # joins a live actor: initial from its entry
    await writer.set_variable("m", "claude")
    await settle(watcher)
    assert [(u.update_type, u.value, u.version) for u in drain(with_initial)] == [
        ("initial", "gpt-4", 1), ("value_change", "claude", 2)
    ]
    assert [(u.update_type, u.value) for u in drain(without)] == [("value_change", "claude")]
    assert [(u.update_type, u.value) for u in drain(late)] == [
        ("initial", "gpt-4"), ("value_change", "claude")
    ]


# ------------------------------------------------------------------ guarantees


async def test_watch_started_during_writes_sees_every_later_version_once_in_order(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variable("n", "integer", 0)
    watches = []

    async def hammer() -> None:
        for i in range(1, 301):
            await writer.set_variable("n", i)
            if i in (50, 150, 220):
                watches.append(watcher.watch_variable("n"))

    await hammer()
    await settle(watcher)
    assert len(watches) == 3
    for watch in watches:
        got = drain(watch)
        assert got[0].update_type == "initial"
        versions = [u.version for u in got]
        assert versions == list(range(versions[0], 302)), versions[:5]
        assert [u.value for u in got] == [v - 1 for v in versions]
        assert all(u.old_value == u.value - 1 for u in got[1:])


async def test_two_connections_see_the_same_sequence(server: EmbeddedServer) -> None:
    async with dspex_rx.connect(server.target) as writer:
        await writer.register_variable("seq", "integer", 0)
        async with (
            dspex_rx.connect(server.target, session_id=writer.session_id,
                             token=writer.token) as one,
            dspex_rx.connect(server.target, session_id=writer.session_id,
                             token=writer.token) as two_,
        ):
            w1 = await one.watch_variable("seq")
            w2 = await two_.watch_variable("seq")

            async def write(k: int) -> None:
                for i in range(40):
                    await writer.set_variable("seq", k * 100 + i)

            async with trio.open_nursery() as nursery:
                for k in range(3):
                    nursery.start_soon(write, k)
            await settle(one)
            await settle(two_)
            s1 = [(u.version, u.value) for u in drain(w1)]
            s2 = [(u.version, u.value) for u in drain(w2)]
            assert s1 == s2
            assert [v for v, _ in s1] == list(range(1, 122))


async def test_atomic_batch_arrives_as_one_frame(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variables(
        [{"name": n, "type": "float", "initial_value": 0.0} for n in ("lr", "wd", "mom")]
    )
    watch = await watcher.watch_variables(["lr", "wd", "mom"], include_initial=False)
    hub = watcher._hub
    assert hub is not None
    before = hub.frames
    await writer.update_variables({"lr": 0.1, "wd": 0.01, "mom": 0.9})
    await settle(watcher)
    got = drain(watch)
    assert hub.frames == before + 1
    assert {u.revision for u in got} == {writer.revision}
    assert sorted(u.name for u in got) == ["lr", "mom", "wd"]


async def test_thousand_local_observers_share_one_wire_subscription(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variable("shared", "integer", 0)
    hub = watcher._hub
    assert hub is not None
    received: list[list[Any]] = [[] for _ in range(1000)]
    subscriptions = [
        watcher.observe("shared").subscribe(lambda u, box=box: box.append(u.value))
        for box in received
    ]
    await settle(watcher)
    assert hub.wire_subscribes == 1
    await writer.set_variable("shared", 7)
    await settle(watcher)
    assert all(box == [0, 7] for box in received)
    for subscription in subscriptions[:-1]:
        subscription.dispose()
    assert hub.wire_subscribes == 1
    subscriptions[-1].dispose()
    assert hub.wire_subscribes == 0
    await writer.set_variable("shared", 8)
    await settle(watcher)
    assert received[-1] == [0, 7]


async def test_slow_consumer_of_10k_updates_gets_the_last_value_with_bounded_memory() -> None:
    with EmbeddedServer(max_pending_events=500) as embedded:
        async with dspex_rx.connect(embedded.target) as session:
            await session.register_variable("hot", "integer", 0)
            watch = await session.watch_variable("hot", include_initial=False)
            watch.max_buffer = 100
            peak = 0
            original = watch._push

            def counting_push(update: VariableUpdate) -> None:
                nonlocal peak
                original(update)
                peak = max(peak, len(watch._buffer))

            watch._push = counting_push  # type: ignore[method-assign]
            sid = session.session_id

            def burst() -> int:
                for i in range(1, 10_001):
                    embedded.store.set(sid, "hot", i, actor="burst")
                return max(s.conflations for s in embedded.service.subscribers)

            conflations = await trio.to_thread.run_sync(embedded.call, burst)
            assert conflations > 0  # the server collapsed the backlog
            await settle(session)
            got = drain(watch)
            assert got[-1].value == 10_000 and got[-1].version == 10_001
            assert peak <= 101  # never more than max_buffer (+ the one being added)
            assert len(got) < 10_000
            versions = [u.version for u in got]
            assert versions == sorted(set(versions))  # still ordered, never repeated
            assert await session.get_variable("hot") == 10_000


async def test_deleting_a_watched_variable_ends_its_watch(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variable("temp", "integer", 1)
    watch = await watcher.watch_variable("temp")
    await writer.delete_variable("temp")
    got = [u async for u in watch]
    assert [(u.update_type, u.value, u.old_value) for u in got] == [
        ("initial", 1, None), ("deleted", None, 1)
    ]
    with pytest.raises(KeyError):
        await watcher.get_variable("temp")


# Guards a bug: a deletion (no new value) reached the user's filter, so `new > old` raised
# TypeError and the watch ended with it instead of with the deletion.
async def test_a_deletion_passes_the_watch_filters_and_ends_the_watch(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variable("temp", "integer", 1)
    one = await watcher.watch_variable("temp", filter_fn=lambda old, new: new > old)
    many = await watcher.watch_variables(["temp"], filter_fn=lambda name, old, new: new > old)
    await writer.set_variable("temp", 0)  # filtered out by both
    await writer.delete_variable("temp")
    for watch in (one, many):
        got = [(u.update_type, u.value, u.old_value) async for u in watch]
        assert got == [("initial", 1, None), ("deleted", None, 0)]


async def test_observing_an_unknown_variable_errors(session: SessionContext) -> None:
    errors: list[Exception] = []
    session.observe("ghost").subscribe(on_error=errors.append)  # type: ignore[arg-type]
    await session.sync()
    assert len(errors) == 1 and isinstance(errors[0], KeyError)
    assert "'ghost'" in str(errors[0])
    watch = session.watch_variable("ghost")
    with pytest.raises(KeyError, match="ghost"):
        async for _ in watch:
            pass


async def test_observer_exception_does_not_break_others(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variable("x", "integer", 0)

    def broken(update: VariableUpdate) -> None:
        raise RuntimeError("user bug")

    good: list[int] = []
    watcher.observe("x").subscribe(broken)
    watcher.observe("x").subscribe(lambda u: good.append(u.value))
    await settle(watcher)
    await writer.set_variable("x", 1)
    await settle(watcher)
    assert good == [0, 1]


# ------------------------------------------------------------------- teardown


async def test_cancel_watch_and_cancel_scope_leave_nothing_behind(
    two: tuple[SessionContext, SessionContext], server: EmbeddedServer
) -> None:
    writer, watcher = two
    await writer.register_variable("v", "integer", 0)
    hub = watcher._hub
    assert hub is not None
    watch = await watcher.watch_variable("v")
    got: list[int] = []

    async def consume() -> None:
        async for update in watch:
            got.append(update.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await settle(watcher)
        assert watcher.cancel_watch(watch) is True
    assert got == [0]  # the consumer finished on its own
    assert watcher.cancel_watch(watch) is False
    assert hub.wire_subscribes == 0 and watcher._watches == {}

    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            scoped = watcher.watch_variable("v", include_initial=False)
            nursery.start_soon(lambda: scoped.__anext__())
            await settle(watcher)
            nursery.cancel_scope.cancel()
    assert scoped.closed
    assert hub.wire_subscribes == 0 and watcher._watches == {}
    await watcher.sync()
    watched = server.call(
        lambda: [s.watched for s in server.service.subscribers if s.session_id
                 == watcher.session_id]
    )
    assert watched == [set()]


async def test_cancel_watch_of_a_cancel_scope_ends_the_watch_iterated_in_it(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variable("v", "integer", 0)
    seen: list[int] = []
    scopes: list[trio.CancelScope] = []
    watch = await watcher.watch_variable("v")

    async def consume(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async for update in watch:
                seen.append(update.value)

    async with trio.open_nursery() as nursery:
        scopes.append(await nursery.start(consume))
        await writer.set_variable("v", 1)
        await settle(watcher)
        assert watcher.cancel_watch(scopes[0]) is True
    assert seen == [0, 1] and watch.closed and watcher._watches == {}
    assert watcher.cancel_watch(scopes[0]) is False  # cancelled already


async def test_a_watch_run_by_a_trio_task_returns_its_last_update(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variable("v", "integer", 0)
    results: list[Any] = []
    watch = await watcher.watch_variable("v")

    async def run() -> None:
        results.append(await watch.run())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await writer.set_variable("v", 7)
        await settle(watcher)
        assert watcher.cancel_watch(watch) is True
    assert [(u.value, u.update_type) for u in results] == [(7, "value_change")]


async def test_closing_the_session_ends_watches_and_the_stream(server: EmbeddedServer) -> None:
    async with dspex_rx.connect(server.target) as writer:
        await writer.register_variable("z", "integer", 0)
        watcher = await dspex_rx.SessionContext(
            writer.session_id, server.target, token=writer.token
        ).initialize()
        watch = await watcher.watch_variable("z")
        completed: list[bool] = []
        watcher.observe("z").subscribe(on_completed=lambda: completed.append(True))
        await watcher.sync()
        before = server.call(lambda: len(server.service.subscribers))
        await watcher.close()
        assert completed == [True]
        assert [u.value async for u in watch] == [0]  # buffered, then the end
        with trio.fail_after(5):
            while server.call(lambda: len(server.service.subscribers)) != before - 1:
                await trio.sleep(0.01)


# ---------------------------------------------------------------------- cache


async def test_watched_variable_reads_are_local_and_never_older_than_the_stream(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variable("w", "integer", 0)
    watch = await watcher.watch_variable("w")
    for i in range(1, 21):
        await writer.set_variable("w", i)
        await watcher.sync()
        assert await watcher.get_variable("w") == i
    stats = await watcher.get_variable_stats("w")
    assert stats["cache_hits"] == 20 and stats["cache_misses"] == 0
    assert await watcher.get_variable("w", bypass_cache=True) == 20
    stats = await watcher.get_variable_stats("w")
    assert (stats["read_count"], stats["cache_misses"]) == (21, 1)
    watch.cancel()


async def test_own_write_updates_own_entry_and_ttl_applies_unwatched(
    session: SessionContext, mock_clock: trio.testing.MockClock
) -> None:
    session.set_cache_config(ttl=5.0)
    await session.register_variable("u", "integer", 0)
    await session.set_variable("u", 3)
    assert await session.get_variable("u") == 3  # from the write's answer: a hit
    mock_clock.jump(4.999)
    assert await session.get_variable("u") == 3
    mock_clock.jump(0.001)  # 5 s after the write: expired
    assert await session.get_variable("u") == 3
    stats = await session.get_variable_stats("u")
    assert (stats["cache_hits"], stats["cache_misses"], stats["write_count"]) == (2, 1, 1)
    assert session.get_cache_info()["expired_count"] == 1


@pytest.mark.parametrize(
    # after a, b, c are read once and then a, a, b, a: c is least recent (lru) and least
    # used (lfu); a was cached first (fifo)
    ("policy", "evicted"), [("lru", "c"), ("lfu", "c"), ("fifo", "a")]
)
async def test_eviction_policies_through_the_session(
    session: SessionContext, policy: str, evicted: str
) -> None:
    await session.register_variables(
        [{"name": n, "type": "integer", "initial_value": 1} for n in ("a", "b", "c", "d")]
    )
    session.set_cache_config(ttl=None, max_size=3, eviction_policy=policy)
    assert await session.cache.invalidate_pattern(".*", "reset") == 3  # 4 registered, 1 evicted
    base = session.get_cache_info()
    for name in ("a", "b", "c"):
        await session.get_variable(name)  # three misses fill the cache
    for name in ("a", "a", "b", "a"):
        await session.get_variable(name)  # hits: a x3, b x1; c untouched
    await session.get_variable("d")  # a miss that evicts one
    info = session.get_cache_info()
    assert info["eviction_count"] - base["eviction_count"] == 1
    assert (info["hits"] - base["hits"], info["misses"] - base["misses"]) == (4, 4)
    hub = session._hub
    assert hub is not None
    names = {hub.by_id[key].name for key in session.cache.keys()}  # noqa: SIM118
    assert names == {"a", "b", "c", "d"} - {evicted}


async def test_get_batch_with_the_sessions_fetcher(session: SessionContext) -> None:
    await session.register_variables(
        [{"name": n, "type": "integer", "initial_value": i} for i, n in enumerate("xyz")]
    )
    calls: list[list[str]] = []

    async def fetch(ids: list[str]) -> dict[str, Any]:
        calls.append(ids)
        return await session.fetch_missing(ids)

    cache = dspex_rx.VariableCache()
    assert await cache.get_batch(["x", "y", "nope"], fetch) == {"x": 0, "y": 1}
    assert await cache.get_batch(["x", "y", "z"], fetch) == {"x": 0, "y": 1, "z": 2}
    assert calls == [["x", "y", "nope"], ["nope", "z"]] or calls == [["x", "y", "nope"], ["z"]]


async def test_observable_from_reactivex_combinators(
    two: tuple[SessionContext, SessionContext],
) -> None:
    writer, watcher = two
    await writer.register_variables(
        [{"name": "base", "type": "float", "initial_value": 1.0},
         {"name": "mod", "type": "float", "initial_value": 2.0}]
    )
    products: list[float] = []
    reactivex.combine_latest(
        watcher.observe("base").pipe(ops.map(lambda u: u.value)),
        watcher.observe("mod").pipe(ops.map(lambda u: u.value)),
    ).subscribe(lambda pair: products.append(pair[0] * pair[1]))
    await settle(watcher)
    await writer.set_variable("base", 3.0)
    await settle(watcher)
    assert products == [2.0, 6.0]


async def test_get_variables_serves_hits_locally_and_fetches_misses_once(
    session: SessionContext,
) -> None:
    await session.register_variables(
        [{"name": n, "type": "integer", "initial_value": i} for i, n in enumerate("pqr")]
    )
    await session.cache.invalidate_pattern(".*", "reset")
    assert await session.get_variable("p") == 0  # miss, now cached
    before = await session.get_variable_stats()
    assert await session.get_variables(["p", "q", "r", "p"]) == {"p": 0, "q": 1, "r": 2}
    after = await session.get_variable_stats()
    assert after["cache_hits"] - before["cache_hits"] == 1  # p, once per distinct name
    assert after["cache_misses"] - before["cache_misses"] == 2  # q and r, one RPC
    assert await session.get_variables(["q", "r"]) == {"q": 1, "r": 2}
    assert (await session.get_variable_stats())["cache_hits"] - after["cache_hits"] == 2


async def test_watch_survives_a_server_restart_and_replays_what_it_missed() -> None:
    # The stream breaks (server stopped), changes are committed meanwhile, and a server on
    # the same port comes back with the same store: the watch resumes from the last
    # revision it saw and gets every version exactly once, in order.
    store = MemoryStore()
    first = EmbeddedServer(store=store)
    first.start()
    port = int(first.target.rsplit(":", 1)[1])
    second = EmbeddedServer(port=port, store=store)
    try:
        async with dspex_rx.connect(first.target, ttl_seconds=600) as session:
            await session.register_variable("x", "integer", 0)
            watch = await session.watch_variable("x")
            await session.set_variable("x", 1)
            await settle(session)
            await trio.to_thread.run_sync(first.stop)
            for value in (2, 3, 4):  # no server loop runs now: the store is ours alone
                store.set(session.session_id, "x", value, actor="offline")
            await trio.to_thread.run_sync(second.start)
            seen: list[tuple[int, int, str]] = []
            with trio.fail_after(30):  # a bound, not a timing assertion
                async for update in watch:
                    seen.append((update.version, update.value, update.update_type))
                    if update.value == 4:
                        break
                await session.set_variable("x", 5)
                async for update in watch:
                    seen.append((update.version, update.value, update.update_type))
                    break
            assert [(v, x) for v, x, _ in seen] == [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4),
                                                    (6, 5)]
            assert seen[0][2] == "initial" and {t for _, _, t in seen[1:]} == {"value_change"}
            assert session._hub is not None and session._hub.reconnects >= 1
            assert await session.get_variable("x") == 5
    finally:
        await trio.to_thread.run_sync(second.stop)
        await trio.to_thread.run_sync(first.stop)


async def test_updates_carry_aware_utc_datetimes_and_stats_are_awaitable(
    two: tuple[SessionContext, SessionContext],
) -> None:
    # Issue #12: VariableUpdate.timestamp was POSIX seconds (the spec: datetime), and
    # get_variable_stats was synchronous (the spec awaits it).
    import datetime

    writer, watcher = two
    await writer.register_variable("w", "integer", 0)
    watch = watcher.watch_variable("w")
    with trio.fail_after(5):
        initial = await watch.__anext__()
        await writer.set_variable("w", 1)
        changed = await watch.__anext__()
    for update in (initial, changed):
        assert isinstance(update.timestamp, datetime.datetime)
        assert update.timestamp.tzinfo is datetime.UTC
    assert changed.timestamp >= initial.timestamp and changed.value == 1
    written = (await writer.get_variables(["w"], include_metadata=True))["w"]["updated_at"]
    assert changed.timestamp == written  # the write's own time, not the delivery's
    stats = await watcher.get_variable_stats("w")
    assert stats["read_count"] == 0 and stats["write_count"] == 0
    assert (await writer.get_variable_stats())["write_count"] == 1
    with pytest.raises(KeyError, match="has not used it"):
        await writer.get_variable_stats("never_used")
    watch.cancel()


# ----------------- observing through the hub: ids, early disposal, invalidation, throttle


def watched_on_server(server: EmbeddedServer, session_id: str) -> list[set[str]]:
    return server.call(
        lambda: [set(s.watched) for s in server.service.subscribers if s.session_id == session_id]
    )


# Guards: observing by id on a connection that never saw the variable made a second actor.
async def test_observe_by_id_on_a_connection_that_never_saw_the_variable_gets_every_update(
    two: tuple[SessionContext, SessionContext],
) -> None:
    # learn() only adopts a provisional actor keyed by the *name*; one keyed by the id is
    # orphaned and the ack creates a second actor that receives every event.
    writer, watcher = two
    var_id = await writer.register_variable("byid", "integer", 0)
    watch = await watcher.watch_variable(var_id)
    await writer.set_variable("byid", 1)
    await settle(watcher)
    assert [(u.update_type, u.value) for u in drain(watch)] == [
        ("initial", 0), ("value_change", 1)
    ]


# Guards: an observer disposed before its subscribe was acked left the server streaming it.
async def test_disposing_before_the_subscribe_ack_undoes_the_wire_subscription(
    two: tuple[SessionContext, SessionContext], server: EmbeddedServer
) -> None:
    # detach() clears actor.wire and request_unsubscribe() returns early for an unresolved
    # actor; the ack then sees wire=False and never undoes the subscription.
    writer, watcher = two
    await writer.register_variable("early", "integer", 0)
    watcher.observe("early").subscribe(lambda u: None).dispose()
    await settle(watcher)
    assert watched_on_server(server, watcher.session_id) == [set()]
    hub = watcher._hub
    assert hub is not None and hub.wire_subscribes == 0


# Guards: after a cache invalidation a new observer of a live variable waited for a baseline.
async def test_a_new_observer_of_a_live_variable_after_cache_invalidation_gets_updates(
    two: tuple[SessionContext, SessionContext],
) -> None:
    # attach(): live but no entry -> no baseline from the cache, and wire is already True
    # so no new Subscribe (and no initial) is sent: the observer waits for a baseline forever.
    writer, watcher = two
    await writer.register_variable("inv", "integer", 0)
    first = await watcher.watch_variable("inv")
    await watcher.cache.invalidate_pattern(".*", "config reloaded")
    second = await watcher.watch_variable("inv")
    await writer.set_variable("inv", 1)
    await settle(watcher)
    assert [u.value for u in drain(first)] == [0, 1]
    assert [u.value for u in drain(second)] == [0, 1]


# Guards: the hub subscribed a re-registered name by its stale id; the watch got KeyError.
async def test_observe_by_name_after_the_variable_was_re_registered_watches_the_new_one(
    two: tuple[SessionContext, SessionContext],
) -> None:
    # The hub maps the name to the stale id it learned earlier and subscribes by that id.
    writer, watcher = two
    await writer.register_variable("reborn", "integer", 1)
    assert await watcher.get_variable("reborn") == 1
    await writer.delete_variable("reborn")
    await writer.register_variable("reborn", "integer", 2)
    watch = await watcher.watch_variable("reborn")
    await settle(watcher)
    assert watch._error is None, f"watch by name failed: {watch._error!r}"
    assert [(u.update_type, u.value) for u in drain(watch)] == [("initial", 2)]


# Guards: the initial value opened the throttle window and held the first change back.
async def test_throttle_with_include_initial_emits_the_first_change_at_once(
    two: tuple[SessionContext, SessionContext], mock_clock: trio.testing.MockClock
) -> None:
    # Issue #3: "throttle_ms emits the first change at once". The initial value opens the
    # throttle window, so the first real change is held until the window ends.
    writer, watcher = two
    await writer.register_variable("p", "float", 0.0)
    watch = await watcher.watch_variable("p", include_initial=True, throttle_ms=1000)
    await settle(watcher)
    assert [u.value for u in drain(watch)] == [0.0]
    mock_clock.jump(0.25)
    await writer.set_variable("p", 1.0)
    await settle(watcher)
    assert [u.value for u in drain(watch)] == [1.0]
