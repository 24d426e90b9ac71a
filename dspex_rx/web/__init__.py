"""The reactive-UI bridge (an ASGI app of Server-Sent Events and WebSockets over
``observe()``) and the live web view served by ``dspex-rx ui``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dspex_rx.web.bridge import app

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    # Starlette is the optional ``web`` extra: ``dspex-rx`` (which imports this package for
    # its ``ui`` command) must start without it, so the bridge is imported on first use.
    if name == "app":
        from dspex_rx.web.bridge import app

        return app
    raise AttributeError(f"module 'dspex_rx.web' has no attribute {name!r}")
