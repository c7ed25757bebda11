"""What the command groups share: the project, catalog and record options, a file to
write, the options several commands take, exit codes, the one-paragraph error and the one
line Ctrl-C gets."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from weightshift.bundles.catalog import LocalCatalog
    from weightshift.rollout.record import RollbackRecord

EXIT_USAGE = 2

EXIT_INTERRUPTED = 130
"""128 + SIGINT, as shells report a command stopped by Ctrl-C."""


def interrupted_line(command: str) -> str:
    """What a command stopped by Ctrl-C says, its only line on standard error."""
    return f"weightshift {command}: interrupted; nothing more was done."


@contextmanager
def ends_at_ctrl_c(command: str) -> Iterator[None]:
    """Around work that writes nothing and runs Pulumi's runtime in this process (an offline
    synthesis): Ctrl-C ends the process at once, with :func:`interrupted_line` and exit 130.
    The runtime pumps its event loop re-entrantly and waits for every registration it
    started, so a KeyboardInterrupt raised anywhere inside it prints asyncio tracebacks,
    can be swallowed by a finalizer, or loses a callback and waits forever; and there is
    nothing to undo. Work that needs KeyboardInterrupt to stop its own (the forked workers of
    :func:`weightshift.preview.plan.synthesize_many`) puts Python's handler back meanwhile.
    Nothing changes where SIGINT is not Python's default (ignored, as under ``nohup``)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> NoReturn:
        # os.write, not print: the handler may run in the middle of another write to stderr.
        os.write(sys.stderr.fileno(), f"{interrupted_line(command)}\n".encode())
        os._exit(EXIT_INTERRUPTED)

    signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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


def stack_config_options(parser: argparse.ArgumentParser) -> None:
    """--stack, --set and --project: which stack file, with which overrides."""
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


def stack_options(parser: argparse.ArgumentParser) -> None:
    stack_config_options(parser)
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
