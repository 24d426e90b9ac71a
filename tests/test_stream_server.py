"""The Session stream at the protocol level (raw messages over the real transport): initial
values, one frame per commit, resume from a revision or resync past the log horizon,
conflation for slow consumers, progress notes, and errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import numpy as np
import pytest
import trio
from helpers import drain, end, settle, until

import dspex_rx
from dspex_rx import SessionContext
from dspex_rx.client.transport import Stream, Transport
from dspex_rx.server import SERVICE_NAME, EmbeddedServer
from dspex_rx.server.fanout import PendingFrame, Subscriber
from dspex_rx.server.stream import Wake
from dspex_rx.store import ChangeEvent, Commit, MemoryStore, VariableRecord, VariableSpec
from dspex_rx.store.memory import MemoryBackend
from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.wire.security import token_metadata

PATH = f"/{SERVICE_NAME}/Session"


class RawStream:
    """A test client speaking the Session protocol message by message."""

    def __init__(self, stream: Stream[spb.ServerMessage]) -> None:
        self.stream = stream
        self.buffer: list[spb.ServerMessage] = []

    async def next(self) -> spb.ServerMessage:
        while not self.buffer:
            batch = await self.stream.receive_batch()
            assert batch is not None, "stream ended"
            self.buffer.extend(batch)
        return self.buffer.pop(0)

    async def next_control(self, kind: str) -> spb.ServerMessage:
        message = await self.next()
        assert message.WhichOneof("control") == kind, message
        return message

    async def frames(self, count: int) -> list[spb.Frame]:
        frames: list[spb.Frame] = []
        while len(frames) < count:
            message = await self.next()
            assert message.WhichOneof("control") in (None, "progress"), message
            frames.extend(message.frames)
        assert len(frames) == count
        return frames

    async def subscribe(
        self, refs: list[str], include_initial: bool = True, from_revision: int = 0,
        request_id: int = 1,
    ) -> spb.Subscribed:
        await self.stream.send(
            spb.ClientMessage(
                subscribe=spb.Subscribe(
                    request_id=request_id, refs=refs, include_initial=include_initial,
                    from_revision=from_revision,
                )
            )
        )
        return (await self.next_control("subscribed")).subscribed


@pytest.fixture
async def transport(server: EmbeddedServer) -> AsyncIterator[Transport]:
    t = Transport(server.target)
    await t.open()
    yield t
    await t.close()


async def open_raw(
    transport: Transport, session: dspex_rx.SessionContext, progress: float = 0.0
) -> RawStream:
    """A raw Session stream for ``session``, presenting its token."""
    stream = await transport.open_stream(
        PATH, spb.ServerMessage, metadata=token_metadata(session.token)
    )
    await stream.send(
        spb.ClientMessage(
            open=spb.OpenStream(session_id=session.session_id, progress_interval_seconds=progress)
        )
    )
    raw = RawStream(stream)
    await raw.next_control("opened")
    return raw


async def test_initial_then_every_change_once_in_order(
    session: dspex_rx.SessionContext, transport: Transport
) -> None:
    await session.register_variable("t", "float", 0.1)
    raw = await open_raw(transport, session)
    ack = await raw.subscribe(["t"])
    assert list(ack.names) == ["t"] and ack.variable_ids[0].startswith("var_t_")
    (initial,) = await raw.frames(1)
    event = initial.events[0]
    assert event.update_type == spb.UPDATE_TYPE_INITIAL
    assert (event.value.float_value, event.version) == (0.1, 1)
    for value in (0.2, 0.3, 0.4):
        await session.set_variable("t", value, metadata={"step": value})
    frames = await raw.frames(3)
    got = [(f.events[0].value.float_value, f.events[0].old_value.float_value,
            f.events[0].version, f.events[0].revision == f.revision) for f in frames]
    assert got == [(0.2, 0.1, 2, True), (0.3, 0.2, 3, True), (0.4, 0.3, 4, True)]
    assert frames[0].events[0].source == session.session_id
    assert frames[0].events[0].metadata.entries[0].key == "step"
    await raw.stream.close()


async def test_atomic_batch_is_one_frame(
    session: dspex_rx.SessionContext, transport: Transport
) -> None:
    await session.register_variables(
        [{"name": n, "type": "integer", "initial_value": 0} for n in ("a", "b", "c")]
    )
    raw = await open_raw(transport, session)
    await raw.subscribe(["a", "b", "c"], include_initial=False)
    await session.update_variables({"a": 1, "b": 2, "c": 3})
    (frame,) = await raw.frames(1)
    assert [e.name for e in frame.events] == ["a", "b", "c"]
    assert {e.revision for e in frame.events} == {frame.revision}
    await raw.stream.close()


async def test_unknown_variable_subscription_fails_whole(
    session: dspex_rx.SessionContext, transport: Transport
) -> None:
    await session.register_variable("a", "integer", 0)
    raw = await open_raw(transport, session)
    ack = await raw.subscribe(["a", "ghost"])
    assert ack.error_kind == "not_found" and "'ghost'" in ack.error
    assert list(ack.variable_ids) == []
    await session.set_variable("a", 1)  # not subscribed: nothing may arrive
    await raw.stream.send(spb.ClientMessage(ping=spb.Ping(nonce=9)))
    pong = await raw.next_control("pong")
    assert pong.pong.nonce == 9 and pong.pong.revision == session.revision
    await raw.stream.close()


async def test_resume_inside_the_log_replays_exactly_the_missed_events(
    session: dspex_rx.SessionContext, transport: Transport
) -> None:
    await session.register_variables(
        [{"name": "x", "type": "integer", "initial_value": 0},
         {"name": "y", "type": "integer", "initial_value": 0}]
    )
    await session.set_variable("x", 1)
    seen = session.revision
    await session.set_variable("x", 2)
    await session.set_variable("y", 5)  # not watched: must not be replayed
    await session.update_variables({"x": 3, "y": 6})
    raw = await open_raw(transport, session)
    await raw.subscribe(["x"], include_initial=False, from_revision=seen)
    frames = await raw.frames(2)
    assert [(e.value.int_value, e.version, e.update_type) for f in frames for e in f.events] == [
        (2, 3, spb.UPDATE_TYPE_VALUE_CHANGE), (3, 4, spb.UPDATE_TYPE_VALUE_CHANGE)
    ]
    await session.set_variable("x", 4)  # and then live, no gap, no repeat
    (live,) = await raw.frames(1)
    assert (live.events[0].value.int_value, live.events[0].version) == (4, 5)
    await raw.stream.close()


async def test_a_resume_that_asks_for_the_initial_value_gets_it_after_the_replay(
    session: dspex_rx.SessionContext, transport: Transport
) -> None:
    # What a client sends for a subscription whose initial value a break swallowed.
    await session.register_variables(
        [{"name": "x", "type": "integer", "initial_value": 0},
         {"name": "y", "type": "integer", "initial_value": 7}]
    )
    seen = session.revision
    await session.set_variable("x", 1)
    raw = await open_raw(transport, session)
    await raw.subscribe(["x", "y"], include_initial=True, from_revision=seen)
    replay, initial = await raw.frames(2)
    assert [(e.value.int_value, e.update_type) for e in replay.events] == [
        (1, spb.UPDATE_TYPE_VALUE_CHANGE)]
    assert [(e.value.int_value, e.version, e.update_type) for e in initial.events] == [
        (1, 2, spb.UPDATE_TYPE_INITIAL), (7, 1, spb.UPDATE_TYPE_INITIAL)]
    await raw.stream.close()


async def test_resume_before_the_horizon_gets_resync() -> None:
    store = MemoryStore(log_size=3)
    with EmbeddedServer(store=store) as embedded:
        async with dspex_rx.connect(embedded.target) as session:
            await session.register_variable("x", "integer", 0)
            for i in range(1, 6):
                await session.set_variable("x", i)
            transport = Transport(embedded.target)
            await transport.open()
            try:
                raw = await open_raw(transport, session)
                await raw.subscribe(["x"], from_revision=2)
                (frame,) = await raw.frames(1)
                (event,) = frame.events
                assert event.update_type == spb.UPDATE_TYPE_RESYNC
                assert (event.value.int_value, event.version) == (5, 6)
                assert frame.revision == session.revision
                await raw.stream.close()
            finally:
                await transport.close()


async def test_progress_note_when_idle(
    session: dspex_rx.SessionContext, transport: Transport
) -> None:
    await session.register_variable("x", "integer", 0)
    raw = await open_raw(transport, session, progress=0.05)
    message = await raw.next_control("progress")
    assert message.progress.revision == session.revision
    await raw.stream.close()


class HeldBackend(MemoryBackend):
    """Memory made "durable" only up to ``allowed``: ``sync`` waits until the test's
    thread ``allow``s the revision."""

    def __init__(self) -> None:
        super().__init__()
        self.allowed = 1 << 62
        self.syncing = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._moved: asyncio.Event | None = None

    @property
    def pending(self) -> bool:
        return self.allowed < self._revision

    def allow(self, revision: int) -> None:
        """From the test's thread: revisions up to ``revision`` are durable now."""
        self.allowed = revision
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        moved, self._moved = self._moved, None
        if moved is not None:
            moved.set()

    async def sync(self, revision: int) -> None:
        target = self._revision  # everything committed before the call
        self._loop = asyncio.get_running_loop()
        self.syncing += 1
        while self.allowed < target:
            if self._moved is None:
                self._moved = asyncio.Event()
            await self._moved.wait()
        self.syncing -= 1


