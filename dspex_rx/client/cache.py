"""The client-side cache (`VariableCache`): opaque entries by key with TTL, pinning,
lru/lfu/fifo eviction and hit/miss stats, invalidation callbacks and batched fetches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import sniffio
import trio

from dspex_rx.client.cache_callbacks import InvalidationCallback, Invalidations
from dspex_rx.client.cache_entries import (
    _UNSET,
    EVICTION_POLICIES,
    EntryTable,
    _check_max_size,
    _check_policy,
    _check_ttl,
    _library_clock,
    _Unset,
)
from dspex_rx.core.patterns import compile_name_filter, name_pattern

__all__ = ["EVICTION_POLICIES", "FetchMissing", "InvalidationCallback", "VariableCache"]

FetchMissing = Callable[[list[str]], Awaitable[Mapping[str, Any]]]
"""``async def fetch(missing_keys) -> {key: entry}``, as used by `VariableCache.get_batch`."""


class VariableCache:
    """Client-side cache of opaque entries by key, with TTL, pinning and eviction.

    Not thread-safe: use it from one thread, in a trio run or an asyncio loop. Synchronous
    methods never yield, so each runs atomically with respect to other tasks.

    Unpinned entries expire ``ttl`` seconds after their put and are evicted past
    ``max_size`` by the policy; pinned ones (watched variables) do neither and do not count
    toward ``max_size``. The exact rules are ``EntryTable``'s (``cache_entries.py``).

    **Invalidation callbacks** (``async def cb(key, reason)``) run in subscription order.
    ``invalidate`` and ``invalidate_pattern`` await them before returning. Synchronous
    calls cannot await, so evictions (``"evicted"``), expiries (``"expired"``) and
    ``clear`` (``"cleared"``) queue theirs; they run at the next
    ``await flush_invalidations()`` or any async method (``invalidate``,
    ``invalidate_pattern``, ``get_batch``), in the order they happened. Only keys with
    subscribers queue anything. A callback that raises is logged and skipped.

    Defaults are the spec's (``ttl=1.0`` second, ``max_size=1000``); a session's own cache
    has its own (``connect(cache_ttl=..., cache_max_size=...)``).

    >>> cache = VariableCache(ttl=30.0, max_size=1000, eviction_policy="lru")
    >>> cache.put("var_temperature_1", 0.7, name="temperature")
    >>> cache.lookup("var_temperature_1"), cache.lookup("var_other_2")
    ((True, 0.7), (False, None))
    """

    def __init__(
        self,
        ttl: float | None = 1.0,
        max_size: int | None = 1000,
        eviction_policy: str = "lru",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._invalidations = Invalidations()
        self._table = EntryTable(
            _check_ttl(ttl), _check_max_size(max_size), _check_policy(eviction_policy),
            removed=self._invalidations.queue,
        )
        # No clock given: trio's (virtual under MockClock) inside a trio run, else the
        # monotonic clock, so the same cache works in an asyncio program.
        self._clock = clock or _library_clock
        self._hits = 0
        self._misses = 0
        # get_batch's lock belongs to the library that first awaits it (trio or asyncio).
        self._batch_lock: trio.Lock | asyncio.Lock | None = None

    def configure(
        self,
        ttl: float | _Unset | None = _UNSET,
        max_size: int | _Unset | None = _UNSET,
        eviction_policy: str | _Unset = _UNSET,
    ) -> None:
        """Change settings live; omitted arguments stay as they are (``None`` means no limit).

        All arguments are checked before anything changes. A shorter ttl drops what is now
        expired; a smaller max_size evicts at once by the (new) policy; a new policy keeps
        every entry and orders them by its own rule from their recorded history.

        >>> cache = VariableCache(ttl=None, max_size=None)
        >>> for key in ("a", "b", "c"):
        ...     cache.put(key, key.upper())
        >>> cache.configure(max_size=2, eviction_policy="fifo")    # evicts the oldest at once
        >>> cache.keys(), cache.info()["eviction_count"]
        (['b', 'c'], 1)
        """
        table = self._table
        new_ttl = table.ttl if isinstance(ttl, _Unset) else _check_ttl(ttl)
        new_size = table.max_size if isinstance(max_size, _Unset) else _check_max_size(max_size)
        new_policy = (
            table.policy if isinstance(eviction_policy, _Unset) else _check_policy(eviction_policy)
        )
        table.configure(new_ttl, new_size, new_policy, self._clock())

    @property
    def ttl(self) -> float | None:
        """Seconds an unpinned entry lives after its put (None: forever; 0: no caching).

        >>> VariableCache(ttl=5).ttl
        5.0
        """
        return self._table.ttl

    @property
    def max_size(self) -> int | None:
        """Most unpinned entries kept (None: unbounded).

        >>> VariableCache(max_size=3).max_size
        3
        """
        return self._table.max_size

    @property
    def eviction_policy(self) -> str:
        """The eviction policy: "lru", "lfu" or "fifo".

        >>> VariableCache().eviction_policy
        'lru'
        """
        return self._table.policy

    def lookup(self, key: str, *, count: bool = True) -> tuple[bool, Any]:
        """``(True, entry)`` on a hit, ``(False, None)`` on a miss; counts the hit or miss.

        ``count=False`` only peeks: no hit/miss, and no effect on lru/lfu order.

        >>> cache = VariableCache(ttl=None)
        >>> cache.put("k", "entry")
        >>> cache.lookup("k"), cache.lookup("k", count=False), cache.info()["hits"]
        ((True, 'entry'), (True, 'entry'), 1)
        """
        table = self._table
        table.purge(self._clock())
        slot = table.slots.get(key)
        if not count:
            return (False, None) if slot is None else (True, slot.entry)
        if slot is None:
            self._misses += 1
            return False, None
        self._hits += 1
        slot.hits += 1
        slot.seq_used = next(table.seq)
        if not slot.pinned:
            table.order.hit(key)
        return True, slot.entry

    def get(self, key: str, default: Any = None) -> Any:
        """The cached entry, or ``default`` on a miss; counts the hit or miss like `lookup`.

        >>> cache = VariableCache(ttl=None)
        >>> cache.put("k", "entry")
        >>> cache.get("k"), cache.get("missing", "default")
        ('entry', 'default')
        """
        found, entry = self.lookup(key)
        return entry if found else default

    def keys(self) -> list[str]:
        """The cached keys (pinned included), oldest first; no effect on hit/miss stats.

        >>> cache = VariableCache(ttl=None)
        >>> cache.put("var_a_1", 1); cache.put("var_b_2", 2, pinned=True)
        >>> cache.keys()
        ['var_a_1', 'var_b_2']
        """
        table = self._table
        table.purge(self._clock())
        return list(table.slots)

    def __len__(self) -> int:
        """Number of cached entries, pinned included; no effect on hit/miss stats.

        >>> cache = VariableCache(ttl=None, max_size=1)
        >>> cache.put("a", 1); cache.put("b", 2, pinned=True)
        >>> len(cache)
        2
        """
        table = self._table
        table.purge(self._clock())
        return len(table.slots)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is cached and not expired; no effect on hit/miss stats.

        >>> cache = VariableCache(ttl=None)
        >>> cache.put("var_a_1", 1)
        >>> "var_a_1" in cache, "var_b_2" in cache
        (True, False)
        """
        table = self._table
        table.purge(self._clock())
        return key in table.slots

    def is_pinned(self, key: str) -> bool:
        """Whether ``key`` is cached and pinned.

        >>> cache = VariableCache(ttl=None)
        >>> cache.put("k", 1, pinned=True); cache.put("j", 2)
        >>> cache.is_pinned("k"), cache.is_pinned("j")
        (True, False)
        """
        slot = self._table.slots.get(key)
        return slot is not None and slot.pinned

    def info(self) -> dict[str, Any]:
        """Settings and statistics (``eviction_count`` counts max_size evictions only).

        >>> VariableCache(ttl=None, max_size=None, clock=lambda: 0.0).info()["hit_rate"]
        0.0
        """
        table = self._table
        table.purge(self._clock())
        lookups = self._hits + self._misses
        return {
            "size": len(table.slots),
            "pinned": len(table.slots) - len(table.order),
            "ttl": table.ttl,
            "max_size": table.max_size,
            "eviction_policy": table.policy,
            "hits": self._hits,
            "misses": self._misses,
            "hit_rate": self._hits / lookups if lookups else 0.0,
            "eviction_count": table.evictions,
            "expired_count": table.expired,
        }

    def put(
        self, key: str, entry: Any, *, pinned: bool | None = None, name: str | None = None
    ) -> None:
        """Insert or replace ``key``; the TTL restarts. Evicts per policy if over max_size.

        ``pinned=None`` keeps the current pin state (new keys: unpinned); ``name=None`` keeps
        the stored name. With ``ttl == 0`` an unpinned put stores nothing (and drops the old
        entry, as expired).

        >>> now = [0.0]
        >>> cache = VariableCache(ttl=10.0, clock=lambda: now[0])
        >>> cache.put("var_temperature_1", 0.7, name="temperature")
        >>> cache.put("var_model_2", "gpt", pinned=True)     # watched: kept until unpinned
        >>> now[0] = 10.0
        >>> cache.keys()
        ['var_model_2']
        """
        now = self._clock()
        self._table.purge(now)
        self._table.put(key, entry, pinned, name, now)

    def pin(self, key: str) -> bool:
        """Pin a cached entry: no TTL, no eviction, not counted in max_size. False if absent.

        >>> cache = VariableCache(ttl=None, max_size=1)
        >>> cache.put("a", 1); cache.pin("a"), cache.pin("missing")
        (True, False)
        >>> cache.put("b", 2); cache.put("c", 3)              # "a" is pinned: "b" is evicted
        >>> cache.keys()
        ['a', 'c']
        """
        self._table.purge(self._clock())
        return self._table.pin(key)

    def unpin(self, key: str) -> bool:
        """Unpin a cached entry: its TTL starts now and it may be evicted. False if absent.

        >>> now = [0.0]
        >>> cache = VariableCache(ttl=5.0, clock=lambda: now[0])
        >>> cache.put("k", 1, pinned=True)
        >>> now[0] = 100.0; cache.unpin("k")                  # its TTL starts now
        True
        >>> now[0] = 104.0; "k" in cache
        True
        """
        now = self._clock()
        self._table.purge(now)
        return self._table.unpin(key, now)

    def clear(self) -> None:
        """Remove every entry, pinned too; stats stay. Queues callbacks (reason "cleared").

        >>> cache = VariableCache(ttl=None)
        >>> cache.put("a", 1, pinned=True); cache.clear()
        >>> len(cache)
        0
        """
        for key in self._table.clear():
            self._invalidations.queue(key, "cleared")

    def invalidate_nowait(self, key: str, reason: str = "invalidated") -> bool:
        """`invalidate` for synchronous code: removes at once, queues the callbacks.

        >>> cache = VariableCache(ttl=None)
        >>> cache.put("k", 1)
        >>> cache.invalidate_nowait("k", reason="deleted"), cache.invalidate_nowait("k")
        (True, False)
        """
        table = self._table
        table.purge(self._clock())
        if key not in table.slots:
            return False
        table.drop(key)
        self._invalidations.queue(key, reason)
        return True

    def rekey(self, old: str, new: str) -> bool:
        """Move ``old``'s entry and its invalidation subscriptions to ``new``; False (only
        subscriptions moved) if ``old`` is not cached.

        For TTL and eviction order the move counts as a fresh put under ``new``. An entry
        already at ``new`` is replaced (its callbacks are queued with reason "replaced").

        >>> cache = VariableCache(ttl=None)
        >>> cache.put("temperature", 0.7)
        >>> cache.rekey("temperature", "var_temperature_1"), cache.keys()   # provisional name -> id
        (True, ['var_temperature_1'])
        """
        now = self._clock()
        self._table.purge(now)
        if old == new:
            return old in self._table.slots
        moved = self._table.rekey(old, new, now)  # queues the "replaced" callbacks first
        self._invalidations.move(old, new)
        return moved

    async def invalidate(self, key: str, reason: str = "invalidated") -> bool:
        """Remove ``key`` (pinned too) and await its callbacks; False if it was not cached.

        Queued callbacks (evictions, expiries) run first.

        >>> import trio
        >>> cache = VariableCache(ttl=None)
        >>> cache.put("var_temperature_1", 0.7)
        >>> trio.run(cache.invalidate, "var_temperature_1", "remote_update")
        True
        """
        table = self._table
        table.purge(self._clock())
        removed = key in table.slots
        if removed:
            table.drop(key)
        await self.flush_invalidations()
        if removed:
            await self._invalidations.notify([key], reason)
        return removed

    async def invalidate_pattern(
        self, pattern: str, reason: str = "invalidated", *, glob: bool = False
    ) -> int:
        """Remove every entry whose key or name matches ``pattern``; await their callbacks;
        return how many were removed.

        ``pattern`` is a regular expression (RE2, case-sensitive) searched in the key or
        name, as ``re.search`` would, the rule of ``list_variables`` and
        ``export_variables``: ``^model.*$`` or ``^model`` for names starting with "model".
        ``glob=True`` takes an fnmatch glob on the whole key or name instead (``model.*``).
        A pattern RE2 refuses raises ``ValueError`` naming it and why.

        >>> import trio
        >>> cache = VariableCache(ttl=None)
        >>> cache.put("var_1", 1, name="model.a"); cache.put("var_2", 2, name="temperature")
        >>> trio.run(cache.invalidate_pattern, "^model"), cache.keys()
        (1, ['var_2'])
        """
        table = self._table
        table.purge(self._clock())
        match = compile_name_filter(name_pattern("pattern", pattern, glob))
        removed = [
            key
            for key, slot in table.slots.items()
            if match(key) or (slot.name is not None and match(slot.name))
        ]
        for key in removed:
            table.drop(key)
        await self.flush_invalidations()
        await self._invalidations.notify(removed, reason)
        return len(removed)

    def subscribe_invalidation(self, key: str, callback: InvalidationCallback) -> str:
        """Call ``await callback(key, reason)`` whenever ``key``'s entry is removed; returns
        a subscription id. The subscription outlives the entry until unsubscribed.

        >>> import trio
        >>> async def dropped(key: str, reason: str) -> None:
        ...     print(key, reason)
        >>> cache = VariableCache(ttl=None)
        >>> cache.put("var_temperature_1", 0.7)
        >>> sub = cache.subscribe_invalidation("var_temperature_1", dropped)
        >>> trio.run(cache.invalidate, "var_temperature_1")
        var_temperature_1 invalidated
        True
        """
        return self._invalidations.subscribe(key, callback)

    def unsubscribe_invalidation(self, sub_id: str) -> bool:
        """Stop a subscription (queued calls for it are dropped); False if it is unknown.

        >>> async def dropped(key: str, reason: str) -> None: ...
        >>> cache = VariableCache()
        >>> sub = cache.subscribe_invalidation("k", dropped)
        >>> cache.unsubscribe_invalidation(sub), cache.unsubscribe_invalidation(sub)
        (True, False)
        """
        return self._invalidations.unsubscribe(sub_id)

    async def flush_invalidations(self) -> int:
        """Await the callbacks queued by synchronous calls (evictions, expiries, clear), in
        the order they happened; returns how many callbacks ran.

        >>> import trio
        >>> async def dropped(key: str, reason: str) -> None:
        ...     print(key, reason)
        >>> cache = VariableCache(ttl=None, max_size=1)
        >>> cache.put("k1", 1); sub = cache.subscribe_invalidation("k1", dropped)
        >>> cache.put("k2", 2)                                # evicts "k1"; its callback is queued
        >>> trio.run(cache.flush_invalidations)
        k1 evicted
        1
        """
        return await self._invalidations.flush()

    async def get_batch(
        self,
        keys: Sequence[str],
        fetch_missing: FetchMissing | None = None,
        *,
        name_of: Callable[[Any], str | None] | None = None,
    ) -> dict[str, Any]:
        """Look up ``keys``, fetch all misses with ONE ``fetch_missing`` call, cache them.
        Without ``fetch_missing`` it returns what is cached (misses are absent and counted).

        Runs under one lock, so overlapping concurrent batches never fetch a key twice. Each
        distinct key counts one hit or miss. ``fetch_missing`` gets the missing keys in
        request order without duplicates and is not called when nothing is missing; keys it
        does not return are absent from the result, keys it was not asked for are ignored.
        If another task put a key while the fetch ran, that entry is kept and returned.
        ``name_of(entry)`` names fetched entries for `invalidate_pattern`.

        >>> import trio
        >>> async def fetch_by_ids(keys: list[str]) -> dict[str, str]:
        ...     print("fetching", keys)
        ...     return {key: key.upper() for key in keys}
        >>> cache = VariableCache(ttl=None)
        >>> cache.put("a", "cached")
        >>> trio.run(cache.get_batch, ["a", "b", "c"], fetch_by_ids)
        fetching ['b', 'c']
        {'a': 'cached', 'b': 'B', 'c': 'C'}
        """
        table = self._table
        if self._batch_lock is None:
            in_trio = sniffio.current_async_library() == "trio"
            self._batch_lock = trio.Lock() if in_trio else asyncio.Lock()
        async with self._batch_lock:
            result: dict[str, Any] = {}
            missing: list[str] = []
            for key in dict.fromkeys(keys):
                found, entry = self.lookup(key)
                if found:
                    result[key] = entry
                else:
                    missing.append(key)
            if missing and fetch_missing is not None:
                fetched = await fetch_missing(list(missing))
                table.purge(self._clock())
                for key in missing:
                    if key not in fetched:
                        continue
                    slot = table.slots.get(key)
                    if slot is not None:  # put by someone else during the fetch
                        result[key] = slot.entry
                        continue
                    entry = fetched[key]
                    self.put(key, entry, name=name_of(entry) if name_of is not None else None)
                    result[key] = entry
            ordered = {key: result[key] for key in dict.fromkeys(keys) if key in result}
        await self.flush_invalidations()
        return ordered
