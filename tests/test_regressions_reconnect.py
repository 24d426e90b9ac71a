"""Watch-stream reconnect/resume (actors.WatchHub) and the lease re-attach
(client.SessionContext._heartbeat/_reattach).

Regression tests: each asserts the promised behaviour, and its name says the bug it
guards against (all failed on the code as first reviewed). A wrapper around the
transport's streams breaks a stream at a chosen message (``FlakyStream``), so every
break is deterministic; backoff runs in virtual time (``mock_clock``). Real-time loops
are hang guards only.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio
import trio.testing
from helpers import drain, settle, unavailable, until

import dspex_rx
from dspex_rx.server import EmbeddedServer
from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.wire.security import token_metadata

# ---------------------------------------------------------------- harness


class FlakyStream:
    """A real ``transport.Stream`` that hands messages over one at a time and can break.

    ``fail_before(message)`` true: the stream fails (UNAVAILABLE) instead of delivering it.
    ``swallow``: incoming messages are lost (a connection dying unnoticed).
    ``kill()`` then ``fire()``: sends and receives block, then all fail at once.
    """

    def __init__(self, real: Any) -> None:
        self.real = real
        self.pending: deque[spb.ServerMessage] = deque()
        self.received: list[spb.ServerMessage] = []
        self.sent: list[spb.ClientMessage] = []
        self.fail_before: Callable[[spb.ServerMessage], bool] | None = None
        self.swallow = False
        self.failed = False
        self.dead: trio.Event | None = None
        self._scope: trio.CancelScope | None = None

    async def send(self, message: spb.ClientMessage) -> None:
        if self.dead is not None:
            await self.dead.wait()
            raise unavailable()
        if self.failed:
            raise unavailable()
        await self.real.send(message)
        self.sent.append(message)

    async def receive_batch(self) -> list[spb.ServerMessage] | None:
        while True:
            if self.dead is not None:
                await self.dead.wait()
                raise unavailable()
            if self.failed:
                raise unavailable()
            if self.pending:
                message = self.pending.popleft()
                if self.fail_before is not None and self.fail_before(message):
                    self.failed = True
                    raise unavailable()
                if self.swallow:
                    continue
                return [message]
            with trio.CancelScope() as self._scope:
                batch = await self.real.receive_batch()
                if batch is None:
                    return None
                self.received.extend(batch)
                self.pending.extend(batch)
            self._scope = None

    def _wake(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    def fail(self) -> None:
        self.failed = True
        self._wake()

    def kill(self) -> None:
        self.dead = trio.Event()
        self._wake()

    def fire(self) -> None:
        assert self.dead is not None
        self.dead.set()

    async def close(self) -> None:
        await self.real.close()


class Flaky:
    """Wraps every stream the session's transport opens; ``plans[i]`` configures stream i."""

    def __init__(self, session: dspex_rx.SessionContext) -> None:
        transport = session._transport
        self._open = transport.open_stream
        self.streams: list[FlakyStream] = []
        self.plans: dict[int, Callable[[FlakyStream], None]] = {}
        # The call metadata each open sent (the session token must ride on every one).
        self.metadata: list[tuple[tuple[str, str], ...]] = []
        transport.open_stream = self.open_stream

    async def open_stream(
        self, path: str, response_type: Any, metadata: Any = ()
    ) -> FlakyStream:
        self.metadata.append(tuple(metadata))
        stream = FlakyStream(await self._open(path, response_type, metadata=metadata))
        plan = self.plans.get(len(self.streams))
        if plan is not None:
            plan(stream)
        self.streams.append(stream)
        return stream


def _hub(session: dspex_rx.SessionContext) -> Any:
    assert session._hub is not None
    return session._hub


