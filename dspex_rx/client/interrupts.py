"""Ctrl-C raised in a session's background task (its services run in a trio system task):
handed to the program's main task instead of ending the run with ``TrioInternalError``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def handed_to_main_task() -> AsyncIterator[None]:
    """Around a system task's body: a ``KeyboardInterrupt`` out of it (a Ctrl-C that landed
    in one of its children, which trio does not protect) is raised again as SIGINT, which
    trio's handler, seeing a protected task, delivers to the main task. Off the main
    thread there is no such handler, and it propagates as before.

    Example: ``async with handed_to_main_task(), trio.open_nursery() as nursery:`` in the
    body of a task started with ``trio.lowlevel.spawn_system_task``.
    """
    try:
        yield
    except* KeyboardInterrupt:
        if threading.current_thread() is not threading.main_thread():
            raise
        signal.raise_signal(signal.SIGINT)
