"""``weightshift bundle``: create, check, publish, inspect, pull and compare bundles."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from weightshift.cli.common import EXIT_INTERRUPTED, CommandError, bucket_options
from weightshift.console import byte_size

if TYPE_CHECKING:
    from weightshift.bundles.diff import Reader
    from weightshift.bundles.manifest import FileEntry, Manifest
    from weightshift.bundles.store import (
        BundleStore,
        Published,
        PublishPlan,
        PublishResult,
        PullResult,
    )
    from weightshift.bundles.versioning import BundleRef

REF = "name/vX.Y.Z (the published version) or the full id name/vX.Y.Z-hash"
Command = Callable[[argparse.Namespace], int]


def _path_errors(command: Command) -> Command:
    """``command`` with a path it cannot use (a file for a folder, permission denied, a
    read-only or kernel file system, a full disk) said as one paragraph, exit status 2."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from weightshift.bundles.folders import FolderError, explain

        try:
            return command(args)
        except FolderError as error:
            raise CommandError(str(error)) from None
        except BrokenPipeError:
            raise
        except OSError as error:
            raise CommandError(explain(error)) from None

    return run


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
    pull.add_argument(
        "--reuse",
        action="store_true",
        help="DEST is this pull's own (an init container's volume): a complete copy of the "
        "bundle there is verified and kept, anything else removed and pulled again",
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


def _side(text: str) -> Path | BundleRef:
    """One side of ``bundle diff`` as given: a bundle folder, or a published bundle's ref
    (parsed here, so a malformed one is said before the bucket or any hashing)."""
    from weightshift.bundles.versioning import BundleRef, VersionError

    folder = Path(text)
    if folder.is_dir():
        return folder
    try:
        return BundleRef.parse(text)
    except VersionError:
        what = "is a file, not a bundle folder" if folder.exists() else "is not a folder"
        raise CommandError(
            f"{text} {what}, and not a published bundle either: give a bundle folder, "
            "name/vX.Y.Z or name/vX.Y.Z-hash."
        ) from None


def _bundle_side(side: Path | BundleRef, store: BundleStore | None) -> tuple[Manifest, Reader]:
    """A side of ``bundle diff`` read: its manifest and a reader of its files."""
    from weightshift.bundles.manifest import load_local
    from weightshift.bundles.versioning import Version
    from weightshift.console import Progress

    if isinstance(side, Path):
        local = load_local(side, progress=Progress)
        return local.manifest(Version(0, 0, 0)), lambda rel: (side / rel).read_bytes()
    assert store is not None
    published = _published(store, side)
    return published.manifest, lambda rel: store.read_file(published, rel)


def _bundle_folder(text: str) -> Path:
    """``text`` as a bundle folder to read; refused unless it is one."""
    root = Path(text)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "is not a folder"
        raise CommandError(
            f"{root} {what}: give a bundle's folder "
            "(`weightshift bundle init DIR --name NAME` writes a new one)."
        )
    return root


def _files(entries: Sequence[FileEntry]) -> str:
    """``12 files, 3.1 GiB``."""
    count = len(entries)
    return f"{count} file{'' if count == 1 else 's'}, {byte_size(sum(e.size for e in entries))}"


@_path_errors
def cmd_bundle_init(args: argparse.Namespace) -> int:
    from weightshift.bundles.skeleton import init_bundle

    todo = init_bundle(Path(args.dir), args.name)
    print(f"Created a bundle skeleton for {args.name} in {args.dir}. Replace before publishing:")
    for item in todo:
        print(f"  - {item}")
    return 0


@_path_errors
def cmd_bundle_validate(args: argparse.Namespace) -> int:
    from weightshift.bundles.content import unpublishable
    from weightshift.bundles.layout import validate

    root = _bundle_folder(args.dir)
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


@_path_errors
def cmd_bundle_publish(args: argparse.Namespace) -> int:
    from weightshift.bundles.layout import declared_name
    from weightshift.bundles.manifest import load_local
    from weightshift.bundles.store import Interrupted
    from weightshift.bundles.versioning import Bump, Version
    from weightshift.console import Progress

    if (args.version is None) == (args.bump is None):
        raise CommandError("Give exactly one of --version X.Y.Z or --bump major|minor|patch|auto.")
    version = Version.parse(args.version) if args.version else None
    bump = Bump[args.bump.upper()] if args.bump not in (None, "auto") else None
    auto = args.bump == "auto"
    root = _bundle_folder(args.dir)
    store = _store(args)
    name = declared_name(root)
    if version is not None and name is not None:
        store.check_unpublished(name, version)  # before hashing gigabytes to learn it
    try:
        local = load_local(root, progress=Progress)
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
        _print_plan(plan, args.json)
        return 0
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print(result.id)
    print(_publish_summary(result), file=sys.stderr)
    return 0


def _print_plan(plan: PublishPlan, as_json: bool) -> None:
    """What ``publish --dry-run`` would do."""
    report = plan.to_json()
    if as_json:
        print(json.dumps(report, indent=2))
        return
    base = f" ({report['requiredBump']} from {report['base']})" if plan.base else ""
    print(f"would publish {report['id']}{base}{', a hotfix' if plan.hotfix else ''}")
    for reason in plan.reasons:
        print(f"  {reason}")
    print(
        f"  would upload {report['blobsToUpload']} blob(s), {report['bytesToUpload']:,} "
        f"bytes; {report['blobsPresent']} already in the bucket, "
        f"{report['bytesPresent']:,} bytes"
    )


def _publish_summary(result: PublishResult) -> str:
    """What a publish uploaded and what it reused, in words: ``weights, tokenizer reused
    from NAME/v1.0.0-HASH (9 files, 8.0 MiB); uploaded 1 file, 93 bytes (system-prompt)``."""
    from weightshift.bundles.schemas import PARTS, part_of

    def parts(entries: Sequence[FileEntry]) -> str:
        named = {part.name for entry in entries if (part := part_of(entry.path)) is not None}
        return ", ".join(part.name for part in PARTS if part.name in named)

    uploaded = (
        f"uploaded {_files(result.uploaded)} ({parts(result.uploaded)})"
        if result.uploaded
        else "uploaded nothing"
    )
    if not result.reused:
        return f"uploaded {_files(result.uploaded)}"
    source = f"from {result.reused_from}" if result.reused_from else "(already in the bucket)"
    return f"{parts(result.reused)} reused {source}: {_files(result.reused)}; {uploaded}"


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


@_path_errors
def cmd_bundle_pull(args: argparse.Namespace) -> int:
    from weightshift.bundles.store import Interrupted, check_destination

    ref = _ref(args.id)
    dest = Path(args.dest)
    check_destination(dest, args.reuse)  # before the bucket is read
    store = _store(args)
    try:
        bundle = _published(store, ref).manifest.id
        result = store.pull(bundle, dest, serving_layout=args.serving_layout, reuse=args.reuse)
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
    print(_pull_summary(result))
    return 0


def _pull_summary(result: PullResult) -> str:
    """One line: what the pull did at DEST (pulled, kept or replaced) and what it cleaned."""
    manifest, dest = result.manifest, result.dest
    files = _files(manifest.files)
    if result.outcome == "kept":
        line = f"kept: verified {files} of {manifest.id} in {dest}; nothing downloaded"
    else:
        resumed = (
            f" ({result.bytes_resumed:,} bytes kept from an interrupted pull)"
            if result.bytes_resumed
            else ""
        )
        line = f"{manifest.id}: {len(manifest.files)} files, {manifest.size:,} bytes in {dest}"
        line += resumed
        if result.outcome == "replaced":
            line = f"replaced: {dest} held something else ({result.replaced}); pulled {line}"
    if result.removed_staging:
        line += "; removed what interrupted pulls left: " + ", ".join(result.removed_staging)
    return line


@_path_errors
def cmd_bundle_diff(args: argparse.Namespace) -> int:
    from weightshift.bundles.diff import diff

    sides = (_side(args.a), _side(args.b))
    store = None if all(isinstance(side, Path) for side in sides) else _store(args)
    old, read_old = _bundle_side(sides[0], store)
    new, read_new = _bundle_side(sides[1], store)
    change = diff(old, new, read_old, read_new)
    if args.json:
        print(json.dumps({"from": args.a, "to": args.b, **change.to_json()}, indent=2))
    else:
        print(change.render())
    return 0
