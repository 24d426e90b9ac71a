"""Regression tests from a second review of the watch stream and the client: each asserts
what DESIGN.md and the issues promise, and each name says the bug it guards against."""

from __future__ import annotations

import contextlib
import math

import grpc
import numpy as np
import pytest
import trio
import trio.testing
from helpers import drain, settle

import dspex_rx
from dspex_rx import SessionContext
from dspex_rx.client.transport import Transport
from dspex_rx.errors import SessionNotFoundError
from dspex_rx.server import SERVICE_NAME, EmbeddedServer
from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.v1 import variables_pb2 as pb
from dspex_rx.wire.security import token_metadata


def watched_on_server(server: EmbeddedServer, session_id: str) -> list[set[str]]:
    return server.call(
        lambda: [set(s.watched) for s in server.service.subscribers if s.session_id == session_id]
    )


# ------------------------------------------------------------ actors / hub (client)


async def test_observe_by_id_on_a_connection_that_never_saw_the_variable_gets_nothing(
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


async def test_disposing_before_the_subscribe_ack_leaks_the_wire_subscription(
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


async def test_new_observer_of_a_live_variable_after_cache_invalidation_never_gets_updates(
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


async def test_observe_by_name_after_the_variable_was_re_registered_raises_key_error(
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


# ------------------------------------------------- server fanout / conflation


async def test_conflation_right_after_a_subscribe_swallows_the_initial_and_starves_the_watch(
) -> None:
    # Commits that land after a Subscribe was queued but before the stream handler drains
    # (a busy or flow-controlled stream) are conflated with the initial frame into one
    # value_change. The client waits for an initial/resync baseline that never comes, so
    # this observer never sees anything: the last value is lost, not just the middle ones.
    with EmbeddedServer(max_pending_events=2) as embedded:
        service = embedded.service
        original = service._subscribe

        def subscribe_then_commits(session_id, subscriber, request):  # type: ignore[no-untyped-def]
            original(session_id, subscriber, request)
            for i in range(1, 4):
                embedded.store.set(session_id, "hot", i, actor="burst")

        async with dspex_rx.connect(embedded.target) as writer:
            await writer.register_variable("hot", "integer", 0)
            async with dspex_rx.connect(embedded.target, session_id=writer.session_id,
                                        token=writer.token) as watcher:
                service._subscribe = subscribe_then_commits  # type: ignore[method-assign]
                watch = await watcher.watch_variable("hot")
                service._subscribe = original  # type: ignore[method-assign]
                await settle(watcher)
                got = drain(watch)
                assert got and got[-1].value == 3, got
                await writer.set_variable("hot", 4)
                await settle(watcher)
                assert [u.value for u in drain(watch)] == [4]


async def test_an_invalid_ref_kills_the_whole_multiplexed_stream(
    two: tuple[SessionContext, SessionContext],
) -> None:
    # _subscribe -> get_many only catches VariableNotFoundError; the InvalidValueError for
    # "" escapes the reader task and the server aborts the stream every watch shares.
    writer, watcher = two
    await writer.register_variable("ok", "integer", 0)
    watch = await watcher.watch_variable("ok")
    errors: list[Exception] = []
    watcher.observe("").subscribe(on_error=errors.append)  # type: ignore[arg-type]
    await settle(watcher)
    assert len(errors) == 1 and isinstance(errors[0], KeyError | ValueError), errors
    assert not watch.closed, f"an unrelated watch died: {watch._error!r}"
    await writer.set_variable("ok", 1)
    await settle(watcher)
    assert [u.value for u in drain(watch)] == [0, 1]


async def test_one_large_tensor_update_kills_the_whole_watch_stream(
    two: tuple[SessionContext, SessionContext],
) -> None:
    # A 33 MiB tensor is a legal set (request < 64 MiB), but its event carries value AND
    # old_value, and _messages packs up to 256 frames per ServerMessage with no byte
    # budget: the message exceeds grpc.max_send_message_length and the stream is killed
    # with RESOURCE_EXHAUSTED, taking every other watch of the connection with it.
    writer, watcher = two
    n = 33 * 1024 * 1024 // 8
    await writer.register_variable("weights", "tensor", np.zeros(n))
    await writer.register_variable("small", "integer", 0)
    small = await watcher.watch_variable("small", include_initial=False)
    big = await watcher.watch_variable("weights", include_initial=False)
    await writer.set_variable("weights", np.ones(n))
    await writer.set_variable("small", 1)
    with trio.move_on_after(10):  # hang guard only: sync() never returns once the stream died
        await settle(watcher)
    assert not small.closed and not big.closed, f"stream died: {small._error!r}"[:400]
    assert [u.value for u in drain(small)] == [1]
    assert [float(u.value[0]) for u in drain(big)] == [1.0]


async def test_negative_progress_interval_makes_the_server_spin_sending_progress_notes(
    server: EmbeddedServer, session: SessionContext
) -> None:
    # interval = -1 -> asyncio.wait_for(..., -1) times out at once, every loop: a busy loop
    # flooding progress notes. The server must refuse the stream instead. (Only `open` is
    # written: a later write would race the refusal, and grpc then reports INTERNAL.)
    transport = Transport(server.target)
    await transport.open()
    try:
        stream = await transport.open_stream(
            f"/{SERVICE_NAME}/Session", spb.ServerMessage, metadata=token_metadata(session.token)
        )
        await stream.send(spb.ClientMessage(open=spb.OpenStream(
            session_id=session.session_id, progress_interval_seconds=-1.0)))
        progress = 0
        with pytest.raises(grpc.aio.AioRpcError) as refused, trio.fail_after(10):
            while (batch := await stream.receive_batch()) is not None:
                progress += [m.WhichOneof("control") for m in batch].count("progress")
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "progress_interval_seconds" in (refused.value.details() or "")
        assert progress == 0
        await stream.close()
    finally:
        await transport.close()


async def test_initialize_session_accepts_a_nan_ttl_and_the_client_never_expires(
    server: EmbeddedServer,
) -> None:
    # A NaN ttl once slipped past `not ttl or ttl <= 0`; `now - last_seen > NaN` is never
    # true, so the session could never expire. It must be refused.
    transport = Transport(server.target)
    await transport.open()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await transport.unary(
                f"/{SERVICE_NAME}/InitializeSession",
                pb.InitializeSessionRequest(ttl_seconds=math.nan),
                pb.InitializeSessionResponse,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ttl" in (refused.value.details() or "")
    finally:
        await transport.close()


# --------------------------------------------------- stream failure / shutdown


async def test_watch_stream_failure_surfaces_a_raw_exception_group_not_session_not_found(
    server: EmbeddedServer,
) -> None:
    # The server ends the stream with NOT_FOUND + kind session_not_found; the hub hands
    # observers the nursery's ExceptionGroup of a raw AioRpcError instead of the mapped error.
    async with dspex_rx.connect(server.target) as s:
        await s.register_variable("gone", "integer", 0)
        watch = await s.watch_variable("gone")
        sid, cid = s.session_id, s._client_id
        server.call(lambda: server.store.close_session(sid, cid))
        with trio.fail_after(10), pytest.raises(SessionNotFoundError):
            async for _ in watch:
                pass


async def test_sync_and_observe_hang_forever_once_the_watch_stream_has_failed(
    server: EmbeddedServer,
) -> None:
    # Once a failed stream left its outbox in place with no reader, later pings and
    # subscribes hung: they must fail fast or reach a new stream.
    async with dspex_rx.connect(server.target) as writer:  # noqa: SIM117 - needs writer's id
        async with dspex_rx.connect(server.target, session_id=writer.session_id,
                                    token=writer.token) as s:
            await writer.register_variable("x", "integer", 0)
            watch = await s.watch_variable("x")
            # the stream breaks (network blip / proxy reset), the session lives on
            server.call(lambda: [sub.on_commit(None) for sub in server.service.subscribers
                                 if sub.session_id == s.session_id])
            with trio.fail_after(10), contextlib.suppress(Exception):
                async for _ in watch:
                    pass
            errors: list[Exception] = []
            got: list[int] = []
            s.observe("x").subscribe(lambda u: got.append(u.value), errors.append)
            with trio.move_on_after(5) as guard, contextlib.suppress(Exception):
                await s.sync()
            assert not guard.cancelled_caught, "session.sync() hangs forever"
            assert got or errors, "a new observer gets neither values nor an error"


async def test_watched_entry_stays_pinned_and_stale_forever_after_the_stream_fails(
    two: tuple[SessionContext, SessionContext], server: EmbeddedServer,
    mock_clock: trio.testing.MockClock,
) -> None:
    # VariableActor.fail() drops `live` but never unpins the cache entry, so it is neither
    # pushed nor expired: get_variable serves the pre-failure value forever.
    writer, watcher = two
    watcher.set_cache_config(ttl=5.0)
    await writer.register_variable("cfg", "integer", 0)
    watch = await watcher.watch_variable("cfg")
    server.call(lambda: [sub.on_commit(None) for sub in server.service.subscribers
                         if sub.session_id == watcher.session_id])
    with trio.fail_after(10), contextlib.suppress(Exception):
        async for _ in watch:
            pass
    await writer.set_variable("cfg", 1)
    mock_clock.jump(60)  # far past the TTL
    assert await watcher.get_variable("cfg") == 1


async def test_close_leaves_a_concurrent_sync_waiting_forever(server: EmbeddedServer) -> None:
    # hub.close() neither sets the pending pong events nor fails them.
    s = await SessionContext(None, server.target).initialize()
    outcome: list[object] = []

    async def waiter(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await s.sync()
            outcome.append("returned")
        except Exception as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(waiter)
        await s.close()
        await trio.testing.wait_all_tasks_blocked()
        done = bool(outcome)
        nursery.cancel_scope.cancel()
    assert done, "a task in session.sync() (or `await watch_variable(...)`) never wakes up"


# ------------------------------------------------------------- API vs the issue


async def test_throttle_with_include_initial_delays_the_first_change_by_a_window(
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


async def test_session_cache_get_batch_with_fetch_missing_returns_cache_entries_not_values(
    session: SessionContext,
) -> None:
    # Issue #3: get_batch(var_ids, fetch_missing) with the session's own default loader.
    # fetch_missing already stored a CacheEntry under the id, so get_batch treats it as
    # "put by someone else" and returns the CacheEntry; hits return CacheEntry objects too.
    ids = await session.register_variables(
        [{"name": "bx", "type": "integer", "initial_value": 5},
         {"name": "by", "type": "integer", "initial_value": 6}]
    )
    await session.cache.invalidate_pattern(".*", "reset")
    got = await session.cache.get_batch([ids["bx"], ids["by"]], session.fetch_missing)
    assert got == {ids["bx"]: 5, ids["by"]: 6}
