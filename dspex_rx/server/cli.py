"""The ``dspex-rx`` command line: ``serve`` runs the gRPC server in the foreground over a
data dir (or in memory); ``backup``, ``restore`` and ``export`` administer a data dir.

Every field of ``limits.Limits`` is a flag of ``serve`` (``max_value_bytes`` is
``--max-value-bytes``), with the same default.

Security flags of ``serve``: ``--auth token`` (default: every call for a session must carry
that session's token) or ``--auth none`` (tokens issued, not checked); ``--tls-cert`` and
``--tls-key`` serve TLS; a non-loopback ``--host`` is refused unless auth is ``token`` and
TLS is on, or ``--insecure`` says to serve anyway. ``--principals FILE`` reserves
session-id namespaces for principals holding a key (``identity.Principals``).

Operations flags of ``serve``: ``--metrics-port`` serves Prometheus metrics
(``metrics.ServerMetrics``), ``--log-format json|console`` picks the stderr format; a port
outside 0..65535 is refused at parse time, one in use when binding.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys

from dspex_rx.core.identity import Principals
from dspex_rx.core.limits import Limits
from dspex_rx.errors import InvalidValueError, StorageError
from dspex_rx.logs import LOG_FORMATS, configure
from dspex_rx.store.durable.backend import DurableBackend
from dspex_rx.store.sqlite import SqliteBackend
from dspex_rx.wire.security import AUTH_MODES, check_bind, server_credentials

DEFAULT_DATA_DIR = "./dspex-rx-data"
DEFAULT_SESSION_TTL = 86400.0

_SERVE_EPILOG = """\
storage:
  By default the server keeps everything in --data-dir (./dspex-rx-data): one SQLite
  file, written before any write is acknowledged, so a restart (even kill -9) loses
  nothing acknowledged and clients carry on. A session with no client left is kept for
  --session-ttl seconds (default a day). --storage memory keeps nothing across restarts
  (and ends a session with its last client unless --session-ttl says otherwise).

security:
  Each session has a secret token, returned to the client that creates it; every later
  call for the session must present it (--auth token, the default). --auth none issues
  tokens but checks none: for tools on loopback only. Without TLS, tokens and values
  cross the network in clear text, so a non-loopback --host (anything but 127.0.0.0/8,
  ::1, localhost) is refused unless --auth token and --tls-cert/--tls-key are given;
  --insecure serves anyway (a trusted network, or TLS ended by a proxy in front).
  Access rules name sessions by id. An id stays claimed by its session's token after the
  session ends; --principals reserves namespaces (like admin_*) for whoever holds a key,
  and a rule's glob must lie in one.
