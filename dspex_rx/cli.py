"""The ``dspex-rx`` command line: ``dspex-rx serve`` runs the gRPC server in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import structlog


def configure_logging(level: str = "info", json: bool = False) -> None:
    """Key-value (or JSON) structlog output to stderr, one event per line.

    Example::

        configure_logging("debug")
    """
    numeric = logging.getLevelName(level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.processors.KeyValueRenderer(
            key_order=["timestamp", "level", "event"], sort_keys=True
        )
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dspex-rx`` console script.

    Example::

        main(["serve", "--port", "50051"])
    """
    parser = argparse.ArgumentParser(prog="dspex-rx", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the gRPC server until SIGINT/SIGTERM")
    serve_p.add_argument("--host", default="127.0.0.1")
    serve_p.add_argument("--port", type=int, default=50051)
    serve_p.add_argument("--log-level", default="info",
                         choices=["debug", "info", "warning", "error"])
    serve_p.add_argument("--log-json", action="store_true", help="log JSON lines")
    serve_p.add_argument("--port-file", help="write the bound port here once serving "
                         "(useful with --port 0)")
    args = parser.parse_args(argv)

    configure_logging(args.log_level, args.log_json)
    from .server import serve

    asyncio.run(serve(args.host, args.port, port_file=args.port_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
