"""``weightshift eval``: evaluation reports, bound to a bundle's digest
(``weightshift/evaluation``): ``import`` one from promptfoo, lm-evaluation-harness or a
bundle's own tests, ``publish`` it beside its bundle, ``show`` a bundle's reports."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from weightshift.cli.common import CommandError, project_arg, writable

if TYPE_CHECKING:
    from weightshift.bundles.versioning import BundleId
    from weightshift.config import StackConfig
    from weightshift.evaluation.report import BundleRef, EvaluationReport
    from weightshift.evaluation.store import LocalReports, ReportStore

Steps: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(commands: Steps) -> None:
    """Add ``eval`` and its subcommands to ``commands``."""
    group = commands.add_parser("eval", help="evaluation reports bound to a bundle's digest")
    steps = group.add_subparsers(dest="eval_command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(steps)
    _register_run(steps)


def _where_options(parser: argparse.ArgumentParser, *, stack: bool) -> None:
    if stack:
        parser.add_argument(
            "--stack", default="prod", help="the stack whose artifact bucket (default: prod)"
        )
    parser.add_argument("--project", metavar="DIR", help="the Pulumi project folder")
    parser.add_argument(
        "--local",
        action="store_true",
        help="the offline catalog (the project's bundles/, or --catalog) instead of the bucket",
    )
    parser.add_argument(
        "--catalog", metavar="DIR", help="with --local: the bundle folders <name>/v<X.Y.Z>/"
    )


def _import_parser(steps: Steps) -> None:
    parser = steps.add_parser(
        "import",
        help="an evaluation report from promptfoo, lm-evaluation-harness or tests/evaluation.json",
        description=(
            "Make an evaluation report for a bundle from what a team already produced. The "
            "bundle's full digest comes from --digest, the artifact bucket (--bucket or "
            "$WEIGHTSHIFT_BUCKET) or the local bundle folder (the project's bundles/ or "
            "--catalog). What the source holds that no gate reads becomes a note "
            "(docs/evaluation.md has the mapping)."
        ),
    )
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        choices=("promptfoo", "lm-eval", "bundle-tests"),
        help="the file's format",
    )
    parser.add_argument("file", metavar="FILE", help="the file to import")
    parser.add_argument("--bundle", required=True, metavar="ID", help="the bundle evaluated")
    parser.add_argument("--digest", metavar="SHA256", help="its full manifest digest")
    parser.add_argument("--baseline", metavar="ID", help="the bundle it was compared with")
    parser.add_argument("--baseline-digest", metavar="SHA256", help="the baseline's digest")
    parser.add_argument("--dataset", help="the prompt set's name and version")
    parser.add_argument("--candidate-provider", help="promptfoo: the candidate's provider label")
    parser.add_argument("--baseline-provider", help="promptfoo: the baseline's provider label")
    parser.add_argument(
        "--toxicity-task", default="realtoxicityprompts", help="lm-eval: the toxicity task"
    )
    parser.add_argument("--adversarial-task", help="lm-eval: the adversarial task, if any")
    parser.add_argument("--bucket", help="read digests from this artifact bucket")
    parser.add_argument("--project", metavar="DIR", help="the Pulumi project folder")
    parser.add_argument("--catalog", metavar="DIR", help="read digests from these bundle folders")
    parser.add_argument("--out", metavar="FILE", help="write the report here (default: stdout)")
    parser.set_defaults(func=cmd_eval_import)


def _publish_parser(steps: Steps) -> None:
    parser = steps.add_parser(
        "publish",
        help="store a report beside its bundle (Object-Locked, content addressed)",
        description=(
            "Store REPORT at reports/<name>/v<X.Y.Z>/<sha256>.json in the stack's artifact "
            "bucket, under its Object Lock (--local: under the offline catalog's "
            "<name>/reports/v<X.Y.Z>/). The bundle (and the baseline) must be published with "
            "exactly the digests the report names. The same report again is a no-op."
        ),
    )
    parser.add_argument("report", metavar="REPORT", help="the report's JSON file")
    parser.add_argument("--bucket", help="the artifact bucket (default: the stack's)")
    _where_options(parser, stack=True)
    parser.set_defaults(func=cmd_eval_publish)


def _show_parser(steps: Steps) -> None:
    parser = steps.add_parser(
        "show",
        help="a bundle's reports and each one's gates",
        description=(
            "Every stored report of BUNDLE_ID, newest first, each with the gates' decisions "
            "under the stack's thresholds and actions."
        ),
    )
    parser.add_argument("bundle", metavar="BUNDLE_ID")
    parser.add_argument("--bucket", help="the artifact bucket (default: the stack's)")
    _where_options(parser, stack=True)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=cmd_eval_show)


SUBCOMMANDS: list[Callable[[Steps], None]] = [_import_parser, _publish_parser, _show_parser]
"""Each adds one ``eval`` subcommand."""


# --- shared ----------------------------------------------------------------------------


def bundle_id(text: str, option: str) -> BundleId:
    from weightshift.bundles.versioning import BundleId, VersionError

    try:
        return BundleId.parse(text)
    except (VersionError, ValueError) as error:
        raise CommandError(f"{option} {text!r} is not a bundle id ({error}).") from None


def stack_settings(args: argparse.Namespace) -> StackConfig:
    from weightshift.config import load
    from weightshift.preview.synth import apply_overrides, stack_config

    values = apply_overrides(
        stack_config(project_arg(args), args.stack), getattr(args, "set", None) or []
    )
    return load(values, source=f"config of stack {args.stack}")


def report_home(args: argparse.Namespace, config: StackConfig | None) -> ReportStore | LocalReports:
    """The offline catalog's reports (``--local``), else the artifact bucket's."""
    from weightshift.bundles.store import BundleStore
    from weightshift.evaluation.store import LocalReports, ReportStore

    if args.local:
        from weightshift.preview.synth import offline_catalog

        project = project_arg(args)
        return LocalReports(
            offline_catalog(project, Path(args.catalog) if args.catalog else None).root
        )
    import boto3

    bucket = getattr(args, "bucket", None) or (config.artifacts.bucket_name if config else None)
    if not bucket:
        raise CommandError("No bucket: pass --bucket NAME, or --local for the offline catalog.")
    region = config.region if config else None
    return ReportStore(BundleStore(bucket, boto3.client("s3", region_name=region)))


def read_report(path: str) -> EvaluationReport:
    from weightshift.evaluation.report import MAX_REPORT_BYTES, ReportError, parse

    file = Path(path)
    if not file.is_file():
        raise CommandError(f"{path} is not a file: give the report's JSON file.")
    try:
        with file.open("rb") as handle:
            return parse(handle.read(MAX_REPORT_BYTES + 1), path)
    except ReportError as error:
        raise CommandError(str(error)) from None


def _write_whole(path: Path, data: bytes) -> None:
    """``data`` at ``path``, all of it or nothing (written beside, then renamed)."""
    staging = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        staging.write_bytes(data)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


# --- import --------------------------------------------------------------------------------


def _digest_of(args: argparse.Namespace, bundle: BundleId, digest: str | None) -> BundleRef:
    """``bundle`` with its full digest: given, from the bucket, or from the local folder."""
    from pydantic import ValidationError

    from weightshift.bundles.catalog import CatalogError
    from weightshift.bundles.store import BundleStore, StoreError
    from weightshift.evaluation.report import BundleRef

    if digest is None:
        bucket = args.bucket or os.environ.get("WEIGHTSHIFT_BUCKET")
        try:
            if bucket:
                digest = BundleStore(bucket).resolve(bundle).manifest.digest
            else:
                from weightshift.preview.synth import offline_catalog

                catalog = offline_catalog(
                    project_arg(args), Path(args.catalog) if args.catalog else None
                )
                digest = catalog.resolve(bundle).manifest.digest
        except (CatalogError, StoreError) as error:
            raise CommandError(
                f"{error} Or give the digest with --digest / --baseline-digest."
            ) from None
    try:
        return BundleRef(id=str(bundle), digest=digest)
    except ValidationError as error:
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in error.errors())
        raise CommandError(f"{bundle}: {reasons}.") from None


def cmd_eval_import(args: argparse.Namespace) -> int:
    from weightshift.evaluation import importers

    out = writable("--out", args.out)
    bundle = _digest_of(args, bundle_id(args.bundle, "--bundle"), args.digest)
    baseline = None
    if args.baseline:
        baseline = _digest_of(args, bundle_id(args.baseline, "--baseline"), args.baseline_digest)
    elif args.baseline_digest:
        raise CommandError("--baseline-digest needs --baseline (the baseline's id).")
    file = Path(args.file)
    if not file.is_file():
        raise CommandError(f"{args.file} is not a file.")
    with file.open("rb") as handle:
        data = handle.read(importers.MAX_SOURCE_BYTES + 1)
    subject = importers.Subject(bundle, baseline, args.dataset)
    try:
        if args.source == "promptfoo":
            report = importers.from_promptfoo(
                data,
                subject,
                candidate_provider=args.candidate_provider,
                baseline_provider=args.baseline_provider,
                where=args.file,
            )
        elif args.source == "lm-eval":
            report = importers.from_lm_eval(
                data,
                subject,
                toxicity_task=args.toxicity_task,
                adversarial_task=args.adversarial_task,
                where=args.file,
            )
        else:
            report = importers.from_bundle_tests(data, subject, where=args.file)
    except importers.SourceError as error:
        raise CommandError(str(error)) from None
    if out is None:
        sys.stdout.buffer.write(report.to_json())
        sys.stdout.flush()
    else:
        _write_whole(out, report.to_json())
    print(f"report {report.sha256} for {report.bundle.id} ({report.source})", file=sys.stderr)
    for note in report.notes:
        print(f"  note: {note}", file=sys.stderr)
    return 0


# --- publish -------------------------------------------------------------------------------


def cmd_eval_publish(args: argparse.Namespace) -> int:
    from weightshift.evaluation.store import ReportStoreError

    report = read_report(args.report)
    config = None if args.local or args.bucket else stack_settings(args)
    home = report_home(args, config)
    try:
        published = home.publish(report)
    except ReportStoreError as error:
        raise CommandError(str(error)) from None
    if published.written:
        print(f"published {published.where}")
    else:
        print(f"already published: {published.where} (nothing written)")
    return 0


# --- show ----------------------------------------------------------------------------------


def cmd_eval_show(args: argparse.Namespace) -> int:
    from weightshift.config.rollout import Thresholds
    from weightshift.evaluation.store import ReportStoreError
    from weightshift.gates.check import check

    bundle = bundle_id(args.bundle, "BUNDLE_ID")
    # The stack's thresholds and actions decide the gates shown.
    config = stack_settings(args)
    thresholds: Thresholds = config.rollout.thresholds
    home = report_home(args, config)
    try:
        listing = home.listing(bundle)
    except ReportStoreError as error:
        raise CommandError(str(error)) from None
    checks = sorted(
        (check(report, thresholds) for report in listing.reports),
        key=lambda c: (c.report.created, c.report.sha256),
        reverse=True,
    )
    if args.json:
        document: dict[str, Any] = {
            "bundle": str(bundle),
            "reports": [c.to_json() for c in checks],
            "problems": list(listing.problems),
        }
        print(json.dumps(document, indent=2))
        return 0
    from weightshift.console import table

    if not checks:
        print(f"no evaluation reports for {bundle}", file=sys.stderr)
    else:
        table(
            ["report", "created", "source", "dataset", "baseline", "decision", "gates"],
            [
                [
                    c.report.sha256[:12],
                    f"{c.report.created:%Y-%m-%d %H:%M}",
                    c.report.source,
                    c.report.dataset,
                    c.report.baseline.id if c.report.baseline else "-",
                    c.decision,
                    ", ".join(f"{g.name} {g.decision}" for g in c.gates),
                ]
                for c in checks
            ],
            title=f"evaluation reports of {bundle}",
            no_wrap=["report", "created", "baseline"],
        )
    for problem in listing.problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 0


# --- eval run -------------------------------------------------------------------------------


def _register_run(steps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = steps.add_parser(
        "run",
        help="measure the candidate against the stable colour through their gateways",
        description=(
            "Send a prompt set to the candidate and to the stable colour through their "
            "gateways (at stage 0, the ALB's test route: --endpoint and the colour header), "
            "judge each pair, run the adversarial suite on the candidate, moderate its answers "
            "and time both colours; write the evaluation report, bound to both bundles' "
            "digests. Progress is kept in a journal beside the report: --resume continues an "
            "interrupted run without asking again what was answered (docs/eval-run.md)."
        ),
    )
    files = run.add_argument_group("what to ask")
    files.add_argument("--prompts", required=True, metavar="FILE", help="the prompt set (JSONL)")
    files.add_argument(
        "--adversarial", required=True, metavar="FILE", help="the adversarial suite (JSONL)"
    )
    files.add_argument(
        "--dataset", help="the prompt set's name in the report (default: file name and hash)"
    )
    where = run.add_argument_group("whom to ask")
    where.add_argument(
        "--stack",
        help="read the colours' bundles, the candidate colour, the test header, the bucket "
        "and the moderator from Pulumi.<stack>.yaml",
    )
    where.add_argument("--project", metavar="DIR", help="the Pulumi project folder (with --stack)")
    where.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a stack config value (with --stack); repeatable",
    )
    where.add_argument(
        "--endpoint",
        metavar="URL",
        help="the ALB's URL (https://<the certificate's host name>): each colour is reached "
        "through the test route, its header naming the colour",
    )
    where.add_argument(
        "--candidate-url", metavar="URL", help="the candidate's gateway, reached directly"
    )
    where.add_argument("--stable-url", metavar="URL", help="the stable colour's gateway, directly")
    where.add_argument(
        "--candidate-colour",
        choices=("blue", "green"),
        help="the candidate colour (default: the stack's rollout.candidate)",
    )
    where.add_argument(
        "--test-header",
        help="the test route's header (default: the stack's traffic.testHeader, else "
        "x-weightshift-colour)",
    )
    where.add_argument(
        "--bundle", metavar="ID", help="the candidate's bundle id (default: the stack's)"
    )
    where.add_argument(
        "--baseline", metavar="ID", help="the stable colour's bundle id (default: the stack's)"
    )
    where.add_argument(
        "--catalog",
        metavar="DIR",
        help="bundle folders <name>/v<X.Y.Z>/ to read both bundles' manifests from",
    )
    where.add_argument(
        "--bucket",
        help="the artifact bucket to read them from (default: the stack's, else "
        "$WEIGHTSHIFT_BUCKET)",
    )
    judging = run.add_argument_group("the judge and the moderator")
    judging.add_argument(
        "--judge-url",
        metavar="URL",
        help="an OpenAI-compatible base URL (e.g. https://api.openai.com/v1); the key from "
        "$WEIGHTSHIFT_JUDGE_API_KEY, else $OPENAI_API_KEY",
    )
    judging.add_argument("--judge-model", metavar="MODEL", help="the judge model (--judge-url)")
    judging.add_argument(
        "--judge-bedrock", metavar="MODEL_ID", help="judge with this Amazon Bedrock model"
    )
    judging.add_argument(
        "--guardrail",
        metavar="ID:VERSION",
        help="the candidate's Bedrock guardrail, for toxicity (default: the local moderator, "
        "unless the stack's serving.moderator is bedrock, which needs this)",
    )
    judging.add_argument("--region", help="for Bedrock and S3 (default: the stack's, $AWS_REGION)")
    how = run.add_argument_group("how")
    how.add_argument(
        "--out",
        default="evaluation-report.json",
        metavar="FILE",
        help="the report (default: evaluation-report.json); the journal is FILE.journal.jsonl",
    )
    how.add_argument("--resume", action="store_true", help="continue the journal beside --out")
    how.add_argument(
        "--force", action="store_true", help="replace an existing report (or start a new journal)"
    )
    how.add_argument("--concurrency", type=int, default=8, help="prompts in flight (default 8)")
    how.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per answer (default 120)"
    )
    how.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries of an answer on 429, 5xx or no answer, with backoff (default 3)",
    )
    how.add_argument(
        "--seed",
        type=int,
        help="the judge order's seed (default: drawn, and kept in the journal)",
    )
    how.add_argument("--json", action="store_true", help="print the report's JSON")
    run.set_defaults(func=cmd_eval_run)


def _url(option: str, value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CommandError(f"{option} {value!r} is not an http(s) URL with a host.")
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        raise CommandError(f"{option} {value!r} has an invalid port.") from None
    return value.rstrip("/")


def _bundle_id(option: str, value: str) -> Any:
    from weightshift.bundles.versioning import BundleId, VersionError

    try:
        return BundleId.parse(value)
    except VersionError as error:
        raise CommandError(f"{option}: {error}") from None


def _run_targets(args: argparse.Namespace, config: Any) -> tuple[Any, Any, str]:
    """The candidate's and the stable colour's targets, and the candidate colour's name."""
    from weightshift.evaluation.run import Target

    if config is not None:
        stack_candidate = config.rollout.candidate.value
        if args.candidate_colour and args.candidate_colour != stack_candidate:
            raise CommandError(
                f"--candidate-colour {args.candidate_colour}, but the stack's candidate is "
                f"{stack_candidate}: drop the option, or correct the stack."
            )
        colour = stack_candidate
        stable_colour = config.rollout.stable.value
        expected = {
            "candidate": config.colour(config.rollout.candidate).version,
            "stable": config.colour(config.rollout.stable).version,
        }
        header = args.test_header or config.traffic.test_header
    else:
        colour = args.candidate_colour
        stable_colour = None if colour is None else ("blue" if colour == "green" else "green")
        expected = {"candidate": None, "stable": None}
        header = args.test_header or "x-weightshift-colour"
    for role, option in (("candidate", "--bundle"), ("stable", "--baseline")):
        given = getattr(args, option[2:])
        if given and expected[role] and given != expected[role]:
            raise CommandError(
                f"{option} {given}, but the stack's {role} colour runs {expected[role]}: the "
                "report must name what answered. Drop the option, or correct the stack."
            )
        expected[role] = given or expected[role]
        if not expected[role]:
            raise CommandError(
                f"which bundle does the {role} serve? Give {option} ID, or --stack to read it "
                "from the stack config."
            )
    bundle = _bundle_id("--bundle", expected["candidate"])
    baseline = _bundle_id("--baseline", expected["stable"])
    if args.endpoint and (args.candidate_url or args.stable_url):
        raise CommandError(
            "--endpoint (through the ALB) or --candidate-url and --stable-url (each gateway "
            "directly): not both."
        )
    if args.endpoint:
        if colour is None:
            raise CommandError(
                "--endpoint needs the candidate colour for the test header: give "
                "--candidate-colour, or --stack."
            )
        url = f"{_url('--endpoint', args.endpoint)}/v1/chat/completions"
        return (
            Target("candidate", url, bundle, colour, {header: colour}),
            Target("stable", url, baseline, stable_colour, {header: str(stable_colour)}),
            colour,
        )
    if not (args.candidate_url and args.stable_url):
        raise CommandError(
            "whom to ask: --endpoint URL (the ALB, through its test route), or both "
            "--candidate-url and --stable-url (each gateway directly)."
        )
    return (
        Target(
            "candidate",
            f"{_url('--candidate-url', args.candidate_url)}/v1/chat/completions",
            bundle,
            colour,
        ),
        Target(
            "stable",
            f"{_url('--stable-url', args.stable_url)}/v1/chat/completions",
            baseline,
            stable_colour,
        ),
        colour or "",
    )


