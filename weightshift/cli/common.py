"""What the command groups share: the project, catalog and record options, a file to
write, the options several commands take, exit codes and the one-paragraph error."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from weightshift.bundles.catalog import LocalCatalog
    from weightshift.rollout.record import RollbackRecord

EXIT_USAGE = 2

EXIT_INTERRUPTED = 130
"""128 + SIGINT, as shells report a command stopped by Ctrl-C."""


class CommandError(Exception):
    """A failure the user can act on: printed as one paragraph, exit status 2."""


def project_arg(args: argparse.Namespace) -> Path:
    """The Pulumi project folder: ``--project``, or found from here up."""
    from weightshift.preview.synth import find_project

    return find_project(Path(args.project) if args.project else Path.cwd())


def catalog_arg(args: argparse.Namespace, project: Path) -> LocalCatalog:
    """The bundles to synthesize with: ``--catalog``, or the project's bundles/."""
    from weightshift.preview.synth import offline_catalog

    return offline_catalog(project, Path(args.catalog) if args.catalog else None)


def record_arg(args: argparse.Namespace) -> RollbackRecord | None:
    """The ``--rollback-record`` file, read, if one was given."""
    from weightshift.rollout.record import load_file

    return load_file(Path(args.rollback_record)) if args.rollback_record else None


def writable(option: str, value: str | None) -> Path | None:
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


def print_error(command: str, message: str) -> None:
    """``weightshift COMMAND: error: MESSAGE`` on standard error, as one wrapped paragraph."""
    from weightshift.console import paragraph

    print(f"weightshift {command}: error: {paragraph(message)}", file=sys.stderr)


def bucket_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bucket", help="the artifact bucket (default: $WEIGHTSHIFT_BUCKET)")
    parser.add_argument("--workers", type=int, default=8, help="parallel transfers (default 8)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def stack_options(parser: argparse.ArgumentParser) -> None:
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
