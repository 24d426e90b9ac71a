"""The client-side cache index (`VariableCache`): opaque entries by key, with TTL, pinning,
lru/lfu/fifo eviction, hit/miss stats, async invalidation callbacks and batched fetches.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from enum import Enum
from typing import Any, Final, Protocol

import sniffio
import trio

from dspex_rx.core.patterns import compile_name_filter, name_pattern
from dspex_rx.errors import InvalidValueError
from dspex_rx.logs import get_logger

__all__ = ["EVICTION_POLICIES", "FetchMissing", "InvalidationCallback", "VariableCache"]

log = get_logger("dspex_rx.cache")

EVICTION_POLICIES: Final = ("lru", "lfu", "fifo")



def _library_clock() -> float:
    """trio's clock inside a trio run (so MockClock drives TTLs in tests), else monotonic."""
    try:
        return trio.current_time()
    except RuntimeError:
        return time.monotonic()


InvalidationCallback = Callable[[str, str], Awaitable[object]]
"""``async def callback(key, reason)``; reason is e.g. "invalidated", "evicted", "expired"."""

FetchMissing = Callable[[list[str]], Awaitable[Mapping[str, Any]]]
"""``async def fetch(missing_keys) -> {key: entry}``, as used by `VariableCache.get_batch`."""


class _Unset(Enum):
    UNSET = "unset"


_UNSET: Final = _Unset.UNSET


class _Slot:
    """One cached entry and its bookkeeping (mutable; private to the cache)."""

    __slots__ = ("entry", "hits", "name", "pinned", "seq_inserted", "seq_used", "stamp")

    def __init__(self, entry: Any, name: str | None, stamp: float, pinned: bool, seq: int) -> None:
        self.entry = entry
        self.name = name
        self.stamp = stamp  # clock time of the last put (or of the unpin); TTL counts from here
        self.pinned = pinned
        self.hits = 0  # lookups that found it since it (re-)entered the evictable pool
        self.seq_inserted = seq  # fifo order: first put; a replacing put keeps it
        self.seq_used = seq  # lru order (and lfu ties): last put or hit


# --- eviction orders: hold only unpinned keys; every operation O(1) ---------------------------


class _Order(Protocol):
    def add(self, key: str) -> None: ...  # a key entering the pool: newest, count 0
    def hit(self, key: str) -> None: ...  # a lookup found it
    def replaced(self, key: str) -> None: ...  # a put replaced its entry
    def remove(self, key: str) -> None: ...
    def victim(self) -> str: ...  # the key to evict next (the order is not empty)
    def __len__(self) -> int: ...


class _QueueOrder:
    """lru (``touch=True``: hits and puts move a key to the back) or fifo (insertion order)."""

    def __init__(self, touch: bool) -> None:
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._touch = touch

    def add(self, key: str) -> None:
        self._keys[key] = None

    def hit(self, key: str) -> None:
        if self._touch:
            self._keys.move_to_end(key)

    def replaced(self, key: str) -> None:
        if self._touch:
            self._keys.move_to_end(key)

    def remove(self, key: str) -> None:
        del self._keys[key]

    def victim(self) -> str:
        return next(iter(self._keys))

    def __len__(self) -> int:
        return len(self._keys)


class _FreqNode:
    __slots__ = ("freq", "keys", "next", "prev")

    def __init__(self, freq: int) -> None:
        self.freq = freq
        self.keys: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.prev: _FreqNode | None = None
        self.next: _FreqNode | None = None


