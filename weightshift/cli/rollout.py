"""``weightshift rollout``: operate a rollout through the Pulumi Automation API."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightshift.cli.common import project_arg

if TYPE_CHECKING:
    from weightshift.rollout.commands import AwsView, PromotionPreview, Rollout, StageChanges
    from weightshift.rollout.record import RollbackRecord


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rollout`` and its steps to ``commands``."""
    rollout = commands.add_parser(
        "rollout", help="operate a rollout (Pulumi Automation API; needs the Pulumi CLI)"
    )
    steps = rollout.add_subparsers(dest="rollout_command", required=True, metavar="COMMAND")
    for name, func, text in (
        ("status", cmd_rollout_status, "strategy, stage, weights, time in stage, alarms, record"),
        (
            "promote",
            cmd_rollout_promote,
            "move to the next stage on the stage gate's evidence (and alarms, record, bake)",
        ),
        (
            "advance",
            cmd_rollout_advance,
            "decide from the stage gate and act: promote, abort or wait (for a schedule)",
        ),
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
        if name in {"status", "history", "advance"}:
            step.add_argument("--json", action="store_true", help="print JSON")
        if name == "promote":
            step.add_argument(
                "--ignore-bake",
                action="store_true",
                help="promote before the stage's bake time is over (the evidence and the "
                "alarms still decide)",
            )
            step.add_argument(
                "--ignore-gate",
                metavar="REASON",
                help="promote whatever the stage gate decides, or without its evidence; "
                "the decision and REASON are recorded beside the incident records (bake, "
                "alarms, record and on-call still apply)",
            )
            step.add_argument(
                "--dry-run",
                action="store_true",
                help="print the gate's decisions and the next stage's changes; change nothing",
            )
            step.add_argument(
                "--shadow-report",
                metavar="FILE",
                help="from shadow stage 1: decide the shadow gate on this `weightshift shadow "
                "report` JSON instead of the stack's own records",
            )
        if name == "abort":
            step.add_argument("--reason", required=True, help="why: goes into the record")
        if name == "release":
            step.add_argument(
                "--early", action="store_true", help="release before the hold's time is up"
            )


def _rollout(args: argparse.Namespace) -> Rollout:
    from weightshift.rollout.commands import AutomationBackend, Rollout

    return Rollout(args.stack, AutomationBackend(project_arg(args), args.stack), _view(args))


def _view(args: argparse.Namespace) -> AwsView:
    """AWS as the stack sees it: clients in the stack file's ``aws:region``."""
    from weightshift.config import load
    from weightshift.preview.synth import stack_config
    from weightshift.rollout.commands import AwsView

    values = stack_config(project_arg(args), args.stack)
    return AwsView(region=load(values, source=f"config of stack {args.stack}").region)


def cmd_rollout_status(args: argparse.Namespace) -> int:
    status = _rollout(args).status()
    print(json.dumps(status.to_json(), indent=2) if args.json else status.render())
    return 0


def cmd_rollout_promote(args: argparse.Namespace) -> int:
    from weightshift.cli.common import CommandError

    report = Path(args.shadow_report) if args.shadow_report else None
    if args.dry_run:
        if args.ignore_gate is not None:
            raise CommandError("--dry-run changes nothing: leave out --ignore-gate.")
        preview = _rollout(args).preview_promotion(
            _stage_changes(args), ignore_bake=args.ignore_bake, shadow_report=report
        )
        print(_preview_text(preview))
        return 0
    print(
        _rollout(args).promote(
            ignore_bake=args.ignore_bake, ignore_gate=args.ignore_gate, shadow_report=report
        )
    )
    return 0


def _stage_changes(args: argparse.Namespace) -> StageChanges:
    """The changes between two configs of the stack, each synthesized offline (the engine of
    ``weightshift plan``)."""
    from weightshift.preview.plan import diff
    from weightshift.preview.synth import synthesize

    project = project_arg(args)

    def changes(
        before: Mapping[str, Any], after: Mapping[str, Any], record: RollbackRecord | None
    ) -> list[Any]:
        return list(
            diff(
                synthesize(project, args.stack, before, record=record),
                synthesize(project, args.stack, after, record=record),
            )
        )

    return changes


def _preview_text(preview: PromotionPreview) -> str:
    from weightshift.cli.gates import gate_text

    status = preview.status
    rollout = status.config.rollout
    lines = []
    if preview.reading is not None:
        lines.append(gate_text(preview.reading.gate))
    elif preview.evidence_error is not None:
        lines.append(f"stage {rollout.stage} gate: not read: {preview.evidence_error}")
    if shadow := preview.shadow_text():
        lines.append(shadow)
    if status.next_stage is None:
        lines.append(f"dry run: {preview.refusal}")
        return "\n".join(lines)
    verdict = f"refused: {preview.refusal}" if preview.refusal else "would go ahead"
    lines.append(f"dry run: promote to {status.target} {verdict}")
    lines.append(
        f"{status.target} would change {len(preview.changes)} resource(s)"
        + (":" if preview.changes else "")
    )
    lines += [f"  {change}" for change in preview.changes]
    lines.append("nothing was changed (no config written, no update, no record)")
    return "\n".join(lines)


def cmd_rollout_advance(args: argparse.Namespace) -> int:
    from weightshift.rollout.advance import advance

    rollout = _rollout(args)
    # Pulumi's progress and the rollback function's log go to standard error: standard
    # output is the one line (or the JSON) alone.
    with contextlib.redirect_stdout(sys.stderr):
        result = advance(rollout)
    print(json.dumps(result.to_json(), indent=2) if args.json else result.line)
    return result.exit_code


def cmd_rollout_abort(args: argparse.Namespace) -> int:
    outcome = _rollout(args).abort(args.reason)
    print(json.dumps(outcome.to_json()))
    return 0


def cmd_rollout_ack(args: argparse.Namespace) -> int:
    print(_rollout(args).ack())
    return 0


def cmd_rollout_history(args: argparse.Namespace) -> int:
    from weightshift.console import table
    from weightshift.rollout.commands import AutomationBackend
    from weightshift.rollout.history import COLUMNS, rows, stack_history, to_json

    events = stack_history(
        args.stack, AutomationBackend(project_arg(args), args.stack), _view(args)
    )
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