"""


def _limit_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("limits (see ARCHITECTURE.md, 'Limits and hostile input')")
    for spec in dataclasses.fields(Limits):
        group.add_argument(
            "--" + spec.name.replace("_", "-"), type=int, default=spec.default,
            metavar="N", help=f"{spec.metadata['help']} (default {spec.default})",
        )


def port_number(text: str) -> int:
    """A TCP port from the command line: an integer 0..65535 (0 = pick a free one).

    >>> port_number("50051")
    50051
    >>> port_number("99999")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 99999 is not a port: give 0..65535 (0 picks a free one)
    """
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        # gRPC would otherwise serve on a random port and say nothing.
        raise argparse.ArgumentTypeError(
            f"{port} is not a port: give 0..65535 (0 picks a free one)")
    return port


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve``, ``backup``, ``restore`` and ``export`` to the ``dspex-rx`` parser.

    Example: ``add_commands(parser.add_subparsers(dest="command"))``; each parsed command
    carries ``run``, the function that carries it out and returns the exit code.
    """
    serve_p = sub.add_parser(
        "serve", help="run the gRPC server until SIGINT/SIGTERM",
        epilog=_SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve_p.add_argument("--host", default="127.0.0.1",
                         help="address to bind (default 127.0.0.1; see security below)")
    serve_p.add_argument("--port", type=port_number, default=50051,
                         help="TCP port to serve gRPC on, 0..65535 (default 50051; 0 picks "
                         "a free one: see --port-file); a port in use is refused")
    serve_p.add_argument("--log-level", default="info",
                         choices=["debug", "info", "warning", "error"])
    serve_p.add_argument("--log-format", default="console", choices=LOG_FORMATS,
                         help="console: key=value lines (default); json: one JSON object "
                         "a line, for log shippers")
    serve_p.add_argument("--metrics-port", type=port_number, default=None, metavar="N",
                         help="serve Prometheus metrics at http://HOST:N/metrics (0 picks a "
                         "free one, logged as metrics_started); off by default")
    serve_p.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                         help="address the metrics endpoint binds (default 127.0.0.1)")
    serve_p.add_argument("--port-file", help="write the bound port here once serving "
                         "(useful with --port 0)")
    serve_p.add_argument("--log-size", type=int, default=10_000,
                         help="commits kept per session for stream resume (default 10000)")
    serve_p.add_argument("--auth", choices=AUTH_MODES, default="token",
                         help="token: every call for a session must carry its token "
                         "(default); none: tokens are issued but not checked (loopback "
                         "tools only)")
    serve_p.add_argument("--tls-cert", metavar="PATH",
                         help="PEM certificate chain to serve TLS with (needs --tls-key)")
    serve_p.add_argument("--tls-key", metavar="PATH",
                         help="PEM private key of --tls-cert")
    serve_p.add_argument("--insecure", action="store_true",
                         help="serve on a non-loopback --host even without --auth token "
                         "and TLS (anyone who can reach the port can read the traffic)")
    serve_p.add_argument("--principals", metavar="PATH",
                         help="YAML/JSON file of reserved session-id namespaces, "
                         "{'admin_*': KEY}: creating a session in one needs its KEY (or "
                         "give 'sha256:<hex>' of it); access-rule globs must lie in one")
    serve_p.add_argument("--storage", choices=["sqlite", "memory", "etcd"], default="sqlite",
                         help="sqlite: durable, in --data-dir (default); memory: lost at "
                         "exit; etcd: in an etcd cluster (--etcd-endpoints), shared by "
                         "every server (replica) given the same endpoints and prefix")
    serve_p.add_argument("--etcd-endpoints", default="127.0.0.1:2379", metavar="H:P[,H:P]",
                         help="the etcd members for --storage etcd (default 127.0.0.1:2379)")
    serve_p.add_argument("--etcd-prefix", default="dspex-rx/", metavar="PREFIX",
                         help="the key prefix of this store in etcd (default dspex-rx/)")
    serve_p.add_argument("--etcd-max-txn-ops", type=int, default=128, metavar="N",
                         help="etcd's --max-txn-ops (default 128): a write needing more "
                         "operations is refused, naming it")
    serve_p.add_argument("--etcd-max-request-bytes", type=int, default=1536 * 1024,
                         metavar="N", help="etcd's --max-request-bytes (default 1.5 MiB): "
                         "caps --max-value-bytes to what one etcd write can carry")
    serve_p.add_argument("--advertise", default=None, metavar="HOST:PORT",
                         help="with --storage etcd: where the other replicas reach this "
                         "one (default --host:port, this machine's name for 0.0.0.0)")
    serve_p.add_argument("--no-write-leader", dest="write_leader", action="store_false",
                         help="with --storage etcd: every replica makes its own writes "
                         "(by default they elect one that takes them all, and the others "
                         "forward writes to it: no conflicts between replicas)")
    serve_p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, metavar="DIR",
                         help=f"where --storage sqlite keeps its file (default "
                         f"{DEFAULT_DATA_DIR}, created 0700)")
    serve_p.add_argument("--session-ttl", type=float, default=None, metavar="SECONDS",
                         help="keep a session with no client attached this long (default "
                         "86400 with sqlite, 0 = end with its last client with memory)")
    _limit_flags(serve_p)
    serve_p.set_defaults(run=_serve, parser=serve_p)
    backup_p = sub.add_parser(
        "backup", help="write a consistent snapshot of a data dir (safe while serving)")
    backup_p.add_argument("out", help="the snapshot file to write")
    backup_p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, metavar="DIR")
    backup_p.set_defaults(run=_admin)
    restore_p = sub.add_parser(
        "restore", help="make a snapshot the data dir's state (the server must be stopped)")
    restore_p.add_argument("snapshot", help="a file written by 'dspex-rx backup'")
    restore_p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, metavar="DIR")
    restore_p.add_argument("--force", action="store_true",
                           help="replace the data the dir holds already")
    restore_p.set_defaults(run=_admin)
    export_p = sub.add_parser(
        "export", help="every session of a data dir as JSON Lines (safe while serving)")
    export_p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, metavar="DIR")
    export_p.set_defaults(run=_admin)