async def _reconnect(
    session: dspex_rx.SessionContext, clock: trio.testing.MockClock, attempt: int, wait: float = 2.0
) -> None:
    """Wait until the hub is in its backoff after break number ``attempt``, then let it
    reconnect (virtual time)."""
    hub = _hub(session)
    await until(lambda: hub.reconnects >= attempt, f"reconnect attempt {attempt} began")
    clock.jump(wait)


def _versions(watch: dspex_rx.Watch) -> list[tuple[int, Any, str]]:
    return [(u.version, u.value, u.update_type) for u in drain(watch)]


# ------------------------------------------------------------------ tests


async def test_a_second_break_before_the_resume_is_acked_does_not_skip_versions(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
) -> None:
    # The resume subscribe (from_revision=R) sits in _pending without its from_revision;
    # if the next stream breaks before its ack, it is re-sent as a plain include_initial
    # subscribe: the watcher jumps to the current value and the versions between are lost.
    writer, watcher = two
    flaky = Flaky(watcher)
    await writer.register_variable("x", "integer", 0)
    watch = await watcher.watch_variable("x")
    await writer.set_variable("x", 1)
    await settle(watcher)
    assert _versions(watch) == [(1, 0, "initial"), (2, 1, "value_change")]

    flaky.streams[0].fail()
    await until(lambda: _hub(watcher).reconnects == 1, "first break noticed")
    await writer.set_variable("x", 2)
    await writer.set_variable("x", 3)
    # Stream 2 dies right after "opened", before the resume's ack.
    flaky.plans[1] = lambda s: setattr(
        s, "fail_before", lambda m: m.WhichOneof("control") != "opened"
    )
    mock_clock.jump(2.0)
    await _reconnect(watcher, mock_clock, 2)
    await until(lambda: len(flaky.streams) == 3, "third stream opened")
    await settle(watcher)
    assert _versions(watch) == [(3, 2, "value_change"), (4, 3, "value_change")]
    # Every reopen presented the session token (the server refuses a stream without it).
    assert flaky.metadata == [token_metadata(watcher.token)] * 3


async def test_opened_on_a_resumed_stream_does_not_move_the_resume_point_past_the_replay(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
) -> None:
    # "opened" on the new stream sets hub.revision to the server's current revision before
    # the replay arrives. A break after the ack but before the replay frames: the next
    # resume asks from that revision, so the missed changes never come; the live cache
    # entry stays stale and reads return it.
    writer, watcher = two
    flaky = Flaky(watcher)
    await writer.register_variable("x", "integer", 0)
    watch = await watcher.watch_variable("x")
    await writer.set_variable("x", 1)
    await settle(watcher)
    drain(watch)

    flaky.streams[0].fail()
    await until(lambda: _hub(watcher).reconnects == 1, "first break noticed")
    await writer.set_variable("x", 2)
    await writer.set_variable("x", 3)
    # Stream 2 delivers "opened" and the Subscribed ack, then dies before the replay.
    flaky.plans[1] = lambda s: setattr(s, "fail_before", lambda m: len(m.frames) > 0)
    mock_clock.jump(2.0)
    await _reconnect(watcher, mock_clock, 2)
    await until(lambda: len(flaky.streams) == 3, "third stream opened")
    await settle(watcher)
    assert _versions(watch) == [(3, 2, "value_change"), (4, 3, "value_change")]
    assert await watcher.get_variable("x") == 3


