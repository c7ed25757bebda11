"""``weightshift gateway``: the pod's sidecar in front of the model server."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from weightshift.cli.common import CommandError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``gateway`` to ``commands``."""
    gateway = commands.add_parser(
        "gateway",
        help="serve a bundle in front of an OpenAI-compatible model server (the pod's sidecar)",
        description="Apply a bundle's system prompt, few-shot examples, generation, routing "
        "and safety configuration to every request, forward it to the model server, and send "
        "10-second metrics to CloudWatch. See docs/gateway.md.",
    )
    _serving_options(gateway)
    _mirror_options(gateway)
    gateway.set_defaults(func=cmd_gateway)


def _serving_options(gateway: argparse.ArgumentParser) -> None:
    """The bundle, the model server, the listener, moderation, feedback and metrics."""
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
        "--max-body-bytes",
        type=int,
        metavar="BYTES",
        help="a larger request body is answered 413 before it is parsed (default: from the "
        "bundle's max_input_tokens, at most 4 MiB)",
    )
    gateway.add_argument(
        "--prometheus-listen",
        metavar="HOST:PORT",
        help="also expose the metrics for Prometheus at http://HOST:PORT/metrics (default off)",
    )
    gateway.add_argument(
        "--no-request-log",
        dest="request_log",
        action="store_false",
        help="do not write one JSON line per request to stderr",
    )


def _mirror_options(gateway: argparse.ArgumentParser) -> None:
    """Shadow traffic: the mirror listener, its copies to the candidate, the pairs in S3."""
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
        help="the same as --shadow-text-sample 1 (kept for existing command lines)",
    )
    gateway.add_argument(
        "--shadow-text-sample",
        type=float,
        metavar="F",
        help="the share (0 to 1) of pairs that keep prompts and answers, chosen by a hash of "
        "the request id; stored under --shadow-text-prefix (default 0: hashes only)",
    )
    gateway.add_argument(
        "--shadow-text-prefix",
        metavar="PREFIX",
        help="key prefix of the pairs with text (default: --shadow-prefix with -text)",
    )
    gateway.add_argument(
        "--shadow-text-kms-key",
        metavar="ARN",
        help="KMS key the pairs with text are encrypted with (SSE-KMS); default the bucket's",
    )
    gateway.add_argument(
        "--shadow-flush-seconds",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="write a batch of pairs at least this often (default 60)",
    )


def cmd_gateway(args: argparse.Namespace) -> int:
    import logging

    from weightshift.gateway.server import Options, parse_address, parse_upstream, run

    try:
        options = Options(
            bundle=Path(args.bundle),
            upstream=parse_upstream(args.upstream),
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
            shadow_text_sample=_text_sample(args),
            shadow_text_prefix=args.shadow_text_prefix,
            shadow_text_kms_key=args.shadow_text_kms_key,
            shadow_flush_seconds=args.shadow_flush_seconds,
            max_body_bytes=_positive(args.max_body_bytes, "--max-body-bytes")
            if args.max_body_bytes is not None
            else None,
            prometheus_listen=parse_address(args.prometheus_listen, "--prometheus-listen")
            if args.prometheus_listen
            else None,
            request_log=args.request_log,
        )
    except ValueError as error:
        raise CommandError(str(error)) from None
    if options.mirror_listen and not options.mirror_to:
        raise CommandError("--mirror-listen needs --mirror-to URL (the candidate's service).")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run(options)
    return 0


def _text_sample(args: argparse.Namespace) -> float | None:
    value: float | None = args.shadow_text_sample
    if value is None:
        return None
    if args.shadow_keep_text:
        raise ValueError(
            "--shadow-keep-text is --shadow-text-sample 1: give --shadow-text-sample alone"
        )
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise ValueError(f"--shadow-text-sample {value}: give a share from 0 to 1")
    return value


def _positive(value: int, option: str) -> int:
    if value <= 0:
        raise ValueError(f"{option} {value}: give a positive number")
    return value


def _guardrail(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    identifier, sep, version = text.rpartition(":")
    if not sep or not identifier or not version:
        raise ValueError(f"--guardrail {text!r}: give ID:VERSION, e.g. abc123def456:3")
    return identifier, version
