"""The shell client's subcommands (placeholder until issue #16's shell client lands)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the shell client's subcommands to the ``dspex-rx`` parser.

    Example: ``add_commands(parser.add_subparsers(dest="command"))``.
    """
