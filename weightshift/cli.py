"""The ``weightshift`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightshift.config import ConfigError

if TYPE_CHECKING:
    from weightshift.bundle import Manifest
    from weightshift.catalog import LocalCatalog
    from weightshift.rollback_record import RollbackRecord
    from weightshift.rollout import Rollout
    from weightshift.store import BundleStore
    from weightshift.versioning import BundleId

EXIT_USAGE = 2


class CommandError(Exception):
    """A failure the user can act on: printed as one paragraph, exit status 2."""


def _project(args: argparse.Namespace) -> Path:
    from weightshift.synth import find_project

    return find_project(Path(args.project) if args.project else Path.cwd())


def _catalog(args: argparse.Namespace, project: Path) -> LocalCatalog:
    from weightshift.synth import offline_catalog

    return offline_catalog(project, Path(args.catalog) if args.catalog else None)


def _record(args: argparse.Namespace) -> RollbackRecord | None:
    from weightshift.rollback_record import load_file

    return load_file(Path(args.rollback_record)) if args.rollback_record else None


def cmd_synth(args: argparse.Namespace) -> int:
    from weightshift.synth import synthesize_stack

    project = _project(args)
    graph = synthesize_stack(project, args.stack, args.set, _catalog(args, project), _record(args))
    text = json.dumps(graph.to_json(), indent=2, sort_keys=False)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from weightshift.plan import build_plan, render

    project = _project(args)
    plan = build_plan(project, args.stack, args.set, _catalog(args, project), _record(args))
    print(json.dumps(plan.to_json(), indent=2) if args.json else render(plan))
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    from weightshift.policy import StageCheck, check, check_every_stage, load_policies
    from weightshift.synth import synthesize_stack

    project = _project(args)
    policies = load_policies(project)
    catalog, record = _catalog(args, project), _record(args)
    if args.configured_stage_only:
        graph = synthesize_stack(project, args.stack, args.set, catalog, record)
        config = graph.config.rollout
        checks = [StageCheck(config.strategy.value, config.stage, check(graph, policies))]
    else:
        checks = check_every_stage(
            project, args.stack, policies, args.set, catalog=catalog, record=record
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


def _store(args: argparse.Namespace) -> BundleStore:
    from weightshift.store import BundleStore

    bucket = args.bucket or os.environ.get("WEIGHTSHIFT_BUCKET")
    if not bucket:
        raise CommandError("No bucket: pass --bucket NAME or set WEIGHTSHIFT_BUCKET.")
    return BundleStore(bucket, workers=args.workers)


def _bundle_id(text: str) -> BundleId:
    from weightshift.versioning import BundleId

    return BundleId.parse(text)


def cmd_bundle_init(args: argparse.Namespace) -> int:
    from weightshift.bundle import init_bundle

    todo = init_bundle(Path(args.dir), args.name)
    print(f"Created a bundle skeleton for {args.name} in {args.dir}. Replace before publishing:")
    for item in todo:
        print(f"  - {item}")
    return 0


def cmd_bundle_validate(args: argparse.Namespace) -> int:
    from weightshift.bundle import load_local

    local = load_local(Path(args.dir))
    size = sum(entry.size for entry in local.entries)
    print(
        f"{args.dir}: valid bundle of {local.metadata.name}, "
        f"{len(local.entries)} files, {size:,} bytes"
    )
    return 0


def cmd_bundle_publish(args: argparse.Namespace) -> int:
    from weightshift.bundle import load_local
    from weightshift.versioning import Version

    if (args.version is None) == (args.bump is None):
        raise CommandError("Give exactly one of --version X.Y.Z or --bump auto.")
    version = Version.parse(args.version) if args.version else None
    store = _store(args)
    local = load_local(Path(args.dir))
    if args.dry_run:
        plan = store.plan_publish(local, version, auto_bump=args.bump == "auto")
        report = {
            "id": str(plan.manifest.id),
            "requiredBump": plan.required.name if plan.required else None,
            "reasons": list(plan.reasons),
            "blobsToUpload": len(plan.missing),
            "bytesToUpload": sum(plan.missing.values()),
            "blobsPresent": len(plan.present),
        }
        print(
            json.dumps(report, indent=2) if args.json else f"would publish {report['id']}: {report}"
        )
        return 0
    result = store.publish(local, version, auto_bump=args.bump == "auto")
    print(json.dumps(result.to_json(), indent=2) if args.json else str(result.id))
    return 0


def cmd_bundle_list(args: argparse.Namespace) -> int:
    from weightshift.store import iter_published

    rows = [
        {
            "id": str(p.manifest.id),
            "publishedAt": p.published_at,
            "bytes": p.manifest.size,
            "files": len(p.manifest.files),
        }
        for p in iter_published(_store(args), args.name)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no published versions of {args.name}")
    for row in [] if args.json else rows:
        print(f"{row['id']}  {row['publishedAt']}  {row['files']} files  {row['bytes']:,} bytes")
    return 0


def cmd_bundle_show(args: argparse.Namespace) -> int:
    published = _store(args).resolve(_bundle_id(args.id))
    manifest = published.manifest
    document = {
        "id": str(manifest.id),
        "digest": manifest.digest,
        "publishedAt": published.published_at,
        "bytes": manifest.size,
        "metadata": dict(manifest.metadata),
        "files": [entry.to_json() for entry in manifest.files],
    }
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    print(f"{manifest.id}  published {published.published_at}  {manifest.size:,} bytes")
    for key in ("base_model", "architecture", "parent_version", "source_commit"):
        print(f"  {key}: {manifest.metadata.get(key)}")
    for entry in manifest.files:
        print(f"  {entry.sha256[:12]}  {entry.size:>14,}  {entry.path}")
    return 0


def cmd_bundle_verify(args: argparse.Namespace) -> int:
    bundle = _bundle_id(args.id)
    problems = _store(args).verify(bundle)
    for problem in problems:
        print(f"FAIL {problem}")
    print(f"{bundle}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def cmd_bundle_pull(args: argparse.Namespace) -> int:
    manifest = _store(args).pull(
        _bundle_id(args.id), Path(args.dest), serving_layout=args.serving_layout
    )
    if args.json:
        document = {
            "id": str(manifest.id),
            "digest": manifest.digest,
            "files": len(manifest.files),
            "bytes": manifest.size,
            "dest": str(args.dest),
        }
        print(json.dumps(document, indent=2))
        return 0
    print(f"{manifest.id}: {len(manifest.files)} files, {manifest.size:,} bytes in {args.dest}")
    return 0


def _manifest_of(ref: str, args: argparse.Namespace) -> Manifest:
    from weightshift.bundle import load_local
    from weightshift.versioning import Version

    if Path(ref).is_dir():
        local = load_local(Path(ref))
        return local.manifest(Version(0, 0, 0))
    return _store(args).resolve(_bundle_id(ref)).manifest


def _rollout(args: argparse.Namespace) -> Rollout:
    from weightshift.rollout import AutomationBackend, AwsView, Rollout

    return Rollout(args.stack, AutomationBackend(_project(args), args.stack), AwsView())


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


def cmd_rollout_finish(args: argparse.Namespace) -> int:
    print(_rollout(args).finish())
    return 0


def cmd_bundle_diff(args: argparse.Namespace) -> int:
    from weightshift.bundle import diff

    change = diff(_manifest_of(args.a, args), _manifest_of(args.b, args))
    if args.json:
        print(json.dumps(change.to_json(), indent=2))
        return 0
    for part in change.changes:
        for kind, paths in (("+", part.added), ("-", part.removed), ("~", part.changed)):
            for path in paths:
                print(f"{kind} {part.part}: {path}")
    print(f"required bump: {change.bump.name if change.bump else 'none (identical)'}")
    for reason in change.reasons:
        print(f"  {reason}")
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from weightshift.gateway.server import Options, parse_address, serve

    try:
        options = Options(
            bundle=Path(args.bundle),
            upstream=args.upstream,
            colour=args.colour,
            listen=parse_address(args.listen, "--listen"),
            bundle_id=args.bundle_id,
            keep_alive=args.keep_alive,
            guardrail=_guardrail(args.guardrail),
            feedback_key=args.feedback_key,
            region=args.region or os.environ.get("AWS_REGION"),
            metrics=args.metrics,
            metrics_interval=args.metrics_interval,
            mirror_listen=parse_address(args.mirror_listen, "--mirror-listen")
            if args.mirror_listen
            else None,
            mirror_to=args.mirror_to,
            mirror_queue=args.mirror_queue,
            mirror_workers=args.mirror_workers,
            mirror_timeout=args.mirror_timeout,
            shadow_bucket=args.shadow_bucket,
            shadow_prefix=args.shadow_prefix,
            shadow_keep_text=args.shadow_keep_text,
            shadow_flush_seconds=args.shadow_flush_seconds,
        )
    except ValueError as error:
        raise CommandError(str(error)) from None
    if options.mirror_listen and not options.mirror_to:
        raise CommandError("--mirror-listen needs --mirror-to URL (the candidate's service).")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(options))
    return 0


def _guardrail(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    identifier, sep, version = text.rpartition(":")
    if not sep or not identifier or not version:
        raise ValueError(f"--guardrail {text!r}: give ID:VERSION, e.g. abc123def456:3")
    return identifier, version


def _bucket_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bucket", help="the artifact bucket (default: $WEIGHTSHIFT_BUCKET)")
    parser.add_argument("--workers", type=int, default=8, help="parallel transfers (default 8)")
    parser.add_argument("--json", action="store_true", help="print JSON")


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
    parser.add_argument(
        "--catalog",
        metavar="DIR",
        help="bundle folders <name>/v<X.Y.Z>/ to read the configured bundles' manifests from "
        "(default: the project's bundles/)",
    )
    parser.add_argument(
        "--rollback-record",
        metavar="FILE",
        help="a rollback record (JSON, as the rollback function writes it) to synthesize with; "
        "offline runs never read SSM",
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
        help="run the policies/ pack over every stage of every strategy of the synthesized "
        "stack; exit 1 on a mandatory violation",
    )
    _stack_options(policy_check)
    policy_check.add_argument(
        "--configured-stage-only",
        action="store_true",
        help="check only the stage and strategy the stack config names",
    )
    policy_check.set_defaults(func=cmd_policy_check)

    bundle = commands.add_parser("bundle", help="artifact bundles: create, publish, inspect, pull")
    sub = bundle.add_subparsers(dest="bundle_command", required=True, metavar="COMMAND")
    init = sub.add_parser("init", help="write a valid skeleton bundle to fill in")
    init.add_argument("dir")
    init.add_argument("--name", required=True, help="the model name (lowercase, digits, hyphens)")
    init.set_defaults(func=cmd_bundle_init)
    check = sub.add_parser("validate", help="check a bundle folder's layout and schemas offline")
    check.add_argument("dir")
    check.set_defaults(func=cmd_bundle_validate)
    publish = sub.add_parser("publish", help="publish a bundle folder as a new immutable version")
    publish.add_argument("dir")
    publish.add_argument(
        "--version", help="X.Y.Z; must exceed the latest by at least the required bump"
    )
    publish.add_argument("--bump", choices=["auto"], help="auto: the smallest legal next version")
    publish.add_argument("--dry-run", action="store_true", help="check and report; upload nothing")
    _bucket_options(publish)
    publish.set_defaults(func=cmd_bundle_publish)
    listing = sub.add_parser("list", help="published versions of a model")
    listing.add_argument("name")
    _bucket_options(listing)
    listing.set_defaults(func=cmd_bundle_list)
    show = sub.add_parser("show", help="a published bundle's metadata and files")
    show.add_argument("id")
    _bucket_options(show)
    show.set_defaults(func=cmd_bundle_show)
    verify = sub.add_parser("verify", help="check every blob's hash and lock; exit 1 on a problem")
    verify.add_argument("id")
    _bucket_options(verify)
    verify.set_defaults(func=cmd_bundle_verify)
    pull = sub.add_parser("pull", help="download a bundle, verified, into a new folder (atomic)")
    pull.add_argument("id")
    pull.add_argument("dest")
    pull.add_argument(
        "--serving-layout",
        action="store_true",
        help="also link config, weights and tokenizer side by side in DEST/hf for the server",
    )
    _bucket_options(pull)
    pull.set_defaults(func=cmd_bundle_pull)
    compare = sub.add_parser("diff", help="changed parts between two bundles and the bump required")
    compare.add_argument("a", help="a bundle folder or a published id")
    compare.add_argument("b", help="a bundle folder or a published id")
    _bucket_options(compare)
    compare.set_defaults(func=cmd_bundle_diff)

    gateway = commands.add_parser(
        "gateway",
        help="serve a bundle in front of an OpenAI-compatible model server (the pod's sidecar)",
        description="Apply a bundle's system prompt, few-shot examples, generation, routing "
        "and safety configuration to every request, forward it to the model server, and send "
        "10-second metrics to CloudWatch. See docs/gateway.md.",
    )
    gateway.add_argument("--bundle", required=True, metavar="DIR", help="a pulled bundle folder")
    gateway.add_argument(
        "--upstream",
        required=True,
        metavar="URL",
        help="the model server, e.g. http://127.0.0.1:8080",
    )
    gateway.add_argument("--colour", required=True, choices=["blue", "green"])
    gateway.add_argument(
        "--listen", default="0.0.0.0:8000", metavar="HOST:PORT", help="default 0.0.0.0:8000"
    )
    gateway.add_argument(
        "--bundle-id",
        metavar="ID",
        help="the bundle's id, for a folder not pulled by `weightshift bundle pull`",
    )
    gateway.add_argument(
        "--keep-alive",
        type=int,
        default=620,
        metavar="SECONDS",
        help="idle connection timeout; keep it above the load balancer's (default 620)",
    )
    gateway.add_argument(
        "--guardrail",
        metavar="ID:VERSION",
        help="moderate with this Amazon Bedrock guardrail (default: the local moderator)",
    )
    gateway.add_argument(
        "--feedback-key",
        metavar="KMS_KEY",
        help="the stack's KMS HMAC key: feedback tokens verify in every gateway that shares "
        "it (default: a key of this process only)",
    )
    gateway.add_argument("--region", help="AWS region for Bedrock, CloudWatch and KMS")
    gateway.add_argument(
        "--metrics",
        choices=["auto", "cloudwatch", "off"],
        default="auto",
        help="auto: to CloudWatch when AWS credentials are present (default)",
    )
    gateway.add_argument(
        "--metrics-interval", type=float, default=10.0, metavar="SECONDS", help="default 10"
    )
    gateway.add_argument(
        "--mirror-listen",
        metavar="HOST:PORT",
        help="also answer on this address and copy each request to --mirror-to (shadow)",
    )
    gateway.add_argument("--mirror-to", metavar="URL", help="the candidate's gateway")
    gateway.add_argument(
        "--mirror-queue", type=int, default=256, help="copies waiting, at most (default 256)"
    )
    gateway.add_argument(
        "--mirror-workers", type=int, default=16, help="copies in flight (default 16)"
    )
    gateway.add_argument(
        "--mirror-timeout", type=float, default=120.0, help="seconds a copy may take (default 120)"
    )
    gateway.add_argument("--shadow-bucket", help="S3 bucket for the mirrored pairs")
    gateway.add_argument("--shadow-prefix", default="shadow", help="key prefix (default shadow)")
    gateway.add_argument(
        "--shadow-keep-text",
        action="store_true",
        help="store prompts and answers in the pairs (default: hashes only)",
    )
    gateway.add_argument(
        "--shadow-flush-seconds",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="write a batch of pairs at least this often (default 60)",
    )
    gateway.set_defaults(func=cmd_gateway)

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
    ):
        step = steps.add_parser(name, help=text)
        step.add_argument("--stack", default="prod", help="stack name (default: prod)")
        step.add_argument("--project", metavar="DIR", help="the Pulumi project folder")
        step.set_defaults(func=func)
        if name == "status":
            step.add_argument("--json", action="store_true")
        if name == "promote":
            step.add_argument(
                "--ignore-bake",
                action="store_true",
                help="promote before the stage's bake time is over (alarms still block)",
            )
        if name == "abort":
            step.add_argument("--reason", required=True, help="why: goes into the record")
    return parser


def _paragraph(message: str) -> str:
    return textwrap.fill(" ".join(message.split()), width=100, subsequent_indent="  ")


def main(argv: Sequence[str] | None = None) -> int:
    from botocore.exceptions import BotoCoreError

    from weightshift.bundle import BundleError
    from weightshift.gateway.errors import GatewayStartError
    from weightshift.rollback_record import RecordError
    from weightshift.rollout import RolloutError
    from weightshift.store import StoreError
    from weightshift.synth import SynthError
    from weightshift.versioning import VersionError

    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except BotoCoreError as error:
        message = f"AWS request failed: {error}. Check credentials, region and AWS_ENDPOINT_URL."
        print(f"weightshift {args.command}: error: {_paragraph(message)}", file=sys.stderr)
        return EXIT_USAGE
    except (
        CommandError,
        ConfigError,
        SynthError,
        BundleError,
        StoreError,
        VersionError,
        RecordError,
        RolloutError,
        GatewayStartError,
    ) as error:
        print(f"weightshift {args.command}: error: {_paragraph(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return 0
    return result


if __name__ == "__main__":
    sys.exit(main())