def _run_catalog(args: argparse.Namespace, config: Any, region: str | None) -> Any:
    import os
    from pathlib import Path

    from weightshift.bundles.catalog import LocalCatalog, S3Catalog

    if args.catalog:
        root = Path(args.catalog)
        if not root.is_dir():
            raise CommandError(f"--catalog {args.catalog} is not a folder.")
        return LocalCatalog(root)
    bucket = args.bucket or (config.artifacts.bucket_name if config is not None else None)
    bucket = bucket or os.environ.get("WEIGHTSHIFT_BUCKET")
    if not bucket:
        raise CommandError(
            "where are the bundles' manifests? Give --bucket (the artifact bucket), --catalog "
            "DIR (bundle folders), or --stack."
        )
    import boto3

    return S3Catalog(bucket, boto3.client("s3", region_name=region))


class _ModeratorAdapter:
    """The gateway's moderator, as ``eval run`` asks it: blocked or not."""

    def __init__(self, moderator: Any) -> None:
        self._moderator = moderator
        self.name: str = moderator.name

    async def flags(self, text: str, source: Any) -> bool:
        from weightshift.evaluation.run import ModerationUnavailable
        from weightshift.gateway.moderation import ModerationError

        try:
            verdict = await self._moderator.check(text, source)
        except ModerationError as error:
            raise ModerationUnavailable(str(error)) from None
        return bool(verdict.blocked)