async def test_an_unsubscribe_lost_with_the_stream_does_not_leave_a_server_subscription(
    server: EmbeddedServer,
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
) -> None:
    # Subscribe y and unsubscribe it; the server does both but the acks are lost with the
    # stream. The subscribe stays in _pending (detach does not drop it), is re-sent on the
    # new stream, and nothing undoes it: the server streams y to nobody from then on.
    writer, watcher = two
    flaky = Flaky(watcher)
    await writer.register_variable("x", "integer", 0)
    await writer.register_variable("y", "integer", 0)
    watch = await watcher.watch_variable("x")
    await settle(watcher)
    first = flaky.streams[0]
    first.swallow = True  # what the server says from now on is lost in flight

    wy = watcher.watch_variable("y")
    await until(lambda: any(m.HasField("subscribe") for m in first.sent), "y subscribe sent")
    wy.cancel()
    await until(
        lambda: any(m.HasField("unsubscribed") for m in first.received),
        "the server processed the unsubscribe",
    )
    first.fail()
    await _reconnect(watcher, mock_clock, 1)
    await until(lambda: len(flaky.streams) == 2, "second stream opened")
    await settle(watcher)
    sid = watcher.session_id

    def watched() -> set[str]:
        out: set[str] = set()
        for s in server.service.subscribers:
            if s.session_id == sid:
                out |= s.watched
        return out

    assert _hub(watcher).wire_subscribes == 1
    assert {i.split("_")[1] for i in server.call(watched)} == {"x"}
    watch.cancel()


async def test_a_variable_deleted_during_a_break_ends_the_watch_with_the_missed_events(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
) -> None:
    # The change and the delete are in the server's log, but the resume subscribe names a
    # variable that no longer exists, so the server refuses it and the watch fails with
    # KeyError: the last value and the "deleted" event are silently skipped.
    writer, watcher = two
    flaky = Flaky(watcher)
    await writer.register_variable("x", "integer", 0)
    watch = await watcher.watch_variable("x")
    await settle(watcher)
    drain(watch)

    flaky.streams[0].fail()
    await until(lambda: _hub(watcher).reconnects == 1, "break noticed")
    await writer.set_variable("x", 5)
    await writer.delete_variable("x")
    mock_clock.jump(2.0)
    await until(lambda: watch.closed, "the watch ended")
    updates = drain(watch)
    assert watch._error is None, f"watch failed: {watch._error!r}"
    assert [(u.value, u.update_type) for u in updates][:1] == [(5, "value_change")]
    assert updates[-1].update_type == "deleted"


async def test_a_resumed_multi_variable_watch_keeps_commit_order_and_atomic_batches(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
) -> None:
    # Each live variable is resumed by its own Subscribe, so the server replays all of
    # x's missed commits, then all of y's: an atomic batch of x and y is split in two
    # frames with other commits between, and updates arrive out of revision order.
    writer, watcher = two
    flaky = Flaky(watcher)
    await writer.register_variable("x", "integer", 0)
    await writer.register_variable("y", "integer", 0)
    watch = watcher.watch_variables(["x", "y"])
    await settle(watcher)
    drain(watch)

    flaky.streams[0].fail()
    await until(lambda: _hub(watcher).reconnects == 1, "break noticed")
    assert all(r is True for r in (await writer.update_variables({"x": 1, "y": 1})).values())
    await writer.set_variable("x", 2)
    await writer.set_variable("y", 2)
    mock_clock.jump(2.0)
    await until(lambda: len(flaky.streams) == 2, "second stream opened")
    await settle(watcher)
    got = [(u.name, u.value, u.revision) for u in drain(watch)]
    assert len(got) == 4
    assert [r for _, _, r in got] == sorted(r for _, _, r in got), got


async def test_send_and_receive_failing_together_still_reconnects(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
) -> None:
    # When the connection dies while the sender is writing, the sender and the dispatcher
    # both raise UNAVAILABLE; the nursery reports a group of two, _unwrap only opens
    # groups of one, _retryable says no, and every watch fails instead of resuming.
    writer, watcher = two
    flaky = Flaky(watcher)
    await writer.register_variable("x", "integer", 0)
    await writer.register_variable("y", "integer", 0)
    watch = await watcher.watch_variable("x")
    await settle(watcher)
    drain(watch)

    first = flaky.streams[0]
    first.kill()
    watcher.watch_variable("y")  # the sender is now blocked writing this subscribe
    await trio.testing.wait_all_tasks_blocked()
    first.fire()
    await trio.testing.wait_all_tasks_blocked()
    hub = _hub(watcher)
    assert hub._failure is None, f"the watches failed: {hub._failure!r}"
    assert not watch.closed
    await _reconnect(watcher, mock_clock, 1)
    await until(lambda: len(flaky.streams) == 2, "second stream opened")
    await writer.set_variable("x", 1)
    await settle(watcher)
    assert [(v, x) for v, x, _ in _versions(watch)] == [(2, 1)]


