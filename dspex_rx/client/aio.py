"""asyncio programs: ``portal_aware``, the class decorator that makes a trio API callable
from asyncio without editing it, and the one import path for the portal helpers.
"""

# How it works: under trio nothing changes, a public ``async def`` method returns its
# coroutine as before. Called from asyncio (``sniffio`` decides), the method runs as a task
# in the portal (portal.py), one trio run on a thread of its own, and the asyncio caller
# awaits an asyncio future completed from there (portal_calls.py). Cancelling the asyncio
# caller cancels that trio task and waits until it has finished, the mirror image of
# ``transport.LoopThread.run``. Public sync methods of an object that lives in a trio run
# (``_trio_token``) run in that run when called from any other thread (crossings.py).

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

import sniffio
import trio

from dspex_rx.client.crossings import (
    _library,
    call_in_run,
    cancel_task,
    note_driver,
    subscribe_from_outside,
)
from dspex_rx.client.portal import (
    Portal,
    _portal_tokens,
    current_portal,
    hold_current_run,
)
from dspex_rx.client.portal_calls import (
    _caller_callables,
    _run_in_portal,
    is_async_callable,
    run_in_portal,
)

__all__ = [
    "Portal",
    "PortalContextManager",
    "call_in_run",
    "cancel_task",
    "current_portal",
    "hold_current_run",
    "is_async_callable",
    "note_driver",
    "owner_token",
    "portal_aware",
    "portal_context",
    "run_in_portal",
    "subscribe_from_outside",
    "undo_when_lost",
]

T = TypeVar("T")
P = ParamSpec("P")
C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])

# The dunder methods ``async with`` / ``async for`` call; other dunders stay as they are.
_ASYNC_DUNDERS = frozenset({"__aenter__", "__aexit__", "__anext__"})


def undo_when_lost(undo: Callable[[Any, Any], None]) -> Callable[[F], F]:
    """Mark an ``async def`` method whose result, if its asyncio caller is cancelled just
    after it succeeded, must be undone by ``undo(self, result)`` in the trio run.

    Example: ``@undo_when_lost(lambda watch, update: watch._buffer.appendleft(update))``.
    """

    def mark(method: F) -> F:
        method._portal_undo = undo  # type: ignore[attr-defined]
        return method

    return mark


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

    Example: ``async with PortalContextManager(manager) as value:`` enters it in the portal.
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

    >>> import asyncio, contextlib
    >>> @portal_context
    ... @contextlib.asynccontextmanager
    ... async def where():
    ...     yield sniffio.current_async_library()
    >>> async def main() -> str:
    ...     async with where() as library:
    ...         return library
    >>> asyncio.run(main())
    'trio'
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
        if _library() == "asyncio":
            return PortalContextManager(fn(*args, **kwargs))
        return fn(*args, **kwargs)

    return wrapper


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

    >>> owner_token(object()) is None
    True
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

    >>> import asyncio
    >>> @portal_aware
    ... class Tool:
    ...     async def where(self) -> str:
    ...         return sniffio.current_async_library()
    >>> asyncio.run(Tool().where())
    'trio'
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
