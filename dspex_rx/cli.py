"""The ``dspex-rx`` command line: ``dspex-rx serve`` runs the gRPC server in the foreground."""

from __future__ import annotations

import argparse
import asyncio

from .logs import configure


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
    serve_p.add_argument("--port-file", help="write the bound port here once serving "
                         "(useful with --port 0)")
    serve_p.add_argument("--history-size", type=int, default=1000,
                         help="versions kept per variable (default 1000)")
    serve_p.add_argument("--log-size", type=int, default=10_000,
                         help="commits kept per session for stream resume (default 10000)")
    args = parser.parse_args(argv)

    configure(args.log_level)
    from .server import serve
    from .store import MemoryStore

    store = MemoryStore(history_size=args.history_size, log_size=args.log_size)
    asyncio.run(serve(args.host, args.port, port_file=args.port_file, store=store))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
