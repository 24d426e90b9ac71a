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
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import outcome
import sniffio
import trio

from .logs import get_logger

log = get_logger("dspex_rx.aio")

T = TypeVar("T")
P = ParamSpec("P")
C = TypeVar("C", bound=type)

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
                ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()

        def run() -> None:
            try:
                trio.run(main)
            except BaseException:  # pragma: no cover - trio itself failed
                log.exception("portal_failed")
            finally:
                ready.set()
                with self._waiters_lock:
                    self._ended.set()
                    waiters, self._waiters = self._waiters, []
                for loop, future in waiters:
                    with contextlib.suppress(RuntimeError):  # that loop has closed
                        loop.call_soon_threadsafe(_set_done, future)

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


def _on_loop(fn: Callable[..., Awaitable[Any]], loop: asyncio.AbstractEventLoop) -> Any:
    # An async callable given from asyncio (an objective, a derive function, a callback)
    # runs on the caller's loop, where it can await asyncio things.
    from .transport import LoopThread

    bridge = LoopThread("asyncio-caller")
    bridge.loop = loop

    @functools.wraps(fn)
    async def on_caller_loop(*args: Any, **kwargs: Any) -> Any:
        return await bridge.run(lambda: fn(*args, **kwargs))

    return on_caller_loop


def _caller_callables(
    args: tuple[Any, ...], kwargs: dict[str, Any], loop: asyncio.AbstractEventLoop
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if not any(inspect.iscoroutinefunction(a) for a in (*args, *kwargs.values())):
        return args, kwargs
    return (
        tuple(_on_loop(a, loop) if inspect.iscoroutinefunction(a) else a for a in args),
        {k: _on_loop(v, loop) if inspect.iscoroutinefunction(v) else v
         for k, v in kwargs.items()},
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
    loop = asyncio.get_running_loop()
    args, kwargs = _caller_callables(args, kwargs, loop)
    portal = _acquire()
    token, nursery = portal.token, portal.nursery
    assert token is not None and nursery is not None
    done: asyncio.Future[outcome.Outcome[T] | None] = loop.create_future()
    state: dict[str, Any] = {"cancel": False, "scope": None}

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
                    if scope.cancel_called and _only_cancelled(exc):
                        raise  # ours: the scope absorbs it, and the caller was cancelled
                    result = outcome.Error(exc)
        finally:
            if result is None and not state["cancel"]:
                result = outcome.Error(RuntimeError("the dspex-rx portal stopped"))
            with contextlib.suppress(RuntimeError):  # the caller's loop has closed
                loop.call_soon_threadsafe(_set_done, done, result)

    # The task runs in a copy of the caller's context, as an asyncio task would: context
    # variables the caller set (dspy.context(lm=...)) reach the call and its worker threads.
    context = contextvars.copy_context()

    name = f"dspex-rx-aio[{getattr(fn, '__qualname__', fn)}]"

    def spawn() -> None:
        nursery.start_soon(task, name=name)

    def start() -> None:
        context.run(spawn)

    def cancel() -> None:
        state["cancel"] = True
        if state["scope"] is not None:
            state["scope"].cancel()

    try:
        token.run_sync_soon(start)
        try:
            # Shielded: cancelling the caller must not cancel ``done`` itself, which says
            # when the trio side has finished.
            result = await asyncio.shield(done)
        except asyncio.CancelledError:
            # Callbacks run in order, so start() has run before cancel() does.
            token.run_sync_soon(cancel)
            await _uncancellable(done)
            raise
    finally:
        if _release(portal):
            await portal.ended()
    if result is None:  # cancelled on the trio side although nobody asked: say so
        raise asyncio.CancelledError
    return result.unwrap()


def _library() -> str | None:
    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return None


# Trio sets this while it steps a task: reading it is the cheapest test for "called from
# trio code" (sniffio.current_async_library() reads it first, too).
_sniffio_local = sniffio.thread_local


def _async_method(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        if _sniffio_local.name == "trio":
            return method(self, *args, **kwargs)  # the trio API as it always was
        library = _library()
        if library == "trio":
            return method(self, *args, **kwargs)
        if library == "asyncio":
            return run_in_portal(method, self, *args, **kwargs)
        return _decide_later(method, self, *args, **kwargs)

    return wrapper


async def _decide_later(method: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    # The coroutine was made outside any async library (``loop.run_until_complete(
    # session.initialize())``): decide when it first runs.
    if _library() == "asyncio":
        return await run_in_portal(method, *args, **kwargs)
    return await method(*args, **kwargs)


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
    from .watch import Watch

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

        def post(fn: Callable[..., Any] | None) -> Callable[..., Any] | None:
            if fn is None:
                return None

            def posted(*args: Any) -> None:
                with contextlib.suppress(RuntimeError):  # the asyncio loop has closed
                    target.call_soon_threadsafe(fn, *args)

            return posted

        on_next, on_error, on_completed = post(on_next), post(on_error), post(on_completed)
    inner = call_in_run(
        token, subscribe, on_next, on_error, on_completed, scheduler=scheduler
    )
    return Disposable(lambda: call_in_run(token, inner.dispose))
