"""The Session bidi stream: opening it (token, session, progress interval), the reader of
subscribe/unsubscribe/ping, and the sender of frames, notes and progress.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc

from dspex_rx.core.limits import Limits
from dspex_rx.errors import DspexError, InvalidValueError, StorageError
from dspex_rx.logs import get_logger
from dspex_rx.server import offload
from dspex_rx.server.fanout import PendingFrame, Subscriber
from dspex_rx.server.frames import pack
from dspex_rx.server.rpc import Malformed, Service, abort_with, clip, refuse, require_session_id
from dspex_rx.store import MemoryStore
from dspex_rx.store.backend import RevisionConflict
from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.wire.convert import ERROR_KIND_KEY

log = get_logger("dspex_rx.server")

# A stream stops reading its client while this many control notes (acks, pongs) wait to
# be sent: a client that writes without reading cannot grow the server's queue.
MAX_PENDING_CONTROLS = 1024
MIN_PROGRESS_INTERVAL = 0.01
# How long a resume from a revision this replica has not applied yet waits for the other
# replicas' writes to arrive before it is answered with a resync of what is here.
RESUME_WAIT = 5.0


class StreamService(Service, Protocol):
    """What the stream uses of the servicer beyond a handler's needs: its stream settings,
    the live subscribers, and the subscribe step (a method, so a test can wrap it).

    Example: ``service._subscribe(sid, subscriber, request)`` queues the ack and values.
    """

    progress_interval: float
    max_pending_events: int
    subscribers: set[Subscriber]

    def _subscribe(self, session_id: str, subscriber: Subscriber, request: spb.Subscribe) -> None:
        """Answer one Subscribe request on the subscriber's queue.

        Example: ``service._subscribe(sid, subscriber, spb.Subscribe(refs=["t"]))``.
        """


async def session(
    service: StreamService,
    request_iterator: AsyncIterator[spb.ClientMessage],
    context: grpc.aio.ServicerContext,
) -> AsyncIterator[spb.ServerMessage]:
    """The ``Session`` stream, one per connection: subscribe/unsubscribe/ping in, frames
    and notes out, and progress (the store's revision) when idle for the interval.

    Example: ``call = stub.Session()`` opens it; its first message must be ``open``.
    """
    try:
        first = await anext(aiter(request_iterator))
    except StopAsyncIteration:
        return
    store = service.store
    try:
        if isinstance(first, Malformed):
            raise first.exception()
        if first.WhichOneof("kind") != "open":
            raise InvalidValueError("the first message on a Session stream must be 'open'")
        session_id = require_session_id(first.open)
        service.authenticate(session_id, context)
        opened = store.session(session_id)
        interval = first.open.progress_interval_seconds or service.progress_interval
        if not math.isfinite(interval) or interval < MIN_PROGRESS_INTERVAL:
            raise InvalidValueError(
                f"progress_interval_seconds must be a finite number >= "
                f"{MIN_PROGRESS_INTERVAL} (0 for the server default), got {interval!r}"
            )
        wake = Wake()
        room = asyncio.Event()  # set while the reader may go on
        room.set()
        subscriber = Subscriber(
            wake.set, service.max_pending_events, session_id,
            max_watched=service.limits.max_subscriptions_per_stream,
            may_observe=lambda var_id: store.may(session_id, var_id, "observe"),
            listen=lambda owner, fn: store.add_listener(owner, fn, foreign=True),
            revision=lambda: store.revision,
            may_read=lambda var_id: store.may(session_id, var_id, "read"),
        )
        remove_listener = store.add_listener(session_id, subscriber.on_commit)
    except DspexError as exc:
        await refuse(context, exc, "Session")
        return
    service.subscribers.add(subscriber)
    log.info("stream_opened", session_id=session_id, client_id=clip(first.open.client_id, 100))
    reader = asyncio.create_task(
        _read(service, request_iterator, session_id, subscriber, room)
    )
    reader.add_done_callback(lambda _: wake.set())
    generation = store.generation
    try:
        # A revision told to the client must be durable (it resumes from it).
        revision = await _settled(store, generation, context, subscriber)
        if revision is None:
            return
        yield spb.ServerMessage(
            opened=spb.StreamOpened(
                session_id=session_id,
                revision=revision,
                log_horizon=opened.log_floor + 1,
            )
        )
        closing = False
        while True:
            if (
                not subscriber.has_pending() and not reader.done()
                and not await wake.wait(interval) and not subscriber.has_pending()
            ):
                # Idle for the interval: tell the client the revision it is current at.
                revision = await _settled(store, generation, context, subscriber)
                if revision is None:
                    return
                yield spb.ServerMessage(progress=spb.Progress(revision=revision))
                continue
            wake.clear()
            # Taken, then made durable: the sync covers every change made before it,
            # revision or not (a session's closing takes none). A conflict during it
            # drops the undone commits from what was taken too (``undo_above``).
            subscriber.take()
            if await _settled(store, generation, context, subscriber) is None:
                return
            items = subscriber.hand_over()
            if _carries_large_values(items):
                # Encoding a large value takes seconds: on a worker (offload.py).
                messages = await offload.off_loop(_packed, items, service.limits)
            else:
                messages = _packed(items, service.limits)
            for message in messages:
                yield message
            room.set()  # everything queued is sent: the reader may read on
            if subscriber.closed:
                if subscriber.has_pending() and not closing:
                    closing = True  # what came before the closing goes out first, once
                    continue
                # The closing itself must be durable before the client hears of it: a
                # conflict or a refused write may still undo it (the stream then ends
                # UNAVAILABLE, and the client resumes).
                if await _settled(store, generation, context, subscriber) is None:
                    return
                context.set_trailing_metadata(((ERROR_KIND_KEY, "session_not_found"),))
                await context.abort(
                    grpc.StatusCode.NOT_FOUND, f"session {session_id!r} was closed or expired"
                )
            if reader.done():
                error = reader.exception()
                if isinstance(error, DspexError):
                    await abort_with(context, error)
                if error is not None:
                    log.error("stream_reader_failed", session_id=session_id,
                              error=clip(repr(error), 500))
                    await context.abort(grpc.StatusCode.INTERNAL, "stream reader failed")
                return
    finally:
        service.subscribers.discard(subscriber)
        remove_listener()
        subscriber.close()
        reader.cancel()
        log.info("stream_closed", session_id=session_id, conflations=subscriber.conflations)


class Wake:
    """The sender's wake-up flag: ``set`` from a store listener (on the loop), ``wait``
    with a timeout. One future per wait and a timer handle, where ``asyncio.wait_for``
    over an ``Event`` adds a task and two more loop turns between a commit and its send.

    Example:

    >>> async def main():
    ...     wake = Wake()
    ...     timed_out = await wake.wait(0.01)
    ...     wake.set()
    ...     return timed_out, await wake.wait(10)
    >>> asyncio.run(main())
    (False, True)
    """

    __slots__ = ("_flag", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        """Raise the flag and wake a waiting sender.

        Example: ``Subscriber(wake.set, ...)`` wakes the sender on every queued frame.
        """
        self._flag = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        """Lower the flag (the sender is about to drain the queue).

        Example: ``wake.clear()`` before ``subscriber.drain()``.
        """
        self._flag = False

    async def wait(self, timeout: float) -> bool:
        """Wait until the flag is up or ``timeout`` seconds pass; True if it is up.

        Example: ``if not await wake.wait(interval):`` sends progress instead.
        """
        if self._flag:
            return True
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _time_up, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        return self._flag


def _time_up(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _packed(items: list[Any], limits: Limits) -> list[spb.ServerMessage]:
    return list(pack(items, limits))


def _carries_large_values(items: list[Any]) -> bool:
    # A frame whose events carry a large stored value (by the record's encoded size).
    return any(
        isinstance(item, PendingFrame) and any(
            event.record.size - event.record.metadata_size >= offload.LARGE_VALUE_BYTES
            for event in item.events
        )
        for item in items
    )


async def _settled(store: MemoryStore, generation: int, context: grpc.aio.ServicerContext,
                   subscriber: Subscriber) -> int | None:
    """The revision up to which what is queued may be sent: every commit at or below it
    is durable (a durable store syncs first). A sync that met another replica's write
    (its commits above some revision undone, and dropped from the queue) settles again.
    The stream is aborted UNAVAILABLE instead, and None returned, when the store was
    reloaded since the stream opened (its queue may hold commits the storage refused),
    the storage refused, or the queue could not drop what a conflict undid; the client
    then resumes from the last revision it got.

    Example: ``if (durable := await _settled(store, gen, context, sub)) is None: return``.
    """
    try:
        while True:
            revision = store.revision
            try:
                if store.pending:
                    await store.sync(revision)
            except RevisionConflict:
                if subscriber.undone:
                    raise
                continue  # the undone commits left the queue: settle what is left
            if store.generation != generation:
                raise StorageError(
                    "the server's state went back to what its storage holds (a refused "
                    "write, or another replica's); resume from the last revision received"
                )
            if subscriber.undone:
                raise StorageError(
                    "another replica wrote first and commits queued for this stream were "
                    "undone; resume from the last revision received"
                )
            return revision
    except (StorageError, RevisionConflict) as exc:
        # UNAVAILABLE either way: the client resumes from its last revision.
        await abort_with(context, StorageError(str(exc)))
        return None


async def _read(
    service: StreamService,
    request_iterator: AsyncIterator[spb.ClientMessage],
    session_id: str,
    subscriber: Subscriber,
    room: asyncio.Event,
) -> None:
    # The client's messages after 'open'; an error ends the stream (the sender aborts).
    store = service.store
    async for message in request_iterator:
        if isinstance(message, Malformed):
            raise message.exception()
        kind = message.WhichOneof("kind")
        if kind == "subscribe":
            since = message.subscribe.from_revision
            if since > store.revision:
                # The client saw ``since`` through another replica (one that died): a
                # resync to this one's older state would take the values back, then
                # bring the same versions again once it caught up. Later messages wait.
                await store.reached(since, RESUME_WAIT)
            service._subscribe(session_id, subscriber, message.subscribe)
        elif kind == "unsubscribe":
            # Ids as given (another session's variable may be unwatched even after
            # losing access), and own names resolved.
            refs = list(message.unsubscribe.variable_ids)
            own = store.session(session_id)
            subscriber.unwatch([own.names.get(ref, ref) for ref in refs])
            subscriber.push_control(spb.Unsubscribed(request_id=message.unsubscribe.request_id))
        elif kind == "ping":
            subscriber.push_control(spb.Pong(nonce=message.ping.nonce, revision=store.revision))
        else:
            raise InvalidValueError(f"unexpected {kind!r} message on an open Session stream")
        if subscriber.pending_controls >= MAX_PENDING_CONTROLS:
            # The client writes faster than it reads: stop reading until the sender
            # has caught up, so gRPC's flow control pushes back on the client.
            room.clear()
            await room.wait()
