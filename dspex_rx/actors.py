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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import reactivex
import trio
from reactivex import abc as rx_abc
from reactivex.disposable import Disposable

from . import codec
from .cache import VariableCache
from .convert import seconds
from .errors import error_from_kind
from .logs import get_logger
from .v1 import session_pb2 as spb

if TYPE_CHECKING:
    from .transport import Stream, Transport

log = get_logger("dspex_rx.actors")

_UPDATE_NAMES = {
    spb.UPDATE_TYPE_INITIAL: "initial",
    spb.UPDATE_TYPE_VALUE_CHANGE: "value_change",
    spb.UPDATE_TYPE_DELETED: "deleted",
    spb.UPDATE_TYPE_DEPENDENCY_CHANGED: "dependency_changed",
    spb.UPDATE_TYPE_RESYNC: "resync",
}


@dataclass(frozen=True, slots=True)
class VariableUpdate:
    """One change of a variable as a watcher sees it.

    ``update_type`` is ``initial``, ``value_change``, ``deleted``, ``resync`` (the current
    value after a gap the server could not replay) or, later, ``dependency_changed``.

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
    timestamp: float
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
        value=codec.decode(event.value),
        old_value=codec.decode(event.old_value) if event.HasField("old_value") else None,
        version=event.version,
        revision=event.revision,
        update_type=_UPDATE_NAMES.get(event.update_type, "value_change"),
        metadata=codec.decode_map(event.metadata),
        timestamp=seconds(event.timestamp),
        source=event.source,
        conflated=conflated,
    )


@dataclass(slots=True)
class CacheEntry:
    """What the client knows of a variable: written only by its actor.

    Example::

        entry.value, entry.version, entry.revision, entry.fetched_at
    """

    value: Any
    version: int
    revision: int
    fetched_at: float


@dataclass(slots=True)
class _Attached:
    observer: rx_abc.ObserverBase[VariableUpdate]
    include_initial: bool
    last_version: int = 0
    baseline: bool = False  # has this observer been given (or skipped) its initial value


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
    remote_reads: int = 0


class VariableActor:
    """One variable on the client: its cache entry, its observers, its stats.

    Example::

        actor = hub.actor("temperature")
        disposable = actor.attach(observer, include_initial=True)
    """

    __slots__ = ("attached", "hub", "id", "live", "name", "stats", "version", "wire")

    def __init__(self, hub: WatchHub, var_id: str, name: str) -> None:
        self.hub = hub
        self.id = var_id  # the ref first used when the id is not known yet
        self.name = name
        self.version = 0
        self.attached: list[_Attached] = []
        self.wire = False  # a Subscribe for this variable is in force on the stream
        self.live = False  # wire and the initial value has arrived: the entry is pushed
        self.stats = ActorStats()

    # ---- cache entry (only the actor writes it)

    def entry(self) -> CacheEntry | None:
        """The cached entry if present and fresh (counts no hit or miss).

        Example::

            entry = actor.entry()
        """
        found, entry = self.hub.cache.lookup(self.id, count=False)
        return entry if found else None

    def read(self) -> CacheEntry | None:
        """A cache read that counts a hit or a miss.

        Example::

            entry = actor.read()   # None: go to the server
        """
        found, entry = self.hub.cache.lookup(self.id)
        if found:
            self.stats.cache_hits += 1
            return entry  # type: ignore[no-any-return]
        self.stats.cache_misses += 1
        return None

    def store(self, value: Any, version: int, revision: int) -> None:
        """Record a server answer (a read, our own write, a pushed event) unless it is older
        than what the actor already has.

        Example::

            actor.store(value, variable.version, variable.mod_revision)
        """
        if version < self.version:
            return
        self.version = version
        self.hub.cache.put(
            self.id,
            CacheEntry(value, version, revision, time.time()),
            pinned=self.live,
            name=self.name,
        )

    # ---- observers

    def attach(
        self, observer: rx_abc.ObserverBase[VariableUpdate], include_initial: bool
    ) -> rx_abc.DisposableBase:
        """Add a local observer; the first one subscribes on the wire.

        Example::

            disposable = actor.attach(observer, include_initial=True)
        """
        attached = _Attached(observer, include_initial)
        self.attached.append(attached)
        entry = self.entry() if self.live else None
        if entry is not None:
            # Live: the entry is exactly what the stream said last, so it is the baseline.
            attached.baseline = True
            attached.last_version = entry.version
            if include_initial:
                self._deliver(attached, self._current_update(entry))
        elif not self.wire:
            self.wire = True
            self.hub.request_subscribe(self)

        def dispose() -> None:
            self.detach(attached)

        return Disposable(dispose)

    def detach(self, attached: _Attached) -> None:
        """Remove an observer; the last one unsubscribes on the wire.

        Example::

            actor.detach(attached)
        """
        if attached not in self.attached:
            return
        self.attached.remove(attached)
        if not self.attached and self.wire:
            self.wire = False
            self.live = False
            self.hub.cache.unpin(self.id)
            self.hub.request_unsubscribe(self)

    def _current_update(self, entry: CacheEntry) -> VariableUpdate:
        return VariableUpdate(
            self.id, self.name, entry.value, None, entry.version, entry.revision, "initial",
            {}, entry.fetched_at, "cache",
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

        Example::

            actor.apply(update_from_pb(event))
        """
        kind = update.update_type
        if kind in ("initial", "resync") and self.wire:
            self.live = True
        if kind == "deleted":
            self.hub.cache.invalidate_nowait(self.id)
        elif update.version >= self.version:
            self.store(update.value, update.version, update.revision)
        for attached in list(self.attached):
            if not attached.baseline:
                if kind in ("initial", "resync"):
                    attached.baseline = True
                    attached.last_version = update.version
                    if attached.include_initial:
                        self._deliver(attached, update)
                continue
            if kind == "deleted" or update.version > attached.last_version:
                self._deliver(attached, update)
        if kind == "deleted":
            self._complete()

    def _complete(self) -> None:
        attached, self.attached = self.attached, []
        self.wire = self.live = False
        for a in attached:
            try:
                a.observer.on_completed()
            except Exception:
                log.exception("observer_failed", variable=self.name)
        self.hub.forget(self)

    def fail(self, error: Exception) -> None:
        """End every observer with ``error`` (unknown variable, stream lost).

        Example::

            actor.fail(KeyError("no variable 'x'"))
        """
        attached, self.attached = self.attached, []
        self.wire = self.live = False
        for a in attached:
            try:
                a.observer.on_error(error)
            except Exception:
                log.exception("observer_failed", variable=self.name)