@asynccontextmanager
async def held_server() -> AsyncIterator[tuple[EmbeddedServer, HeldBackend, Transport]]:
    """A server over a ``HeldBackend`` and a transport to it; everything made durable and
    stopped after the block."""
    backend = HeldBackend()
    server = EmbeddedServer(store=MemoryStore(backend=backend))
    server.start()
    transport = Transport(server.target)
    await transport.open()
    try:
        yield server, backend, transport
    finally:
        backend.allow(1 << 62)
        await transport.close()
        server.stop()


async def test_a_progress_note_names_only_a_revision_already_durable() -> None:
    # Guards a bug: the note named the store's revision read after its sync, which could
    # include a write made during the sync and not yet durable; a stream ended by that
    # write's refusal (a replica's conflict) resumed past the commit that took its place.
    async with (
        held_server() as (server, backend, transport),
        dspex_rx.connect(server.target, session_id="held") as session,
    ):
        await session.register_variable("x", "integer", 0)
        durable = server.call(lambda: server.store.revision)
        backend.allow(durable)
        raw = await open_raw(transport, session, progress=0.02)
        sid = session.session_id
        server.call(lambda: server.store.set(sid, "x", 1, actor="t"))
        await until(lambda: backend.syncing > 0, "the stream waits on the sync", 30)
        # A write lands while the stream's sync waits; only the first becomes durable.
        server.call(lambda: server.store.set(sid, "x", 2, actor="t"))
        backend.allow(durable + 1)
        try:
            while True:
                note = (await raw.next_control("progress")).progress.revision
                if note != durable:
                    break
        finally:
            backend.allow(1 << 62)  # the rest may become durable: the test ends
        assert note == durable + 1  # not durable + 2, which is not durable
        await raw.stream.close()


