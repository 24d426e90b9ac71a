"""Wall-clock deadlines for pipelined calls: one timer thread per connection that fires
each expired deadline into the trio run, as gRPC's own deadline timers do for unary calls.
"""

# Why not trio.move_on_after: a call's timeout is a gRPC deadline, real time, while the
# answer it waits for is real I/O. Under trio's MockClock (the test suite's virtual time)
# an autojump clock would leap past every call's timeout while the server is working.
# Why not the transport's asyncio loop: it may run on trio's clock too (trio_asyncio).
#
# Cost per call: a heap push under an uncontended lock; the thread is woken only when a
# deadline earlier than all others arrives. A call that ends first marks its entry
# cancelled; cancelled entries are dropped when they reach the top, or all at once when
# they outnumber the live ones (so a busy connection does not hoard 30 s of them).

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable

import trio

# Rebuild the heap when this many cancelled entries are in it and they are the majority.
COMPACT_AT = 1024


class Deadline:
    """One pending deadline (``Deadlines.forget`` it once the call it guards has ended).

    >>> Deadline(1.0, 0, lambda: None).cancelled
    False
    """

    __slots__ = ("cancelled", "fire", "seq", "when")

    def __init__(self, when: float, seq: int, fire: Callable[[], None]) -> None:
        self.when = when
        self.seq = seq
        self.fire = fire
        self.cancelled = False

    def __lt__(self, other: Deadline) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


class Deadlines:
    """The deadlines of one connection: ``add`` one per call, fired in the trio run.

    Example: ``deadline = deadlines.add(30.0, on_expiry)`` then
    ``deadlines.forget(deadline)``; ``deadlines.close()`` stops the thread.

    >>> fired = []
    >>> d = Deadlines(token=None, clock=lambda: 100.0)
    >>> early, late = d.add(1.0, lambda: fired.append("early")), d.add(5.0, lambda: None)
    >>> [x.fire is early.fire for x in d.due(101.5)], len(d)
    ([True], 1)
    """

    def __init__(self, token: trio.lowlevel.TrioToken | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._token = token
        self._clock = clock
        self._heap: list[Deadline] = []
        self._cancelled = 0
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, timeout: float, fire: Callable[[], None]) -> Deadline:
        """A deadline ``timeout`` seconds from now (wall clock); ``fire()`` then runs in
        the trio run unless cancelled first.

        Example: ``deadlines.add(30.0, lambda: expire(call_id))``.
        """
        entry = Deadline(self._clock() + timeout, next(self._seq), fire)
        with self._cond:
            heap = self._heap
            if self._cancelled >= COMPACT_AT and self._cancelled * 2 > len(heap):
                heap[:] = [e for e in heap if not e.cancelled]
                heapq.heapify(heap)
                self._cancelled = 0
            heapq.heappush(heap, entry)
            if heap[0] is entry:
                if self._thread is None and self._token is not None:
                    self._thread = threading.Thread(
                        target=self._run, name="dspex-rx-deadlines", daemon=True)
                    self._thread.start()
                self._cond.notify()
        return entry

    def forget(self, entry: Deadline) -> None:
        """Cancel ``entry`` and count it for compaction.

        Example: ``deadlines.forget(deadline)`` when the answer came first.
        """
        if not entry.cancelled:
            with self._cond:
                entry.cancelled = True
                self._cancelled += 1

    def due(self, now: float) -> list[Deadline]:
        """Take the live deadlines at or before ``now`` off the heap, earliest first.

        Example: ``deadlines.due(time.monotonic())`` is what the thread fires.
        """
        out: list[Deadline] = []
        with self._cond:
            heap = self._heap
            while heap and (heap[0].cancelled or heap[0].when <= now):
                entry = heapq.heappop(heap)
                if entry.cancelled:
                    self._cancelled = max(0, self._cancelled - 1)
                else:
                    out.append(entry)
        return out

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                if self._heap:
                    self._cond.wait(max(0.0, self._heap[0].when - self._clock()))
                else:
                    self._cond.wait()
                if self._closed:
                    return
            for entry in self.due(self._clock()):
                assert self._token is not None
                with contextlib.suppress(trio.RunFinishedError):
                    self._token.run_sync_soon(self._fire, entry)

    @staticmethod
    def _fire(entry: Deadline) -> None:
        # In the trio run: a call that ended meanwhile forgot it.
        if not entry.cancelled:
            entry.fire()

    def close(self) -> None:
        """Stop the thread; pending deadlines never fire.

        Example: ``deadlines.close()`` when the connection's calls have stopped.
        """
        with self._cond:
            self._closed = True
            self._cond.notify()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