@dataclass(slots=True)
class _PendingSubscribe:
    actors: list[VariableActor]
    refs: list[str] = field(default_factory=list)


class WatchHub:
    """The connection's watch machinery: actors by id and name, the Session stream, and the
    two tasks that serve it (a sender for subscribe/unsubscribe, a dispatcher for frames).

    Example::

        hub = WatchHub(transport, session_id, client_id, nursery, cache)
        actor = hub.actor("temperature")
    """

    def __init__(
        self,
        transport: Transport,
        service_name: str,
        session_id: str,
        client_id: str,
        nursery: trio.Nursery,
        cache: VariableCache,
    ) -> None:
        self.transport = transport
        self.path = f"/{service_name}/Session"
        self.session_id = session_id
        self.client_id = client_id
        self.nursery = nursery
        self.cache = cache
        self.by_id: dict[str, VariableActor] = {}
        self.by_name: dict[str, VariableActor] = {}
        self.revision = 0
        self.progress_revision = 0
        self.wire_subscribes = 0
        self.frames = 0
        self._stream: Stream[spb.ServerMessage] | None = None
        self._requests = itertools.count(1)
        self._pending: dict[int, _PendingSubscribe] = {}
        self._outbox_send, self._outbox_recv = trio.open_memory_channel[spb.ClientMessage](
            math.inf
        )
        self._started = False
        self._closed = False
        self._pongs: dict[int, trio.Event] = {}

    # ---- actors

    def actor(self, ref: str) -> VariableActor:
        """The actor for a variable name or id, created on first use.

        Example::

            hub.actor("temperature").attach(observer, True)
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
        """Bind an id and a name to one actor (from any server answer).

        Example::

            actor = hub.learn(variable.id, variable.name)
        """
        actor = self.by_id.get(var_id)
        provisional = self.by_name.get(name)
        if actor is None:
            if provisional is not None and provisional.id == name and provisional.name == name:
                actor = provisional
                self.cache.rekey(name, var_id)
                actor.id = var_id
            else:
                actor = VariableActor(self, var_id, name)
            self.by_id[var_id] = actor
        elif provisional is not None and provisional is not actor and provisional.id == name:
            # The same variable was asked for by name and by id: fold the name's observers in.
            moved, provisional.attached = provisional.attached, []
            provisional.wire = False
            for attached in moved:
                attached.baseline = False
                actor.attached.append(attached)
            if moved and not actor.wire:
                actor.wire = True
                self.request_subscribe(actor)
        actor.name = name
        self.by_name[name] = actor
        return actor

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

    def request_subscribe(self, actor: VariableActor) -> None:
        """Queue a wire subscription for an actor (sent by the sender task, in order).

        Example::

            hub.request_subscribe(actor)
        """
        self._ensure_started()
        request_id = next(self._requests)
        self._pending[request_id] = _PendingSubscribe([actor], [actor.id])
        self.wire_subscribes += 1
        self._outbox_send.send_nowait(
            spb.ClientMessage(
                subscribe=spb.Subscribe(
                    request_id=request_id, refs=[actor.id], include_initial=True
                )
            )
        )

    def request_unsubscribe(self, actor: VariableActor) -> None:
        """Queue a wire unsubscription.

        Example::

            hub.request_unsubscribe(actor)
        """
        if self._closed or actor.id not in self.by_id:
            return  # never resolved: the pending subscribe's ack will find no observers
        self.wire_subscribes -= 1
        self._outbox_send.send_nowait(
            spb.ClientMessage(
                unsubscribe=spb.Unsubscribe(
                    request_id=next(self._requests), variable_ids=[actor.id]
                )
            )
        )

    async def sync(self) -> int:
        """Round trip a ping through the stream: every event before it has been applied.

        Example::

            await hub.sync()   # now the cache reflects every write acknowledged before
        """
        self._ensure_started()
        nonce = next(self._requests)
        done = trio.Event()
        self._pongs[nonce] = done
        self._outbox_send.send_nowait(spb.ClientMessage(ping=spb.Ping(nonce=nonce)))
        await done.wait()
        return self.revision

    # ---- the stream

    def _ensure_started(self) -> None:
        if self._started or self._closed:
            return
        self._started = True
        self.nursery.start_soon(self._run, name="dspex-rx-watch-stream")

    async def _run(self) -> None:
        try:
            stream = await self.transport.open_stream(self.path, spb.ServerMessage)
            self._stream = stream
            await stream.send(
                spb.ClientMessage(
                    open=spb.OpenStream(session_id=self.session_id, client_id=self.client_id)
                )
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_loop, stream)
                await self._dispatch_loop(stream)
                nursery.cancel_scope.cancel()
        except trio.Cancelled:
            raise
        except Exception as exc:
            if not self._closed:  # errors while closing are the closing itself
                log.warning("watch_stream_failed", session_id=self.session_id,
                            error=repr(exc))
                self._fail_all(exc)
        finally:
            if self._stream is not None:
                await self._stream.close()
                self._stream = None

    async def _send_loop(self, stream: Stream[spb.ServerMessage]) -> None:
        async for message in self._outbox_recv:
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
        if control == "subscribed":
            self._on_subscribed(message.subscribed)
        elif control == "progress":
            self.progress_revision = message.progress.revision
            self.revision = max(self.revision, message.progress.revision)
        elif control == "pong":
            self.revision = max(self.revision, message.pong.revision)
            done = self._pongs.pop(message.pong.nonce, None)
            if done is not None:
                done.set()
        elif control == "opened":
            self.revision = max(self.revision, message.opened.revision)

    def _on_subscribed(self, ack: spb.Subscribed) -> None:
        pending = self._pending.pop(ack.request_id, None)
        if pending is None:
            return
        if ack.error:
            error = error_from_kind(ack.error_kind or "not_found", ack.error)
            for actor in pending.actors:
                if self.by_name.get(actor.name) is actor and actor.id not in self.by_id:
                    del self.by_name[actor.name]
                self.wire_subscribes -= 1
                actor.fail(error)
            return
        for actor, var_id, name in zip(pending.actors, ack.variable_ids, ack.names, strict=True):
            resolved = self.learn(var_id, name)
            if resolved is not actor:
                self.wire_subscribes -= 1  # folded into an actor that has its own
            if not resolved.attached and resolved.wire:
                # Every observer left before the ack: undo on the wire.
                resolved.wire = False
                resolved.live = False
                self.request_unsubscribe(resolved)

    def _fail_all(self, error: Exception) -> None:
        for actor in list({id(a): a for a in [*self.by_id.values(), *self.by_name.values()]}
                          .values()):
            if actor.attached:
                actor.fail(error)
        for done in self._pongs.values():
            done.set()

    async def close(self) -> None:
        """Stop the stream; observers are completed.

        Example::

            await hub.close()
        """
        self._closed = True
        self._outbox_send.close()
        actors = {id(a): a for a in [*self.by_id.values(), *self.by_name.values()]}
        for actor in actors.values():
            attached, actor.attached = actor.attached, []
            actor.wire = actor.live = False
            for a in attached:
                try:
                    a.observer.on_completed()
                except Exception:
                    log.exception("observer_failed", variable=actor.name)
        if self._stream is not None:
            await self._stream.close()


def observable_for(
    hub: WatchHub, ref: str, include_initial: bool
) -> reactivex.Observable[VariableUpdate]:
    """A cold-to-subscribe, hot-underneath observable of one variable's updates.

    Example::

        observable_for(hub, "temperature", True).subscribe(print)
    """

    def subscribe(
        observer: rx_abc.ObserverBase[VariableUpdate],
        scheduler: rx_abc.SchedulerBase | None = None,
    ) -> rx_abc.DisposableBase:
        return hub.actor(ref).attach(observer, include_initial)

    return reactivex.create(subscribe)


Clock = Callable[[], float]
