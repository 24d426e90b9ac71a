"""How a client with no target gets an embedded server, without importing the server.

The composition root (``dspex_rx/__init__``) registers the factory; the client only knows
the small handle it returns, so ``import dspex_rx.client`` loads no server module.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

import trio

from dspex_rx.core.limits import Limits
from dspex_rx.errors import InvalidValueError


class EmbeddedHandle(Protocol):
    """A server the client started for itself: ``start()`` returns its ``host:port``.

    Example: ``handle.start()`` returns ``"127.0.0.1:<port>"``; ``handle.stop()`` ends it.
    """

    def start(self) -> str:
        """Start serving (on a worker thread) and return the ``host:port`` target.

        Example: ``target = handle.start()``.
        """
        ...

    def stop(self) -> None:
        """Stop the server.

        Example: ``handle.stop()``.
        """
        ...


# (limits, data_dir): data_dir None keeps everything in memory.
EmbeddedFactory = Callable[[Limits | None, str | os.PathLike[str] | None], EmbeddedHandle]
_factory: EmbeddedFactory | None = None


def register_embedded_factory(factory: EmbeddedFactory) -> None:
    """Say how ``connect()`` with no target makes its server (the package does this once).

    >>> from dspex_rx.client import embedded
    >>> previous = embedded.registered_factory()
    >>> embedded.register_embedded_factory(previous)
    >>> embedded.registered_factory() is previous
    True
    """
    global _factory
    _factory = factory


def registered_factory() -> EmbeddedFactory:
    """The registered factory; a clear error if none is (the client used without the package).

    >>> callable(registered_factory())
    True
    """
    if _factory is None:
        raise InvalidValueError(
            "no embedded server is registered: import dspex_rx (it registers one) or pass "
            "a target"
        )
    return _factory


async def start_embedded(
    limits: Limits | None, data_dir: str | os.PathLike[str] | None = None
) -> tuple[EmbeddedHandle, str]:
    """Start an embedded server on a worker thread (durable in ``data_dir`` if given);
    returns the handle and its target.

    Example: ``handle, target = await start_embedded(None)`` serves on 127.0.0.1 until
    ``handle.stop()``.
    """
    handle = await trio.to_thread.run_sync(registered_factory(), limits, data_dir)
    target = await trio.to_thread.run_sync(handle.start)
    return handle, target
