"""asyncio programs: the portal that runs the trio client for them, and ``portal_aware``,
the class decorator that makes a trio API callable from asyncio without editing it.

Under trio nothing changes: a public ``async def`` method returns its coroutine as before.
Called from asyncio (``sniffio`` decides), the method runs as a task in the portal, one trio
run on a thread of its own (started by the first such call, ended when the last session
opened through it closes), and the asyncio caller awaits an asyncio future completed from
there. Cancelling the asyncio caller cancels that trio task and waits until it has finished,
the mirror image of ``transport.LoopThread.run``. Public sync methods of an object that
lives in a trio run (``_trio_token``) run in that run when called from any other thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

import outcome
import sniffio
import trio

from dspex_rx.logs import get_logger

log = get_logger("dspex_rx.aio")

T = TypeVar("T")
P = ParamSpec("P")
C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])

# The dunder methods ``async with`` / ``async for`` call; other dunders stay as they are.
_ASYNC_DUNDERS = frozenset({"__aenter__", "__aexit__", "__anext__"})


class Portal:
    """One trio run on a daemon thread, with a nursery that runs calls made from asyncio.

    Example::

        portal = Portal(); portal.start()
        portal.token.run_sync_soon(print, "on the portal thread")
        portal.stop(); portal.join()
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

        Example::

            Portal().start()
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

        Example::

            portal.stop()
        """
        stop, token = self._stop, self.token
        if stop is not None and token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(stop.set)

    def join(self) -> None:
        """Wait (blocking) until the portal thread has ended.

        Example::

            portal.stop(); portal.join()
        """
        if self.thread is not None:
            self.thread.join()

    def track(self, loop: asyncio.AbstractEventLoop, call: asyncio.Future[Any]) -> bool:
        """Note a call in flight; False if the run has already ended (nothing will answer).

        Example::

            if not portal.track(loop, done): raise RuntimeError("portal ended")
        """
        with self._waiters_lock:
            if self._ended.is_set():
                return False
            self._inflight[call] = loop
            return True

    def untrack(self, call: asyncio.Future[Any]) -> None:
        """Forget an answered call.

        Example::

            portal.untrack(done)
        """
        with self._waiters_lock:
            self._inflight.pop(call, None)

    async def ended(self) -> None:
        """Wait, from asyncio, until the portal thread has ended.

        Example::

            portal.stop(); await portal.ended()
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

    Example::

        assert dspex_rx.aio.current_portal() is None
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

    Example::

        release = hold_current_run()
        ...
        if release is not None: release()
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


# ------------------------------------------------------------------ calls from asyncio


