"""The shell client's subcommands of ``dspex-rx``: their arguments, and which function of
``variables``, ``exchange``, ``optimize`` or ``sessions`` each runs (through ``runner.run``).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from dspex_rx.shell import exchange, optimize, sessions, variables
from dspex_rx.shell.runner import connection_flags, run

Body = Callable[[argparse.Namespace], Awaitable[int]]
if TYPE_CHECKING:  # argparse's action class is generic to type checkers only
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

_EPILOG = """\
exit codes: 0 done; 1 refused (not found, permission, bad value...); 2 usage; 3 the
server could not be reached. Values given on the command line are JSON when they parse
as JSON, else strings. With -o json every command prints one JSON document (watch
commands: JSON Lines, one per event); arrays are nested lists, NaN and infinities the
strings "nan", "inf", "-inf", times ISO 8601 UTC.
"""


def _command(sub: SubParsers, name: str, body: Body, help: str, *, session: bool = True,
              aliases: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=help, aliases=list(aliases), epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    connection_flags(parser, session=session)
    parser.set_defaults(run=functools.partial(run, body=body), command=name)
    return parser


def _variable_commands(sub: SubParsers) -> None:
    p = _command(sub, "get", variables.get, "print a variable's value")
    p.add_argument("name")
    p = _command(sub, "set", variables.set_, "write a variable's value", aliases=("put",))
    p.add_argument("name")
    p.add_argument("value", help="JSON when it parses (0.7, true, [1,2], {\"a\":1}), else "
                   "a string")
    p.add_argument("--string", action="store_true", help="take VALUE as a string, always")
    p.add_argument("--type", help="register the variable with this type if it is missing "
                   "(float, integer, string, boolean, choice, list, dict, embedding...)")
    p.add_argument("--constraints", metavar="JSON",
                   help="constraints to register a missing variable with (needs --type)")
    p = _command(sub, "ls", variables.ls, "list the session's variables")
    p.add_argument("pattern", nargs="?", help="only names matching this RE2 pattern")
    p.add_argument("--glob", action="store_true", help="PATTERN is a shell glob")
    p = _command(sub, "history", variables.history, "a variable's past versions")
    p.add_argument("name")
    p.add_argument("--limit", type=int, default=20, help="newest N versions (default 20)")
    p = _command(sub, "rollback", variables.rollback,
                 "write a past version's value again, as a new version")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("--reason")
    p = _command(sub, "rm", variables.rm, "delete a variable")
    p.add_argument("name")
    p.add_argument("--cascade", action="store_true", help="delete its dependents too")
    p = _command(sub, "deps", variables.deps, "a variable's dependencies")
    p.add_argument("name")
    p.add_argument("--dependents", action="store_true",
                   help="what depends on NAME instead of what NAME depends on")
    p.add_argument("--transitive", action="store_true", help="follow the graph all the way")
    p = _command(sub, "watch", variables.watch,
                 "print one line per change of the variables until Ctrl-C")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--count", type=int, metavar="N", help="stop after N lines")
    p.add_argument("--changes-only", action="store_true",
                   help="do not print the current values first")


def _exchange_commands(sub: SubParsers) -> None:
    formats_help = "file format (default: from FILE's extension, else json)"
    admin = sub.choices.get("export")
    if admin is None:
        p = _command(sub, "export", exchange.export, "write the session's variables to a file")
    else:
        p = _adopt_admin_export(admin)
        for choice in sub._choices_actions:
            if choice.dest == "export":
                choice.help = ("a session's variables to a file; with --data-dir (or no "
                               "session) every session of a data dir")
    p.add_argument("file", nargs="?", metavar="FILE", help="where to write (default stdout)")
    p.add_argument("--format", choices=exchange.FORMATS, help=formats_help)
    p.add_argument("--history", action="store_true", help="include past versions")
    p.add_argument("--pattern", help="only variables whose names match this RE2 pattern")
    p = _command(sub, "import", exchange.import_,
                 "apply an export file to the session, all or nothing")
    p.add_argument("file", metavar="FILE", help="an export file ('-' reads stdin)")
    p.add_argument("--format", choices=exchange.FORMATS, help=formats_help)
    p.add_argument("--merge", choices=["replace", "keep", "merge"], default="replace",
                   help="what to do with variables that exist (default replace)")
    p.add_argument("--dry-run", action="store_true", help="report, change nothing")


def _adopt_admin_export(admin: argparse.ArgumentParser) -> argparse.ArgumentParser:
    # The server's `export` (every session of a data dir) came first and keeps its name:
    # `export --data-dir DIR`, or `export` with no session named, stays exactly that; with
    # a session (--session / DSPEX_RX_SESSION) and no --data-dir it is the client's export.
    admin_run = admin.get_default("run")
    data_dir = admin.get_default("data_dir")
    connection_flags(admin)
    admin.description = ("with --data-dir, or no session named: every session of a data dir "
                         "as JSON Lines (the server's export); with a session: that session's "
                         "variables as a JSON or YAML file")
    client_run = functools.partial(run, body=exchange.export)

    def dispatch(args: argparse.Namespace) -> int:
        if args.data_dir is None and args.session:
            return client_run(args)
        args.data_dir = args.data_dir or data_dir
        code: int = admin_run(args)
        return code

    admin.set_defaults(run=dispatch, data_dir=None)
    return admin


def _optimize_commands(sub: SubParsers) -> None:
    group = sub.add_parser("optimize", help="start, follow and stop optimizations")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _command(actions, "start", optimize.start,
                 "run an optimization in the foreground until it ends (Ctrl-C stops it)")
    p.add_argument("name")
    p.add_argument("optimizer", help="grid_search, random_search, bayesian, gradient, ...")
    p.add_argument("--config", metavar="JSON", help="the optimizer's config, a JSON object")
    p.add_argument("--max-iterations", type=int, default=100)
    p.add_argument("--convergence-threshold", type=float, default=0.001)
    p.add_argument("--evaluate", metavar="CMD",
                   help="a shell command run per proposal with the value (JSON) in "
                   "$DSPEX_RX_VALUE; its last output line is the score or a JSON object "
                   "of metrics. Without it each proposal is printed and awaited from "
                   "another program (dspex-rx optimize report, or report_metrics)")
    p = _command(actions, "report", optimize.report,
                 "report the metrics of the proposal a run waits on")
    p.add_argument("name")
    p.add_argument("metrics", help="a number, or a JSON object of metrics")
    p.add_argument("--version", type=int,
                   help="the proposal's version (default: the one the run waits on now)")
    p = _command(actions, "stop", optimize.stop, "stop a running optimization")
    p.add_argument("name")
    p.add_argument("--reason")
    p.add_argument("--apply-best", action="store_true",
                   help="write the best value so far as the variable's value")
    p = _command(actions, "status", optimize.status, "a variable's optimization status")
    p.add_argument("name")
    p = _command(actions, "watch", optimize.watch,
                 "print the optimization's status on each change until it ends")
    p.add_argument("name")
    p.add_argument("--count", type=int, metavar="N", help="stop after N lines")
    for action in actions.choices.values():
        action.set_defaults(command="optimize")


def _session_commands(sub: SubParsers) -> None:
    p = _command(sub, "sessions", sessions.sessions, "list the sessions you may see")
    group = sub.add_parser("session", help="create a session to hand to other programs")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _command(actions, "new", sessions.session_new,
                 "create a session; print export lines for eval \"$(dspex-rx session new)\"",
                 session=False)
    p.add_argument("--id", help="the session id (default: the server makes one)")
    p.set_defaults(command="session")
    p = _command(sub, "health", sessions.health,
                 "the server's gRPC health: exit 0 when SERVING", session=False)
    p.add_argument("--service", default="",
                   help="a service name (default: the whole server)")


def add_commands(sub: SubParsers) -> None:
    """Add the shell client's subcommands to the ``dspex-rx`` parser.

    Example: ``add_commands(parser.add_subparsers(dest="command"))``; then ``dspex-rx get
    temperature --session run_1`` prints the value.
    """
    _variable_commands(sub)
    _exchange_commands(sub)
    _optimize_commands(sub)
    _session_commands(sub)

