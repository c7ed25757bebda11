"""``weightshift synth``, ``plan`` and ``policy check``: the offline previews of a stack."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from weightshift.cli.common import (
    CommandError,
    catalog_arg,
    ends_at_ctrl_c,
    project_arg,
    record_arg,
    stack_options,
    writable,
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``synth``, ``plan`` and ``policy`` to ``commands``."""
    synth = commands.add_parser(
        "synth",
        help="run the Pulumi program offline (mocks) and print the desired resource graph as JSON",
    )
    stack_options(synth)
    synth.add_argument(
        "--out", metavar="FILE", help="write the JSON here instead of standard output"
    )
    synth.set_defaults(func=cmd_synth)

    plan = commands.add_parser(
        "plan", help="synthesize every stage of the rollout and show what each stage changes"
    )
    stack_options(plan)
    output = plan.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the plan as JSON")
    output.add_argument(
        "--markdown", action="store_true", help="print the table as Markdown (a PR comment)"
    )
    plan.add_argument(
        "--chart",
        metavar="FILE",
        help="also draw the candidate's share over the stages to FILE (.png or .svg)",
    )
    plan.set_defaults(func=cmd_plan)

    policy = commands.add_parser("policy", help="policy as code over the offline graph")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    policy_check = policy_commands.add_parser(
        "check",
        help="run the policies/ pack over every stage of every strategy of the synthesized "
        "stack; exit 1 on a mandatory violation",
    )
    stack_options(policy_check)
    policy_check.add_argument(
        "--configured-stage-only",
        action="store_true",
        help="check only the stage and strategy the stack config names",
    )
    policy_check.add_argument(
        "--config",
        metavar="FILE",
        help="the pack's config (JSON, as pulumi preview --policy-pack-config reads): each "
        "rule's enforcement level (default: policies/config.json of the project)",
    )
    policy_check.add_argument(
        "--base-config",
        metavar="FILE",
        help="the stack file the change starts from (the base branch's Pulumi.<stack>.yaml): "
        "the configured stage may be at most one stage from its stage",
    )
    policy_check.add_argument(
        "--write-pack-config",
        metavar="FILE",
        help="also write the config used (levels, and the base stage) for "
        "pulumi preview --policy-pack policies --policy-pack-config FILE",
    )
    policy_check.set_defaults(func=cmd_policy_check)


def cmd_synth(args: argparse.Namespace) -> int:
    from weightshift.preview.synth import synthesize_stack

    out = writable("--out", args.out)
    project = project_arg(args)
    with ends_at_ctrl_c(args.command):
        graph = synthesize_stack(
            project, args.stack, args.set, catalog_arg(args, project), record_arg(args)
        )
    text = json.dumps(graph.to_json(), indent=2, sort_keys=False)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from weightshift.preview.plan import build_plan, render, render_markdown

    chart = writable("--chart", args.chart)
    if chart is not None:
        from weightshift.preview.chart import check_suffix

        try:
            check_suffix(chart)
        except ValueError as error:
            raise CommandError(f"--chart {args.chart}: {error}") from None
    project = project_arg(args)
    with ends_at_ctrl_c(args.command):
        plan = build_plan(
            project, args.stack, args.set, catalog_arg(args, project), record_arg(args)
        )
    if chart is not None:
        from weightshift.preview.chart import draw

        draw(plan, chart)
        print(f"chart written to {chart}", file=sys.stderr)
    if args.json:
        print(json.dumps(plan.to_json(), indent=2))
    elif args.markdown:
        print(render_markdown(plan), end="")
    else:
        print(render(plan))
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from weightshift.preview.policy import (
        BASE_RULE,
        PACK_CONFIG,
        PackConfig,
        PolicyConfigError,
        StageCheck,
        base_settings,
        check,
        check_every_stage,
        load_pack_config,
        load_policies,
        load_transition_policies,
        rule_names,
    )
    from weightshift.preview.synth import synthesize_stack

    out = writable("--write-pack-config", args.write_pack_config)
    project = project_arg(args)
    policies = load_policies(project)
    names = rule_names(policies, load_transition_policies(project))
    default = project / PACK_CONFIG
    path = Path(args.config) if args.config else default if default.is_file() else None
    try:
        pack = load_pack_config(path, names) if path is not None else None
        if args.base_config:
            base = base_settings(Path(args.base_config))
            pack = (pack or PackConfig()).with_settings(BASE_RULE, base)
            print(
                f"{BASE_RULE}: the change starts from {base['baseStrategy']} stage "
                f"{base['baseStage']} ({args.base_config})",
                file=sys.stderr,
            )
    except PolicyConfigError as error:
        raise CommandError(str(error)) from None
    if out is not None:
        data = (pack or PackConfig()).to_json({policy.name for policy in policies})
        out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    catalog, record = catalog_arg(args, project), record_arg(args)
    with ends_at_ctrl_c(args.command):
        if args.configured_stage_only:
            graph = synthesize_stack(project, args.stack, args.set, catalog, record)
            config = graph.config.rollout
            found = check(graph, policies, pack)
            checks = [StageCheck(config.strategy.value, config.stage, found)]
        else:
            checks = check_every_stage(
                project, args.stack, policies, args.set, catalog=catalog, record=record, config=pack
            )
    # One violation found at several stages is printed once, with the stages.
    seen: dict[tuple[str, str, str], list[str]] = {}
    first: dict[tuple[str, str, str], Any] = {}
    for result in checks:
        for violation in result.violations:
            key = (violation.policy, violation.urn, violation.message)
            seen.setdefault(key, []).append(f"{result.strategy} {result.stage}")
            first.setdefault(key, violation)
    for key, stages in seen.items():
        print(f"{first[key]} (at {', '.join(stages)})")
    refused: dict[str, str] = {}
    for result in checks:
        if result.refused:
            refused.setdefault(result.strategy, result.refused)
    for strategy, reason in refused.items():
        print(f"not checked: strategy {strategy} is refused by the config: {reason}")
    mandatory = sum(1 for key in seen if first[key].mandatory)
    checked = [c for c in checks if not c.refused]
    print(
        f"policy check, stack {args.stack}: {mandatory} mandatory and "
        f"{len(seen) - mandatory} advisory violation(s) over {len(checked)} stage(s) of "
        f"{len({c.strategy for c in checked})} strategy(ies)"
    )
    return 1 if mandatory else 0