class _LfuOrder:
    """Constant-time LFU: a linked list of frequency nodes in rising order, each holding its
    keys least recently used first, so the victim is the first key of the first node."""

    def __init__(self) -> None:
        self._head: _FreqNode | None = None
        self._tail: _FreqNode | None = None
        self._node_of: dict[str, _FreqNode] = {}

    def _new_node_after(self, freq: int, before: _FreqNode | None) -> _FreqNode:
        node = _FreqNode(freq)
        after = self._head if before is None else before.next
        node.prev, node.next = before, after
        if before is None:
            self._head = node
        else:
            before.next = node
        if after is None:
            self._tail = node
        else:
            after.prev = node
        return node

    def _unlink(self, node: _FreqNode) -> None:
        if node.prev is None:
            self._head = node.next
        else:
            node.prev.next = node.next
        if node.next is None:
            self._tail = node.prev
        else:
            node.next.prev = node.prev

    def add(self, key: str) -> None:
        head = self._head
        node = head if head is not None and head.freq == 0 else self._new_node_after(0, None)
        node.keys[key] = None
        self._node_of[key] = node

    def load(self, key: str, freq: int) -> None:
        """Append a key with a count; keys must arrive sorted by (count, last use)."""
        tail = self._tail
        node = tail if tail is not None and tail.freq == freq else self._new_node_after(freq, tail)
        node.keys[key] = None
        self._node_of[key] = node

    def hit(self, key: str) -> None:
        node = self._node_of[key]
        up = node.next
        if up is None or up.freq != node.freq + 1:
            up = self._new_node_after(node.freq + 1, node)
        del node.keys[key]
        up.keys[key] = None
        self._node_of[key] = up
        if not node.keys:
            self._unlink(node)

    def replaced(self, key: str) -> None:
        self._node_of[key].keys.move_to_end(key)

    def remove(self, key: str) -> None:
        node = self._node_of.pop(key)
        del node.keys[key]
        if not node.keys:
            self._unlink(node)

    def victim(self) -> str:
        assert self._head is not None
        return next(iter(self._head.keys))

    def __len__(self) -> int:
        return len(self._node_of)


def _build_order(policy: str, slots: Mapping[str, _Slot]) -> _Order:
    """A fresh order for ``policy`` holding the unpinned keys of ``slots`` in policy order."""
    pool = [(key, slot) for key, slot in slots.items() if not slot.pinned]
    if policy == "lfu":
        lfu = _LfuOrder()
        for key, slot in sorted(pool, key=lambda kv: (kv[1].hits, kv[1].seq_used)):
            lfu.load(key, slot.hits)
        return lfu
    queue = _QueueOrder(touch=policy == "lru")
    attr = "seq_used" if policy == "lru" else "seq_inserted"
    for key, _slot in sorted(pool, key=lambda kv: int(getattr(kv[1], attr))):
        queue.add(key)
    return queue


# --- argument checks --------------------------------------------------------------------------


def _check_ttl(ttl: object) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or math.isnan(ttl) or ttl < 0:
        raise InvalidValueError(
            f"ttl must be None (never expire), 0 (no caching) or a number of seconds > 0, "
            f"got {ttl!r}",
            argument="ttl",
            allowed="None or a number >= 0",
        )
    return float(ttl)


def _check_max_size(max_size: object) -> int | None:
    if max_size is None:
        return None
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise InvalidValueError(
            f"max_size must be None (unbounded) or an integer >= 1, got {max_size!r}",
            argument="max_size",
            allowed="None or an integer >= 1",
        )
    return max_size


def _check_policy(policy: object) -> str:
    if not isinstance(policy, str) or policy not in EVICTION_POLICIES:
        allowed = ", ".join(repr(p) for p in EVICTION_POLICIES)
        raise InvalidValueError(
            f"eviction_policy must be one of {allowed}, got {policy!r}",
            argument="eviction_policy",
            allowed=list(EVICTION_POLICIES),
        )
    return policy


