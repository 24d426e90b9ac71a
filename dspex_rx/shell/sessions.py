"""The shell's session commands: ``sessions`` (the ones the caller may see), ``session
new`` (a session handed to other programs as ``export`` lines) and ``health``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from dspex_rx.client import connect
from dspex_rx.client.probe import health_status, list_sessions
from dspex_rx.errors import AlreadyExistsError, InvalidValueError
from dspex_rx.shell.render import table, when
from dspex_rx.shell.runner import CLIENT_NAME, emit, report, tls_options


def kept(info: dict[str, Any]) -> str:
    """How long a session outlives its last client, as the ``sessions`` table says it.

    >>> kept({"session_ttl_seconds": 0.0}), kept({"session_ttl_seconds": 86400.0})
    ('ends with last client', '86400s')
    """
    ttl = info["session_ttl_seconds"]
    return "ends with last client" if not ttl else f"{ttl:g}s"


async def sessions(args: argparse.Namespace) -> int:
    """``dspex-rx sessions``: the sessions this caller may see, with clients, variables,
    revision, creation time and TTL state.

    Example: ``dspex-rx sessions --session run_1`` lists ``run_1`` on a token-checking
    server; with ``--principal-key`` every session of that namespace too.
    """
    found, everything = await list_sessions(
        args.target, args.session or "", token=args.token, principal_key=args.principal_key,
        timeout=args.timeout, **tls_options(args),
    )

    def human() -> None:
        table(["SESSION", "CLIENTS", "VARIABLES", "REVISION", "CREATED", "KEPT", "EXPIRES"],
              [[s["session_id"], s["clients"], s["variables"], s["revision"],
                when(s["created_at"]), kept(s), when(s["expires_at"])] for s in found])
        if not found and not everything:
            print("(this server shows a session only to who presents its token "
                  "(--session/--token) or its namespace's --principal-key)", file=sys.stderr)

    emit(args, {"sessions": found, "all_sessions": everything}, human)
    return 0


async def session_new(args: argparse.Namespace) -> int:
    """``dspex-rx session new``: create a session and print ``export DSPEX_RX_...`` lines,
    so ``eval "$(dspex-rx session new)"`` hands it to later commands and programs. The
    session must outlive this command: a server that ends a session with its last client
    (``serve --session-ttl 0``, the default of ``--storage memory``) is refused, saying so.

    Example: ``eval "$(dspex-rx session new --id run_1)"`` then ``dspex-rx ls``.
    """
    async with connect(
        args.target, args.id, principal_key=args.principal_key, client_name=CLIENT_NAME,
        timeout=args.timeout, **tls_options(args),
    ) as session:
        if not session.created:
            raise AlreadyExistsError(
                f"session {session.session_id!r} exists already; join it with --session and "
                "its token, or pick another --id")
        mine = [s for s in await session.list_sessions()
                if s["session_id"] == session.session_id]
        ttl = mine[0]["session_ttl_seconds"] if mine else 0.0
        if not ttl:
            raise InvalidValueError(
                f"the server at {args.target} ends a session with its last client (session "
                "TTL 0), so this one would end as this command exits; start the server with "
                "--session-ttl SECONDS (e.g. `dspex-rx serve --storage memory --session-ttl "
                "3600`), or keep a program attached to the session")
        values = {"DSPEX_RX_TARGET": args.target, "DSPEX_RX_SESSION": session.session_id,
                  "DSPEX_RX_TOKEN": session.token or ""}
        sid = session.session_id

    def human() -> None:
        for key, value in values.items():
            print(f"export {key}={shlex.quote(value)}")
        print(f"# session {sid}: kept {ttl:g}s after its last client leaves", file=sys.stderr)

    emit(args, {"target": args.target, "session_id": sid, "token": values["DSPEX_RX_TOKEN"],
                "session_ttl_seconds": ttl}, human)
    return 0


async def health(args: argparse.Namespace) -> int:
    """``dspex-rx health``: the server's gRPC health status; exit 0 when SERVING, else
    1 with the status on stderr (3 when the server cannot be reached).

    Example: ``dspex-rx health --target db:50051 && echo up``.
    """
    status = await health_status(args.target, args.service, timeout=args.timeout,
                                 **tls_options(args))
    if status != "SERVING":
        what = f"service {args.service!r}" if args.service else "the server"
        report("health", f"{what} at {args.target} is {status}")
        return 1
    emit(args, {"target": args.target, "service": args.service, "status": status},
         lambda: print(status))
    return 0