def is_async_callable(fn: Any) -> bool:
    """True for ``async def`` functions, partials of them, and objects whose ``__call__``
    is one: what must be awaited rather than called in a worker thread.

    Example::

        >>> async def score(value): return value
        >>> is_async_callable(score), is_async_callable(abs)
        (True, False)
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - the bound __call__ is what runs
    )


def _on_loop(fn: Callable[..., Awaitable[Any]], loop: asyncio.AbstractEventLoop) -> Any:
    # An async callable given from asyncio (an objective, a derive function, a callback)
    # runs on the caller's loop, where it can await asyncio things.
    from dspex_rx.client.transport import LoopThread

    bridge = LoopThread("asyncio-caller")
    bridge.loop = loop

    @functools.wraps(fn)
    async def on_caller_loop(*args: Any, **kwargs: Any) -> Any:
        return await bridge.run(lambda: fn(*args, **kwargs))

    return on_caller_loop


def _caller_callables(
    args: tuple[Any, ...], kwargs: dict[str, Any], loop: asyncio.AbstractEventLoop
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if not any(is_async_callable(a) for a in (*args, *kwargs.values())):
        return args, kwargs
    return (
        tuple(_on_loop(a, loop) if is_async_callable(a) else a for a in args),
        {k: _on_loop(v, loop) if is_async_callable(v) else v for k, v in kwargs.items()},
    )


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return False


async def run_in_portal(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """From asyncio: run the trio ``fn(*args, **kwargs)`` as a task in the portal and
    return its result (or raise its exception). Cancelling the caller cancels the task and
    waits until it has finished.

    Example::

        value = await run_in_portal(session_trio_method, "temperature")
    """
    return await _run_in_portal(fn, args, kwargs, None)


async def _run_in_portal(
    fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any],
    discard: Callable[[T], None] | None, name: str | None = None,
) -> T:
    # ``discard(value)`` runs in the trio run when the caller was cancelled after the
    # call had already succeeded there: it undoes what the lost result took (a watch
    # update popped from its buffer goes back), so a late cancel loses nothing.
    loop = asyncio.get_running_loop()
    args, kwargs = _caller_callables(args, kwargs, loop)
    portal = _acquire()
    token, nursery = portal.token, portal.nursery
    assert token is not None and nursery is not None
    done: asyncio.Future[outcome.Outcome[T] | None] = loop.create_future()
    state: dict[str, Any] = {"cancel": False, "scope": None}

    def answer(result: outcome.Outcome[T] | None) -> None:
        with contextlib.suppress(RuntimeError):  # the caller's loop has closed
            loop.call_soon_threadsafe(_set_done, done, result)

    async def task() -> None:
        result: outcome.Outcome[T] | None = None
        try:
            with trio.CancelScope() as scope:
                state["scope"] = scope
                if state["cancel"]:
                    scope.cancel()
                try:
                    result = outcome.Value(await fn(*args, **kwargs))
                except BaseException as exc:
                    if _only_cancelled(exc):
                        if scope.cancel_called:
                            raise  # ours: the scope absorbs it, and the caller was cancelled
                        # Not ours (the portal is ending under the call): trio's Cancelled
                        # means nothing to an asyncio caller.
                        result = outcome.Error(RuntimeError(
                            "the dspex-rx portal stopped while the call ran"))
                        raise
                    result = outcome.Error(exc)
        finally:
            if result is None and not state["cancel"]:
                result = outcome.Error(RuntimeError("the dspex-rx portal stopped"))
            answer(result)

    # The task runs in a copy of the caller's context, as an asyncio task would: context
    # variables the caller set (dspy.context(lm=...)) reach the call and its worker threads.
    context = contextvars.copy_context()

    name = f"dspex-rx-aio[{name or getattr(fn, '__qualname__', fn)}]"

    def spawn() -> None:
        try:
            nursery.start_soon(task, name=name)
        except RuntimeError as exc:  # the nursery is closing: the portal is ending
            answer(outcome.Error(RuntimeError(f"the dspex-rx portal is stopping: {exc}")))

    def start() -> None:
        context.run(spawn)

    def cancel() -> None:
        state["cancel"] = True
        if state["scope"] is not None:
            state["scope"].cancel()

    try:
        if not portal.track(loop, done):
            raise RuntimeError("the dspex-rx portal has ended")
        try:
            token.run_sync_soon(start)
        except trio.RunFinishedError:
            raise RuntimeError("the dspex-rx portal has ended") from None
        try:
            # Shielded: cancelling the caller must not cancel ``done`` itself, which says
            # when the trio side has finished.
            result = await asyncio.shield(done)
        except asyncio.CancelledError:
            # Callbacks run in order, so start() has run before cancel() does.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(cancel)
            late = await _uncancellable(done)
            if discard is not None and isinstance(late, outcome.Value):
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(discard, late.value)
            raise
    finally:
        portal.untrack(done)
        if _release(portal):
            await portal.ended()
    if result is None:  # cancelled on the trio side although nobody asked: say so
        raise asyncio.CancelledError
    return result.unwrap()


def undo_when_lost(undo: Callable[[Any, Any], None]) -> Callable[[F], F]:
    """Mark an ``async def`` method whose result, if its asyncio caller is cancelled just
    after it succeeded, must be undone by ``undo(self, result)`` in the trio run.

    Example::

        @undo_when_lost(lambda watch, update: watch._buffer.appendleft(update))
        async def next(self): ...
    """

    def mark(method: F) -> F:
        method._portal_undo = undo  # type: ignore[attr-defined]
        return method

    return mark


def _library() -> str | None:
    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return None


# Trio sets this while it steps a task: reading it is the cheapest test for "called from
# trio code" (sniffio.current_async_library() reads it first, too).
_sniffio_local = sniffio.thread_local


def _async_method(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    undo = getattr(method, "_portal_undo", None)

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        if _sniffio_local.name == "trio":
            return method(self, *args, **kwargs)  # the trio API as it always was
        library = _library()
        if library == "trio":
            return method(self, *args, **kwargs)
        if library == "asyncio":
            owner = owner_token(self)
            if owner is not None and owner not in _portal_tokens:
                return _in_owner_run(method, owner, self, *args, **kwargs)
            discard = None if undo is None else functools.partial(undo, self)
            # Bound first: only the call's own arguments are the caller's callables (an
            # object with an async __call__ is not to be moved to the caller's loop).
            return _run_in_portal(functools.partial(method, self), args, kwargs, discard,
                                  method.__qualname__)
        return _decide_later(method, self, *args, **kwargs)

    return wrapper


def _in_owner_run(
    method: Callable[..., Awaitable[T]], owner: trio.lowlevel.TrioToken, *args: Any,
    **kwargs: Any,
) -> Awaitable[T]:
    # The object lives in a trio program's own run, and asyncio code calls it: that is
    # asyncio hosted in trio by trio-asyncio (same thread), where trio_as_aio crosses.
    # The portal would run it in the wrong trio run (its events belong to the owner's).
    try:
        here: trio.lowlevel.TrioToken | None = trio.lowlevel.current_trio_token()
    except RuntimeError:
        here = None
    trio_asyncio = sys.modules.get("trio_asyncio")
    if here is owner and trio_asyncio is not None:
        return cast(Awaitable[T], trio_asyncio.trio_as_aio(method)(*args, **kwargs))
    raise RuntimeError(
        f"{getattr(method, '__qualname__', method)} belongs to the trio run that opened its "
        "session; call it from that run's trio code (from asyncio code hosted in it, "
        "through trio_asyncio.trio_as_aio)"
    )


async def _decide_later(
    method: Callable[..., Awaitable[T]], self: Any, *args: Any, **kwargs: Any
) -> T:
    # The coroutine was made outside any async library (``loop.run_until_complete(
    # session.initialize())``): decide when it first runs.
    if _library() == "asyncio":
        return await _run_in_portal(functools.partial(method, self), args, kwargs, None,
                                    method.__qualname__)
    return await method(self, *args, **kwargs)


class PortalContextManager:
    """An async context manager made under asyncio from a trio one: its ``__aenter__`` and
    ``__aexit__`` run in the portal.

    Example::

        async with PortalContextManager(session_trio_cm) as value: ...
    """

    def __init__(self, manager: Any) -> None:
        self._manager = manager

    async def __aenter__(self) -> Any:
        return await run_in_portal(self._manager.__aenter__)

    async def __aexit__(self, *exc: Any) -> Any:
        return await run_in_portal(self._manager.__aexit__, *exc)


def _context_method(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _library() == "asyncio":
            loop = asyncio.get_running_loop()
            args, kwargs = _caller_callables(args, kwargs, loop)
            return PortalContextManager(method(self, *args, **kwargs))
        return method(self, *args, **kwargs)

    return wrapper


def portal_context(fn: Callable[P, T]) -> Callable[P, T]:
    """For a function returning an async context manager (``@asynccontextmanager``):
    under asyncio its enter and exit run in the portal.

    Example::

        @portal_context
        @asynccontextmanager
        async def connect(...): ...
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
        if _library() == "asyncio":
            return PortalContextManager(fn(*args, **kwargs))
        return fn(*args, **kwargs)

    return wrapper


