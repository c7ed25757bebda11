"""``weightshift gates``: the statistics behind the gates (``weightshift/evidence``)."""

from __future__ import annotations

import argparse
import json

from weightshift.cli.common import CommandError


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
    if args.rps is not None:
        try:
            result["minimumDuration"] = round(
                minimum_duration(fixed, rps=args.rps, share=args.share), 1
            )
            result["sequentialDuration"] = round(
                minimum_duration(anytime, rps=args.rps, share=args.share), 1
            )
        except ValueError as error:
            raise CommandError(f"{error}.") from None
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
    if args.rps is not None:
        print(
            f"minimum stage duration at {args.rps:g} requests/s and a {args.share:.0%} share: "
            f"{_duration(minimum_duration(fixed, rps=args.rps, share=args.share))} (fixed), "
            f"{_duration(minimum_duration(anytime, rps=args.rps, share=args.share))} "
            "(anytime-valid)"
        )
    return 0


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.1f} h"
