"""The ``dspex-rx`` command: the server's commands (``serve``, ``backup``, ...), the shell
client's (``get``, ``set``, ``watch``, ...) and the web view's (``ui``) under one parser.

Each layer adds its own subcommands; a parsed command carries ``run``, the function that
carries it out, so this module only composes them.
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version

from dspex_rx.server import cli as server_cli
from dspex_rx.shell import commands as shell_commands
from dspex_rx.web import cli as web_cli


def _version() -> str:
    try:
        return version("dspex-rx")
    except PackageNotFoundError:  # a checkout on sys.path, not installed
        return "unknown"


def parser() -> argparse.ArgumentParser:
    """The whole ``dspex-rx`` parser.

    Example: ``parser().parse_args(["serve", "--port", "0"]).command == "serve"``.
    """
    top = argparse.ArgumentParser(
        prog="dspex-rx",
        description="dspex-rx: a typed, versioned, watchable variables store.",
    )
    top.add_argument("--version", action="version", version=f"dspex-rx {_version()}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server_cli.add_commands(sub)
    shell_commands.add_commands(sub)
    web_cli.add_commands(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dspex-rx`` console script.

    Example: ``main(["get", "temperature"])`` prints the variable of the session named
    by ``DSPEX_RX_SESSION``; ``main(["serve"])`` serves until SIGINT or SIGTERM.
    """
    args = parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
