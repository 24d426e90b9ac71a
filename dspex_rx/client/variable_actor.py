"""The per-variable actor: the only writer of its variable's cache entry and the hot source
of its local observers, fed every change in version order by the hub (trio thread only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from reactivex import abc as rx_abc

from dspex_rx.client.updates import VariableUpdate
from dspex_rx.errors import AccessDeniedError
from dspex_rx.logs import get_logger
from dspex_rx.wire.convert import timestamp, utc_datetime

if TYPE_CHECKING:
    from dspex_rx.client.cache import VariableCache

log = get_logger("dspex_rx.actors")


class ActorHub(Protocol):
    """What an actor needs of its hub (``WatchHub``): the cache, wire (un)subscribes, and to
    be forgotten once its variable is gone.

    Example: ``VariableActor(hub, "temperature", "temperature")`` takes any such hub.
    """

    cache: VariableCache

    def request_subscribe(self, actor: VariableActor, ref: str, join: bool = False) -> None:
        """Queue a wire subscription for ``actor`` by ``ref``; ``join``: the actor is
        subscribed already and only asks for the current value again.

        Example: ``hub.request_subscribe(actor, "temperature")`` queues one Subscribe.
        """

    def request_unsubscribe(self, actor: VariableActor) -> None:
        """Queue a wire unsubscription of ``actor``.

        Example: ``hub.request_unsubscribe(actor)`` queues one Unsubscribe of ``actor.id``.
        """

    def forget(self, actor: VariableActor) -> None:
        """Drop ``actor`` (its variable was deleted or its watch revoked).

        Example: ``hub.forget(actor)`` drops a deleted variable's actor.
        """


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

    >>> stats = ActorStats()
    >>> stats.cache_hits += 1
    >>> stats.cache_hits, stats.write_count
    (1, 0)
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

    Example: ``actor.attach(observer, True, "temperature")`` adds one; the first subscribes.
    """

    __slots__ = (
        "acked_revision", "attached", "fetched_at", "hub", "id", "live", "name", "revision",
        "stats", "version", "wire",
    )

    def __init__(self, hub: ActorHub, var_id: str, name: str) -> None:
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

        Example: ``actor.cached()`` is ``(True, 0.7)`` while the entry is cached, without a hit.
        """
        found, value = self.hub.cache.lookup(self.id, count=False)
        return found, value

    def read(self) -> tuple[bool, Any]:
        """A cache read that counts a hit or a miss: (found, value).

        Example: ``actor.read()`` is ``(False, None)`` on a miss, counted in ``actor.stats``.
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

        Example: ``actor.store(0.7, 3, 12)`` records version 3 at revision 12 (not an older one).
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

        Example: ``actor.attach(observer, True, "temperature")`` returns its disposable.
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
        elif not self.wire:
            self.wire = True
            self.live = False
            self.hub.request_subscribe(self, ref)
        elif not optimization and (
            self.live or any(a.baseline for a in self.attached if not a.optimization)
        ):
            # Subscribed, but no entry to serve: live with the entry invalidated, or
            # resumed after a break (the entry dropped, and a resume brings changes only).
            # Nothing on the wire will bring this observer a value, so ask for the current
            # one beside the subscription in force: the resume keeps this actor, so the
            # others get neither a repeat nor a gap (a repeated subscribe is harmless: the
            # server keeps a set).
            self.live = False
            self.hub.request_subscribe(self, self.id, join=True)
        # Otherwise the subscription's initial value is still to come, for this one too.
        return attached

    def detach(self, attached: _Attached) -> None:
        """Remove an observer; the last one unsubscribes on the wire.

        Example: ``actor.detach(attached)`` removes it; the last one unsubscribes on the wire.
        """
        if attached not in self.attached:
            return
        self.attached.remove(attached)
        if not self.attached and self.wire:
            self._unwire()
            self.hub.request_unsubscribe(self)

    def suspend(self) -> None:
        """The stream broke: drop the cached value (reads ask the server) until the resumed
        stream pushes again; observers stay attached.

        Example: the hub calls ``actor.suspend()`` for every watched actor on a break.
        """
        self.live = False
        self.hub.cache.invalidate_nowait(self.id, "stream broken")

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

        Example: ``actor.apply(update_from_pb(event))`` updates the entry, then the observers.
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
        elif kind == "resync" and update.version < self.version:
            # The server's state went back (a restored backup): its value is the truth,
            # whatever version this actor had seen.
            self.version = 0
            self.store(update.value, update.version, update.revision)
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
            if kind == "resync" and update.version < attached.last_version:
                # Versions went back with the server's state: start counting again.
                attached.last_version = update.version
                self._deliver(attached, update)
            elif (
                kind == "deleted"
                or update.version > attached.last_version
                or (kind == "dependency_changed" and update.version == attached.last_version)
            ):
                self._deliver(attached, update)
        if kind == "deleted":
            self._end(None)
            self.hub.forget(self)

    def gone(self, revision: int) -> None:
        """A resume found the variable missing (deleted in a break, the delete no longer in
        the server's log): end the watch with a ``deleted`` event, as a replayed delete does.

        Example: ``actor.gone(ack.revision)`` delivers ``deleted`` and completes the observers.
        """
        self.apply(VariableUpdate(
            self.id, self.name, None, None, self.version, revision, "deleted", {},
            utc_datetime(timestamp(time.time())), "",
        ))

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

        Example: ``actor.fail(KeyError("no variable 'x'"))`` ends every observer with that error.
        """
        self._end(error)
