"""``weightshift gates``: the statistics behind the gates (``weightshift/evidence``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from weightshift.cli.common import CommandError, project_arg, stack_config_options


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``gates`` and its subcommands to ``commands``."""
    gates = commands.add_parser("gates", help="the statistics behind the gates")
    steps = gates.add_subparsers(dest="gates_command", required=True, metavar="COMMAND")
    size = steps.add_parser(
        "sample-size",
        help="requests per arm to detect a regression, and each stage's minimum duration",
        description=(
            "Requests per arm to detect a rate going from BASELINE to BASELINE + REGRESSION, "
            "at a fixed horizon (one look) and with the anytime-valid test the stage gate "
            "uses (any number of looks). For latency the rate is the share of requests whose "
            "first token is slower than the threshold: 0.01 when the threshold is the stable "
            "colour's p99."
        ),
    )
    size.add_argument("--metric", choices=("error-rate", "latency"), required=True)
    size.add_argument("--baseline", type=float, required=True, help="the stable rate, e.g. 0.01")
    size.add_argument(
        "--regression", type=float, required=True, help="the absolute increase, e.g. 0.005"
    )
    size.add_argument("--confidence", type=float, default=0.95, help="default 0.95")
    size.add_argument("--power", type=float, default=0.8, help="default 0.8")
    size.add_argument("--rps", type=float, help="requests per second to the stack, in all")
    size.add_argument("--share", type=float, help="the candidate's share of them, e.g. 0.05")
    size.add_argument("--json", action="store_true", help="print JSON")
    size.set_defaults(func=cmd_gates_sample_size)
    stage = steps.add_parser(
        "stage",
        help="may the rollout leave its stage? the candidate against stable, from CloudWatch",
        description=(
            "The configured stage's gate: bake time, the candidate's requests, and its error, "
            "refusal, safety-block and slow-first-token rates and feedback quality against the "
            "stable colour's over the same window, read from the gateways' metrics in "
            "CloudWatch and decided by anytime-valid tests (docs/gates.md). Exit 0 pass, 1 "
            "fail, 3 inconclusive."
        ),
    )
    stack_config_options(stage)
    stage.add_argument(
        "--since",
        metavar="TIME",
        help="when the stage started (ISO 8601, e.g. 2026-12-07T09:00:00Z); default: the "
        "stack's last update (needs the Pulumi CLI)",
    )
    stage.add_argument("--json", action="store_true", help="print JSON")
    stage.set_defaults(func=cmd_gates_stage)
    _check_parser(steps)
    _shadow_parser(steps)


