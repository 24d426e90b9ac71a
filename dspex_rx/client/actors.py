"""Client-side variable actors and the hub that feeds them from the one watch stream.

A ``VariableActor`` is the only writer of its variable's cache entry and the hot source of
its observers; every change reaches it in version order through the hub, which owns the
connection's single Session stream, routes frames to actors and sends (un)subscribes.
Everything here runs in the trio thread.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import grpc
import reactivex
import trio
from reactivex import abc as rx_abc

from dspex_rx.client.cache import VariableCache
from dspex_rx.errors import AccessDeniedError, DspexError, error_from_kind
from dspex_rx.logs import get_logger
from dspex_rx.rx import TrioObservable, TrioScheduler
from dspex_rx.v1 import session_pb2 as spb
from dspex_rx.wire import codec
from dspex_rx.wire.convert import map_rpc_error, timestamp, utc_datetime

if TYPE_CHECKING:
    from dspex_rx.client.transport import Stream, Transport

log = get_logger("dspex_rx.actors")

_UPDATE_NAMES = {
    spb.UPDATE_TYPE_INITIAL: "initial",
    spb.UPDATE_TYPE_VALUE_CHANGE: "value_change",
    spb.UPDATE_TYPE_DELETED: "deleted",
    spb.UPDATE_TYPE_DEPENDENCY_CHANGED: "dependency_changed",
    spb.UPDATE_TYPE_RESYNC: "resync",
    spb.UPDATE_TYPE_OPTIMIZATION: "optimization",
    spb.UPDATE_TYPE_REVOKED: "revoked",
}


@dataclass(frozen=True, slots=True)
class VariableUpdate:
    """One change of a variable as a watcher sees it.

    ``update_type`` is ``initial``, ``value_change``, ``deleted``, ``resync`` (the current
    value after a gap the server could not replay), ``dependency_changed`` (a variable
    this one depends on changed; ``metadata`` names it and the revision) or, for
    optimization observers only, ``optimization`` (``metadata`` is the status).
    ``metadata`` is the writer's metadata for that change, as given (system notes of a
    rollback, an import or an optimization step for those). ``timestamp`` is a
    timezone-aware UTC ``datetime``. Values are presented as ``get_variable`` returns them
    (a tensor written from torch comes back as a ``torch.Tensor`` where torch is installed).

    Example::

        async for update in session.watch_variable("temperature"):
            print(update.name, update.old_value, "->", update.value, update.version)
    """

    variable_id: str
    name: str
    value: Any
    old_value: Any
    version: int
    revision: int
    update_type: str
    metadata: dict[str, Any]
    timestamp: datetime
    source: str
    conflated: bool = False


def update_from_pb(event: spb.VariableEvent, conflated: bool = False) -> VariableUpdate:
    """Decode a wire event.

    Example::

        update = update_from_pb(frame.events[0])
    """
    return VariableUpdate(
        variable_id=event.variable_id,
        name=event.name,
        value=codec.present(codec.decode(event.value), None),
        old_value=(
            codec.present(codec.decode(event.old_value), None)
            if event.HasField("old_value") else None
        ),
        version=event.version,
        revision=event.revision,
        update_type=_UPDATE_NAMES.get(event.update_type, "value_change"),
        metadata=codec.decode_map(event.metadata),
        timestamp=utc_datetime(event.timestamp),
        source=event.source,
        conflated=conflated,
    )


class _Attached(rx_abc.DisposableBase):
    """One local observer of an actor; disposing it detaches it. Small on purpose: with
    10,000 watched variables every byte here counts ten thousand times."""

    __slots__ = ("actor", "baseline", "include_initial", "last_version", "observer")

    def __init__(
        self,
        actor: VariableActor,
        observer: rx_abc.ObserverBase[VariableUpdate],
        include_initial: bool,
    ) -> None:
        self.actor = actor
        self.observer = observer
        self.include_initial = include_initial
        self.last_version = 0
        self.baseline = False  # has this observer been given (or skipped) its first value

    # Class-level, not a slot: plain observers pay nothing for it.
    optimization = False

    def dispose(self) -> None:
        self.actor.detach(self)


class _OptimizationAttached(_Attached):
    """An observer of the variable's optimization status events only."""

    __slots__ = ()
    optimization = True