def call_in_run(token: trio.lowlevel.TrioToken | None, fn: Callable[..., T],
                *args: Any, **kwargs: Any) -> T:
    """Call the sync ``fn`` in the trio run of ``token``, blocking this thread until it
    returns; called directly when this thread is in that run already (or it has ended).

    Example::

        watch = call_in_run(session._trio_token, session.watch_variable, "x")
    """
    if token is None:
        return fn(*args, **kwargs)
    try:
        if trio.lowlevel.current_trio_token() is token:
            return fn(*args, **kwargs)
    except RuntimeError:
        pass
    try:
        return trio.from_thread.run_sync(
            functools.partial(fn, *args, **kwargs), trio_token=token
        )
    except trio.RunFinishedError:
        return fn(*args, **kwargs)  # the run is over: let the object say it is closed


def _sync_method(method: Callable[..., T], token_of: Callable[[Any], Any]) -> Callable[..., T]:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        if _sniffio_local.name == "trio":
            # In a trio task: this run is the object's, or (another run's object) no hop
            # is possible from here anyway.
            return method(self, *args, **kwargs)
        return call_in_run(token_of(self), method, self, *args, **kwargs)

    return wrapper


def owner_token(obj: Any) -> trio.lowlevel.TrioToken | None:
    """The trio token of the run an object lives in: its own ``_trio_token``, or its
    session's.

    Example::

        owner_token(session) is owner_token(watch)
    """
    token = getattr(obj, "_trio_token", None)
    if token is None:
        session = getattr(obj, "session", None)
        token = getattr(session, "_trio_token", None) if session is not None else None
    return token


