"""The ``dspex-rx`` command line: ``dspex-rx serve`` runs the gRPC server in the foreground.

Every field of ``limits.Limits`` is a flag of ``serve`` (``max_value_bytes`` is
``--max-value-bytes``), with the same default.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses

from .errors import InvalidValueError
from .limits import Limits
from .logs import configure


def _limit_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("limits (see ARCHITECTURE.md, 'Limits and hostile input')")
    for spec in dataclasses.fields(Limits):
        group.add_argument(
            "--" + spec.name.replace("_", "-"), type=int, default=spec.default,
            metavar="N", help=f"{spec.metadata['help']} (default {spec.default})",
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dspex-rx`` console script.

    Example::

        main(["serve", "--port", "50051", "--max-sessions", "100"])
    """
    parser = argparse.ArgumentParser(prog="dspex-rx", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the gRPC server until SIGINT/SIGTERM")
    serve_p.add_argument("--host", default="127.0.0.1")
    serve_p.add_argument("--port", type=int, default=50051)
    serve_p.add_argument("--log-level", default="info",
                         choices=["debug", "info", "warning", "error"])
    serve_p.add_argument("--port-file", help="write the bound port here once serving "
                         "(useful with --port 0)")
    serve_p.add_argument("--log-size", type=int, default=10_000,
                         help="commits kept per session for stream resume (default 10000)")
    _limit_flags(serve_p)
    args = parser.parse_args(argv)

    try:
        limits = Limits(**{spec.name: getattr(args, spec.name)
                           for spec in dataclasses.fields(Limits)})
    except InvalidValueError as exc:
        parser.error(str(exc))
    configure(args.log_level)
    from .server import serve
    from .store import MemoryStore

    store = MemoryStore(limits=limits, log_size=args.log_size)
    asyncio.run(serve(args.host, args.port, port_file=args.port_file, store=store, limits=limits))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
