"""``weightshift bundle``: create, check, publish, inspect, pull and compare bundles."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from weightshift.cli.common import EXIT_INTERRUPTED, CommandError, bucket_options

if TYPE_CHECKING:
    from weightshift.bundles.diff import Reader
    from weightshift.bundles.manifest import Manifest
    from weightshift.bundles.store import BundleStore, Published
    from weightshift.bundles.versioning import BundleRef

REF = "name/vX.Y.Z (the published version) or the full id name/vX.Y.Z-hash"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bundle`` and its commands to ``commands``."""
    bundle = commands.add_parser("bundle", help="artifact bundles: create, publish, inspect, pull")
    sub = bundle.add_subparsers(dest="bundle_command", required=True, metavar="COMMAND")
    _local_commands(sub)
    _published_commands(sub)


def _local_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``bundle init``, ``validate`` and ``publish``: the commands given a bundle folder."""
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
    bucket_options(publish)
    publish.set_defaults(func=cmd_bundle_publish)


def _published_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``bundle list``, ``show``, ``verify``, ``pull`` and ``diff``: the commands that read
    the bucket."""
    listing = sub.add_parser("list", help="published versions of a model")
    listing.add_argument("name", help="the model name, e.g. support-assistant")
    bucket_options(listing)
    listing.set_defaults(func=cmd_bundle_list)
    show = sub.add_parser("show", help="a published bundle's metadata and files")
    show.add_argument("id", help=REF)
    bucket_options(show)
    show.set_defaults(func=cmd_bundle_show)
    verify = sub.add_parser("verify", help="check every blob's hash and lock; exit 1 on a problem")
    verify.add_argument("id", help=REF)
    bucket_options(verify)
    verify.set_defaults(func=cmd_bundle_verify)
    pull = sub.add_parser(
        "pull", help="download a bundle, verified, into a new or empty folder (atomic, resumable)"
    )
    pull.add_argument("id", help=REF)
    pull.add_argument("dest")
    pull.add_argument(
        "--serving-layout",
        action="store_true",
        help="also link config, weights and tokenizer side by side in DEST/hf for the server",
    )
    bucket_options(pull)
    pull.set_defaults(func=cmd_bundle_pull)
    compare = sub.add_parser(
        "diff", help="what changed between two bundles (values in JSON parts) and the bump required"
    )
    compare.add_argument("a", help=f"a bundle folder, or {REF}")
    compare.add_argument("b", help=f"a bundle folder, or {REF}")
    bucket_options(compare)
    compare.set_defaults(func=cmd_bundle_diff)


def _store(args: argparse.Namespace) -> BundleStore:
    from weightshift.bundles.store import BundleStore

    bucket = args.bucket or os.environ.get("WEIGHTSHIFT_BUCKET")
    if not bucket:
        raise CommandError("No bucket: pass --bucket NAME or set WEIGHTSHIFT_BUCKET.")
    return BundleStore(bucket, workers=args.workers)


def _ref(text: str) -> BundleRef:
    """``text`` as a bundle reference, parsed before anything reaches for the bucket: a
    malformed id is said as such, not as a missing bucket."""
    from weightshift.bundles.versioning import BundleRef

    return BundleRef.parse(text)


def _published(store: BundleStore, ref: BundleRef) -> Published:
    """The published bundle ``ref`` names: an id, or ``name/vX.Y.Z`` (then the full id goes
    to stderr, so what was resolved is on record)."""
    published = store.resolve_ref(ref)
    if ref.digest is None:
        print(f"{ref} is {published.manifest.id}", file=sys.stderr)
    return published


def _bundle_side(text: str, args: argparse.Namespace) -> tuple[Manifest, Reader]:
    """One side of ``bundle diff``: a bundle folder, or a published bundle; and a reader of
    its files."""
    from weightshift.bundles.manifest import load_local
    from weightshift.bundles.versioning import BundleRef, Version, VersionError
    from weightshift.console import Progress

    folder = Path(text)
    if folder.is_dir():
        local = load_local(folder, progress=Progress)
        return local.manifest(Version(0, 0, 0)), lambda rel: (folder / rel).read_bytes()
    try:
        ref = BundleRef.parse(text)
    except VersionError:
        what = "is a file, not a bundle folder" if folder.exists() else "is not a folder"
        raise CommandError(
            f"{text} {what}, and not a published bundle either: give a bundle folder, "
            "name/vX.Y.Z or name/vX.Y.Z-hash."
        ) from None
    store = _store(args)
    published = _published(store, ref)
    return published.manifest, lambda rel: store.read_file(published, rel)


def cmd_bundle_init(args: argparse.Namespace) -> int:
    from weightshift.bundles.skeleton import init_bundle

    todo = init_bundle(Path(args.dir), args.name)
    print(f"Created a bundle skeleton for {args.name} in {args.dir}. Replace before publishing:")
    for item in todo:
        print(f"  - {item}")
    return 0


def cmd_bundle_validate(args: argparse.Namespace) -> int:
    from weightshift.bundles.content import unpublishable
    from weightshift.bundles.layout import validate

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
    from weightshift.bundles.manifest import load_local
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

    ref = _ref(args.id)
    published = _published(_store(args), ref)
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
    ref = _ref(args.id)
    store = _store(args)
    bundle = _published(store, ref).manifest.id
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

    ref = _ref(args.id)
    store = _store(args)
    dest = Path(args.dest)
    try:
        bundle = _published(store, ref).manifest.id
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


def cmd_bundle_diff(args: argparse.Namespace) -> int:
    from weightshift.bundles.diff import diff

    old, read_old = _bundle_side(args.a, args)
    new, read_new = _bundle_side(args.b, args)
    change = diff(old, new, read_old, read_new)
    if args.json:
        print(json.dumps({"from": args.a, "to": args.b, **change.to_json()}, indent=2))
    else:
        print(change.render())
    return 0