@dataclass(slots=True)
class ActorStats:
    """Per-variable client counters.

    Example::

        actor.stats.cache_hits, actor.stats.write_count
    """

    cache_hits: int = 0
    cache_misses: int = 0
    write_count: int = 0
    read_latency_total: float = 0.0
    write_latency_total: float = 0.0
    optimization_time: float = 0.0  # wall seconds this client spent optimizing it


class VariableActor:
    """One variable on the client: its cache entry, its observers, its stats.

    The cache holds the value under the variable's id; the actor is the only writer of
    that entry and keeps the entry's version and revision itself.

    Example::

        actor = hub.actor("temperature")
        disposable = actor.attach(observer, include_initial=True, ref="temperature")
    """

    __slots__ = (
        "acked_revision", "attached", "fetched_at", "hub", "id", "live", "name", "revision",
        "stats", "version", "wire",
    )

    def __init__(self, hub: WatchHub, var_id: str, name: str) -> None:
        self.hub = hub
        self.id = var_id  # the ref first used, until the server tells the id
        self.name = name
        self.version = 0
        self.revision = 0
        self.fetched_at = 0.0
        self.attached: list[_Attached] = []
        self.wire = False  # this actor wants a subscription on the stream
        self.live = False  # subscribed and its initial value arrived: the entry is pushed
        self.acked_revision = 0  # the revision of the server's ack of its subscribe
        self.stats = ActorStats()

    # ---- the cache entry (only the actor writes it)

    def cached(self) -> tuple[bool, Any]:
        """(found, value) without counting a hit or a miss.

        Example::

            found, value = actor.cached()
        """
        found, value = self.hub.cache.lookup(self.id, count=False)
        return found, value

    def read(self) -> tuple[bool, Any]:
        """A cache read that counts a hit or a miss: (found, value).

        Example::

            found, value = actor.read()   # not found: go to the server
        """
        found, value = self.hub.cache.lookup(self.id)
        if found:
            self.stats.cache_hits += 1
        else:
            self.stats.cache_misses += 1
        return found, value

    def store(self, value: Any, version: int, revision: int) -> None:
        """Record a server answer (a read, our own write, a pushed event) unless it is older
        than what the actor already has.

        Example::

            actor.store(value, variable.version, variable.mod_revision)
        """
        if version < self.version:
            return
        self.version = version
        self.revision = revision
        self.fetched_at = time.time()
        self.hub.cache.put(self.id, value, pinned=self.live, name=self.name)

    # ---- observers

    def attach(
        self,
        observer: rx_abc.ObserverBase[VariableUpdate],
        include_initial: bool,
        ref: str,
        optimization: bool = False,
    ) -> rx_abc.DisposableBase:
        """Add a local observer; the first one subscribes on the wire (by ``ref``). With
        ``optimization`` the observer gets the variable's optimization status events and
        nothing else; other observers never see those.

        Example::

            disposable = actor.attach(observer, include_initial=True, ref="temperature")
        """
        kind = _OptimizationAttached if optimization else _Attached
        attached = kind(self, observer, include_initial)
        self.attached.append(attached)
        found, value = self.cached() if self.live else (False, None)
        if found and optimization:
            pass  # status events need no baseline; the wire subscription is in place
        elif found:
            # Live: the entry is exactly what the stream said last, so it is the baseline.
            attached.baseline = True
            attached.last_version = self.version
            if include_initial:
                self._deliver(attached, self._current_update(value))
        elif not self.wire or self.live:
            # Not subscribed yet, or live but the entry was invalidated: ask the server for
            # the current value (a repeated subscribe is harmless: the server keeps a set).
            self.wire = True
            self.live = False
            self.hub.request_subscribe(self, ref)
        return attached

    def detach(self, attached: _Attached) -> None:
        """Remove an observer; the last one unsubscribes on the wire.

        Example::

            actor.detach(attached)
        """
        if attached not in self.attached:
            return
        self.attached.remove(attached)
        if not self.attached and self.wire:
            self._unwire()
            self.hub.request_unsubscribe(self)

    def _unwire(self) -> None:
        self.wire = False
        self.live = False
        self.hub.cache.unpin(self.id)

    def _current_update(self, value: Any) -> VariableUpdate:
        return VariableUpdate(
            self.id, self.name, value, None, self.version, self.revision, "initial", {},
            utc_datetime(timestamp(self.fetched_at)), "cache",
        )

    def _deliver(self, attached: _Attached, update: VariableUpdate) -> None:
        attached.last_version = max(attached.last_version, update.version)
        try:
            attached.observer.on_next(update)
        except Exception:
            # One observer's bug must not starve the others or the stream.
            log.exception("observer_failed", variable=self.name)

    def apply(self, update: VariableUpdate) -> None:
        """Take one event from the stream: update the entry, then tell each observer.

        Each observer gets a version at most once and never an older one after a newer.
        An observer that has no baseline yet takes the first event as its baseline (the
        server sends the initial value first, but a conflated frame may carry a later
        change in its place).

        Example::

            actor.apply(update_from_pb(event))
        """
        kind = update.update_type
        if kind == "revoked":
            # This session lost `observe` on another session's variable: the server ended
            # the subscription, so every observer ends with PermissionError.
            reason = update.metadata.get("reason") or "observe permission revoked"
            self.hub.cache.invalidate_nowait(self.id, "revoked")
            self._end(AccessDeniedError(
                f"watch of variable {self.id!r} ended: {reason}", variable=self.id,
                permission="observe",
            ))
            self.hub.forget(self)
            return
        if kind == "optimization":
            # A status note: the value and version are unchanged, so the entry and the
            # plain observers' version tracking stay as they are.
            for attached in list(self.attached):
                if attached.optimization:
                    self._deliver(attached, update)
            return
        if self.wire and kind != "deleted":
            self.live = True
        if kind == "deleted":
            self.hub.cache.invalidate_nowait(self.id, "deleted")
        elif update.version >= self.version:
            self.store(update.value, update.version, update.revision)
        for attached in list(self.attached):
            if attached.optimization:
                continue
            if not attached.baseline:
                if kind == "deleted":
                    continue
                attached.baseline = True
                attached.last_version = update.version
                if attached.include_initial:
                    self._deliver(attached, update)
                continue
            if (
                kind == "deleted"
                or update.version > attached.last_version
                or (kind == "dependency_changed" and update.version == attached.last_version)
            ):
                self._deliver(attached, update)
        if kind == "deleted":
            self._end(None)
            self.hub.forget(self)

    def _end(self, error: Exception | None) -> None:
        attached, self.attached = self.attached, []
        self._unwire()
        for a in attached:
            try:
                if error is None:
                    a.observer.on_completed()
                else:
                    a.observer.on_error(error)
            except Exception:
                log.exception("observer_failed", variable=self.name)

    def fail(self, error: Exception) -> None:
        """End every observer with ``error`` (unknown variable, stream lost).

        Example::

            actor.fail(KeyError("no variable 'x'"))
        """
        self._end(error)


