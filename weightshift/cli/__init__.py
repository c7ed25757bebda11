# PYTHON_ARGCOMPLETE_OK
"""The ``weightshift`` command.

Shell completion (argcomplete): ``eval "$(register-python-argcomplete weightshift)"`` in
bash or zsh, or ``activate-global-python-argcomplete`` once."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import argcomplete

from weightshift.config import ConfigError

if TYPE_CHECKING:
    from weightshift.bundles.bundle import Manifest, Reader
    from weightshift.bundles.catalog import LocalCatalog
    from weightshift.bundles.store import BundleStore, Published
    from weightshift.rollout.commands import Rollout
    from weightshift.rollout.record import RollbackRecord

EXIT_USAGE = 2


class CommandError(Exception):
    """A failure the user can act on: printed as one paragraph, exit status 2."""


def _project(args: argparse.Namespace) -> Path:
    from weightshift.preview.synth import find_project

    return find_project(Path(args.project) if args.project else Path.cwd())


def _catalog(args: argparse.Namespace, project: Path) -> LocalCatalog:
    from weightshift.preview.synth import offline_catalog

    return offline_catalog(project, Path(args.catalog) if args.catalog else None)


def _record(args: argparse.Namespace) -> RollbackRecord | None:
    from weightshift.rollout.record import load_file

    return load_file(Path(args.rollback_record)) if args.rollback_record else None


def _writable(option: str, value: str | None) -> Path | None:
    """``value`` as a file to write, checked before any work: its folder must exist."""
    if not value:
        return None
    path = Path(value)
    if path.is_dir():
        raise CommandError(f"{option} {value} is a folder: give a file name inside it.")
    if not path.parent.is_dir():
        raise CommandError(
            f"{option} {value}: the folder {path.parent} does not exist. Create it first "
            f"(mkdir -p {path.parent}), or write somewhere else."
        )
    return path


def cmd_synth(args: argparse.Namespace) -> int:
    from weightshift.preview.synth import synthesize_stack

    out = _writable("--out", args.out)
    project = _project(args)
    graph = synthesize_stack(project, args.stack, args.set, _catalog(args, project), _record(args))
    text = json.dumps(graph.to_json(), indent=2, sort_keys=False)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from weightshift.preview.plan import build_plan, render, render_markdown

    chart = _writable("--chart", args.chart)
    if chart is not None:
        from weightshift.preview.chart import check_suffix

        try:
            check_suffix(chart)
        except ValueError as error:
            raise CommandError(f"--chart {args.chart}: {error}") from None
    project = _project(args)
    plan = build_plan(project, args.stack, args.set, _catalog(args, project), _record(args))
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
    from weightshift.preview.policy import StageCheck, check, check_every_stage, load_policies
    from weightshift.preview.synth import synthesize_stack

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
    from weightshift.bundles.store import BundleStore

    bucket = args.bucket or os.environ.get("WEIGHTSHIFT_BUCKET")
    if not bucket:
        raise CommandError("No bucket: pass --bucket NAME or set WEIGHTSHIFT_BUCKET.")
    return BundleStore(bucket, workers=args.workers)


def _published(store: BundleStore, text: str) -> Published:
    """The published bundle ``text`` names: an id, or ``name/vX.Y.Z`` (then the full id goes
    to stderr, so what was resolved is on record)."""
    from weightshift.bundles.versioning import BundleRef

    ref = BundleRef.parse(text)
    published = store.resolve_ref(ref)
    if ref.digest is None:
        print(f"{ref} is {published.manifest.id}", file=sys.stderr)
    return published


def _bundle_side(text: str, args: argparse.Namespace) -> tuple[Manifest, Reader]:
    """One side of ``bundle diff``: a bundle folder, or a published bundle; and a reader of
    its files."""
    from weightshift.bundles.bundle import load_local
    from weightshift.bundles.versioning import BundleRef, Version, VersionError
    from weightshift.console import Progress

    folder = Path(text)
    if folder.is_dir():
        local = load_local(folder, progress=Progress)
        return local.manifest(Version(0, 0, 0)), lambda rel: (folder / rel).read_bytes()
    try:
        BundleRef.parse(text)
    except VersionError:
        what = "is a file, not a bundle folder" if folder.exists() else "is not a folder"
        raise CommandError(
            f"{text} {what}, and not a published bundle either: give a bundle folder, "
            "name/vX.Y.Z or name/vX.Y.Z-hash."
        ) from None
    store = _store(args)
    published = _published(store, text)
    return published.manifest, lambda rel: store.read_file(published, rel)


def cmd_bundle_init(args: argparse.Namespace) -> int:
    from weightshift.bundles.bundle import init_bundle

    todo = init_bundle(Path(args.dir), args.name)
    print(f"Created a bundle skeleton for {args.name} in {args.dir}. Replace before publishing:")
    for item in todo:
        print(f"  - {item}")
    return 0


def cmd_bundle_validate(args: argparse.Namespace) -> int:
    from weightshift.bundles.bundle import unpublishable, validate

    root = Path(args.dir)
    if not root.is_dir():
        raise CommandError(
            f"{root} is not a folder: give a bundle's folder "
            "(`weightshift bundle init DIR --name NAME` writes a new one)."
        )
    files, metadata, invalid = validate(root)
    problems = [("invalid", p) for p in invalid] + [
        ("not publishable", p) for p in unpublishable(root, files, metadata)
    ]
    size = sum((root / rel).stat().st_size for rel in files)
    if args.json:
        document = {
            "dir": str(root),
            "name": metadata.name if metadata else None,
            "files": len(files),
            "bytes": size,
            "valid": not invalid,
            "publishable": not problems,
            "problems": [{"kind": kind, "problem": problem} for kind, problem in problems],
        }
        print(json.dumps(document, indent=2))
        return 1 if problems else 0
    for kind, problem in problems:
        print(f"{kind}: {problem}")
    if invalid:
        print(f"{root}: {len(problems)} problem(s); nothing can be published until they are fixed")
    else:
        name = metadata.name if metadata else "?"
        ready = (
            "ready to publish"
            if not problems
            else f"but not publishable: replace the {len(problems)} placeholder(s) above"
        )
        print(f"{root}: valid bundle of {name}, {len(files)} files, {size:,} bytes, {ready}")
    return 1 if problems else 0


def cmd_bundle_publish(args: argparse.Namespace) -> int:
    from weightshift.bundles.bundle import load_local
    from weightshift.bundles.store import Interrupted
    from weightshift.bundles.versioning import Bump, Version
    from weightshift.console import Progress

    if (args.version is None) == (args.bump is None):
        raise CommandError("Give exactly one of --version X.Y.Z or --bump major|minor|patch|auto.")
    version = Version.parse(args.version) if args.version else None
    bump = Bump[args.bump.upper()] if args.bump not in (None, "auto") else None
    auto = args.bump == "auto"
    store = _store(args)
    try:
        local = load_local(Path(args.dir), progress=Progress)
        if args.dry_run:
            plan = store.plan_publish(
                local, version, auto, bump=bump, allow_placeholders=args.allow_placeholders
            )
        else:
            result = store.publish(
                local, version, auto, bump=bump, allow_placeholders=args.allow_placeholders
            )
    except Interrupted as stopped:
        print(stopped, file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(
            "interrupted before uploading: nothing was written to the bucket. "
            "Run the same command again.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if args.dry_run:
        report = plan.to_json()
        if args.json:
            print(json.dumps(report, indent=2))
            return 0
        base = f" ({report['requiredBump']} from {report['base']})" if plan.base else ""
        print(f"would publish {report['id']}{base}{', a hotfix' if plan.hotfix else ''}")
        for reason in plan.reasons:
            print(f"  {reason}")
        print(
            f"  would upload {report['blobsToUpload']} blob(s), {report['bytesToUpload']:,} "
            f"bytes; {report['blobsPresent']} already in the bucket, "
            f"{report['bytesPresent']:,} bytes"
        )
        return 0
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print(result.id)
    reused = "; the rest was already in the bucket" if result.blobs_skipped else ""
    print(
        f"uploaded {result.blobs_uploaded} of {result.blobs_uploaded + result.blobs_skipped} "
        f"blobs, {result.bytes_uploaded:,} of {result.bytes_total:,} bytes{reused}",
        file=sys.stderr,
    )
    return 0


def cmd_bundle_list(args: argparse.Namespace) -> int:
    from weightshift.bundles.store import iter_published
    from weightshift.bundles.versioning import is_model_name
    from weightshift.console import table

    if not is_model_name(args.name):
        raise CommandError(
            f"{args.name!r} is not a model name: lowercase letters, digits and inner hyphens, "
            "at most 40 characters; the part of a bundle id before /v, e.g. support-assistant."
        )
    store = _store(args)
    found = list(iter_published(store, args.name))
    if args.json:
        rows = [
            {
                "id": str(p.manifest.id),
                "publishedAt": p.published_at,
                "bytes": p.manifest.size,
                "files": len(p.manifest.files),
            }
            for p in found
        ]
        print(json.dumps(rows, indent=2))
    elif not found:
        print(f"no published versions of {args.name} in bucket {store.bucket}", file=sys.stderr)
    else:
        table(
            ["id", "published", "files", "bytes"],
            [
                [
                    str(p.manifest.id),
                    p.published_at,
                    f"{len(p.manifest.files):,}",
                    f"{p.manifest.size:,}",
                ]
                for p in found
            ],
            no_wrap=["id", "published"],
        )
    return 0


def cmd_bundle_show(args: argparse.Namespace) -> int:
    from weightshift.console import table

    published = _published(_store(args), args.id)
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
    print(
        f"{manifest.id}  published {published.published_at}  "
        f"{len(manifest.files)} files, {manifest.size:,} bytes"
    )
    shown = {
        **{key: manifest.metadata.get(key) for key in ("base_model", "architecture")},
        **{key: manifest.metadata.get(key) for key in ("parent_version", "source_commit")},
        "serving_image": (manifest.metadata.get("dependencies") or {}).get("serving_image"),
    }
    for key, value in shown.items():
        print(f"  {key}: {value or 'not recorded'}")
    table(
        ["sha256", "bytes", "path"],
        [[e.sha256[:12], f"{e.size:,}", e.path] for e in manifest.files],
        no_wrap=["sha256", "path"],
    )
    return 0


def cmd_bundle_verify(args: argparse.Namespace) -> int:
    store = _store(args)
    bundle = _published(store, args.id).manifest.id
    problems = store.verify(bundle)
    if args.json:
        document = {"id": str(bundle), "ok": not problems, "problems": problems}
        print(json.dumps(document, indent=2))
        return 1 if problems else 0
    for problem in problems:
        print(f"FAIL {problem}")
    print(f"{bundle}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def cmd_bundle_pull(args: argparse.Namespace) -> int:
    from weightshift.bundles.store import Interrupted

    store = _store(args)
    dest = Path(args.dest)
    try:
        bundle = _published(store, args.id).manifest.id
        result = store.pull(bundle, dest, serving_layout=args.serving_layout)
    except Interrupted as stopped:
        print(stopped, file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(
            f"interrupted before downloading: nothing was written to {dest}. "
            "Run the same command again.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    resumed = (
        f" ({result.bytes_resumed:,} bytes kept from an interrupted pull)"
        if result.bytes_resumed
        else ""
    )
    manifest = result.manifest
    print(f"{manifest.id}: {len(manifest.files)} files, {manifest.size:,} bytes in {dest}{resumed}")
    return 0


def _rollout(args: argparse.Namespace) -> Rollout:
    from weightshift.rollout.commands import AutomationBackend, AwsView, Rollout

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


def cmd_rollout_history(args: argparse.Namespace) -> int:
    from weightshift.console import table
    from weightshift.rollout.commands import AutomationBackend, AwsView
    from weightshift.rollout.history import COLUMNS, rows, stack_history, to_json

    events = stack_history(args.stack, AutomationBackend(_project(args), args.stack), AwsView())
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


def cmd_bundle_diff(args: argparse.Namespace) -> int:
    from weightshift.bundles.bundle import diff

    old, read_old = _bundle_side(args.a, args)
    new, read_new = _bundle_side(args.b, args)
    change = diff(old, new, read_old, read_new)
    if args.json:
        print(json.dumps({"from": args.a, "to": args.b, **change.to_json()}, indent=2))
    else:
        print(change.render())
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    import logging

    from weightshift.gateway.server import Options, parse_address, run

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
    run(options)
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("weightshift")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightshift",
        description="Ship new versions of a large language model to production on AWS, safely.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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
    _stack_options(policy_check)
    policy_check.add_argument(
        "--configured-stage-only",
        action="store_true",
        help="check only the stage and strategy the stack config names",
    )
    policy_check.set_defaults(func=cmd_policy_check)

    bundle = commands.add_parser("bundle", help="artifact bundles: create, publish, inspect, pull")
    sub = bundle.add_subparsers(dest="bundle_command", required=True, metavar="COMMAND")
    ref = "name/vX.Y.Z (the published version) or the full id name/vX.Y.Z-hash"
    init = sub.add_parser("init", help="write a valid skeleton bundle to fill in")
    init.add_argument("dir")
    init.add_argument("--name", required=True, help="the model name (lowercase, digits, hyphens)")
    init.set_defaults(func=cmd_bundle_init)
    check = sub.add_parser(
        "validate",
        help="check a bundle folder offline: layout, schemas, weights by content, placeholders; "
        "exit 1 on a problem",
    )
    check.add_argument("dir")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(func=cmd_bundle_validate)
    publish = sub.add_parser("publish", help="publish a bundle folder as a new immutable version")
    publish.add_argument("dir")
    publish.add_argument(
        "--version",
        help="X.Y.Z: above the latest by at least the required bump, or a hotfix: a PATCH above "
        "the newest X.Y.z of an older line, for a change that needs no more than a PATCH",
    )
    publish.add_argument(
        "--bump",
        choices=["major", "minor", "patch", "auto"],
        help="the latest version bumped by this much (refused if the change needs more); "
        "auto: by what the change needs",
    )
    publish.add_argument("--dry-run", action="store_true", help="check and report; upload nothing")
    publish.add_argument(
        "--allow-placeholders",
        action="store_true",
        help="publish even with `bundle init`'s placeholder weights or image digest: for demos "
        "and tests only, such a bundle cannot serve",
    )
    _bucket_options(publish)
    publish.set_defaults(func=cmd_bundle_publish)
    listing = sub.add_parser("list", help="published versions of a model")
    listing.add_argument("name", help="the model name, e.g. support-assistant")
    _bucket_options(listing)
    listing.set_defaults(func=cmd_bundle_list)
    show = sub.add_parser("show", help="a published bundle's metadata and files")
    show.add_argument("id", help=ref)
    _bucket_options(show)
    show.set_defaults(func=cmd_bundle_show)
    verify = sub.add_parser("verify", help="check every blob's hash and lock; exit 1 on a problem")
    verify.add_argument("id", help=ref)
    _bucket_options(verify)
    verify.set_defaults(func=cmd_bundle_verify)
    pull = sub.add_parser(
        "pull", help="download a bundle, verified, into a new or empty folder (atomic, resumable)"
    )
    pull.add_argument("id", help=ref)
    pull.add_argument("dest")
    pull.add_argument(
        "--serving-layout",
        action="store_true",
        help="also link config, weights and tokenizer side by side in DEST/hf for the server",
    )
    _bucket_options(pull)
    pull.set_defaults(func=cmd_bundle_pull)
    compare = sub.add_parser(
        "diff", help="what changed between two bundles (values in JSON parts) and the bump required"
    )
    compare.add_argument("a", help=f"a bundle folder, or {ref}")
    compare.add_argument("b", help=f"a bundle folder, or {ref}")
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
    return parser


def _paragraph(message: str) -> str:
    from weightshift.console import paragraph

    return paragraph(message)


EXIT_INTERRUPTED = 130
"""128 + SIGINT, as shells report a command stopped by Ctrl-C."""


def main(argv: Sequence[str] | None = None) -> int:
    from botocore.exceptions import BotoCoreError

    from weightshift.bundles.bundle import BundleError
    from weightshift.bundles.store import StoreError
    from weightshift.bundles.versioning import VersionError
    from weightshift.gateway.errors import GatewayStartError
    from weightshift.preview.synth import SynthError
    from weightshift.rollout.commands import RolloutError
    from weightshift.rollout.record import RecordError

    parser = build_parser()
    argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        print(f"weightshift {args.command}: interrupted; nothing more was done.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BotoCoreError as error:
        message = (
            f"AWS request failed: {str(error).rstrip('.')}. Check credentials, region and "
            "AWS_ENDPOINT_URL."
        )
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
