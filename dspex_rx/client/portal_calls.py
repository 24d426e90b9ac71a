"""A call from asyncio into the portal (``run_in_portal``): cancelling the caller cancels
the trio task and waits for it; the caller's async callables run back on its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import outcome
import trio

from dspex_rx.client.portal import _acquire, _release, _set_done, _uncancellable

T = TypeVar("T")


def is_async_callable(fn: Any) -> bool:
    """True for ``async def`` functions, partials of them, and objects whose ``__call__``
    is one: what must be awaited rather than called in a worker thread.

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

    >>> async def double(x: int) -> int:
    ...     await trio.sleep(0)
    ...     return 2 * x
    >>> asyncio.run(run_in_portal(double, 21))
    42
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