@dataclass(slots=True)
class _PendingSubscribe:
    """A subscribe sent and not yet answered: what to re-send, unchanged, after a break."""

    actors: list[VariableActor]
    refs: list[str]
    include_initial: bool = True
    from_revision: int = 0

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

    Example::

        hub = WatchHub(transport, service, session_id, client_id, nursery, cache,
                       metadata=(("x-dspex-session-token", token),))
        actor = hub.actor("temperature")

    ``metadata`` (the session token) is sent with every open of the stream, reconnects
    included.
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
        self.by_id: dict[str, VariableActor] = {}
        self.by_name: dict[str, VariableActor] = {}
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

    @property
    def wire_subscribes(self) -> int:
        """How many variables this connection wants subscribed on the stream.

        Example::

            assert hub.wire_subscribes == 1   # however many local observers
        """
        return sum(1 for a in self._actors() if a.wire)

    def _actors(self) -> list[VariableActor]:
        return list({id(a): a for a in [*self.by_id.values(), *self.by_name.values()]}.values())

    # ---- actors

    def actor(self, ref: str) -> VariableActor:
        """The actor for a variable name or id, created on first use.

        Example::

            hub.actor("temperature").attach(observer, True, "temperature")
        """
        actor = self.by_id.get(ref) or self.by_name.get(ref)
        if actor is None:
            actor = VariableActor(self, ref, ref)
            self.by_name[ref] = actor
        return actor

    def known(self, ref: str) -> VariableActor | None:
        """The actor for a ref if there is one (no creation).

        Example::

            actor = hub.known("temperature")
        """
        return self.by_id.get(ref) or self.by_name.get(ref)

    def learn(self, var_id: str, name: str) -> VariableActor:
        """Bind an id and a name to one actor (from any server answer). Provisional actors
        made for a ref before its id was known are adopted or folded in.

        Example::

            actor = hub.learn(variable.id, variable.name)
        """
        actor = self.by_id.get(var_id)
        provisional = []
        for ref in (var_id, name):
            candidate = self.by_name.get(ref)
            if (
                candidate is not None
                and candidate is not actor
                and self.by_id.get(candidate.id) is not candidate
                and candidate not in provisional
            ):
                provisional.append(candidate)
        if actor is None:
            if provisional:
                actor = provisional.pop(0)
                self.cache.rekey(actor.id, var_id)
                actor.id = var_id
            else:
                actor = VariableActor(self, var_id, name)
            self.by_id[var_id] = actor
        for other in provisional:
            self.fold(other, actor)
        if var_id != name and self.by_name.get(var_id) is not None:
            del self.by_name[var_id]  # a provisional key that was really an id
        actor.name = name
        self.by_name[name] = actor
        return actor

    def fold(self, source: VariableActor, target: VariableActor) -> None:
        """Move ``source``'s observers to ``target`` (the same variable known two ways).

        Example::

            hub.fold(provisional, actor)
        """
        moved, source.attached = source.attached, []
        if source.wire:
            source._unwire()
        if not moved:
            return
        for attached in moved:
            attached.baseline = False
            attached.actor = target
            target.attached.append(attached)
        if not target.wire or target.live:
            target.wire = True
            target.live = False
            self.request_subscribe(target, target.id)

    def forget(self, actor: VariableActor) -> None:
        """Drop a deleted variable's actor.

        Example::

            hub.forget(actor)
        """
        if self.by_id.get(actor.id) is actor:
            del self.by_id[actor.id]
        if self.by_name.get(actor.name) is actor:
            del self.by_name[actor.name]

    # ---- outgoing

    def _send(self, message: spb.ClientMessage) -> None:
        if self._closed:
            raise RuntimeError("the session is closed")
        if self._outbox_send is None:
            self._start()
        assert self._outbox_send is not None
        self._outbox_send.send_nowait(message)

    def request_subscribe(self, actor: VariableActor, ref: str) -> None:
        """Queue a wire subscription for an actor (sent by the sender task, in order).

        Example::

            hub.request_subscribe(actor, "temperature")
        """
        request_id = next(self._requests)
        pending = self._pending[request_id] = _PendingSubscribe([actor], [ref])
        self._send(pending.message(request_id))

    def request_unsubscribe(self, actor: VariableActor) -> None:
        """Queue a wire unsubscription, in order after the subscription it undoes (an actor
        whose id is not known yet goes by the ref it subscribed with; the server resolves it).

        Example::

            hub.request_unsubscribe(actor)
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

        Example::

            await hub.sync()   # now the cache reflects every write acknowledged before
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
                stream = await self.transport.open_stream(
                    self.path, spb.ServerMessage, metadata=self.metadata
                )
                await stream.send(
                    spb.ClientMessage(
                        open=spb.OpenStream(session_id=self.session_id, client_id=self.client_id)
                    )
                )
                if resume:
                    await self._resubscribe(stream)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_loop, stream, outbox)
                    await self._dispatch_loop(stream)
                    nursery.cancel_scope.cancel()
                if self._closed:
                    return
                raise ConnectionError("the server ended the watch stream")
            except Exception as exc:
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
                log.warning("watch_stream_reconnecting", session_id=self.session_id,
                            attempt=failures, error=repr(error))
                await trio.sleep(min(2.0, 0.05 * 2 ** min(failures, 6)))
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
        asked = {id(a) for p in self._pending.values() for a in p.actors}
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

    async def _dispatch_loop(self, stream: Stream[spb.ServerMessage]) -> None:
        while (batch := await stream.receive_batch()) is not None:
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
        elif control == "progress":
            self.revision = max(self.revision, message.progress.revision)
        elif control == "pong":
            self.revision = max(self.revision, message.pong.revision)
            done = self._pongs.pop(message.pong.nonce, None)
            if done is not None:
                done.set()

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
        for ref in ack.missing:  # a resumed variable that no longer exists
            actor = by_ref[ref]
            actor.fail(error_from_kind("not_found", f"no variable {ref!r} (deleted)"))
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

    def fail(self, error: Exception) -> None:
        """End every watch with ``error`` (the session is lost); later subscriptions open
        a new stream, which the client no longer asks for.

        Example::

            hub.fail(SessionNotFoundError("session 's' is lost"))
        """
        self._fail_all(error)

    def _fail_all(self, error: BaseException) -> None:
        self._failure = error
        self._outbox_send = None  # the next subscription opens a new stream
        self._pending.clear()
        failure = error if isinstance(error, Exception) else ConnectionError(str(error))
        for actor in self._actors():
            if actor.attached or actor.wire:
                actor.fail(failure)
        for done in self._pongs.values():  # left in place: sync() tells failure from pong
            done.set()

    async def close(self) -> None:
        """Stop the stream; observers complete, waiting ``sync()`` calls raise.

        Example::

            await hub.close()
        """
        self._closed = True
        if self._outbox_send is not None:
            self._outbox_send.close()
        for actor in self._actors():
            actor._end(None)
        for done in self._pongs.values():
            done.set()


def _retryable(error: BaseException) -> bool:
    """A failure of the connection, not a refusal by the server (every error of a group)."""
    if isinstance(error, BaseExceptionGroup):
        return all(_retryable(e) for e in error.exceptions)
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


class VariableObservable(TrioObservable[VariableUpdate]):
    """A variable's updates: subscribing attaches the observer to the variable's actor
    directly (one reactivex subscribe layer, not two), on the session's trio scheduler.

    Example::

        VariableObservable(hub, "temperature", True, scheduler).subscribe(print)
    """

    def __init__(
        self,
        hub: WatchHub,
        ref: str,
        include_initial: bool,
        scheduler: TrioScheduler,
        optimization: bool = False,
    ) -> None:
        super().__init__(_NEVER, scheduler)
        self._hub = hub
        self._ref = ref
        self._include_initial = include_initial
        self._optimization = optimization

    def _subscribe_core(
        self,
        observer: rx_abc.ObserverBase[VariableUpdate],
        scheduler: rx_abc.SchedulerBase | None = None,
    ) -> rx_abc.DisposableBase:
        return self._hub.actor(self._ref).attach(
            observer, self._include_initial, self._ref, self._optimization
        )


_NEVER: reactivex.Observable[Any] = reactivex.never()
