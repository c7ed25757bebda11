"""``weightshift eval``: evaluation reports, bound to a bundle's digest
(``weightshift/evaluation``)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``eval`` and its subcommands to ``commands``."""
    group = commands.add_parser("eval", help="evaluation reports bound to a bundle's digest")
    group.add_subparsers(dest="eval_command", required=True, metavar="COMMAND")
