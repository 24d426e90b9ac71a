"""The watch stream across breaks: resume from the last revision without loss or reordering,
backoff and giving up, and what a stream that fails for good leaves behind.

A wrapper around the transport's streams breaks a stream at a chosen message (``FlakyStream``),
so every break is deterministic; backoff runs in virtual time (``mock_clock``). Real-time loops
are hang guards only."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from helpers import drain, settle, unavailable, until

import dspex_rx
from dspex_rx import SessionContext
from dspex_rx.errors import SessionNotFoundError
from dspex_rx.server import EmbeddedServer
from dspex_rx.store import MemoryStore
from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.wire.security import token_metadata


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
    """Wraps every Session stream the session's transport opens; ``plans[i]`` configures
    stream i."""

    def __init__(self, session: dspex_rx.SessionContext) -> None:
        transport = session._transport
        self._open = transport.open_stream
        self.streams: list[FlakyStream] = []
        self.plans: dict[int, Callable[[FlakyStream], None]] = {}
        # The call metadata each open sent (the session token must ride on every one).
        self.metadata: list[tuple[tuple[str, str], ...]] = []
        transport.open_stream = self.open_stream

    async def open_stream(
        self, path: str, response_type: Any, metadata: Any = (), listener: Any = None
    ) -> Any:
        if not path.endswith("/Session"):
            return await self._open(path, response_type, metadata=metadata,
                                    listener=listener)  # Calls
        # The hub's listener is dropped: the hub then reads batches through this wrapper.
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


# ---------------------------------- resume after a break: nothing lost, nothing reordered


# Guards: a resume re-sent after a second break lost its from_revision, skipping versions.
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


# Guards: 'opened' moved the resume point past a replay that a second break then lost.
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


# Guards: 'progress' before the resume's answer moved the resume point past the replay.
@pytest.mark.parametrize("note", ["progress", "pong"])
async def test_progress_before_the_resume_is_answered_does_not_move_the_resume_point(
    server: EmbeddedServer,
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
    note: str,
) -> None:
    # An idle server sends "progress" (its current revision) on a new stream before it has
    # read the resume; taken as the resume point, a break before the replay made the next
    # resume start past the changes made during the first break: they never came. A pong
    # (a ping sent during the break may leave before the resume) carries the same risk.
    writer, watcher = two
    flaky = Flaky(watcher)
    await writer.register_variable("x", "integer", 0)
    watch = await watcher.watch_variable("x")
    await settle(watcher)
    drain(watch)

    flaky.streams[0].fail()
    await until(lambda: _hub(watcher).reconnects == 1, "first break noticed")
    await writer.set_variable("x", 1)
    await writer.set_variable("x", 2)
    now = server.call(lambda: server.store.revision)

    def progress_then_die(s: FlakyStream) -> None:
        # Stream 2 hears "progress" first (the server had not read the resume yet),
        # then dies before the replay.
        s.pending.append(spb.ServerMessage(progress=spb.Progress(revision=now))
                         if note == "progress" else
                         spb.ServerMessage(pong=spb.Pong(nonce=10**6, revision=now)))
        s.fail_before = lambda m: len(m.frames) > 0

    flaky.plans[1] = progress_then_die
    mock_clock.jump(2.0)
    await _reconnect(watcher, mock_clock, 2)
    await until(lambda: len(flaky.streams) == 3, "third stream opened")
    await settle(watcher)
    assert _versions(watch) == [(2, 1, "value_change"), (3, 2, "value_change")]
    await writer.set_variable("x", 3)
    await settle(watcher)
    assert _versions(watch) == [(4, 3, "value_change")]


# Guards: a subscribe whose unsubscribe was lost was re-sent and streamed to nobody.
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


# Guards: the resume of a variable deleted in the break was refused: KeyError, events lost.
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


# Guards: a delete past the log horizon ended the watch with VariableNotFoundError.
async def test_a_variable_deleted_past_the_log_horizon_ends_the_watch_with_deleted(
    mock_clock: trio.testing.MockClock,
) -> None:
    # The resume cannot replay a delete the log no longer holds: the ack lists the
    # variable as missing, and the watch failed as if it had never existed, where inside
    # the log the same story ends with a "deleted" event (the test above).
    with EmbeddedServer(store=MemoryStore(log_size=3)) as server:
        async with dspex_rx.connect(server.target) as writer, dspex_rx.connect(
            server.target, session_id=writer.session_id, token=writer.token
        ) as watcher:
            await writer.register_variable("x", "integer", 0)
            await writer.register_variable("other", "integer", 0)
            flaky = Flaky(watcher)
            watch = await watcher.watch_variables(["x", "other"])
            await settle(watcher)
            drain(watch)
            flaky.streams[0].fail()
            await until(lambda: _hub(watcher).reconnects == 1, "break noticed")
            await writer.delete_variable("x")
            for value in range(1, 6):  # more commits than the log keeps
                await writer.set_variable("other", value)
            await _reopen(watcher, flaky, mock_clock)
            await settle(watcher)
            got = [(u.name, u.value, u.update_type) for u in drain(watch)]
            assert sorted(got) == [("other", 5, "resync"), ("x", None, "deleted")]
            assert not watch.closed  # "other" is still watched
            await writer.set_variable("other", 6)
            await settle(watcher)
            assert [(u.name, u.value) for u in drain(watch)] == [("other", 6)]
            assert _hub(watcher).known("x") is None  # forgotten, as a replayed delete is


# Guards: per-variable resumes replayed x then y: out of order, atomic batches split.
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


# Guards: a break between the ack and the initial values left the watch without a value.
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


# Guards: a break inside a split snapshot left the later parts' variables without a value.
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


# Guards: an acked watch broken before its initial value was re-subscribed afresh and failed.
async def test_a_variable_deleted_during_a_break_before_its_initial_value_ends_the_watch_cleanly(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
) -> None:
    # The watch is in force (the server acked it) but the break fell before the initial
    # value. Meanwhile the variable changes and is deleted. A watch that had its value
    # gets the missed change and the "deleted" event and completes (the resume replays the
    # log; test_a_variable_deleted_during_a_break_ends_the_watch_with_the_missed_events).
    # This one is re-subscribed afresh (WatchHub._resubscribe, from_revision=0), which the
    # server refuses outright for a missing ref: the established watch fails with
    # VariableNotFoundError, as if the variable had never existed.
    writer, watcher = two
    await writer.register_variable("x", "integer", 5)
    flaky = Flaky(watcher)
    flaky.plans[0] = lambda s: setattr(s, "fail_before", _carries_events)
    watch = watcher.watch_variable("x")
    await until(lambda: _hub(watcher).reconnects >= 1, "the break was noticed")
    assert not _hub(watcher)._pending  # the subscribe was acked before the break
    await writer.set_variable("x", 6)
    await writer.delete_variable("x")
    await _reopen(watcher, flaky, mock_clock)
    await until(lambda: watch.closed, "the watch ended")
    updates = drain(watch)
    assert watch._error is None, f"watch failed: {watch._error!r}"
    assert updates and updates[-1].update_type == "deleted"


# Guards: a watch added after a quiet resume never got its initial value (actor not live).
async def test_a_watch_added_after_a_resume_gets_the_current_value_once(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
) -> None:
    # The break suspends the actor (entry dropped, not live); the resume asks for changes
    # only, so with nothing changed no event comes and the actor stays wired and not live.
    # A new observer then neither got the cache's value nor asked the server for one.
    writer, watcher = two
    flaky = Flaky(watcher)
    await writer.register_variable("x", "integer", 7)
    first = await watcher.watch_variable("x")
    await settle(watcher)
    assert _versions(first) == [(1, 7, "initial")]
    flaky.streams[0].fail()
    await _reopen(watcher, flaky, mock_clock)
    await settle(watcher)  # the resume is in force; x did not change

    second = await watcher.watch_variable("x")
    seen: list[tuple[int, Any, str]] = []
    watcher.observe("x", include_initial=False).subscribe(
        lambda u: seen.append((u.version, u.value, u.update_type)))
    await settle(watcher)
    assert _versions(second) == [(1, 7, "initial")]
    await writer.set_variable("x", 8)
    await settle(watcher)
    assert _versions(second) == [(2, 8, "value_change")]
    # The first watch got neither a repeat of its value nor a gap; the observer that
    # asked for changes only got the change, not its baseline.
    assert _versions(first) == [(2, 8, "value_change")]
    assert seen == [(2, 8, "value_change")]


# Guards: a watch added during a break never got its initial value after the resume.
async def test_a_watch_added_during_a_break_gets_a_value_and_the_first_misses_nothing(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
) -> None:
    # Asking for the new observer's value must not take the actor out of the resume: a
    # fresh subscribe instead would hand the first watch the current value and skip the
    # changes made during the break.
    writer, watcher = two
    flaky = Flaky(watcher)
    await writer.register_variable("x", "integer", 0)
    await writer.register_variable("y", "integer", 5)
    first = await watcher.watch_variable("x")
    quiet = await watcher.watch_variable("y")
    await settle(watcher)
    drain(first)
    drain(quiet)
    flaky.streams[0].fail()
    await until(lambda: _hub(watcher).reconnects == 1, "break noticed")
    await writer.set_variable("x", 1)
    second = watcher.watch_variable("x")  # made while the stream is down
    other = watcher.watch_variable("y")
    await writer.set_variable("x", 2)
    await _reopen(watcher, flaky, mock_clock)
    await settle(watcher)
    assert _versions(first) == [(2, 1, "value_change"), (3, 2, "value_change")]
    got = _versions(second)
    assert got[-1][:2] == (3, 2)
    assert [v for v, _, _ in got] == sorted({v for v, _, _ in got})  # no repeat, in order
    assert _versions(other) == [(1, 5, "initial")]
    assert _versions(quiet) == []


# Guards: a resync called filter_fn with old=None: a numeric filter raised and ended the watch.
async def test_a_resync_passes_the_watch_filters_like_an_initial_value(
    mock_clock: trio.testing.MockClock,
) -> None:
    # Past the log horizon the resume is answered with the current values ("resync"),
    # which carry no old value: `new > old` raised TypeError and the watch ended with it.
    with EmbeddedServer(store=MemoryStore(log_size=3)) as server:
        async with dspex_rx.connect(server.target) as writer, dspex_rx.connect(
            server.target, session_id=writer.session_id, token=writer.token
        ) as watcher:
            await writer.register_variable("x", "integer", 0)
            flaky = Flaky(watcher)
            one = await watcher.watch_variable("x", filter_fn=lambda old, new: new > old)
            many = await watcher.watch_variables(
                ["x"], filter_fn=lambda name, old, new: new > old)
            await settle(watcher)
            assert _versions(one) == _versions(many) == [(1, 0, "initial")]

            flaky.streams[0].fail()
            await until(lambda: _hub(watcher).reconnects == 1, "break noticed")
            for value in range(5, 0, -1):  # more commits than the log keeps, going down
                await writer.set_variable("x", value)
            await _reopen(watcher, flaky, mock_clock)
            await settle(watcher)
            # The current value passes whatever the filter says of changes.
            assert _versions(one) == _versions(many) == [(6, 1, "resync")]
            await writer.set_variable("x", 0)
            await writer.set_variable("x", 2)
            await settle(watcher)
            assert _versions(one) == _versions(many) == [(8, 2, "value_change")]
            assert one._error is None and many._error is None


# ----------------------------------------- retries: what is retryable, backoff, giving up


# Guards: a group of two UNAVAILABLE errors was not retryable, so every watch failed.
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


# Guards: the failure count was never reset: each later, unrelated break waited longer.
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


# Guards: any first message reset the deadline: a stream dying after each open looped forever.
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


# ------------------------------------------------ a stream that fails for good, and close


# Guards: a watch got an ExceptionGroup of a raw AioRpcError, not SessionNotFoundError.
async def test_a_watch_ended_by_a_closed_session_raises_session_not_found(
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


# Guards: a failed stream's outbox stayed with no reader; later pings and subscribes hung.
async def test_sync_and_observe_answer_once_the_watch_stream_has_failed(
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


# Guards: a failed actor never unpinned its cache entry; reads served a stale value forever.
async def test_a_watched_entry_expires_once_its_stream_has_failed(
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


# Guards: hub.close() neither set nor failed the pending pongs; a task in sync() never woke.
async def test_close_wakes_a_concurrent_sync(server: EmbeddedServer) -> None:
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


# Guards: an UNAUTHENTICATED reopen (AuthenticationError is a PermissionError, an OSError)
# was retried as a network blip for the whole reconnect timeout.
async def test_a_refused_credential_ends_the_watch_at_once(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock, server: EmbeddedServer,
) -> None:
    writer, watcher = two
    flaky = Flaky(watcher)
    await writer.register_variable("x", "integer", 0)
    watch = await watcher.watch_variable("x")
    await settle(watcher)
    drain(watch)
    sid = watcher.session_id
    # The session's token is not the one this client holds any more (as after a server
    # that lost its state gave the id to another session).
    server.call(lambda: setattr(server.store.session(sid), "token", "t" * 43))
    started = trio.current_time()
    flaky.streams[0].fail()
    await until(lambda: _hub(watcher).reconnects >= 1, "the break was noticed")
    # Virtual time moves until the watch ends (the backoff's sleep may start after any
    # one jump); with the bug it never does, and the real-time guard fails the test.
    deadline = time.monotonic() + 10  # a hang guard, not a timing assertion
    while not watch.closed:
        assert time.monotonic() < deadline, "the refused reopen was retried, not ended"
        mock_clock.jump(0.5)
        await trio.sleep(0)
        await trio.to_thread.run_sync(lambda: None)
    # The refusal arrives either on the reopened stream, or (when gRPC reports that
    # stream's end as INTERNAL, which is retried) through the heartbeat, which loses the
    # session: either way the watch ends with the token refusal.
    with pytest.raises((dspex_rx.AuthenticationError, SessionNotFoundError),
                       match="token presented is not the token"):
        async for _ in watch:
            pass
    # Ended by the refusal, not by the reconnect timeout: a reopen's refusal can first
    # surface as the send side's transport error (retried), never for the whole timeout.
    assert trio.current_time() - started < _hub(watcher).reconnect_timeout


# Guards: while the stream was reconnecting, reads of watched variables were served from a
# pinned cache entry that nothing updated (#17).
async def test_a_watched_value_is_read_from_the_server_while_its_stream_is_down(
    two: tuple[dspex_rx.SessionContext, dspex_rx.SessionContext],
    mock_clock: trio.testing.MockClock,
) -> None:
    writer, watcher = two
    flaky = Flaky(watcher)
    await writer.register_variable("x", "integer", 0)
    watch = await watcher.watch_variable("x")
    await settle(watcher)
    drain(watch)
    assert await watcher.get_variable("x") == 0
    flaky.streams[0].kill()  # the connection hangs: nothing more is pushed
    flaky.streams[0].fire()
    await until(lambda: _hub(watcher).reconnects >= 1, "the break was noticed")
    await writer.set_variable("x", 1)
    # The hub is in its (virtual) backoff: the value can only come from the server.
    assert await watcher.get_variable("x") == 1


# Guards: with the hub's listener, a suspected stream kept delivering during the backoff
# and its events made the entries just suspended current (cached, live) again.
async def test_a_suspected_streams_late_events_leave_its_entries_suspended(
    server: EmbeddedServer, mock_clock: trio.testing.MockClock,
) -> None:
    async with dspex_rx.connect(server.target) as writer, dspex_rx.connect(
        server.target, session_id=writer.session_id, token=writer.token
    ) as watcher:
        transport = watcher._transport
        real_open = transport.open_stream
        heard: list[int] = []  # batches handed to the Session streams' listeners

        async def counting_open(path: str, response_type: Any, metadata: Any = (),
                                listener: Any = None) -> Any:
            if path.endswith("/Session") and listener is not None:
                inner = listener

                def listener(batch: list[Any]) -> None:
                    heard.append(len(batch))
                    inner(batch)

            return await real_open(path, response_type, metadata=metadata,
                                   listener=listener)

        transport.open_stream = counting_open
        await writer.register_variable("x", "integer", 0)
        got: list[int] = []
        watcher.observe("x").subscribe(lambda update: got.append(update.value))
        hub = _hub(watcher)
        await hub.sync()
        actor = hub.known("x")
        assert actor is not None and actor.live and got == [0]
        hub.suspect("test: the heartbeat timed out")
        await until(lambda: hub.reconnects == 1, "the hub is in its backoff")
        before = len(heard)
        await writer.set_variable("x", 1)
        await until(lambda: len(heard) > before, "the suspected stream delivered the write")
        assert not actor.live and got == [0]
        mock_clock.jump(2.0)  # past the backoff: a new stream resumes the watch
        await until(lambda: got == [0, 1], "the resumed stream delivered the write")
        assert actor.live