async def test_a_failed_reattach_does_not_kill_the_session_services(
    server: EmbeddedServer, mock_clock: trio.testing.MockClock
) -> None:
    # _reattach runs inside the `except SessionNotFoundError` clause, so an error it raises
    # (a network blip on InitializeSession) is not caught by the sibling `except` below
    # it: it leaves _heartbeat and takes down the services nursery, i.e. the heartbeat,
    # the watch stream and the scheduler. Nothing reports it to the user.
    async with (
        dspex_rx.connect(server.target, ttl_seconds=30.0) as a,
        dspex_rx.connect(
            server.target, session_id=a.session_id, token=a.token, ttl_seconds=30.0
        ) as b,
    ):
        await b.register_variable("kept", "integer", 7)
        real_call = a._call
        blips = [True]

        async def call(
            method: str, request: Any, response_type: Any, *args: Any, **kwargs: Any
        ) -> Any:
            if method == "InitializeSession" and blips:
                blips.pop()
                raise unavailable()
            return await real_call(method, request, response_type, *args, **kwargs)

        a._call = call  # type: ignore[method-assign]
        sid, old = a.session_id, a._client_id

        def expire() -> None:
            server.store.session(sid).clients[old].last_seen = -1e12
            # b keeps the session. (The server is shared: other tests' idle sessions
            # may expire here too, so only this one's fate is asserted.)
            assert sid not in server.store.expire()
            assert old not in server.store.session(sid).clients

        server.call(expire)
        deadline = time.monotonic() + 10  # hang guard
        while a.reattached == 0:
            assert time.monotonic() < deadline, (
                f"never re-attached; services task ended: {a._services_done.is_set()}"
            )
            mock_clock.jump(a.ttl_seconds / 3)
            for _ in range(20):
                await trio.sleep(0)
            await trio.to_thread.run_sync(lambda: None)
        assert not a._services_done.is_set()


async def test_backoff_starts_again_after_a_successful_reconnect(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
) -> None:
    # `failures` is never reset once a stream is healthy again, so each new, unrelated
    # break waits longer; from the sixth on every blip costs the full 2 s (documented:
    # 50 ms doubling to 2 s per outage).
    writer, watcher = two
    flaky = Flaky(watcher)
    await writer.register_variable("x", "integer", 0)
    watch = await watcher.watch_variable("x")
    await settle(watcher)
    for incident in range(1, 7):
        flaky.streams[-1].fail()
        opened = len(flaky.streams)
        await until(lambda n=incident: _hub(watcher).reconnects == n, f"break {incident}")
        mock_clock.jump(0.1)  # first step of the backoff
        await until(
            lambda n=opened: len(flaky.streams) == n + 1,
            f"reconnected within 0.1 s after break {incident}",
            guard=3.0,
        )
        await settle(watcher)
    assert not watch.closed


async def test_a_stream_that_dies_after_every_open_gives_up_after_the_timeout(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
) -> None:
    # Any first message (the server's immediate "opened") marks the stream healthy and
    # resets the 30 s deadline, so a stream that opens and then fails every time (a
    # poison subscription the server crashes on with UNKNOWN, a bad proxy) is retried
    # forever: watchers neither get data nor an error, and sync() hangs.
    writer, watcher = two
    flaky = Flaky(watcher)
    await writer.register_variable("x", "integer", 0)
    watch = await watcher.watch_variable("x")
    await settle(watcher)
    for i in range(1, 40):
        flaky.plans[i] = lambda s: setattr(
            s, "fail_before", lambda m: m.WhichOneof("control") != "opened"
        )
    flaky.streams[0].fail()
    hub = _hub(watcher)
    for attempt in range(1, 30):  # 29 attempts, 2 s apart: 58 s of virtual time
        if watch.closed:
            break
        await until(lambda n=attempt: hub.reconnects >= n or watch.closed, f"attempt {attempt}")
        mock_clock.jump(2.0)
    assert watch.closed and watch._error is not None, (
        f"still reconnecting after {hub.reconnects} attempts"
    )