def _run_moderator(args: argparse.Namespace, config: Any, safety: Any, region: str | None) -> Any:
    from weightshift.gateway.moderation import moderator_for

    guardrail = None
    if args.guardrail:
        guardrail_id, _, version = args.guardrail.partition(":")
        if not guardrail_id or not version:
            raise CommandError(
                f"--guardrail {args.guardrail!r}: give the id and the version, ID:VERSION "
                "(aws bedrock list-guardrails)."
            )
        guardrail = (guardrail_id, version)
    elif config is not None and config.serving.moderator == "bedrock":
        raise CommandError(
            "the stack moderates with Bedrock (serving.moderator: bedrock): give --guardrail "
            "ID:VERSION, the candidate colour's guardrail (aws bedrock list-guardrails), so "
            "toxicity is what its gateway enforces."
        )
    try:
        return _ModeratorAdapter(moderator_for(safety, guardrail, region))
    except ValueError as error:
        raise CommandError(f"--guardrail: {error}") from None


def _run_judge(args: argparse.Namespace, region: str | None, retry: Any) -> tuple[Any, str, str]:
    """A factory for the judge (it needs the run's HTTP session), its model and endpoint."""
    import os

    from weightshift.evaluation.judge import BedrockJudge, OpenAIJudge, public_url

    if bool(args.judge_url) == bool(args.judge_bedrock):
        raise CommandError(
            "the pairwise judge: give --judge-url URL with --judge-model MODEL (any "
            "OpenAI-compatible endpoint), or --judge-bedrock MODEL_ID; one of them."
        )
    if args.judge_bedrock:
        if not region:
            raise CommandError("--judge-bedrock needs a region: give --region or set AWS_REGION.")
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "bedrock-runtime",
            region_name=region,
            config=Config(
                retries={"mode": "standard", "total_max_attempts": args.retries + 1},
                read_timeout=args.timeout,
            ),
        )
        model = args.judge_bedrock
        return (lambda _session: BedrockJudge(client, model, region)), model, f"bedrock:{region}"
    if not args.judge_model:
        raise CommandError("--judge-url needs --judge-model: the model the endpoint serves.")
    base = _url("--judge-url", args.judge_url)
    if "@" in base.split("//", 1)[1].split("/", 1)[0]:
        raise CommandError(
            "--judge-url carries credentials: give the URL without them, and the key in "
            "$WEIGHTSHIFT_JUDGE_API_KEY (it is never written to the report or the journal)."
        )
    key = os.environ.get("WEIGHTSHIFT_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    model = args.judge_model

    def make(session: Any) -> Any:
        return OpenAIJudge(session, base, model, api_key=key, retry=retry)

    return make, model, public_url(base)


def cmd_eval_run(args: argparse.Namespace) -> int:
    import asyncio
    import hashlib
    import json
    import os
    import secrets
    import sys
    from pathlib import Path

    from weightshift.bundles.catalog import CatalogError
    from weightshift.cli.common import EXIT_INTERRUPTED
    from weightshift.evaluation import report as schema
    from weightshift.evaluation.run import (
        CountProgress,
        IdentityError,
        Journal,
        Plan,
        RunError,
        Runner,
        journal_header,
        journal_path,
        read_journal,
        summary,
        write_report,
    )
    from weightshift.evaluation.suites import SuiteError, load_adversarial, load_prompts
    from weightshift.evaluation.transport import Retry

    if args.concurrency < 1 or args.concurrency > 256:
        raise CommandError(f"--concurrency {args.concurrency}: 1 to 256.")
    if not 0 < args.timeout <= 3600 or not 0 <= args.retries <= 10:
        raise CommandError("--timeout: above 0 and at most 3600 s; --retries: 0 to 10.")
    out = writable("--out", args.out)
    assert out is not None  # --out has a default
    if out.exists() and not args.force:
        raise CommandError(
            f"--out {out} exists: a report is never written over. Add --force to replace it, "
            "or write to another file."
        )
    try:
        prompts = load_prompts(Path(args.prompts))
        adversarial = load_adversarial(Path(args.adversarial))
    except SuiteError as error:
        raise CommandError(str(error)) from None
    config = None
    if args.stack:
        from weightshift.config import load
        from weightshift.preview.synth import apply_overrides, stack_config

        project = project_arg(args)
        values = apply_overrides(stack_config(project, args.stack), args.set)
        config = load(values, source=f"config of stack {args.stack}")
    elif args.set or args.project:
        raise CommandError("--set and --project go with --stack.")
    region = args.region or (config.region if config is not None else None)
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    candidate, stable, _ = _run_targets(args, config)
    catalog = _run_catalog(args, config, region)
    try:
        resolved = catalog.resolve(candidate.expected)
        resolved_baseline = catalog.resolve(stable.expected)
    except CatalogError as error:
        raise CommandError(str(error)) from None
    moderator = _run_moderator(args, config, resolved.safety, region)
    retry = Retry(attempts=args.retries + 1, timeout=args.timeout)
    make_judge, judge_model, judge_endpoint = _run_judge(args, region, retry)
    journal_file = journal_path(out)
    seed = args.seed
    if seed is None and args.resume and journal_file.exists():
        try:
            seed = read_journal(journal_file)[0].get("seed")
        except RunError as error:
            raise CommandError(str(error)) from None
    if seed is None:
        seed = secrets.randbelow(2**31)
    digest = hashlib.sha256(f"{prompts.sha256}{adversarial.sha256}".encode()).hexdigest()
    plan = Plan(
        prompts=prompts,
        adversarial=adversarial,
        candidate=candidate,
        stable=stable,
        bundle=schema.BundleRef(id=str(candidate.expected), digest=resolved.manifest.digest),
        baseline=schema.BundleRef(
            id=str(stable.expected), digest=resolved_baseline.manifest.digest
        ),
        refusal_message=resolved.safety.refusal_message,
        input_moderation=resolved.safety.input_moderation,
        dataset=args.dataset or f"{Path(args.prompts).stem}-{digest[:12]}",
        seed=seed,
        concurrency=args.concurrency,
        retry=retry,
    )
    try:
        journal = Journal.open(
            journal_file,
            journal_header(plan, judge_model, judge_endpoint),
            resume=args.resume,
            fresh=args.force,
        )
    except RunError as error:
        raise CommandError(str(error)) from None
    runner = Runner(plan, journal, moderator, make_judge)
    progress = CountProgress("eval run", runner.cases)  # a resumed case counts at once
    completed = False
    try:
        result = asyncio.run(runner.run(progress))
        completed = True
    except KeyboardInterrupt:
        progress.close(completed=False)
        print(
            f"weightshift eval run: interrupted; {runner.answers_kept()} answers are kept in "
            f"{journal_file}: run again with --resume to continue.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except IdentityError as error:
        raise CommandError(
            f"{error} Nothing more was asked; what was answered is kept in {journal_file}."
        ) from None
    finally:
        if completed:
            progress.close(completed=True)
        journal.close()
    for case_id, failure in result.judge_failures.items():
        print(f"weightshift eval run: judge failed on {case_id}: {failure}", file=sys.stderr)
    if result.report is None:
        listed = "; ".join(f"{item.case_id}: {item.reason}" for item in result.unfinished[:5])
        raise CommandError(
            f"{len(result.unfinished)} case(s) unfinished, no report written ({listed}"
            f"{' ...' if len(result.unfinished) > 5 else ''}). What was answered is kept in "
            f"{journal_file}: fix the cause and run again with --resume, which asks only what "
            "is missing."
        )
    data = result.report.to_json()
    try:
        write_report(out, data, force=args.force)
    except RunError as error:
        raise CommandError(str(error)) from None
    if args.json:
        sys.stdout.write(json.dumps(json.loads(data), indent=2) + "\n")
    else:
        for line in summary(result.report):
            print(line)
        print(f"report: {out} (sha256 {result.report.sha256[:12]}), journal: {journal_file}")
    return 0
