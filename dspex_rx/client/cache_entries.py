"""The cache's bookkeeping below its API: one slot per key, the lru/fifo/lfu eviction
orders (each operation O(1)), the clock TTLs count on, and the checks of the settings.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, Final, Protocol

import trio

from dspex_rx.errors import InvalidValueError

EVICTION_POLICIES: Final = ("lru", "lfu", "fifo")


def _library_clock() -> float:
    """trio's clock inside a trio run (so MockClock drives TTLs in tests), else monotonic."""
    try:
        return trio.current_time()
    except RuntimeError:
        return time.monotonic()


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


class EntryTable:
    """The slots of one cache and its TTL and eviction rules: unpinned slots sit in the
    eviction order (by policy) and the expiry order (by stamp); pinned ones in neither.

    The removals it decides (expiry, eviction) are counted and reported to
    ``removed(key, reason)``, which the cache uses to queue invalidation callbacks.

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

    >>> gone = []
    >>> table = EntryTable(ttl=10.0, max_size=1, policy="lru", removed=lambda *kr: gone.append(kr))
    >>> for key in ("a", "b"):
    ...     slot = _Slot(key.upper(), None, 0.0, False, next(table.seq))
    ...     table.slots[key] = slot
    ...     table.enter_pool(key, slot)
    >>> table.purge(now=10.0)
    >>> gone, table.evictions, table.expired
    ([('a', 'evicted'), ('b', 'expired')], 1, 1)
    """

    def __init__(
        self,
        ttl: float | None,
        max_size: int | None,
        policy: str,
        removed: Callable[[str, str], None],
    ) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self.policy = policy
        self.slots: dict[str, _Slot] = {}
        self.order: _Order = _build_order(policy, self.slots)
        self.expiry: OrderedDict[str, None] = OrderedDict()  # unpinned keys, oldest stamp first
        self.seq = itertools.count()  # use stamps: lru order, lfu ties, fifo order
        self.evictions = 0
        self.expired = 0
        self._removed = removed

    def configure(self, ttl: float | None, max_size: int | None, policy: str, now: float) -> None:
        """Apply checked settings: expire by the new ttl, reorder by a new policy, then evict
        down to the new max_size.

        Example: ``cache.configure(max_size=100)`` ends here, evicting down to 100.
        """
        self.ttl = ttl
        self.purge(now)
        if policy != self.policy:
            self.policy = policy
            self.order = _build_order(policy, self.slots)
        self.max_size = max_size
        if max_size is not None:
            while len(self.order) > max_size:
                self.evict_one()

    def put(self, key: str, entry: Any, pinned: bool | None, name: str | None, now: float) -> None:
        """``VariableCache.put`` on purged slots: insert or replace, the TTL restarting.

        Example: ``cache.put("var_model_2", "gpt", pinned=True)`` ends here.
        """
        slot = self.slots.get(key)
        pin = pinned if pinned is not None else (slot is not None and slot.pinned)
        if not pin and self.ttl == 0:
            if slot is not None:  # only a pinned one can still be here: it expires at once
                self.expire(key)
            return
        seq = next(self.seq)
        if slot is None:
            slot = _Slot(entry, name, now, pin, seq)
            self.slots[key] = slot
            if not pin:
                self.enter_pool(key, slot)
            return
        slot.entry = entry
        if name is not None:
            slot.name = name
        slot.stamp = now
        slot.seq_used = seq
        if slot.pinned and not pin:
            self.enter_pool(key, slot)
        elif not slot.pinned and pin:
            self.leave_pool(key, slot)
        elif not slot.pinned:
            self.order.replaced(key)
            self.expiry.move_to_end(key)

    def pin(self, key: str) -> bool:
        """Pin ``key``'s slot; False if there is none.

        Example: ``cache.pin(key)`` ends here.
        """
        slot = self.slots.get(key)
        if slot is None:
            return False
        if not slot.pinned:
            self.leave_pool(key, slot)
        return True

    def unpin(self, key: str, now: float) -> bool:
        """Unpin ``key``'s slot, its TTL starting ``now``; False if there is none.

        Example: ``cache.unpin(key)`` ends here.
        """
        slot = self.slots.get(key)
        if slot is None:
            return False
        if slot.pinned:
            slot.stamp = now
            self.enter_pool(key, slot)
        return True

    def rekey(self, old: str, new: str, now: float) -> bool:
        """Move ``old``'s slot to ``new`` (``old != new``) as a fresh put, replacing any slot
        there (reported as "replaced"); False if ``old`` has none.

        Example: ``cache.rekey("temperature", "var_temperature_1")`` ends here.
        """
        slot = self.slots.get(old)
        if slot is not None and new in self.slots:
            self.drop(new)
            self._removed(new, "replaced")
        if slot is None:
            return False
        self.drop(old)
        slot.stamp = now
        slot.seq_used = next(self.seq)
        self.slots[new] = slot
        if not slot.pinned:
            self.enter_pool(new, slot)
        return True

    def purge(self, now: float) -> None:
        """Drop unpinned entries whose age is >= ttl (the expiry order is stamp order).

        Example: every ``VariableCache`` call starts with ``table.purge(clock())``.
        """
        ttl = self.ttl
        if ttl is None:
            return
        expiry = self.expiry
        slots = self.slots
        while expiry:
            key = next(iter(expiry))
            if now - slots[key].stamp < ttl:
                break
            self.expire(key)

    def expire(self, key: str) -> None:
        """Drop ``key`` as expired.

        Example: a put of an unpinned entry under ``ttl=0`` calls ``table.expire(key)``.
        """
        self.drop(key)
        self.expired += 1
        self._removed(key, "expired")

    def enter_pool(self, key: str, slot: _Slot) -> None:
        """Make ``slot`` (already in ``slots``) evictable and expiring, as if newly put.

        Example: ``cache.unpin(key)`` calls ``table.enter_pool(key, slot)``.
        """
        if self.max_size is not None:
            while len(self.order) >= self.max_size:  # make room first: never evict ``key``
                self.evict_one()
        slot.pinned = False
        slot.hits = 0
        slot.seq_inserted = slot.seq_used = next(self.seq)
        self.order.add(key)
        self.expiry[key] = None

    def leave_pool(self, key: str, slot: _Slot) -> None:
        """Pin ``slot``: out of the eviction and expiry orders.

        Example: ``cache.pin(key)`` calls ``table.leave_pool(key, slot)``.
        """
        slot.pinned = True
        self.order.remove(key)
        del self.expiry[key]

    def drop(self, key: str) -> None:
        """Remove ``key``'s slot (it must be present), from the orders too.

        Example: ``cache.invalidate_nowait(key)`` calls ``table.drop(key)``.
        """
        slot = self.slots.pop(key)
        if not slot.pinned:
            self.order.remove(key)
            del self.expiry[key]

    def evict_one(self) -> None:
        """Evict the policy's victim (the eviction order is not empty).

        Example: ``table.enter_pool`` calls it while the pool is full.
        """
        key = self.order.victim()
        self.drop(key)
        self.evictions += 1
        self._removed(key, "evicted")

    def clear(self) -> list[str]:
        """Remove every slot, pinned too; the keys that were there, oldest first.

        Example: ``cache.clear()`` queues a "cleared" callback for each key returned.
        """
        keys = list(self.slots)
        self.slots.clear()
        self.expiry.clear()
        self.order = _build_order(self.policy, self.slots)
        return keys