async def test_what_a_closed_session_committed_during_a_sync_still_reaches_its_stream() -> None:
    # Guards a bug (found in review): a stream whose session closed sent what it had
    # taken before its sync and ended, dropping a commit queued during that sync.
    async with (
        held_server() as (server, backend, transport),
        dspex_rx.connect(server.target) as session,
    ):
        await session.register_variable("x", "integer", 0)
        raw = await open_raw(transport, session)
        await raw.subscribe(["x"], include_initial=False)
        sid, durable = session.session_id, server.call(lambda: server.store.revision)
        backend.allow(durable)
        server.call(lambda: server.store.set(sid, "x", 1, actor="t"))
        await until(lambda: backend.syncing > 0, "the stream waits on the sync", 30)
        # While the stream waits: one more write, then the session goes.
        server.call(lambda: server.store.set(sid, "x", 2, actor="t"))
        server.call(lambda: end(server.store, sid))
        backend.allow(1 << 62)
        values = [f.events[0].value.int_value for f in await raw.frames(2)]
        assert values == [1, 2]
        with pytest.raises(grpc.aio.AioRpcError, match="closed or expired") as info:
            while await raw.stream.receive_batch() is not None:
                pass
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        await raw.stream.close()


async def test_first_message_must_open_a_known_session(transport: Transport) -> None:
    stream = await transport.open_stream(PATH, spb.ServerMessage)
    await stream.send(spb.ClientMessage(open=spb.OpenStream(session_id="nobody_here")))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        while await stream.receive_batch() is not None:
            pass
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no session 'nobody_here'" in str(info.value.details())
    await stream.close()


