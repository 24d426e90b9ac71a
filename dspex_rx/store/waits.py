"""Tasks waiting, each for at most a while, until a revision they name is reached: the
store's resumes (``StoreBase.reached``) and a replica's wait for the write that won.
"""

from __future__ import annotations

import asyncio
import contextlib


class RevisionWaits:
    """Waiters for a revision: ``until(target, wait)`` returns True once ``reached(r)`` was
    told some ``r >= target``, False after ``wait`` seconds; each leaves when it returns.

    >>> async def main():
    ...     waits = RevisionWaits()
    ...     asyncio.get_running_loop().call_soon(waits.reached, 7)
    ...     return await waits.until(5, wait=10.0), await waits.until(9, wait=0.01), len(waits)
    >>> asyncio.run(main())
    (True, False, 0)
    """

    def __init__(self) -> None:
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []

    def __len__(self) -> int:
        return len(self._waiting)

    async def until(self, target: int, wait: float) -> bool:
        """Wait until a revision at or past ``target`` is reached, at most ``wait`` s.

        Example: ``if not await waits.until(revision, 0.5): read_everything()``.
        """
        entry = (target, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(entry[1]), wait)
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiting.remove(entry)

    def reached(self, revision: int) -> None:
        """``revision`` is reached: wake who waits for it or for less.

        Example: ``waits.reached(store.revision)`` after another replica's write applied.
        """
        for target, waiter in self._waiting:
            if target <= revision and not waiter.done():
                waiter.set_result(None)
