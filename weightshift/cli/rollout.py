"""``weightshift rollout``: operate a rollout through the Pulumi Automation API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from weightshift.cli.common import project_arg

if TYPE_CHECKING:
    from weightshift.rollout.commands import Rollout


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rollout`` and its steps to ``commands``."""
    rollout = commands.add_parser(
        "rollout", help="operate a rollout (Pulumi Automation API; needs the Pulumi CLI)"
    )
    steps = rollout.add_subparsers(dest="rollout_command", required=True, metavar="COMMAND")
    for name, func, text in (
        ("status", cmd_rollout_status, "strategy, stage, weights, time in stage, alarms, record"),
        ("promote", cmd_rollout_promote, "move to the next stage (checks alarms, record, bake)"),
        ("abort", cmd_rollout_abort, "manual rollback: stable 100 %%, record, incident, page"),
        ("ack", cmd_rollout_ack, "after review: config back to stage 0, clear the record"),
        ("finish", cmd_rollout_finish, "at 100 %%: the candidate becomes the stable colour"),
        ("release", cmd_rollout_release, "after finish's hold: scale the old stable colour to 0"),
        ("history", cmd_rollout_history, "stage changes, rollbacks, incidents and acks, in order"),
    ):
        step = steps.add_parser(name, help=text)
        step.add_argument("--stack", default="prod", help="stack name (default: prod)")
        step.add_argument("--project", metavar="DIR", help="the Pulumi project folder")
        step.set_defaults(func=func)
        if name in {"status", "history"}:
            step.add_argument("--json", action="store_true", help="print JSON")
        if name == "promote":
            step.add_argument(
                "--ignore-bake",
                action="store_true",
                help="promote before the stage's bake time is over (alarms still block)",
            )
        if name == "abort":
            step.add_argument("--reason", required=True, help="why: goes into the record")
        if name == "release":
            step.add_argument(
                "--early", action="store_true", help="release before the hold's time is up"
            )


def _rollout(args: argparse.Namespace) -> Rollout:
    from weightshift.rollout.commands import AutomationBackend, AwsView, Rollout

    return Rollout(args.stack, AutomationBackend(project_arg(args), args.stack), AwsView())


def cmd_rollout_status(args: argparse.Namespace) -> int:
    status = _rollout(args).status()
    print(json.dumps(status.to_json(), indent=2) if args.json else status.render())
    return 0


def cmd_rollout_promote(args: argparse.Namespace) -> int:
    print(_rollout(args).promote(ignore_bake=args.ignore_bake))
    return 0


def cmd_rollout_abort(args: argparse.Namespace) -> int:
    outcome = _rollout(args).abort(args.reason)
    print(json.dumps(outcome.to_json()))
    return 0


def cmd_rollout_ack(args: argparse.Namespace) -> int:
    print(_rollout(args).ack())
    return 0


def cmd_rollout_history(args: argparse.Namespace) -> int:
    from weightshift.console import table
    from weightshift.rollout.commands import AutomationBackend, AwsView
    from weightshift.rollout.history import COLUMNS, rows, stack_history, to_json

    events = stack_history(args.stack, AutomationBackend(project_arg(args), args.stack), AwsView())
    if args.json:
        print(json.dumps(to_json(events), indent=2))
    elif not events:
        print(f"stack {args.stack}: no history yet", file=sys.stderr)
    else:
        table(COLUMNS, rows(events), no_wrap=["time (UTC)", "kind"])
    return 0


def cmd_rollout_release(args: argparse.Namespace) -> int:
    print(_rollout(args).release(early=args.early))
    return 0


def cmd_rollout_finish(args: argparse.Namespace) -> int:
    print(_rollout(args).finish())
    return 0