async def test_stream_ends_when_the_session_goes(
    server: EmbeddedServer, transport: Transport
) -> None:
    session = await dspex_rx.SessionContext(target=server.target).initialize()
    raw = await open_raw(transport, session)
    await session.close()
    with pytest.raises(grpc.aio.AioRpcError, match="closed or expired") as info:
        while await raw.stream.receive_batch() is not None:
            pass
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    await raw.stream.close()


# ---------------------------------------------------------------- conflation (pure)


def _record(var_id: str, version: int, value: int) -> VariableRecord:
    return VariableRecord(var_id, var_id, "integer", value, {}, {}, version, version, 1, 0.0,
                          0.0, "t")


def test_slow_subscriber_conflates_to_latest_per_variable() -> None:
    sub = Subscriber(max_pending_events=100)
    sub.watch(["a", "b"])
    sub.push_control("ack")
    for version in range(2, 10_002):
        var = "a" if version % 3 else "b"
        commit = Commit(version, (ChangeEvent(_record(var, version, version), version - 1,
                                              "value_change", {}, "w"),), 0.0)
        sub.on_commit(commit)
        assert sub._pending_events <= 100  # bounded at every step
    items = sub.drain()
    assert items[0] == "ack"
    frames = [i for i in items if isinstance(i, PendingFrame)]
    assert frames[0].conflated
    last = {}
    for frame in frames:
        for event in frame.events:
            last[event.record.id] = event.record.value
    assert last == {"a": 10_001, "b": 9_999}
    assert sub.conflations > 0
    assert not sub.has_pending()


def test_deleted_variable_stops_being_watched() -> None:
    store = MemoryStore()
    store.initialize_session("s")
    (rec,), _ = store.register("s", [VariableSpec("x", "integer", 1)], actor="t")
    sub = Subscriber()
    sub.watch([rec.id])
    store.add_listener("s", sub.on_commit)
    store.delete("s", "x")
    (frame,) = sub.drain()
    assert frame.events[0].update_type == "deleted"
    assert sub.watched == set()


# ---------------------------------------------------------------- undone commits (pure)


def _change(version: int, kind: str = "value_change") -> Commit:
    return Commit(version, (ChangeEvent(_record("a", version, version), version - 1, kind,
                                        {}, "w"),), 0.0)


def test_a_stream_forgets_queued_commits_another_replica_undid_and_keeps_the_rest() -> None:
    sub = Subscriber()
    sub.watch(["a"])
    sub.on_commit(_change(4))
    sub.push_control(spb.Unsubscribed(request_id=7))  # shows no revision: kept
    sub.on_commit(_change(5))
    sub.on_commit(_change(6))
    assert sub.undo_above(4)
    items = sub.drain()
    assert [i.revision if isinstance(i, PendingFrame) else i.request_id for i in items] == [
        4, 7]
    assert sub.pending_events == 0 and sub.pending_controls == 0


@pytest.mark.parametrize("above", [
    spb.Subscribed(request_id=1, revision=6),  # its initial values may show undone commits
    spb.Pong(nonce=1, revision=6),
    PendingFrame(6, [], "initial"),
    PendingFrame(6, [], conflated=True, since=3),  # holds commits on both sides
], ids=["ack", "pong", "initial", "conflated-across"])
def test_a_stream_that_cannot_drop_what_was_undone_changes_nothing(above: Any) -> None:
    sub = Subscriber()
    sub.watch(["a"])
    sub.on_commit(_change(5))
    sub.push_frame(above) if isinstance(above, PendingFrame) else sub.push_control(above)
    assert not sub.undo_above(4)
    assert sub.queued == 2


def test_an_undone_deletion_or_foreign_record_keeps_a_stream_from_going_on() -> None:
    # The deletion already ended the watch (undoing it would leave the stream blind);
    # a record of another session's variable from an undone commit would be shown later.
    sub = Subscriber()
    sub.watch(["a"])
    sub.on_commit(_change(5, "deleted"))
    assert sub.watched == set() and not sub.undo_above(4)
    foreign = Subscriber(listen=lambda owner, fn: lambda: None)
    foreign.watch_foreign("owner", [_record("a", 5, 5)])
    assert not foreign.undo_above(4) and foreign.undo_above(5)


def test_a_stream_forgets_undone_commits_it_already_took_in_hand() -> None:
    sub = Subscriber()
    sub.watch(["a"])
    sub.on_commit(_change(4))
    sub.on_commit(_change(5))
    sub.take()  # the sender's, waiting for the store to make them durable
    sub.on_commit(_change(6))
    assert sub.undo_above(4)
    assert [f.revision for f in sub.hand_over()] == [4]
    assert not sub.has_pending()


