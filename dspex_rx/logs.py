"""Library logging: structlog events routed through stdlib ``logging``, rendered as
``key=value`` lines (console) or one JSON object a line (json).

The library never configures logging itself, so an application that does nothing sees only
warnings (Python's default); ``dspex-rx serve`` turns on info lines on stderr.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from typing import Any

import structlog

LOG_FORMATS = ("console", "json")
# grpc.aio's completion-queue poller callback (quiet_closed_loop_events).
_POLLER_EVENTS = "PollerCompletionQueue._handle_events"
_HANDLER = "dspex_rx.stderr"

_console = structlog.processors.KeyValueRenderer(
    key_order=["timestamp", "level", "event"], sort_keys=True
)
_json = structlog.processors.JSONRenderer(sort_keys=True, default=repr)
# The renderer every logger uses, chosen by ``configure`` after the loggers were made
# (modules make theirs at import): one switch, read per event.
_renderer: Any = _console


def _render(logger: Any, method: str, event: Any) -> Any:
    return _renderer(logger, method, event)


def get_logger(name: str) -> Any:
    """A key-value structlog logger on top of ``logging.getLogger(name)``.

    Example: ``get_logger("dspex_rx.server").info("server_started", port=50051)`` logs
    ``event='server_started' port=50051`` after the timestamp and level.
    """
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[
            structlog.stdlib.filter_by_level,  # drop disabled levels before any formatting
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _render,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


def quiet_closed_loop_events(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop`` drop one benign error instead of logging its traceback: grpc.aio's
    completion-queue poller (one per process, run by one of its loops) handing an event
    to another loop of the process that has closed meanwhile ("Event loop is closed"):
    that loop's calls ended with it, and nothing waits for the event. Every other error
    goes to the loop's default handler, as before.

    >>> loop = asyncio.new_event_loop()
    >>> quiet_closed_loop_events(loop)
    >>> loop.get_exception_handler() is not None
    True
    >>> loop.close()
    """
    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        callback = getattr(context.get("handle"), "_callback", None)
        # grpc registers the poller as functools.partial(poller._handle_events, loop).
        while isinstance(callback, functools.partial):
            callback = callback.func
        if (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
                and getattr(callback, "__qualname__", "") == _POLLER_EVENTS):
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


class _JsonLines(logging.Formatter):
    """Every stderr line JSON: dspex-rx's events are rendered already; a record of any
    other logger (grpc, asyncio) is wrapped in the same shape."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name.startswith("dspex_rx") and message.startswith("{"):
            return message
        fields: dict[str, Any] = {
            "timestamp": self.formatTime(record), "level": record.levelname.lower(),
            "logger": record.name, "event": message,
        }
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps(fields, sort_keys=True, default=repr)


def configure(level: str = "info", fmt: str = "console") -> None:
    """Send dspex-rx log lines at ``level`` and above to stderr, one event per line:
    ``fmt="console"`` as ``key=value`` pairs, ``fmt="json"`` as one JSON object each.

    Example: ``configure("debug", "json")`` shows the library's debug lines as JSON.
    """
    global _renderer
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    _renderer = _json if fmt == "json" else _console
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(message)s"))
    handler.set_name(_HANDLER)
    root = logging.getLogger()
    # Configuring again (another format) replaces this function's handler, not others'.
    for old in [h for h in root.handlers if h.get_name() == _HANDLER]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("dspex_rx").setLevel(level.upper())
