"""What every shell command shares: the connection flags (and their environment
variables), joining the session, stopping on SIGINT/SIGTERM, and expected errors turned
into one line on stderr with an exit code instead of a traceback.

Exit codes: 0 done; 1 refused (not found, permission, bad value, conflict...); 2 usage
(a missing session, bad JSON in a flag); 3 the server could not be reached.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import trio

from dspex_rx.client import SessionContext, connect
from dspex_rx.errors import AuthenticationError, DspexError, SessionNotFoundError
from dspex_rx.wire.channel import grpc_scheme

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_TARGET = "127.0.0.1:50051"
CLIENT_NAME = "dspex-rx shell"
# Calls a person waits on at a prompt: fail in seconds, not the library's 30.
DEFAULT_TIMEOUT = 10.0


class UsageError(Exception):
    """A command line that cannot run as given (exit 2): no session named, bad JSON.

    Example: ``raise UsageError("--constraints is not JSON: ...")``.
    """


def connection_flags(parser: argparse.ArgumentParser, *, session: bool = True) -> None:
    """Add ``--target``, ``--token``, TLS flags, ``--principal-key``, ``--timeout``,
    ``-o/--output`` and (with ``session``) ``--session``, each defaulting to its
    environment variable where it has one.

    Example: ``connection_flags(sub.add_parser("get"))``.
    """
    env = os.environ.get
    group = parser.add_argument_group("connection")
    group.add_argument("--target", default=env("DSPEX_RX_TARGET") or DEFAULT_TARGET,
                       help="server address host:port, or several replicas a:1,b:2 "
                       f"(env DSPEX_RX_TARGET; default {DEFAULT_TARGET})")
    if session:
        group.add_argument("--session", default=env("DSPEX_RX_SESSION") or None,
                           metavar="ID", help="the session to use (env DSPEX_RX_SESSION)")
    group.add_argument("--token", default=env("DSPEX_RX_TOKEN") or None,
                       help="the session's secret token (env DSPEX_RX_TOKEN; prefer the "
                       "variable: a flag shows in the process list)")
    group.add_argument("--principal-key", default=env("DSPEX_RX_PRINCIPAL_KEY") or None,
                       metavar="KEY", help="key of a reserved session namespace "
                       "(serve --principals; env DSPEX_RX_PRINCIPAL_KEY)")
    group.add_argument("--tls", action="store_true",
                       help="connect with TLS, trusting the system's roots")
    group.add_argument("--ca-cert", default=env("DSPEX_RX_CA_CERT") or None, metavar="PEM",
                       help="connect with TLS, trusting this CA (implies --tls; env "
                       "DSPEX_RX_CA_CERT)")
    group.add_argument("--tls-server-name", metavar="NAME",
                       help="the name the server's certificate must hold, if not the host's")
    group.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help=f"deadline of each call (default {DEFAULT_TIMEOUT:g})")
    group.add_argument("-o", "--output", choices=["human", "json"], default="human",
                       help="human: text and tables (default); json: one JSON document "
                       "(watch commands: JSON Lines, one per event)")


def tls_options(args: argparse.Namespace) -> dict[str, Any]:
    """The TLS keyword arguments of ``connect`` from the parsed flags.

    >>> tls_options(argparse.Namespace(tls=False, ca_cert="ca.pem", tls_server_name=None))
    {'tls': True, 'ca_cert': 'ca.pem', 'tls_server_name': None}
    """
    return {"tls": bool(args.tls or args.ca_cert), "ca_cert": args.ca_cert,
            "tls_server_name": args.tls_server_name}


@asynccontextmanager
async def joined(args: argparse.Namespace) -> AsyncIterator[SessionContext]:
    """Join the session the flags name (never creating one) for the block.

    Example: ``async with joined(args) as session: await session.get_variable("t")``.
    """
    if not args.session:
        raise UsageError("no session given: pass --session ID or set DSPEX_RX_SESSION "
                         "(eval \"$(dspex-rx session new)\" makes one)")
    async with connect(
        args.target, args.session, token=args.token, principal_key=args.principal_key,
        create=False, client_name=CLIENT_NAME, timeout=args.timeout, **tls_options(args),
    ) as session:
        yield session


def _message(exc: BaseException) -> str:
    # KeyError subclasses quote their message in str(); the first arg is the text itself.
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def _rpc_message(exc: grpc.RpcError, target: str) -> str:
    code_of, details_of = getattr(exc, "code", None), getattr(exc, "details", None)
    code = code_of() if callable(code_of) else None
    details = " ".join(str(details_of() if callable(details_of) else exc).split())
    if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        name = code.name if code is not None else "error"
        return f"the server at {target} answered {name}: {details}"
    return (f"cannot reach the server at {target} ({details}); is `dspex-rx serve` running "
            "there? (--target / DSPEX_RX_TARGET; --tls or --ca-cert for a TLS server)")


def report(command: str, message: str) -> None:
    """Print one error line on stderr, as argparse does (``dspex-rx CMD: error: ...``).

    Example: ``report("get", "no variable 't'")``.
    """
    print(f"dspex-rx {command}: error: {message}", file=sys.stderr)


def run(args: argparse.Namespace, body: Callable[[argparse.Namespace], Awaitable[int]]) -> int:
    """Run ``body(args)`` under trio; expected errors become one stderr line and an exit
    code (module docstring), never a traceback.

    Example: ``run(args, get)`` returns 0 when ``get`` printed the value.
    """
    command = " ".join(part for part in (args.command, getattr(args, "action", None)) if part)
    target = getattr(args, "target", DEFAULT_TARGET)
    try:
        if "://" in target and grpc_scheme(target) is None:
            raise UsageError(f"--target takes host:port (a:1,b:2 for replicas), without a "
                             f"scheme: {target!r}; use --tls or --ca-cert for TLS "
                             "(dns://DNS-SERVER/name:port asks that DNS server for the "
                             "name's addresses)")
        code: int = trio.run(body, args)
        return code
    except UsageError as exc:
        report(command, str(exc))
        return EXIT_USAGE
    except AuthenticationError as exc:
        report(command, f"{_message(exc)} (check --token / DSPEX_RX_TOKEN)")
        return EXIT_REFUSED
    except SessionNotFoundError as exc:
        report(command, f"{_message(exc)} (check --session / DSPEX_RX_SESSION)")
        return EXIT_REFUSED
    except ConnectionError as exc:
        # Before DspexError: connect()'s ServerUnavailableError is both, and says what to
        # change (the address, TLS on one side only...).
        report(command, _message(exc))
        return EXIT_UNREACHABLE
    except DspexError as exc:
        report(command, _message(exc))
        return EXIT_REFUSED
    except grpc.RpcError as exc:
        report(command, _rpc_message(exc, target))
        return EXIT_UNREACHABLE
    except (OSError, ValueError, TypeError, KeyError, PermissionError) as exc:
        report(command, _message(exc))
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


async def until_signal(body: Callable[[], Awaitable[None]]) -> bool:
    """Run ``body`` until it returns or SIGINT/SIGTERM arrives; returns whether a signal
    ended it (the commands that run until Ctrl-C then exit 0).

    Example: ``stopped = await until_signal(print_changes)``.
    """
    stopped = False
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            nonlocal stopped
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    stopped = True
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch_signals)
        await body()
        nursery.cancel_scope.cancel()
    return stopped


def emit(args: argparse.Namespace, document: Any, human: Callable[[], None]) -> None:
    """Print ``document`` as one JSON document with ``-o json``, else call ``human``.

    Example: ``emit(args, {"name": "t", "value": 0.7}, lambda: print(0.7))``.
    """
    from dspex_rx.shell.render import dumps

    if args.output == "json":
        print(dumps(document), flush=True)
    else:
        human()