async def test_slow_stream_does_not_slow_others(
    session: dspex_rx.SessionContext, transport: Transport, server: EmbeddedServer
) -> None:
    await session.register_variable("hot", "integer", 0)
    slow = await open_raw(transport, session)
    await slow.subscribe(["hot"], include_initial=False)
    fast = await open_raw(transport, session)
    await fast.subscribe(["hot"], include_initial=False)
    for i in range(1, 301):
        await session.set_variable("hot", i)
    # The fast reader gets every version in order while the slow one reads nothing.
    versions: list[int] = []
    while not versions or versions[-1] < 301:
        versions.extend(e.version for f in await fast.frames(1) for e in f.events)
    assert versions == list(range(2, 302))
    last = 0
    with trio.fail_after(10):
        while last < 301:
            for frame in await slow.frames(1):
                last = max([last, *[e.version for e in frame.events]])
    assert last == 301
    await slow.stream.close()
    await fast.stream.close()


@pytest.mark.parametrize("host", ["trio", "thread"])
async def test_client_inbox_is_bounded_and_pushes_back_to_the_server(host: str) -> None:
    with EmbeddedServer(max_pending_events=50) as embedded:
        async with dspex_rx.connect(embedded.target) as session:
            await session.register_variable("hot", "integer", 0)
            transport = Transport(embedded.target, host=host)
            await transport.open()
            try:
                raw = await open_raw(transport, session)
                raw.stream.max_inbox = 4
                await raw.subscribe(["hot"], include_initial=False)
                sid = session.session_id

                def burst() -> None:
                    for i in range(1, 2001):
                        embedded.store.set(sid, "hot", i, actor="burst")

                # Commit in slices so the server's sender runs between them.
                for _ in range(5):
                    await trio.to_thread.run_sync(embedded.call, burst)
                guard = trio.current_time() + 10
                while not raw.stream._paused:  # the reader stops at max_inbox
                    assert trio.current_time() < guard, "the reader never paused"
                    await trio.sleep(0.01)
                assert len(raw.stream._inbox) <= 4
                last = 0
                with trio.fail_after(10):
                    while last < 10_001:
                        for frame in (await raw.next()).frames:
                            last = max([last, *[e.version for e in frame.events]])
                assert last == 10_001  # the latest value arrives, conflated on the server
                conflations = embedded.call(
                    lambda: max(s.conflations for s in embedded.service.subscribers)
                )
                assert conflations > 0
                await raw.stream.close()
            finally:
                await transport.close()


# ----------------- one stream, many watches: a bad ref, a big value, conflation, progress


