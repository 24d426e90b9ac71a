"""The cache's invalidation callbacks: who subscribed to which key, and the calls that
synchronous cache methods queue until the next await (``Invalidations``).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from dspex_rx.logs import get_logger

log = get_logger("dspex_rx.cache")

InvalidationCallback = Callable[[str, str], Awaitable[object]]
"""``async def callback(key, reason)``; reason is e.g. "invalidated", "evicted", "expired"."""


class Invalidations:
    """The subscriptions of one cache, by id and by key, and the queue of calls owed.

    A subscription outlives the entry it watches; a callback that raises is logged and
    skipped; a call queued for a subscription that is gone by the time it runs is dropped.

    >>> import trio
    >>> seen = []
    >>> async def note(key: str, reason: str) -> None:
    ...     seen.append((key, reason))
    >>> subs = Invalidations()
    >>> sub = subs.subscribe("k", note)
    >>> subs.queue("k", "evicted"); subs.queue("other", "evicted")
    >>> trio.run(subs.flush), seen
    (1, [('k', 'evicted')])
    """

    def __init__(self) -> None:
        self._subs: dict[str, tuple[str, InvalidationCallback]] = {}  # sub id -> (key, cb)
        self._by_key: dict[str, dict[str, None]] = {}  # key -> sub ids, in order
        self._ids = itertools.count(1)
        self._pending: deque[tuple[str, str, str]] = deque()  # (sub id, key, reason)

    def subscribe(self, key: str, callback: InvalidationCallback) -> str:
        """A new subscription id for ``callback`` on ``key``.

        >>> async def cb(key: str, reason: str) -> None: ...
        >>> Invalidations().subscribe("k", cb)
        'inv-1'
        """
        sub_id = f"inv-{next(self._ids)}"
        self._subs[sub_id] = (key, callback)
        self._by_key.setdefault(key, {})[sub_id] = None
        return sub_id

    def unsubscribe(self, sub_id: str) -> bool:
        """Stop a subscription (its queued calls are dropped when reached); False if unknown.

        >>> Invalidations().unsubscribe("inv-1")
        False
        """
        found = self._subs.pop(sub_id, None)
        if found is None:
            return False
        key = found[0]
        ids = self._by_key[key]
        del ids[sub_id]
        if not ids:
            del self._by_key[key]
        return True

    def move(self, old: str, new: str) -> None:
        """Move every subscription on ``old`` to ``new`` (a rekeyed entry keeps them).

        >>> async def cb(key: str, reason: str) -> None: ...
        >>> subs = Invalidations(); _ = subs.subscribe("name", cb)
        >>> subs.move("name", "var_1"); subs.keys()
        ['var_1']
        """
        moved = self._by_key.pop(old, None)
        if moved:
            for sub_id in moved:
                self._subs[sub_id] = (new, self._subs[sub_id][1])
            self._by_key.setdefault(new, {}).update(moved)

    def keys(self) -> list[str]:
        """The keys that have subscriptions, in first-subscribed order.

        >>> Invalidations().keys()
        []
        """
        return list(self._by_key)

    def queue(self, key: str, reason: str) -> None:
        """Owe every subscriber of ``key`` a call with ``reason``, run at the next ``flush``;
        a key without subscribers queues nothing.

        >>> subs = Invalidations(); subs.queue("k", "expired"); len(subs._pending)
        0
        """
        for sub_id in self._by_key.get(key, ()):
            self._pending.append((sub_id, key, reason))

    async def flush(self) -> int:
        """Run the queued calls in the order they were queued; how many ran.

        Example: ``await cache.flush_invalidations()`` is this for the cache's queue.
        """
        ran = 0
        while self._pending:
            sub_id, key, reason = self._pending.popleft()
            ran += await self._call(sub_id, key, reason)
        return ran

    async def notify(self, keys: Iterable[str], reason: str) -> None:
        """Call every subscriber of each of ``keys`` now, in subscription order.

        Example: ``await cache.invalidate("var_temperature_1")`` ends with this for its key.
        """
        calls = [(sub_id, key) for key in keys for sub_id in self._by_key.get(key, ())]
        for sub_id, key in calls:
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
