"""Library logging: structlog key-value lines routed through stdlib ``logging``.

The library never configures logging itself, so an application that does nothing sees only
warnings (Python's default); ``dspex-rx serve`` turns on info lines on stderr.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog


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
            structlog.processors.KeyValueRenderer(
                key_order=["timestamp", "level", "event"], sort_keys=True
            ),
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


def configure(level: str = "info") -> None:
    """Send dspex-rx log lines at ``level`` and above to stderr, one event per line.

    Example: ``configure("debug")`` shows the library's debug lines on stderr.
    """

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("dspex_rx").setLevel(level.upper())