# Guards: commits conflated with the initial frame left the watch without a baseline.
async def test_commits_conflated_right_after_a_subscribe_still_give_the_watch_a_baseline(
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


# Guards: the InvalidValueError of ref "" aborted the stream every watch shares.
async def test_an_invalid_ref_fails_only_its_own_observer(
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


# Guards: frames packed with no byte budget overflowed the message limit, killing the stream.
async def test_a_large_tensor_update_reaches_its_watch_and_the_stream_lives(
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


# Guards: progress_interval_seconds=-1 made the server busy-loop sending progress notes.
async def test_a_negative_progress_interval_is_refused(
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


class _TimeJumpingLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on virtual time: every timer is due at once."""

    def call_later(self, delay: float, callback: Any, *args: Any,
                   context: Any = None) -> asyncio.Handle:
        return self.call_soon(callback, *args, context=context)


def _run_jumping(main: Any) -> Any:
    loop = _TimeJumpingLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def test_sender_wake_reports_a_set_flag_and_a_timeout_apart() -> None:
    async def main() -> list[bool]:
        wake = Wake()
        seen = [await wake.wait(5.0)]  # nothing set: the timer ends the wait
        wake.set()
        seen.append(await wake.wait(5.0))  # set before the wait: at once
        wake.clear()
        seen.append(await wake.wait(5.0))  # cleared: the timer again
        return seen

    assert _run_jumping(main) == [False, True, False]


def test_sender_wake_resumes_the_sender_on_the_next_loop_turn() -> None:
    # Guards the trim of the commit -> send hop: asyncio.wait_for over an Event took
    # three loop turns (inner task, its done callback, the outer task) to resume.
    async def main() -> tuple[bool, bool, bool]:
        wake = Wake()
        sender = asyncio.get_running_loop().create_task(wake.wait(3600))
        await asyncio.sleep(0)  # the sender now waits
        waiting = not sender.done()
        wake.set()
        await asyncio.sleep(0)  # one turn
        return waiting, sender.done(), sender.result() if sender.done() else False

    assert asyncio.run(main()) == (True, True, True)


def test_an_event_packed_for_many_streams_is_encoded_alike_and_keeps_each_override() -> None:
    # Streams share one encoding of a commit's event: the copy must equal a fresh
    # encoding, and a frame that overrides the type (initial, resync) must not get the
    # plain event's bytes, nor the reverse.
    from dspex_rx.core.limits import Limits
    from dspex_rx.server.encode import event_to_pb
    from dspex_rx.server.frames import pack

    record = VariableRecord("var_t_1", "t", "float", 0.5, {}, {}, 4, 9, 2, 1.0, 2.0, "s", size=9)
    event = ChangeEvent(record, 0.25, "value_change", {"why": "test"}, "s")
    plain = PendingFrame(9, [event])
    initial = PendingFrame(9, [event], update_type="initial")
    sent = [list(pack([frame], Limits())) for frame in (plain, plain, initial, plain, initial)]
    events = [messages[0].frames[0].events[0] for messages in sent]
    fresh_plain, fresh_initial = spb.VariableEvent(), spb.VariableEvent()
    event_to_pb(event, None, fresh_plain, Limits().max_value_bytes)
    event_to_pb(event, "initial", fresh_initial, Limits().max_value_bytes)
    assert [e == fresh_plain for e in events] == [True, True, False, True, False]
    assert [e == fresh_initial for e in events] == [False, False, True, False, True]
    assert events[2].update_type == spb.UPDATE_TYPE_INITIAL
    assert not events[2].HasField("old_value") and events[1].HasField("old_value")


class _NoContext:
    """What a unary handler asks of a gRPC context on the success path (nothing sent)."""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def invocation_metadata(self) -> tuple[()]:
        return ()


# Guards the watch-path trim: a write's answer went out before the watcher's frame, so a
# watcher heard of a write only after gRPC had sent the writer its answer.
def test_a_write_lets_the_watching_stream_send_its_frame_before_answering() -> None:
    from dspex_rx.server.service import VariablesService
    from dspex_rx.v1 import variables_pb2 as pb
    from dspex_rx.wire import codec

    store = MemoryStore()
    store.initialize_session("a")
    store.register("a", [VariableSpec("t", "float", 0.5)], actor="a")
    service = VariablesService(store, auth="none")

    async def main() -> list[str]:
        order: list[str] = []
        wake = Wake()
        subscriber = Subscriber(wake.set, session_id="a")
        subscriber.watch([store.session("a").names["t"]])
        store.add_listener("a", subscriber.on_commit)

        async def sender() -> None:
            await wake.wait(3600)
            order.append(f"frame v{subscriber.drain()[0].events[0].record.version}")

        task = asyncio.get_running_loop().create_task(sender())
        await asyncio.sleep(0)  # the sender waits, as an idle stream's does
        request = pb.SetVariableRequest(session_id="a", ref="t")
        request.value.CopyFrom(codec.encode(0.75))
        answer = await service.SetVariable(request, _NoContext())
        order.append(f"answer v{answer.variable.version}")
        await task
        return order

    assert asyncio.run(main()) == ["frame v2", "answer v2"]


def test_a_write_nobody_watches_is_answered_without_yielding() -> None:
    from dspex_rx.server.service import VariablesService
    from dspex_rx.v1 import variables_pb2 as pb
    from dspex_rx.wire import codec

    store = MemoryStore()
    store.initialize_session("a")
    store.register("a", [VariableSpec("t", "float", 0.5)], actor="a")
    service = VariablesService(store, auth="none")
    request = pb.SetVariableRequest(session_id="a", ref="t")
    request.value.CopyFrom(codec.encode(0.75))

    async def main() -> int:
        # Driven by hand: a coroutine that never yields finishes on its first step.
        step = service.SetVariable(request, _NoContext())
        with pytest.raises(StopIteration) as done:
            step.send(None)
        return int(done.value.value.variable.version)

    assert asyncio.run(main()) == 2