def portal_aware(
    cls: C | None = None, *, local: tuple[str, ...] = ()
) -> Any:
    """Class decorator: make every public ``async def`` method (and ``__aenter__``,
    ``__aexit__``, ``__anext__``) usable from asyncio through the portal, every
    ``@asynccontextmanager`` method usable with ``async with`` from asyncio, and every
    other public method run in the object's trio run when called from another thread.
    Methods named in ``local`` are left as they are (they manage threads themselves).

    Example::

        @portal_aware
        class Tool:
            def __init__(self, session): self.session = session
            async def read(self): return await self.session.get_variable("x")
    """

    def decorate(klass: C) -> C:
        for name, attr in list(vars(klass).items()):
            if name in local or (name.startswith("_") and name not in _ASYNC_DUNDERS):
                continue
            if not inspect.isfunction(attr):
                continue  # properties, static and class methods, attributes
            wrapped = getattr(attr, "__wrapped__", None)
            if inspect.iscoroutinefunction(attr):
                setattr(klass, name, _async_method(attr))
            elif wrapped is not None and inspect.isasyncgenfunction(wrapped):
                setattr(klass, name, _context_method(attr))
            elif not name.startswith("_"):
                setattr(klass, name, _sync_method(attr, owner_token))
        return klass

    return decorate(cls) if cls is not None else decorate


# --------------------------------------------------------- tasks that drive watches

# asyncio task -> the watches it has iterated (cancel_watch(task) ends them too).
_driven: weakref.WeakKeyDictionary[asyncio.Future[Any], weakref.WeakSet[Any]] = (
    weakref.WeakKeyDictionary()
)


def note_driver(watch: Any) -> None:
    """Remember that the current asyncio task iterates ``watch`` (a no-op under trio).

    Example::

        note_driver(self)   # in Watch.__anext__
    """
    if _library() != "asyncio":
        return
    task = asyncio.current_task()
    if task is not None:
        _driven.setdefault(task, weakref.WeakSet()).add(watch)


def cancel_task(task: asyncio.Future[Any]) -> list[Any]:
    """Cancel an asyncio task (from any thread) and return the watches it drives: the
    one it runs (``asyncio.create_task(watch)``) and every one it has iterated.

    Example::

        for watch in cancel_task(task): watch.cancel()
    """
    watches = list(_driven.pop(task, ()))
    from dspex_rx.client.watch import Watch

    coro = task.get_coro() if isinstance(task, asyncio.Task) else None
    if isinstance(coro, Watch):
        watches.append(coro)  # the task runs the watch itself
    loop = task.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        task.cancel()
    else:
        with contextlib.suppress(RuntimeError):  # its loop has closed: nothing to cancel
            loop.call_soon_threadsafe(task.cancel)
    return watches



def subscribe_from_outside(
    subscribe: Callable[..., Any],
    token: trio.lowlevel.TrioToken,
    on_next: Any,
    on_error: Any,
    on_completed: Any,
    scheduler: Any,
) -> Any:
    """Subscribe to a trio-bound observable from another thread: the subscription (and its
    disposal) is made in the trio run; on a thread running an asyncio loop, the callbacks
    are posted to that loop in order (``call_soon_threadsafe``).

    Example::

        d = subscribe_from_outside(obs_subscribe, token, print, None, None, scheduler)
    """
    from reactivex import abc as rx_abc
    from reactivex.disposable import Disposable

    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        if isinstance(on_next, rx_abc.ObserverBase):
            observer = on_next
            on_next, on_error, on_completed = (
                observer.on_next, observer.on_error, observer.on_completed
            )
        target = loop
        holder: list[Any] = []

        def orphaned() -> None:
            # The subscriber's loop has closed: nobody will see another value, so stop
            # the subscription (in the trio run, where this runs) and say so once.
            if holder and holder[0] is not None:
                inner, holder[0] = holder[0], None
                log.warning("observer_loop_closed",
                            reason="the asyncio loop that subscribed has closed; "
                                   "its subscription ended")
                inner.dispose()

        def post(fn: Callable[..., Any] | None) -> Callable[..., Any] | None:
            if fn is None:
                return None

            def posted(*args: Any) -> None:
                try:
                    target.call_soon_threadsafe(fn, *args)
                except RuntimeError:  # the asyncio loop has closed
                    orphaned()

            return posted

        on_next, on_error, on_completed = post(on_next), post(on_error), post(on_completed)
        inner = call_in_run(
            token, subscribe, on_next, on_error, on_completed, scheduler=scheduler
        )
        holder.append(inner)
        return Disposable(lambda: call_in_run(token, inner.dispose))
    inner = call_in_run(
        token, subscribe, on_next, on_error, on_completed, scheduler=scheduler
    )
    return Disposable(lambda: call_in_run(token, inner.dispose))