def main(argv: list[str] | None = None) -> int:
    """The server's commands alone (``python -m dspex_rx.server.cli``); the ``dspex-rx``
    console script is ``dspex_rx.cli.main``, which adds the client's commands.

    Example: ``main(["serve", "--port", "50051"])`` serves until SIGINT or SIGTERM.
    """
    parser = argparse.ArgumentParser(prog="dspex-rx", description=__doc__)
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


def _serve(args: argparse.Namespace) -> int:
    serve_p: argparse.ArgumentParser = args.parser
    try:
        limits = Limits(**{spec.name: getattr(args, spec.name)
                           for spec in dataclasses.fields(Limits)})
    except InvalidValueError as exc:
        serve_p.error(str(exc))
    if (args.tls_cert is None) != (args.tls_key is None):
        serve_p.error("--tls-cert and --tls-key go together")
    try:
        tls = server_credentials(args.tls_cert, args.tls_key) is not None
        check_bind(args.host, args.auth, tls, args.insecure)
        principals = Principals.from_file(args.principals) if args.principals else None
        if principals and args.auth != "token":
            raise InvalidValueError("--principals needs --auth token")
    except InvalidValueError as exc:
        serve_p.error(str(exc))

    configure(args.log_level, args.log_format)
    from dspex_rx.server.app import serve
    from dspex_rx.store import MemoryStore

    session_ttl = args.session_ttl
    if session_ttl is None:
        session_ttl = DEFAULT_SESSION_TTL if args.storage != "memory" else 0.0
    backend: DurableBackend | None = None
    try:
        if args.storage == "sqlite":
            backend = SqliteBackend(args.data_dir)
        elif args.storage == "etcd":
            from dspex_rx.etcd.backend import EtcdBackend, value_cap

            endpoints = [e.strip() for e in args.etcd_endpoints.split(",") if e.strip()]
            if not endpoints:
                serve_p.error("--etcd-endpoints names no etcd member (host:port)")
            backend = EtcdBackend(endpoints, prefix=args.etcd_prefix,
                                  max_txn_ops=args.etcd_max_txn_ops,
                                  max_request_bytes=args.etcd_max_request_bytes)
            cap = value_cap(args.etcd_max_request_bytes)
            if limits.max_value_bytes > cap:
                # Refused by the store's own check, naming max_value_bytes, before any
                # write reaches etcd.
                print(f"dspex-rx serve: --max-value-bytes is {cap} with etcd (a value is "
                      f"written three times in one etcd request of at most "
                      f"{args.etcd_max_request_bytes} bytes)", file=sys.stderr)
                limits = limits.replace(max_value_bytes=cap)
        store = MemoryStore(limits=limits, log_size=args.log_size, principals=principals,
                            session_ttl=session_ttl, backend=backend)
    except (StorageError, InvalidValueError) as exc:
        if backend is not None:
            backend.close()
        serve_p.exit(2, f"dspex-rx serve: error: {exc}\n")
    try:
        asyncio.run(
            serve(
                args.host, args.port, port_file=args.port_file, store=store, limits=limits,
                auth=args.auth, tls_cert=args.tls_cert, tls_key=args.tls_key,
                insecure=args.insecure, metrics_host=args.metrics_host,
                metrics_port=args.metrics_port, advertise=args.advertise,
                write_leader=args.write_leader,
            )
        )
    except OSError as exc:
        # A port in use (gRPC's or the metrics'), or storage that failed while serving:
        # one line saying which, not a traceback.
        print(f"dspex-rx serve: error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _admin(args: argparse.Namespace) -> int:
    # backup / restore / export of a data dir; a refusal is one line on stderr, exit 1.
    from dspex_rx.store.sqlite.backup import restore, snapshot

    try:
        if args.command == "backup":
            written = snapshot(args.data_dir, args.out)
            print(f"backed up {args.data_dir} to {written}", file=sys.stderr)
        elif args.command == "restore":
            target = restore(args.snapshot, args.data_dir, force=args.force)
            print(f"restored {args.snapshot} into {target}", file=sys.stderr)
        else:
            from dspex_rx.server.admin import write_export

            count = write_export(args.data_dir, sys.stdout)
            print(f"exported {count} sessions from {args.data_dir}", file=sys.stderr)
    except StorageError as exc:
        print(f"dspex-rx {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