def _carries_events(message: spb.ServerMessage) -> bool:
    return any(frame.events for frame in message.frames)


async def _reopen(
    session: dspex_rx.SessionContext, flaky: Flaky, clock: trio.testing.MockClock
) -> None:
    """After the first break, move virtual time on until the second stream is open (the
    backoff's sleep may start after any single jump)."""
    await until(lambda: _hub(session).reconnects >= 1, "the break was noticed")
    deadline = time.monotonic() + 10  # a hang guard, not a timing assertion
    while len(flaky.streams) < 2:
        assert time.monotonic() < deadline, "the stream was never reopened"
        clock.jump(0.5)
        await trio.sleep(0)
        await trio.to_thread.run_sync(lambda: None)


async def test_a_break_between_the_ack_and_the_initial_values_still_delivers_them(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
) -> None:
    # The server acks a subscribe, then sends the initial values in a later message. A
    # break in between left the subscription acked (not pending) and its actors neither
    # live nor with a baseline, so the resume skipped them: the watch never got a value.
    writer, watcher = two
    await writer.register_variable("x", "integer", 5)
    await writer.register_variable("y", "integer", 6)
    flaky = Flaky(watcher)
    flaky.plans[0] = lambda s: setattr(s, "fail_before", _carries_events)
    watch = watcher.watch_variables(["x", "y"])
    await _reopen(watcher, flaky, mock_clock)  # (the watch waits for the initial values)
    async with watch:
        await settle(watcher)
        got = sorted((u.name, u.value, u.update_type) for u in drain(watch))
        assert got == [("x", 5, "initial"), ("y", 6, "initial")]
        await writer.set_variable("y", 7)
        await settle(watcher)
        assert [(u.name, u.value) for u in drain(watch)] == [("y", 7)]


async def test_a_break_between_the_parts_of_a_split_snapshot_delivers_the_rest(
    mock_clock: trio.testing.MockClock,
) -> None:
    # A snapshot too big for one message is split (every part carries its revision). A
    # break after the first part: the variables of the later parts got no initial value.
    limits = dspex_rx.Limits(max_message_bytes=256 * 1024, max_value_bytes=100_000,
                             max_metadata_bytes=4096, max_description_length=1024)
    with EmbeddedServer(limits=limits) as small:
        async with dspex_rx.connect(small.target) as writer, dspex_rx.connect(
            small.target, session_id=writer.session_id, token=writer.token
        ) as watcher:
            names = [f"v{i}" for i in range(6)]
            for i, name in enumerate(names):
                await writer.register_variable(name, "string", str(i) * 90_000)
            flaky = Flaky(watcher)
            seen: list[int] = []

            def second_part(message: spb.ServerMessage) -> bool:
                if _carries_events(message):
                    seen.append(1)
                return len(seen) == 2

            flaky.plans[0] = lambda s: setattr(s, "fail_before", second_part)
            watch = watcher.watch_variables(names)
            await _reopen(watcher, flaky, mock_clock)
            async with watch:
                await settle(watcher)
                got = {u.name: u.value for u in drain(watch)}
                assert sorted(got) == names
                assert all(got[n] == str(i) * 90_000 for i, n in enumerate(names))
                parts = [m for m in flaky.streams[0].received if _carries_events(m)]
                assert len(parts) >= 2  # the snapshot was split, and the break fell inside
