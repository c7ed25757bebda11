# PYTHON_ARGCOMPLETE_OK
"""The ``weightshift`` command.

One module per command group: ``preview`` (synth, plan, policy check), ``bundle``,
``gateway``, ``rollout`` and ``gates``, each with its ``register`` (its subcommands) beside its
``cmd_*`` functions; ``common`` holds what they share. A command's own modules are imported
when it runs, so ``--help`` and completion stay instant.

Shell completion (argcomplete): ``eval "$(register-python-argcomplete weightshift)"`` in
bash or zsh, or ``activate-global-python-argcomplete`` once."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import argcomplete

from weightshift.cli import bundle, evaluate, gates, gateway, preview, rollout, shadow
from weightshift.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CommandError,
    interrupted_line,
    print_error,
)

__all__ = ["EXIT_INTERRUPTED", "EXIT_USAGE", "CommandError", "build_parser", "main"]


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
    for group in (preview, bundle, gateway, rollout, gates, evaluate, shadow):
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        # Here, not in _run: Ctrl-C while its imports load (a second or more) is caught too.
        print(interrupted_line(args.command), file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    """The command, its errors a user can act on printed as one paragraph (exit 2)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from weightshift.bundles.schemas import BundleError
    from weightshift.bundles.store import StoreError
    from weightshift.bundles.versioning import VersionError
    from weightshift.config import ConfigError
    from weightshift.gateway.errors import GatewayStartError
    from weightshift.preview.synth import SynthError
    from weightshift.rollout.errors import RolloutError
    from weightshift.rollout.record import RecordError

    try:
        result: int = args.func(args)
    except BotoCoreError as error:
        message = (
            f"AWS request failed: {str(error).rstrip('.')}. Check credentials, region and "
            "AWS_ENDPOINT_URL."
        )
        print_error(args.command, message)
        return EXIT_USAGE
    except ClientError as error:
        details = error.response.get("Error", {})
        operation = getattr(error, "operation_name", "an AWS call")
        message = (
            f"AWS refused {operation}: {details.get('Code', 'error')}: "
            f"{str(details.get('Message', '')).rstrip('.')}. Check the credentials' permissions "
            "for that call, the region and AWS_ENDPOINT_URL."
        )
        print_error(args.command, message)
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
        print_error(args.command, str(error))
        return EXIT_USAGE
    except BrokenPipeError:
        return 0
    return result
