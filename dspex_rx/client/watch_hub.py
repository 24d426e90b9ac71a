"""The watch hub: the connection's one Session stream, fanned out to the variable actors;
it sends (un)subscribes, routes frames, and reconnects and resumes after a break.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import trio

from dspex_rx.client.actor_directory import ActorDirectory
from dspex_rx.client.cache import VariableCache
from dspex_rx.client.updates import update_from_pb
from dspex_rx.client.variable_actor import VariableActor
from dspex_rx.errors import DspexError, RateLimitedError, StorageError, error_from_kind
from dspex_rx.logs import get_logger
from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.wire.convert import map_rpc_error

if TYPE_CHECKING:
    from dspex_rx.client.transport import Stream, Transport

log = get_logger("dspex_rx.actors")


@dataclass(slots=True)
class _PendingSubscribe:
    """A subscribe sent and not yet answered: what to re-send, unchanged, after a break."""

    actors: list[VariableActor]
    refs: list[str]
    include_initial: bool = True
    from_revision: int = 0
    # Asks a subscribed actor's current value again (a new observer that cannot take the
    # cache's): the actor stays in the resume after a break.
    join: bool = False

    def message(self, request_id: int) -> spb.ClientMessage:
        return spb.ClientMessage(
            subscribe=spb.Subscribe(
                request_id=request_id, refs=self.refs, include_initial=self.include_initial,
                from_revision=self.from_revision,
            )
        )


class WatchHub:
    """The connection's watch machinery: actors by id and name, the Session stream, and the
    two tasks that serve it (a sender for subscribe/unsubscribe, a dispatcher for frames).

    A stream broken by the transport is reopened and every subscription resumed from the
    last revision seen. If the server refuses (session gone) or reconnecting fails for
    ``reconnect_timeout`` seconds, every observer gets the error, waiting ``sync()`` calls
    raise it, and the next subscription opens a new stream.

    ``metadata`` (the session token) is sent with every open of the stream, reconnects
    included.

    Example: ``hub.actor("temperature")`` is that variable's actor on this connection.
    """

    def __init__(
        self,
        transport: Transport,
        service_name: str,
        session_id: str,
        client_id: str,
        nursery: trio.Nursery,
        cache: VariableCache,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.transport = transport
        self.metadata = tuple(metadata)
        self.path = f"/{service_name}/Session"
        self.session_id = session_id
        self.client_id = client_id
        self.nursery = nursery
        self.cache = cache
        self.directory = ActorDirectory(self)
        # The directory's own maps (never rebound), for the stream code and the session.
        self.by_id = self.directory.by_id
        self.by_name = self.directory.by_name
        self.revision = 0
        self.frames = 0
        self._requests = itertools.count(1)
        self._pending: dict[int, _PendingSubscribe] = {}
        self._pongs: dict[int, trio.Event] = {}
        self._outbox_send: trio.MemorySendChannel[spb.ClientMessage] | None = None
        self._closed = False
        self._failure: BaseException | None = None
        # How long to keep trying to reconnect a broken stream before failing every watch.
        self.reconnect_timeout = 30.0
        self.reconnects = 0
        self._healthy = False
        # The scope of the stream being served, cancelled by ``suspect`` to reopen it.
        self._stream_scope: trio.CancelScope | None = None
        # The stream whose messages reach the actors (a token per stream opened), if any.
        self._listening: object | None = None
        self._suspicion = ""

    @property
    def wire_subscribes(self) -> int:
        """How many variables this connection wants subscribed on the stream.

        Example: ``hub.wire_subscribes`` is 1 for one watched variable, however many observers.
        """
        return sum(1 for a in self.directory.all() if a.wire)

    def actor(self, ref: str) -> VariableActor:
        """The actor for a variable name or id, created on first use.

        Example: ``hub.actor("temperature")`` creates the actor on first use.
        """
        return self.directory.actor(ref)

    def known(self, ref: str) -> VariableActor | None:
        """The actor for a ref if there is one (no creation).

        Example: ``hub.known("temperature")`` is ``None`` until something asked for it.
        """
        return self.directory.known(ref)

    def learn(self, var_id: str, name: str) -> VariableActor:
        """Bind an id and a name to one actor (from any server answer); see ``ActorDirectory``.

        Example: ``hub.learn("var_temperature_1", "temperature")`` binds both refs to one actor.
        """
        return self.directory.learn(var_id, name)

    def fold(self, source: VariableActor, target: VariableActor) -> None:
        """Move ``source``'s observers to ``target`` (the same variable known two ways).

        Example: ``hub.fold(provisional, actor)`` moves the provisional actor's observers.
        """
        self.directory.fold(source, target)

    def forget(self, actor: VariableActor) -> None:
        """Drop a deleted variable's actor.

        Example: ``hub.forget(actor)`` drops a deleted variable's actor from both maps.
        """
        self.directory.forget(actor)

    # ---- outgoing

    def _send(self, message: spb.ClientMessage) -> None:
        if self._closed:
            raise RuntimeError("the session is closed")
        if self._outbox_send is None:
            self._start()
        assert self._outbox_send is not None
        self._outbox_send.send_nowait(message)

    def request_subscribe(self, actor: VariableActor, ref: str, join: bool = False) -> None:
        """Queue a wire subscription for an actor (sent by the sender task, in order).
        ``join``: the actor is subscribed already and only wants the current value again.

        Example: ``hub.request_subscribe(actor, "temperature")`` queues one Subscribe.
        """
        request_id = next(self._requests)
        pending = self._pending[request_id] = _PendingSubscribe([actor], [ref], join=join)
        self._send(pending.message(request_id))

    def request_unsubscribe(self, actor: VariableActor) -> None:
        """Queue a wire unsubscription, in order after the subscription it undoes (an actor
        whose id is not known yet goes by the ref it subscribed with; the server resolves it).

        Example: ``hub.request_unsubscribe(actor)`` queues one Unsubscribe of ``actor.id``.
        """
        if self._closed or self._outbox_send is None:
            return
        self._send(
            spb.ClientMessage(
                unsubscribe=spb.Unsubscribe(
                    request_id=next(self._requests), variable_ids=[actor.id]
                )
            )
        )

    async def sync(self) -> int:
        """Round trip a ping through the stream: every subscription asked for before it is in
        force and every event before it has been applied. Raises if the stream fails or
        the session closes meanwhile.

        Example: after ``await hub.sync()`` the cache reflects every write acknowledged before.
        """
        nonce = next(self._requests)
        done = trio.Event()
        self._pongs[nonce] = done
        self._send(spb.ClientMessage(ping=spb.Ping(nonce=nonce)))
        await done.wait()
        if self._pongs.pop(nonce, None) is not None:  # woken by a failure, not a pong
            if self._closed:
                raise RuntimeError("the session is closed")
            assert self._failure is not None
            raise self._failure
        return self.revision

    # ---- the stream

    def _start(self) -> None:
        send, receive = trio.open_memory_channel[spb.ClientMessage](math.inf)
        self._outbox_send = send
        self.nursery.start_soon(self._run, receive, name="dspex-rx-watch-stream")

    async def _run(self, outbox: trio.MemoryReceiveChannel[spb.ClientMessage]) -> None:
        # Reconnects on transport failures (server restart, network blip) and resumes the
        # subscriptions from the last revision seen: the server replays what was missed
        # from its log (or sends RESYNC), and per-observer version tracking drops repeats.
        # Errors the server meant (session gone, bad request) end every watch instead, and
        # so do reconnect_timeout seconds without a healthy stream.
        failures = 0
        resume = False
        deadline = math.inf
        while True:
            stream: Stream[spb.ServerMessage] | None = None
            self._healthy = False
            try:
                with trio.CancelScope() as scope:
                    self._stream_scope = scope
                    # This stream's messages count while it is the one listened to: a
                    # stream given up on (suspected, broken) may still deliver some
                    # before it is closed, and they must not touch the actors.
                    listening = self._listening = object()
                    stream = await self.transport.open_stream(
                        self.path, spb.ServerMessage, metadata=self.metadata,
                        listener=functools.partial(self._on_batch, listening),
                    )
                    await stream.send(
                        spb.ClientMessage(open=spb.OpenStream(
                            session_id=self.session_id, client_id=self.client_id
                        ))
                    )
                    if resume:
                        await self._resubscribe(stream)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._send_loop, stream, outbox)
                        await self._dispatch_loop(stream, listening)
                        nursery.cancel_scope.cancel()
                self._stream_scope = None
                self._listening = None
                if self._closed:
                    return
                if scope.cancelled_caught:
                    raise ConnectionError(f"the connection looks dead: {self._suspicion}")
                raise ConnectionError("the server ended the watch stream")
            except Exception as exc:
                self._stream_scope = None
                self._listening = None
                if self._closed:  # errors while closing are the closing itself
                    return
                error = _unwrap(exc)
                if self._healthy or failures == 0:
                    failures = 0  # a fresh blip: short backoff, a full timeout
                    deadline = trio.current_time() + self.reconnect_timeout
                if not _retryable(error) or trio.current_time() >= deadline:
                    log.warning("watch_stream_failed", session_id=self.session_id,
                                error=repr(error))
                    self._fail_all(error)
                    return
                failures += 1
                resume = True
                self.reconnects += 1
                # Nothing is pushed until the stream is back: a watched entry must not
                # keep claiming to be current meanwhile.
                for actor in self.directory.all():
                    if actor.wire:
                        actor.suspend()
                log.warning("watch_stream_reconnecting", session_id=self.session_id,
                            attempt=failures, error=repr(error))
                pause = min(2.0, 0.05 * 2 ** min(failures, 6))
                if isinstance(error, RateLimitedError) and error.retry_after:
                    pause = max(pause, error.retry_after)  # sooner is refused again
                await trio.sleep(pause)
            finally:
                if stream is not None:
                    with trio.CancelScope(shield=True):
                        await stream.close()

    async def _resubscribe(self, stream: Stream[spb.ServerMessage]) -> None:
        # Re-send on the new stream what was in force before the break, first the resume
        # of every variable whose observers have a baseline, in one request (one replay
        # frame per missed commit, so atomic batches stay whole and commits in order),
        # then a fresh subscribe of the acked ones still waiting for their initial value,
        # then the unanswered subscribes unchanged, then the unanswered pings.
        for request_id, pending in list(self._pending.items()):
            if not any(a.wire for a in pending.actors):
                del self._pending[request_id]  # all its observers left meanwhile
        # A join leaves its actor in the resume: its subscription was in force, and what
        # changed meanwhile must reach the observers that had a value (the join's own
        # answer comes after the replay, a repeat for them).
        asked = {id(a) for p in self._pending.values() if not p.join for a in p.actors}
        unanswered = list(self._pending.items())
        # Every actor in by_id is keyed by its own id (learn() is the only writer), so
        # these are the wired actors whose subscribe the server answered.
        resume: list[VariableActor] = []
        fresh: list[VariableActor] = []
        for actor in self.by_id.values():
            if actor.wire and id(actor) not in asked:
                has_value = actor.live or any(att.baseline for att in actor.attached)
                (resume if has_value else fresh).append(actor)
        # ``fresh``: acked, but the initial value never came (the break fell between the
        # ack and the snapshot, or between the parts of a split one). Each resumes from
        # its ack with the current value asked for too, so a change or a delete meanwhile
        # arrives as it would for the others; one request each, so one deleted variable
        # cannot fail another's.
        batches = [(resume, False, max(self.revision, 1))] if resume else []
        batches += [([a], True, max(a.acked_revision, 1)) for a in fresh]
        for actors, initial, since in batches:
            request_id = next(self._requests)
            pending = self._pending[request_id] = _PendingSubscribe(
                actors, [a.id for a in actors], include_initial=initial,
                from_revision=since,
            )
            await stream.send(pending.message(request_id))
        for request_id, pending in unanswered:
            await stream.send(pending.message(request_id))
        for nonce in list(self._pongs):
            await stream.send(spb.ClientMessage(ping=spb.Ping(nonce=nonce)))

    async def _send_loop(
        self,
        stream: Stream[spb.ServerMessage],
        outbox: trio.MemoryReceiveChannel[spb.ClientMessage],
    ) -> None:
        async for message in outbox:
            await stream.send(message)

    async def _dispatch_loop(self, stream: Stream[spb.ServerMessage], listening: object,
                             ) -> None:
        # The listener (``_on_batch``) handles messages as they arrive, with no task
        # woken between the stream and the actors (bench_watch_path.py: that hop was
        # about 50 us of a 630 us write -> watcher); this returns at the stream's end, or
        # raises how it ended (a listener's own failure included). A stream that has no
        # listener (a test's wrapper) hands its batches here instead.
        while (batch := await stream.receive_batch()) is not None:
            self._on_batch(listening, batch)

    def _on_batch(self, listening: object, batch: list[spb.ServerMessage]) -> None:
        if listening is not self._listening:
            return  # a stream given up on: dropped, as a closed stream's would be
        for message in batch:
            self._handle(message)

    def _handle(self, message: spb.ServerMessage) -> None:
        for frame in message.frames:
            self.frames += 1
            for event in frame.events:
                actor = self.by_id.get(event.variable_id)
                if actor is None:
                    continue  # unsubscribed meanwhile
                actor.apply(update_from_pb(event, frame.conflated))
            self.revision = max(self.revision, frame.revision)
        control = message.WhichOneof("control")
        if control in ("subscribed", "pong"):
            self._healthy = True  # the server answers requests on this stream
        if control == "subscribed":
            self._on_subscribed(message.subscribed)
        elif control == "progress" and not self._resuming():
            self.revision = max(self.revision, message.progress.revision)
        elif control == "pong":
            if not self._resuming():
                self.revision = max(self.revision, message.pong.revision)
            done = self._pongs.pop(message.pong.nonce, None)
            if done is not None:
                done.set()

    def _resuming(self) -> bool:
        # A resume is unanswered: the server may not have read it yet (a ping sent during
        # the break leaves before it), and its replay starts below the revision a progress
        # or pong carries; taken as the resume point, a break before the replay would
        # resume past commits never delivered (as ``opened`` would: it never counts).
        return any(p.from_revision for p in self._pending.values())

    def _on_subscribed(self, ack: spb.Subscribed) -> None:
        pending = self._pending.pop(ack.request_id, None)
        if pending is None:
            return
        by_ref = dict(zip(pending.refs, pending.actors, strict=True))
        if ack.error:
            error = error_from_kind(ack.error_kind or "not_found", ack.error)
            for ref, actor in by_ref.items():
                if self.by_name.get(ref) is actor and self.by_id.get(actor.id) is not actor:
                    del self.by_name[ref]
                actor.fail(error)
            return
        for ref in ack.missing:
            # A resumed variable that no longer exists, its delete gone from the server's
            # log (inside it, the replay brings the delete): the same ending.
            by_ref[ref].gone(ack.revision)
        refs = list(ack.refs) or pending.refs[: len(ack.variable_ids)]
        for ref, var_id, name in zip(refs, ack.variable_ids, ack.names, strict=True):
            actor = by_ref[ref]
            resolved = self.learn(var_id, name)
            resolved.acked_revision = ack.revision
            if resolved is not actor:
                # The ref named another variable than the actor's (re-registered name, or a
                # name and an id of one variable asked for separately): move the observers.
                self.fold(actor, resolved)
            if not resolved.attached:
                # Every observer left before the answer came: undo it on the wire.
                if resolved.wire:
                    resolved._unwire()
                self.request_unsubscribe(resolved)

    def suspect(self, reason: str) -> None:
        """A call on this connection failed as a dead connection does (the heartbeat
        timed out or was unavailable): stop serving watched values from the cache and
        reopen the stream, which resumes as after any break.

        Example: the heartbeat calls ``hub.suspect("heartbeat: UNAVAILABLE")``.
        """
        if self._closed or self._outbox_send is None:  # no stream: nothing is pushed
            return
        for actor in self.directory.all():
            if actor.wire:
                actor.suspend()
        self._suspicion = reason
        # From now on the suspected stream's messages are dropped: one arriving before it
        # is closed would make the entries just suspended current again.
        self._listening = None
        if self._stream_scope is not None:
            self._stream_scope.cancel()

    def fail(self, error: Exception) -> None:
        """End every watch with ``error`` (the session is lost); later subscriptions open
        a new stream, which the client no longer asks for.

        Example: ``hub.fail(SessionNotFoundError("session 's' is lost"))`` ends every watch.
        """
        self._fail_all(error)

    def _fail_all(self, error: BaseException) -> None:
        self._failure = error
        self._outbox_send = None  # the next subscription opens a new stream
        self._pending.clear()
        failure = error if isinstance(error, Exception) else ConnectionError(str(error))
        for actor in self.directory.all():
            if actor.attached or actor.wire:
                actor.fail(failure)
        for done in self._pongs.values():  # left in place: sync() tells failure from pong
            done.set()

    async def close(self) -> None:
        """Stop the stream; observers complete, waiting ``sync()`` calls raise.

        Example: ``await hub.close()`` completes every observer.
        """
        self._closed = True
        if self._outbox_send is not None:
            self._outbox_send.close()
        for actor in self.directory.all():
            actor._end(None)
        for done in self._pongs.values():
            done.set()


def _retryable(error: BaseException) -> bool:
    """A failure of the connection, not a refusal by the server (every error of a group)."""
    if isinstance(error, BaseExceptionGroup):
        return all(_retryable(e) for e in error.exceptions)
    if isinstance(error, DspexError):
        # A refusal the server meant (a bad token is a PermissionError, an OSError): only
        # a storage that could not take a write, or a rate limit (another caller from
        # this address guessing), is worth waiting out.
        return isinstance(error, StorageError | RateLimitedError)
    if isinstance(error, ConnectionError | OSError):
        return True
    code = getattr(error, "code", None)
    if callable(code) and not isinstance(error, DspexError):
        return code() in _RETRYABLE_CODES
    return False


_RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


def _unwrap(error: BaseException) -> BaseException:
    """The error inside (nested) exception groups, mapped to a dspex-rx exception: the only
    one, or the first the server meant, or (all transport failures) the first."""
    if isinstance(error, BaseExceptionGroup):
        leaves = [_unwrap(e) for e in error.exceptions]
        meant = [e for e in leaves if not _retryable(e)]
        return (meant or leaves)[0]
    return map_rpc_error(error)
