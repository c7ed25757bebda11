"""``weightshift shadow``: the candidate's mirrored answers against what users got
(``weightshift/shadow``)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``shadow`` and its subcommands to ``commands``."""
    group = commands.add_parser("shadow", help="compare the candidate's shadow answers")
    group.add_subparsers(dest="shadow_command", required=True, metavar="COMMAND")
