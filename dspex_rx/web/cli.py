"""``dspex-rx ui``: the live web view's subcommand — join a session, serve the bridge and its
page on 127.0.0.1 (hypercorn's trio worker, in the session's trio run) until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import trio

ENV = {"target": "DSPEX_RX_TARGET", "session": "DSPEX_RX_SESSION", "token": "DSPEX_RX_TOKEN",
       "ui_token": "DSPEX_RX_UI_TOKEN"}


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ui`` to the ``dspex-rx`` parser.

    Example: ``add_commands(parser.add_subparsers(dest="command"))``.
    """
    ui = sub.add_parser(
        "ui", help="serve the live web view of a session",
        description="Serve a page with the session's variables (live), their history and "
        "its optimizations, plus the bridge's SSE/WebSocket/JSON endpoints. The page acts "
        "as the session: anyone who can reach the port sees what the session may see, so "
        "it binds 127.0.0.1 unless told otherwise; --ui-token asks every request for a "
        "bearer token.",
    )
    ui.add_argument("--target", default=os.environ.get(ENV["target"]),
                    help="server address HOST:PORT (env DSPEX_RX_TARGET)")
    ui.add_argument("--session", default=os.environ.get(ENV["session"]),
                    help="session id to join (env DSPEX_RX_SESSION)")
    ui.add_argument("--token", default=os.environ.get(ENV["token"]),
                    help="the session's token (env DSPEX_RX_TOKEN)")
    ui.add_argument("--host", default="127.0.0.1",
                    help="address to serve the page on (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=8080, help="port of the page (default 8080)")
    ui.add_argument("--ui-token", default=os.environ.get(ENV["ui_token"]),
                    help="require this bearer token on every request: open the page as "
                    "/?token=... (env DSPEX_RX_UI_TOKEN)")
    ui.add_argument("--ca-cert", default=None, help="CA certificate (PEM) of a TLS server")
    ui.set_defaults(run=run)


def missing(args: argparse.Namespace) -> list[str]:
    """The required settings ``args`` lacks, as the flag and variable to give them with.

    >>> missing(argparse.Namespace(target="h:1", session=None, token="t", port=8080))
    ['--session (or DSPEX_RX_SESSION)']
    """
    return [
        f"--{key} (or {ENV[key]})" for key in ("target", "session", "token")
        if not getattr(args, key)
    ]


def sole(group: BaseExceptionGroup[BaseException]) -> Exception | None:
    """The one exception inside nested groups of one, if that is what ``group`` is.

    >>> sole(ExceptionGroup("outer", [ExceptionGroup("inner", [OSError("in use")])]))
    OSError('in use')
    """
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
    if isinstance(inner, BaseExceptionGroup) or not isinstance(inner, Exception):
        return None
    return inner


def one_line(error: BaseException) -> str:
    """An error as one line: a gRPC error's details (not its multi-line repr), else the
    class and the message's first line.

    >>> one_line(KeyError("no session 's1'"))
    "KeyError: no session 's1'"
    """
    details = getattr(error, "details", None)
    text = details() if callable(details) else None
    if not isinstance(text, str) or not text:
        text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    first = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return f"{type(error).__name__}: {first}"


def exposure_warning(host: str, ui_token: str | None) -> str | None:
    """What to tell a user who serves the page beyond this machine without a token.

    >>> exposure_warning("127.0.0.1", None) is None, exposure_warning("0.0.0.0", "s") is None
    (True, True)
    >>> exposure_warning("0.0.0.0", None).startswith("dspex-rx ui: warning: serving on 0.0.0.0")
    True
    """
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    if loopback or ui_token:
        return None
    return (f"dspex-rx ui: warning: serving on {host} without --ui-token: anyone who can "
            "reach this port reads what the session may read")


def run(args: argparse.Namespace) -> int:
    """Carry out ``dspex-rx ui``: serve until SIGINT or SIGTERM; 0 then, 1 on a failure
    (said in one line on stderr), 2 on a missing setting.

    Example: ``run(parser().parse_args(["ui", "--target", "h:50051", "--session", "s",
    "--token", "t"]))`` serves http://127.0.0.1:8080/.
    """
    lacking = missing(args)
    if lacking:
        print(f"dspex-rx ui: missing {', '.join(lacking)}", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"dspex-rx ui: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        import dspex_rx.web.serve  # noqa: F401  (starlette and hypercorn: the web extra)
    except ImportError as error:
        print(f"dspex-rx ui: needs the web extra ({error.name} is missing): "
              "pip install -e '.[web]' from the checkout", file=sys.stderr)
        return 1
    warning = exposure_warning(args.host, args.ui_token)
    if warning:
        print(warning, file=sys.stderr)
    try:
        trio.run(_serve, args)
    except OSError as error:
        print(f"dspex-rx ui: cannot serve on {args.host}:{args.port}: {error.strerror or error}",
              file=sys.stderr)
        return 1
    except Exception as error:  # one line, not a traceback: the cause is in the message
        print(f"dspex-rx ui: {one_line(error)}", file=sys.stderr)
        return 1
    return 0


async def _serve(args: argparse.Namespace) -> None:
    from dspex_rx.client import connect
    from dspex_rx.web.bridge import app
    from dspex_rx.web.serve import serve_bridge

    options: dict[str, Any] = {"client_name": "dspex-rx ui"}
    if args.ca_cert:
        options["ca_cert"] = args.ca_cert
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with connect(args.target, session_id=args.session, token=args.token,
                                    create=False, **options) as session:
            try:
                async with trio.open_nursery() as nursery:
                    url = await nursery.start(
                        serve_bridge, app(session, token=args.ui_token), args.host, args.port
                    )
                    hint = "open it as /?token=<the --ui-token>; " if args.ui_token else ""
                    print(f"dspex-rx ui: session {session.session_id} at {url}/ "
                          f"({hint}Ctrl-C to stop)", flush=True)
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break
            except BaseExceptionGroup as group:
                # One failure (a port in use) reads better than groups of one in groups.
                leaf = sole(group)
                if leaf is not None:
                    raise leaf from None
                raise
    print("dspex-rx ui: stopped", flush=True)
