"""The portal: one trio run on a daemon thread that serves asyncio callers, started by the
first call and kept while a session opened through it or a call in flight holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

from dspex_rx.logs import get_logger

log = get_logger("dspex_rx.aio")


T = TypeVar("T")


class Portal:
    """One trio run on a daemon thread, with a nursery that runs calls made from asyncio.

    >>> portal = Portal(); portal.start()
    >>> trio.from_thread.run_sync(lambda: "on the portal thread", trio_token=portal.token)
    'on the portal thread'
    >>> portal.stop(); portal.join()
    """

    def __init__(self) -> None:
        self.token: trio.lowlevel.TrioToken | None = None
        self.nursery: trio.Nursery | None = None
        self.thread: threading.Thread | None = None
        self.refs = 0  # open sessions + calls in flight
        self.stopping = False
        self._stop: trio.Event | None = None
        self._ended = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        # Calls from asyncio not yet answered: failed if the run ends under them (a
        # BaseException out of a session's task), so no caller waits for ever.
        self._inflight: dict[asyncio.Future[Any], asyncio.AbstractEventLoop] = {}
        self._waiters_lock = threading.Lock()

    def start(self) -> None:
        """Start the thread and wait until its nursery is open.

        Example: ``portal.start()`` returns once ``portal.token`` and ``portal.nursery`` are set.
        """
        ready = threading.Event()

        async def main() -> None:
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self.token = trio.lowlevel.current_trio_token()
                _portal_tokens.add(self.token)
                ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()

        def run() -> None:
            reason = "the dspex-rx portal stopped"
            try:
                trio.run(main)
            except BaseException as exc:
                # A BaseException escaped a task in the run (a SystemExit from a user
                # callback, say): every session opened through this portal is gone.
                log.exception("portal_failed")
                reason = f"the dspex-rx portal failed: {type(exc).__name__}: {exc}"
            finally:
                _forget(self)
                ready.set()
                with self._waiters_lock:
                    self._ended.set()
                    waiters, self._waiters = self._waiters, []
                    inflight, self._inflight = self._inflight, {}
                for loop, future in waiters:
                    with contextlib.suppress(RuntimeError):  # that loop has closed
                        loop.call_soon_threadsafe(_set_done, future)
                failed = outcome.Error(RuntimeError(reason))
                for call, loop in inflight.items():
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(_set_done, call, failed)

        # A daemon thread, as a last resort: a program that never closes its session must
        # still be able to exit.
        self.thread = threading.Thread(target=run, name="dspex-rx-portal", daemon=True)
        self.thread.start()
        ready.wait()
        if self.token is None:
            raise RuntimeError("the dspex-rx portal thread failed to start")

    def stop(self) -> None:
        """Ask the trio run to end (its nursery is cancelled); returns at once.

        Example: ``portal.stop(); portal.join()`` ends the run and waits for its thread.
        """
        stop, token = self._stop, self.token
        if stop is not None and token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(stop.set)

    def join(self) -> None:
        """Wait (blocking) until the portal thread has ended.

        Example: ``portal.stop(); portal.join()`` ends the run and waits for its thread.
        """
        if self.thread is not None:
            self.thread.join()

    def track(self, loop: asyncio.AbstractEventLoop, call: asyncio.Future[Any]) -> bool:
        """Note a call in flight; False if the run has already ended (nothing will answer).

        Example: ``portal.track(loop, done)`` is False once the run has ended.
        """
        with self._waiters_lock:
            if self._ended.is_set():
                return False
            self._inflight[call] = loop
            return True

    def untrack(self, call: asyncio.Future[Any]) -> None:
        """Forget an answered call.

        Example: ``portal.untrack(done)`` once ``done`` has its answer.
        """
        with self._waiters_lock:
            self._inflight.pop(call, None)

    async def ended(self) -> None:
        """Wait, from asyncio, until the portal thread has ended.

        Example: ``portal.stop(); await portal.ended()`` waits without blocking the asyncio loop.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._waiters_lock:
            if self._ended.is_set():
                future.set_result(None)
            else:
                self._waiters.append((loop, future))
        await _uncancellable(future)
        self.join()


def _set_done(future: asyncio.Future[Any], value: Any = None) -> None:
    if not future.done():
        future.set_result(value)


async def _uncancellable(future: asyncio.Future[T]) -> T:
    # Wait for ``future`` even if the waiting task is cancelled meanwhile; re-raise the
    # cancellation afterwards (asyncio's form of trio's shielded wait).
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done():
                break
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return future.result()


_lock = threading.Lock()
_current: Portal | None = None
# Tokens of portal runs, so an object living in a trio program's own run is told apart.
_portal_tokens: weakref.WeakSet[trio.lowlevel.TrioToken] = weakref.WeakSet()


def current_portal() -> Portal | None:
    """The running portal, if asyncio code has started one (None under pure trio).

    >>> current_portal() is None   # no asyncio code has called into dspex-rx here
    True
    """
    return _current


def _acquire() -> Portal:
    global _current
    with _lock:
        portal = _current
        if portal is None:
            portal = _current = Portal()
            try:
                portal.start()
            except BaseException:
                _current = None
                raise
        portal.refs += 1
        return portal


def _forget(portal: Portal) -> None:
    # The run has ended (stopped or failed): the next call from asyncio starts a new one.
    global _current
    with _lock:
        if _current is portal:
            _current = None


def _release(portal: Portal) -> bool:
    # True when this was the last reference: the portal is then ending.
    global _current
    with _lock:
        portal.refs -= 1
        if portal.refs > 0 or portal.stopping:
            return False
        portal.stopping = True
        if _current is portal:
            _current = None
    portal.stop()
    return True


def hold_current_run() -> Callable[[], None] | None:
    """Keep the portal running while a session opened in it is open; from trio code.

    Returns the function that lets it go (call it once, on close), or None when the
    current trio run is not a portal (a trio program's own run needs no holding).

    >>> async def main() -> object:
    ...     return hold_current_run()
    >>> trio.run(main) is None   # a trio program's own run needs no holding
    True
    """
    token = trio.lowlevel.current_trio_token()
    with _lock:
        portal = _current
        if portal is None or portal.token is not token:
            return None
        portal.refs += 1
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            _release(portal)

    return release
