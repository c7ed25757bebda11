"""The ``weightshift`` command."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from weightshift.config import ConfigError

EXIT_USAGE = 2


class CommandError(Exception):
    """A failure the user can act on: printed as one paragraph, exit status 2."""


def _project(args: argparse.Namespace) -> Path:
    from weightshift.synth import find_project

    return find_project(Path(args.project) if args.project else Path.cwd())


def cmd_synth(args: argparse.Namespace) -> int:
    from weightshift.synth import synthesize_stack

    graph = synthesize_stack(_project(args), args.stack, args.set)
    text = json.dumps(graph.to_json(), indent=2, sort_keys=False)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from weightshift.plan import build_plan, render

    plan = build_plan(_project(args), args.stack, args.set)
    print(json.dumps(plan.to_json(), indent=2) if args.json else render(plan))
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    from weightshift.policy import check, load_policies
    from weightshift.synth import synthesize_stack

    project = _project(args)
    violations = check(synthesize_stack(project, args.stack, args.set), load_policies(project))
    for violation in violations:
        print(violation)
    mandatory = sum(1 for v in violations if v.mandatory)
    print(
        f"policy check, stack {args.stack}: {mandatory} mandatory and "
        f"{len(violations) - mandatory} advisory violation(s)"
    )
    return 1 if mandatory else 0


def _stack_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stack", default="prod", help="stack name: reads Pulumi.<stack>.yaml (default: prod)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, keys relative to weightshift: (rollout.stage=3); repeatable",
    )
    parser.add_argument(
        "--project", metavar="DIR", help="the Pulumi project folder (default: found from here up)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightshift",
        description="Ship new versions of a large language model to production on AWS, safely.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser(
        "synth",
        help="run the Pulumi program offline (mocks) and print the desired resource graph as JSON",
    )
    _stack_options(synth)
    synth.add_argument(
        "--out", metavar="FILE", help="write the JSON here instead of standard output"
    )
    synth.set_defaults(func=cmd_synth)

    plan = commands.add_parser(
        "plan", help="synthesize every stage of the rollout and show what each stage changes"
    )
    _stack_options(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=cmd_plan)

    policy = commands.add_parser("policy", help="policy as code over the offline graph")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    policy_check = policy_commands.add_parser(
        "check",
        help="run the policies/ pack over the synthesized stack; exit 1 on a mandatory violation",
    )
    _stack_options(policy_check)
    policy_check.set_defaults(func=cmd_policy_check)
    return parser


def _paragraph(message: str) -> str:
    return textwrap.fill(" ".join(message.split()), width=100, subsequent_indent="  ")


def main(argv: Sequence[str] | None = None) -> int:
    from weightshift.synth import SynthError

    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except (CommandError, ConfigError, SynthError) as error:
        print(f"weightshift {args.command}: error: {_paragraph(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return 0
    return result


if __name__ == "__main__":
    sys.exit(main())