class VariableCache:
    """Client-side cache of opaque entries by key, with TTL, pinning and eviction.

    Not thread-safe: use it from one thread, in a trio run or an asyncio loop. Synchronous
    methods never yield, so each runs atomically with respect to other tasks.

    Rules:

    - **TTL** counts from an entry's last ``put`` (or its ``unpin``) on ``clock``. An entry
      whose age is **>= ttl** has expired (so at exactly ``put_time + ttl`` it is gone).
      ``ttl=None`` never expires; ``ttl=0`` disables caching: unpinned puts store nothing and
      lookups of unpinned keys miss. Every call first drops expired entries (counted in
      ``expired_count``, reason ``"expired"``); only lookups count hits and misses.
    - **Pinned** entries (watched variables, kept fresh by pushes) never expire and are never
      evicted, and they do **not** count toward ``max_size``: ``max_size`` bounds the
      unpinned entries only, so ``len(cache)`` may exceed it. ``invalidate``, the pattern
      form and ``clear`` still remove them. Unpinning puts an entry back into the evictable
      pool as if freshly put at that moment.
    - **Eviction** when a new unpinned entry would exceed ``max_size`` (the new entry is never
      the victim): ``lru`` evicts the least recently used (a hit or a put is a use); ``fifo``
      the oldest inserted (a replacing put keeps the place, hits do not matter); ``lfu`` the
      one with fewest hits since it entered the pool, ties going to the least recently used
      (for never-hit entries: the oldest put). All O(1).
    - **Invalidation callbacks** (``async def cb(key, reason)``) run in subscription order.
      ``invalidate`` and ``invalidate_pattern`` await them before returning. Synchronous
      calls cannot await, so evictions (``"evicted"``), expiries (``"expired"``) and
      ``clear`` (``"cleared"``) queue theirs; they run at the next
      ``await flush_invalidations()`` or any async method (``invalidate``,
      ``invalidate_pattern``, ``get_batch``), in the order they happened. Only keys with
      subscribers queue anything. A callback that raises is logged and skipped.

    Defaults are the spec's (``ttl=1.0`` second, ``max_size=1000``); a session's own cache
    has its own (``connect(cache_ttl=..., cache_max_size=...)``).

    Example::

        cache = VariableCache(ttl=30.0, max_size=1000, eviction_policy="lru")
        cache.put("var_temperature_1", entry, name="temperature")
        found, entry = cache.lookup("var_temperature_1")
    """

    def __init__(
        self,
        ttl: float | None = 1.0,
        max_size: int | None = 1000,
        eviction_policy: str = "lru",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._ttl = _check_ttl(ttl)
        self._max_size = _check_max_size(max_size)
        self._policy = _check_policy(eviction_policy)
        # No clock given: trio's (virtual under MockClock) inside a trio run, else the
        # monotonic clock, so the same cache works in an asyncio program.
        self._clock = clock or _library_clock
        self._slots: dict[str, _Slot] = {}
        self._order: _Order = _build_order(self._policy, self._slots)
        self._expiry: OrderedDict[str, None] = OrderedDict()  # unpinned keys, oldest stamp first
        self._seq = itertools.count()
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._expired = 0
        self._subs: dict[str, tuple[str, InvalidationCallback]] = {}  # sub id -> (key, cb)
        self._subs_by_key: dict[str, dict[str, None]] = {}  # key -> sub ids, in order
        self._sub_ids = itertools.count(1)
        self._pending: deque[tuple[str, str, str]] = deque()  # (sub id, key, reason)
        # get_batch's lock belongs to the library that first awaits it (trio or asyncio).
        self._batch_lock: trio.Lock | asyncio.Lock | None = None

    # --- configuration ------------------------------------------------------------------------

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

        Example::

            cache.configure(max_size=100)              # evicts down to 100 unpinned entries
            cache.configure(ttl=None, eviction_policy="lfu")
        """
        new_ttl = self._ttl if isinstance(ttl, _Unset) else _check_ttl(ttl)
        new_size = self._max_size if isinstance(max_size, _Unset) else _check_max_size(max_size)
        new_policy = (
            self._policy if isinstance(eviction_policy, _Unset) else _check_policy(eviction_policy)
        )
        self._ttl = new_ttl
        self._purge(self._clock())
        if new_policy != self._policy:
            self._policy = new_policy
            self._order = _build_order(new_policy, self._slots)
        self._max_size = new_size
        if new_size is not None:
            while len(self._order) > new_size:
                self._evict_one()

    @property
    def ttl(self) -> float | None:
        """Seconds an unpinned entry lives after its put (None: forever; 0: no caching).

        Example::

            assert VariableCache(ttl=5).ttl == 5.0
        """
        return self._ttl

    @property
    def max_size(self) -> int | None:
        """Most unpinned entries kept (None: unbounded).

        Example::

            assert VariableCache(max_size=3).max_size == 3
        """
        return self._max_size

    @property
    def eviction_policy(self) -> str:
        """The eviction policy: "lru", "lfu" or "fifo".

        Example::

            assert VariableCache().eviction_policy == "lru"
        """
        return self._policy

    # --- reads --------------------------------------------------------------------------------

    def lookup(self, key: str, *, count: bool = True) -> tuple[bool, Any]:
        """``(True, entry)`` on a hit, ``(False, None)`` on a miss; counts the hit or miss.

        ``count=False`` only peeks: no hit/miss, and no effect on lru/lfu order.

        Example::

            found, entry = cache.lookup("var_temperature_1")
            if not found: entry = await fetch()
        """
        self._purge(self._clock())
        slot = self._slots.get(key)
        if not count:
            return (False, None) if slot is None else (True, slot.entry)
        if slot is None:
            self._misses += 1
            return False, None
        self._hits += 1
        slot.hits += 1
        slot.seq_used = next(self._seq)
        if not slot.pinned:
            self._order.hit(key)
        return True, slot.entry

    def get(self, key: str, default: Any = None) -> Any:
        """The cached entry, or ``default`` on a miss; counts the hit or miss like `lookup`.

        Example::

            entry = cache.get("var_temperature_1")        # None when not cached
        """
        found, entry = self.lookup(key)
        return entry if found else default

    def keys(self) -> list[str]:
        """The cached keys (pinned included), oldest first; no effect on hit/miss stats.

        Example::

            assert cache.keys() == ["var_a_1", "var_b_2"]
        """
        self._purge(self._clock())
        return list(self._slots)

    def __len__(self) -> int:
        """Number of cached entries, pinned included; no effect on hit/miss stats.

        Example::

            assert len(cache) == 2
        """
        self._purge(self._clock())
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is cached and not expired; no effect on hit/miss stats.

        Example::

            assert "var_a_1" in cache
        """
        self._purge(self._clock())
        return key in self._slots

    def is_pinned(self, key: str) -> bool:
        """Whether ``key`` is cached and pinned.

        Example::

            cache.put("k", entry, pinned=True); assert cache.is_pinned("k")
        """
        slot = self._slots.get(key)
        return slot is not None and slot.pinned

    def info(self) -> dict[str, Any]:
        """Settings and statistics (``eviction_count`` counts max_size evictions only).

        Example::

            >>> VariableCache(ttl=None, max_size=None, clock=lambda: 0.0).info()["hit_rate"]
            0.0
        """
        self._purge(self._clock())
        lookups = self._hits + self._misses
        return {
            "size": len(self._slots),
            "pinned": len(self._slots) - len(self._order),
            "ttl": self._ttl,
            "max_size": self._max_size,
            "eviction_policy": self._policy,
            "hits": self._hits,
            "misses": self._misses,
            "hit_rate": self._hits / lookups if lookups else 0.0,
            "eviction_count": self._evictions,
            "expired_count": self._expired,
        }

    # --- writes -------------------------------------------------------------------------------

    def put(
        self, key: str, entry: Any, *, pinned: bool | None = None, name: str | None = None
    ) -> None:
        """Insert or replace ``key``; the TTL restarts. Evicts per policy if over max_size.

        ``pinned=None`` keeps the current pin state (new keys: unpinned); ``name=None`` keeps
        the stored name. With ``ttl == 0`` an unpinned put stores nothing (and drops the old
        entry, as expired).

        Example::

            cache.put("var_temperature_1", entry, name="temperature")
            cache.put("var_model_2", entry, pinned=True)     # watched: kept until unpinned
        """
        now = self._clock()
        self._purge(now)
        slot = self._slots.get(key)
        pin = pinned if pinned is not None else (slot is not None and slot.pinned)
        if not pin and self._ttl == 0:
            if slot is not None:  # only a pinned one can still be here: it expires at once
                self._drop(key)
                self._expired += 1
                self._notify_later(key, "expired")
            return
        seq = next(self._seq)
        if slot is None:
            slot = _Slot(entry, name, now, pin, seq)
            self._slots[key] = slot
            if not pin:
                self._enter_pool(key, slot)
            return
        slot.entry = entry
        if name is not None:
            slot.name = name
        slot.stamp = now
        slot.seq_used = seq
        if slot.pinned and not pin:
            self._enter_pool(key, slot)
        elif not slot.pinned and pin:
            self._leave_pool(key, slot)
        elif not slot.pinned:
            self._order.replaced(key)
            self._expiry.move_to_end(key)

    def pin(self, key: str) -> bool:
        """Pin a cached entry: no TTL, no eviction, not counted in max_size. False if absent.

        Example::

            if not cache.pin(var_id): cache.put(var_id, entry, pinned=True)
        """
        self._purge(self._clock())
        slot = self._slots.get(key)
        if slot is None:
            return False
        if not slot.pinned:
            self._leave_pool(key, slot)
        return True

    def unpin(self, key: str) -> bool:
        """Unpin a cached entry: its TTL starts now and it may be evicted. False if absent.

        Example::

            cache.unpin(var_id)      # after cancelling the watch
        """
        now = self._clock()
        self._purge(now)
        slot = self._slots.get(key)
        if slot is None:
            return False
        if slot.pinned:
            slot.stamp = now
            self._enter_pool(key, slot)
        return True

    def clear(self) -> None:
        """Remove every entry, pinned too; stats stay. Queues callbacks (reason "cleared").

        Example::

            cache.clear(); await cache.flush_invalidations()
        """
        keys = list(self._slots)
        self._slots.clear()
        self._expiry.clear()
        self._order = _build_order(self._policy, self._slots)
        for key in keys:
            self._notify_later(key, "cleared")

    def invalidate_nowait(self, key: str, reason: str = "invalidated") -> bool:
        """`invalidate` for synchronous code: removes at once, queues the callbacks.

        Example::

            cache.invalidate_nowait(var_id, reason="deleted")   # callbacks at next flush
        """
        self._purge(self._clock())
        if key not in self._slots:
            return False
        self._drop(key)
        self._notify_later(key, reason)
        return True

    def rekey(self, old: str, new: str) -> bool:
        """Move ``old``'s entry and its invalidation subscriptions to ``new``; False (only
        subscriptions moved) if ``old`` is not cached.

        For TTL and eviction order the move counts as a fresh put under ``new``. An entry
        already at ``new`` is replaced (its callbacks are queued with reason "replaced").

        Example::

            cache.rekey("temperature", "var_temperature_1")   # provisional name -> id
        """
        now = self._clock()
        self._purge(now)
        if old == new:
            return old in self._slots
        slot = self._slots.get(old)
        if slot is not None and new in self._slots:
            self._drop(new)
            self._notify_later(new, "replaced")
        moved = self._subs_by_key.pop(old, None)
        if moved:
            for sub_id in moved:
                self._subs[sub_id] = (new, self._subs[sub_id][1])
            self._subs_by_key.setdefault(new, {}).update(moved)
        if slot is None:
            return False
        self._drop(old)
        slot.stamp = now
        slot.seq_used = next(self._seq)
        self._slots[new] = slot
        if not slot.pinned:
            self._enter_pool(new, slot)
        return True

    async def invalidate(self, key: str, reason: str = "invalidated") -> bool:
        """Remove ``key`` (pinned too) and await its callbacks; False if it was not cached.

        Queued callbacks (evictions, expiries) run first.

        Example::

            await cache.invalidate("var_temperature_1", reason="remote_update")
        """
        self._purge(self._clock())
        removed = key in self._slots
        if removed:
            self._drop(key)
        await self.flush_invalidations()
        if removed:
            await self._run_calls([(sid, key, reason) for sid in self._subs_by_key.get(key, ())])
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

        Example::

            n = await cache.invalidate_pattern("^model.*$", reason="model_switch")
            n = await cache.invalidate_pattern("model.*", glob=True)
        """
        self._purge(self._clock())
        match = compile_name_filter(name_pattern("pattern", pattern, glob))
        removed = [
            key
            for key, slot in self._slots.items()
            if match(key) or (slot.name is not None and match(slot.name))
        ]
        for key in removed:
            self._drop(key)
        await self.flush_invalidations()
        await self._run_calls(
            [(sid, key, reason) for key in removed for sid in self._subs_by_key.get(key, ())]
        )
        return len(removed)

    # --- invalidation callbacks ---------------------------------------------------------------

    def subscribe_invalidation(self, key: str, callback: InvalidationCallback) -> str:
        """Call ``await callback(key, reason)`` whenever ``key``'s entry is removed; returns
        a subscription id. The subscription outlives the entry until unsubscribed.

        Example::

            async def dropped(key: str, reason: str) -> None: ...
            sub = cache.subscribe_invalidation("var_temperature_1", dropped)
        """
        sub_id = f"inv-{next(self._sub_ids)}"
        self._subs[sub_id] = (key, callback)
        self._subs_by_key.setdefault(key, {})[sub_id] = None
        return sub_id

    def unsubscribe_invalidation(self, sub_id: str) -> bool:
        """Stop a subscription (queued calls for it are dropped); False if it is unknown.

        Example::

            assert cache.unsubscribe_invalidation(sub)
        """
        found = self._subs.pop(sub_id, None)
        if found is None:
            return False
        key = found[0]
        ids = self._subs_by_key[key]
        del ids[sub_id]
        if not ids:
            del self._subs_by_key[key]
        return True

    async def flush_invalidations(self) -> int:
        """Await the callbacks queued by synchronous calls (evictions, expiries, clear), in
        the order they happened; returns how many callbacks ran.

        Example::

            cache.put("k4", entry)                 # evicts "k1"
            await cache.flush_invalidations()      # callbacks see ("k1", "evicted")
        """
        ran = 0
        while self._pending:
            sub_id, key, reason = self._pending.popleft()
            ran += await self._call(sub_id, key, reason)
        return ran

    # --- batches ------------------------------------------------------------------------------

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

        Example::

            entries = await cache.get_batch(ids, fetch_missing=fetch_by_ids)
        """
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
                self._purge(self._clock())
                for key in missing:
                    if key not in fetched:
                        continue
                    slot = self._slots.get(key)
                    if slot is not None:  # put by someone else during the fetch
                        result[key] = slot.entry
                        continue
                    entry = fetched[key]
                    self.put(key, entry, name=name_of(entry) if name_of is not None else None)
                    result[key] = entry
            ordered = {key: result[key] for key in dict.fromkeys(keys) if key in result}
        await self.flush_invalidations()
        return ordered

    # --- internals ----------------------------------------------------------------------------

    def _purge(self, now: float) -> None:
        """Drop unpinned entries whose age is >= ttl (the expiry order is stamp order)."""
        ttl = self._ttl
        if ttl is None:
            return
        expiry = self._expiry
        slots = self._slots
        while expiry:
            key = next(iter(expiry))
            if now - slots[key].stamp < ttl:
                break
            self._drop(key)
            self._expired += 1
            self._notify_later(key, "expired")

    def _enter_pool(self, key: str, slot: _Slot) -> None:
        """Make ``slot`` (already in ``_slots``) evictable and expiring, as if newly put."""
        if self._max_size is not None:
            while len(self._order) >= self._max_size:  # make room first: never evict ``key``
                self._evict_one()
        slot.pinned = False
        slot.hits = 0
        slot.seq_inserted = slot.seq_used = next(self._seq)
        self._order.add(key)
        self._expiry[key] = None

    def _leave_pool(self, key: str, slot: _Slot) -> None:
        slot.pinned = True
        self._order.remove(key)
        del self._expiry[key]

    def _drop(self, key: str) -> None:
        slot = self._slots.pop(key)
        if not slot.pinned:
            self._order.remove(key)
            del self._expiry[key]

    def _evict_one(self) -> None:
        key = self._order.victim()
        self._drop(key)
        self._evictions += 1
        self._notify_later(key, "evicted")

    def _notify_later(self, key: str, reason: str) -> None:
        for sub_id in self._subs_by_key.get(key, ()):
            self._pending.append((sub_id, key, reason))

    async def _run_calls(self, calls: list[tuple[str, str, str]]) -> None:
        for sub_id, key, reason in calls:
            await self._call(sub_id, key, reason)

    async def _call(self, sub_id: str, key: str, reason: str) -> int:
        sub = self._subs.get(sub_id)
        if sub is None:  # unsubscribed since the call was queued
            return 0
        try:
            await sub[1](key, reason)
        except Exception:
            log.exception("invalidation_callback_failed", key=key, reason=reason, sub_id=sub_id)
        return 1
