"""Serving the bridge in this trio run with hypercorn's trio worker: ``serve_bridge`` binds,
reports the address it got, and serves until cancelled."""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.types import ASGIApp

# Streams never end by themselves: on shutdown they get this long to notice, then are cut.
GRACE_SECONDS = 1.0


def hypercorn_config(host: str, port: int) -> Config:
    """A hypercorn config bound to ``host:port`` (port 0: any free one), without an access
    log, with a short grace period for the endless streams at shutdown.

    >>> hypercorn_config("127.0.0.1", 0).bind
    ['127.0.0.1:0']
    """
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("dspex_rx.web")
    config.graceful_timeout = GRACE_SECONDS
    return config


async def serve_bridge(
    bridge: ASGIApp, host: str = "127.0.0.1", port: int = 0,
    *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``bridge`` on ``host:port`` in this trio run until cancelled; ``nursery.start``
    returns its base URL (``http://127.0.0.1:PORT``).

    Example: ``url = await nursery.start(serve_bridge, dspex_rx.web.app(session))``.
    """
    config = hypercorn_config(host, port)

    class Relay:  # hands the caller the first address instead of the whole list
        def started(self, binds: list[str] | None = None) -> None:
            task_status.started(binds[0] if binds else "")

    await serve(bridge, config, task_status=Relay(), mode="asgi")  # type: ignore[arg-type]