def _shadow_parser(steps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    shadow = steps.add_parser(
        "shadow",
        help="may a shadow rollout move to canary stage 1? its mirrored pairs' divergence",
        description=(
            "The divergence gate of `rollout promote` from shadow stage 1 to canary stage 1: "
            "the shadow report's exact-match rate, refusal and safety-block deltas, p99 "
            "latency ratio, candidate failures and judge win rate (where text was sampled "
            "and judged), each decided on its interval against rollout.shadowGate, on at "
            "least minPairs pairs (docs/gates.md). Evidence: --report FILE (a `weightshift "
            "shadow report` JSON), --records SRC (computed here), or the stack's own shadow "
            "records since the stage started (needs the Pulumi CLI). Read only. Exit 0 pass, "
            "1 fail, 3 inconclusive."
        ),
    )
    stack_config_options(shadow)
    evidence = shadow.add_mutually_exclusive_group()
    evidence.add_argument("--report", metavar="FILE", help="a shadow report's JSON (report.json)")
    evidence.add_argument(
        "--records", metavar="SRC", help="s3://bucket/prefix or a folder of pair records"
    )
    shadow.add_argument(
        "--since",
        metavar="TIME",
        help="with --records or the stack's records: the window's start (ISO 8601); default: "
        "when the stage started (needs the Pulumi CLI)",
    )
    shadow.add_argument("--json", action="store_true", help="print JSON")
    shadow.set_defaults(func=cmd_gates_shadow)


def _check_parser(steps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = steps.add_parser(
        "check",
        help="may the candidate get traffic? the seed's four gates over its evaluation report",
        description=(
            "The pre-deployment gates (toxicity, win rate, latency p99, adversarial suite) "
            "over the candidate colour's newest passing evaluation report for its exact "
            "digest (from the artifact bucket; --local: beside the offline catalog), or "
            "--report FILE. Each gate is decided on its 95 %% interval, with the stack's "
            "thresholds and gateActions (docs/evaluation.md). Exit 0 pass (warnings "
            "allowed), 1 blocked."
        ),
    )
    stack_config_options(check)
    check.add_argument("--report", metavar="FILE", help="check this report file instead")
    check.add_argument(
        "--local",
        action="store_true",
        help="read bundles and reports from the offline catalog (no credentials)",
    )
    check.add_argument(
        "--catalog", metavar="DIR", help="with --local: the bundle folders (default: bundles/)"
    )
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(func=cmd_gates_check)


def cmd_gates_sample_size(args: argparse.Namespace) -> int:
    from weightshift.evidence.sample_size import (
        Regression,
        fixed_horizon,
        minimum_duration,
        sequential,
    )

    if (args.rps is None) != (args.share is None):
        raise CommandError("--rps and --share go together: give both, or neither.")
    try:
        question = Regression(args.baseline, args.regression, args.confidence, args.power)
    except ValueError as error:
        raise CommandError(f"--{error}.") from None
    fixed, anytime = fixed_horizon(question), sequential(question)
    result: dict[str, object] = {
        "metric": args.metric,
        "baseline": question.baseline,
        "regression": question.regression,
        "confidence": question.confidence,
        "power": question.power,
        "requestsPerArm": fixed,
        "sequentialRequestsPerArm": anytime,
    }
    durations: tuple[float, float] | None = None
    if args.rps is not None:
        try:
            durations = (
                minimum_duration(fixed, rps=args.rps, share=args.share),
                minimum_duration(anytime, rps=args.rps, share=args.share),
            )
        except ValueError as error:
            raise CommandError(f"{error}.") from None
        result["minimumDuration"] = round(durations[0], 1)
        result["sequentialDuration"] = round(durations[1], 1)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    what = "errors" if args.metric == "error-rate" else "first tokens over the threshold"
    print(
        f"{what}: {question.baseline:.4g} -> {question.candidate:.4g} per request, "
        f"{question.confidence:.0%} confidence, {question.power:.0%} power\n"
        f"fixed horizon (one look at that count): {fixed:,} requests per arm\n"
        f"anytime-valid (look as often as you like): {anytime:,} requests per arm at the "
        "same power"
    )
    if durations is not None:
        print(
            f"minimum stage duration at {args.rps:g} requests/s and a {args.share:.0%} share: "
            f"{_duration(durations[0])} (fixed), {_duration(durations[1])} (anytime-valid)"
        )
    return 0


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.1f} h"


EXIT_INCONCLUSIVE = 3


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def cmd_gates_stage(args: argparse.Namespace) -> int:
    import boto3

    from weightshift.config import load
    from weightshift.evidence.sequential import Decision
    from weightshift.gates.stage import decide, read_counts
    from weightshift.preview.synth import apply_overrides, stack_config

    project = project_arg(args)
    values = apply_overrides(stack_config(project, args.stack), args.set)
    config = load(values, source=f"config of stack {args.stack}")
    now = _now()
    since = _since(args, project, now, config)
    cloudwatch = boto3.client("cloudwatch", region_name=config.region)
    counts = read_counts(
        cloudwatch, config.model, config.rollout.thresholds.latency_p99_seconds, since, now
    )
    gate = decide(config, counts, since=since, until=now)
    if args.json:
        print(json.dumps(gate.to_json(), indent=2))
    else:
        print(gate_text(gate))
    return {Decision.PASS: 0, Decision.FAIL: 1}.get(gate.decision, EXIT_INCONCLUSIVE)


def cmd_gates_shadow(args: argparse.Namespace) -> int:
    from pathlib import Path

    from weightshift.config import load
    from weightshift.evidence.sequential import Decision
    from weightshift.gates.shadow import ShadowEvidenceError, check_comparison, decide
    from weightshift.preview.synth import apply_overrides, stack_config
    from weightshift.rollout.commands import EvidenceError, read_report_file

    project = project_arg(args)
    values = apply_overrides(stack_config(project, args.stack), args.set)
    config = load(values, source=f"config of stack {args.stack}")
    rollout = config.rollout
    if args.report and args.since:
        raise CommandError("--since chooses the records' window: leave it out with --report.")
    try:
        if args.report:
            report = read_report_file(Path(args.report), "--report")
        else:
            report = _shadow_report(args, project, config)
        check_comparison(
            report,
            model=config.model,
            stable=config.colour(rollout.stable).version,
            candidate=config.colour(rollout.candidate).version,
        )
    except (EvidenceError, ShadowEvidenceError) as error:
        raise CommandError(str(error)) from None
    gate = decide(report, rollout.shadow_gate)
    print(json.dumps(gate.to_json(), indent=2) if args.json else gate.render())
    return {Decision.PASS: 0, Decision.FAIL: 1}.get(gate.decision, EXIT_INCONCLUSIVE)


def _shadow_report(args: argparse.Namespace, project: Any, config: Any) -> Any:
    """The report over ``--records`` or the stack's own shadow records, figures only."""
    from weightshift.rollout.commands import AutomationBackend, AwsView, RolloutError
    from weightshift.shadow.pipeline import Options, report_from
    from weightshift.shadow.report import ShadowReportError
    from weightshift.shadow.source import SourceError

    now = _now()
    since = _since(args, project, now, config)
    rollout = config.rollout
    if args.records:
        options = Options(
            records=args.records,
            model=config.model,
            stable=config.colour(rollout.stable).version,
            candidate=config.colour(rollout.candidate).version,
            since=since,
            until=now,
            sample=0,
            divergent=0,
        )
        try:
            return report_from(options)
        except (ShadowReportError, SourceError) as error:
            raise CommandError(str(error)) from None
    try:
        exported = AutomationBackend(project, args.stack).outputs().get("shadowRecords") or {}
    except RolloutError as error:
        raise CommandError(f"{error} (or pass --records SRC or --report FILE)") from None
    if not exported.get("bucket") or not exported.get("prefixes"):
        raise CommandError(
            f"stack {args.stack} exports no shadowRecords (deploy it with this version of "
            "weightshift first): pass --records SRC or --report FILE."
        )

    view = AwsView(region=config.region)
    return view.shadow_report(
        config, str(exported["bucket"]), [str(p) for p in exported["prefixes"]], since, now
    )


def _since(args: argparse.Namespace, project: Any, now: Any, config: Any) -> Any:
    """The window's start: ``--since``, else when the configured stage started (the window
    ``rollout promote`` decides on: ``weightshift.rollout.commands.stage_start``)."""
    from datetime import UTC, datetime

    if args.since:
        try:
            since = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
        except ValueError:
            raise CommandError(
                f"--since {args.since!r} is not a time: give ISO 8601, e.g. 2026-12-07T09:00:00Z."
            ) from None
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        if since >= now:
            raise CommandError(f"--since {args.since} is not in the past.")
        return since
    from weightshift.rollout.commands import AutomationBackend, stage_start

    try:
        backend = AutomationBackend(project, args.stack)
        start = stage_start(backend.history(), config) or backend.last_update()
    except Exception as error:  # noqa: BLE001 (the engine's own errors vary)
        raise CommandError(
            f"cannot read the stack's update history ({error}): pass --since with the stage's "
            "start instead."
        ) from None
    if start is None:
        raise CommandError("the stack has no update yet: pass --since with the stage's start.")
    return start


def gate_text(gate: Any) -> str:
    """The stage gate as ``gates stage`` and ``rollout promote --dry-run`` print it."""
    lines = [
        f"stage {gate.stage} gate: {gate.decision.value.upper()} (window "
        f"{gate.since:%Y-%m-%d %H:%M} to {gate.until:%H:%M} UTC)"
    ]
    for criterion in gate.criteria:
        verdict = criterion.verdict
        parts = [f"{criterion.name}: {verdict.decision.value}"]
        if criterion.candidate is not None and criterion.stable is not None:
            parts.append(f"candidate {criterion.candidate:.4g}, stable {criterion.stable:.4g}")
        if verdict.estimate is not None:
            lower, upper = verdict.interval
            parts.append(f"estimate {verdict.estimate:.3g} in [{lower:.3g}, {upper:.3g}]")
        if verdict.needed is not None:
            parts.append(f"about {verdict.needed:,} more to decide")
        if criterion.note:
            parts.append(criterion.note)
        lines.append("  " + "; ".join(parts))
    return "\n".join(lines)


EXIT_BLOCKED = 1


def cmd_gates_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from weightshift.bundles.catalog import CatalogError, LocalCatalog, S3Catalog
    from weightshift.cli.evaluate import read_report
    from weightshift.config import load
    from weightshift.evaluation.store import LocalReports, ReportStore, ReportStoreError
    from weightshift.gates.check import Check, candidate_verdict, check, expected_from
    from weightshift.preview.synth import apply_overrides, offline_catalog, stack_config

    project = project_arg(args)
    values = apply_overrides(stack_config(project, args.stack), args.set)
    config = load(values, source=f"config of stack {args.stack}")
    rollout = config.rollout
    candidate_id = config.colour(rollout.candidate).bundle
    if candidate_id is None:
        raise CommandError(
            f"the candidate colour ({rollout.candidate.value}) runs no version in stack "
            f"{args.stack}: nothing to check."
        )
    stable_id = config.colour(rollout.stable).bundle
    catalog: LocalCatalog | S3Catalog
    source: LocalReports | ReportStore
    if args.local:
        catalog = offline_catalog(project, Path(args.catalog) if args.catalog else None)
        source = LocalReports(catalog.root)
    else:
        import boto3

        client = boto3.client("s3", region_name=config.region)
        catalog = S3Catalog(config.artifacts.bucket_name, client)
        source = ReportStore(catalog.store)
    try:
        expected = expected_from(
            catalog.resolve(candidate_id), catalog.resolve(stable_id) if stable_id else None
        )
    except CatalogError as error:
        raise CommandError(str(error)) from None
    thresholds = rollout.thresholds
    result: Check | None
    reason = None
    if args.report:
        result = check(read_report(args.report), thresholds, expected)
    else:
        try:
            verdict, result = candidate_verdict(source, thresholds, expected)
        except ReportStoreError as error:
            raise CommandError(str(error)) from None
        reason = verdict.reason
    if result is None:
        document = {
            "decision": "blocked",
            "candidate": str(candidate_id),
            "digest": expected.candidate_digest,
            "report": None,
            "problems": [reason],
            "gates": [],
        }
        if args.json:
            print(json.dumps(document, indent=2))
        else:
            print(f"candidate {candidate_id}: BLOCKED\n  {reason}")
        return EXIT_BLOCKED
    if args.json:
        print(json.dumps({"candidate": str(candidate_id), **result.to_json()}, indent=2))
    else:
        _check_text(result, str(candidate_id))
    return EXIT_BLOCKED if result.blocked else 0


def _interval(gate: Any) -> str:
    if gate.interval is None:
        return "-"
    low, high = gate.interval
    return f"[{low:.3g}, {high:.3g}]" if high != float("inf") else f"[{low:.3g}, unbounded]"


def _counts(gate: Any) -> str:
    counts = gate.counts
    if not counts:
        return "-"
    if gate.name == "toxicity":
        return f"{counts['flagged']:,}/{counts['total']:,}"
    if gate.name == "win-rate":
        return f"{counts['wins']:,}W {counts['losses']:,}L {counts['ties']:,}T"
    if gate.name == "latency":
        return f"{counts['candidate']:,}/{counts['baseline']:,}"
    return f"{counts['passed']:,}/{counts['total']:,}"


def _check_text(result: Any, candidate: str) -> None:
    from weightshift.console import table

    report = result.report
    print(
        f"candidate {candidate}: {result.decision.upper()} (report {report.sha256[:12]}, "
        f"{report.source}, {report.dataset}, against "
        f"{report.baseline.id if report.baseline else 'no baseline'})"
    )
    table(
        [
            "gate",
            "decision",
            "action",
            "counts",
            "estimate",
            "95% CI",
            "limit",
        ],
        [
            [
                gate.name,
                gate.decision,
                gate.action,
                _counts(gate),
                "-" if gate.estimate is None else f"{gate.estimate:.4g}",
                _interval(gate),
                f"{gate.threshold:g}",
            ]
            for gate in result.gates
        ],
        # What an inconclusive gate needs is in its line below, which no width cuts off.
        no_wrap=["gate", "decision", "action", "estimate", "95% CI", "limit"],
    )
    for gate in result.gates:
        outcome = "" if gate.decision == gate.outcome.value else f"{gate.outcome.value}; "
        needed = (
            f"; {gate.needed:,} more {gate.unit.split()[0]} would decide it"
            if gate.needed is not None
            else "; no number of samples decides it at this estimate"
            if gate.outcome == "inconclusive"
            else ""
        )
        print(f"  {gate.name}: {outcome}{gate.note}{needed}")
    for problem in result.problems:
        print(f"refused: {problem}")
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
