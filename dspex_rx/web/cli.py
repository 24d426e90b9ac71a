"""``dspex-rx ui``: the live web view's subcommand (placeholder until it lands)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ui`` to the ``dspex-rx`` parser.

    Example: ``add_commands(parser.add_subparsers(dest="command"))``.
    """
