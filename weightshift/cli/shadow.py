"""``weightshift shadow``: the candidate's mirrored answers against what users got
(``weightshift/shadow``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from weightshift.cli.common import CommandError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``shadow`` and its subcommands to ``commands``."""
    group = commands.add_parser("shadow", help="compare the candidate's shadow answers")
    steps = group.add_subparsers(dest="shadow_command", required=True, metavar="COMMAND")
    report = steps.add_parser(
        "report",
        help="divergence, refusals, latency and losses of the candidate's shadow answers",
        description=(
            "Read the shadow pair records the gateways write (docs/shadow-records.md) and "
            "report how the candidate's answers differ from what users got: exact-match "
            "rate, refusal and safety-block deltas, the outcome table, latency and time to "
            "first token of both colours, token and length ratios, mirror losses, and on "
            "pairs that keep text, edit distance, ROUGE-L and (with an embeddings endpoint) "
            "semantic similarity. Every figure has a confidence interval and the number of "
            "pairs it stands on (docs/shadow-report.md). Malformed lines are counted and "
            "named, never fatal."
        ),
    )
    report.add_argument(
        "--records",
        metavar="SRC",
        help="s3://bucket/prefix as the gateways write, or a local folder of .jsonl.gz files "
        "(required with the embedded engine)",
    )
    report.add_argument("--model", help="the model (default: the only one in the records)")
    report.add_argument("--stable", metavar="ID", help="the stable bundle id, if several")
    report.add_argument("--candidate", metavar="ID", help="the candidate bundle id, if several")
    report.add_argument("--since", metavar="TIME", help="from this time (ISO 8601, UTC)")
    report.add_argument("--until", metavar="TIME", help="up to (not including) this time")
    report.add_argument(
        "--out", metavar="DIR", help="write report.html and report.json into this new folder"
    )
    report.add_argument("--json", action="store_true", help="print the report's JSON")
    report.add_argument(
        "--engine",
        choices=("embedded", "athena"),
        default="embedded",
        help="embedded: DuckDB in this process (default); athena: the same queries in Athena",
    )
    report.add_argument("--athena-database", metavar="DB", help="Athena database of the table")
    report.add_argument(
        "--athena-table", default="shadow_pairs", metavar="TABLE", help="default shadow_pairs"
    )
    report.add_argument("--athena-workgroup", default="primary", metavar="WG")
    report.add_argument(
        "--athena-output",
        metavar="S3",
        help="s3:// location for query results, unless the workgroup sets one",
    )
    report.add_argument(
        "--sample",
        type=int,
        default=500,
        metavar="N",
        help="text-bearing pairs the text measures read (default 500)",
    )
    report.add_argument(
        "--divergent", type=int, default=10, metavar="N", help="divergent pairs shown (default 10)"
    )
    report.add_argument(
        "--confidence", type=float, default=0.95, help="of every interval (default 0.95)"
    )
    embeddings = report.add_mutually_exclusive_group()
    embeddings.add_argument(
        "--embeddings-url",
        metavar="URL",
        help="an OpenAI-compatible /v1/embeddings endpoint for semantic similarity "
        "(key: $WEIGHTSHIFT_EMBEDDINGS_API_KEY)",
    )
    embeddings.add_argument(
        "--embeddings-bedrock", metavar="MODEL", help="a Bedrock embedding model id instead"
    )
    report.add_argument(
        "--embeddings-model",
        default="text-embedding-3-small",
        metavar="NAME",
        help="the model name sent to --embeddings-url",
    )
    judging = report.add_mutually_exclusive_group()
    judging.add_argument(
        "--judge-url",
        metavar="URL",
        help="judge a sample pairwise with eval run's judge at this OpenAI-compatible base URL "
        "(with --judge-model; key: $WEIGHTSHIFT_JUDGE_API_KEY, else $OPENAI_API_KEY)",
    )
    judging.add_argument(
        "--judge-bedrock", metavar="MODEL_ID", help="judge with this Amazon Bedrock model instead"
    )
    report.add_argument("--judge-model", metavar="MODEL", help="the judge model (--judge-url)")
    report.add_argument(
        "--mirror-metrics",
        action="store_true",
        help="also read the gateways' MirrorSent/MirrorDropped from CloudWatch (copies dropped "
        "before they were sent are in no record)",
    )
    report.add_argument(
        "--publish",
        action="store_true",
        help="also put the summary figures to CloudWatch (namespace weightshift, dimensions "
        "Model and Version)",
    )
    report.add_argument(
        "--memory-limit", default="512MB", help="the embedded engine's memory (default 512MB)"
    )
    report.set_defaults(func=cmd_shadow_report)


def _progress() -> Callable[[str, int], Callable[[int], None]]:
    from weightshift.console import Progress

    def start(label: str, total: int) -> Callable[[int], None]:
        bar = Progress(label, total)
        done = [0]

        def step(amount: int) -> None:
            bar.add(amount)
            done[0] += amount
            if done[0] >= total:
                bar.close()

        return step

    return start


def cmd_shadow_report(args: argparse.Namespace) -> int:
    from weightshift.shadow.athena import AthenaError
    from weightshift.shadow.page import OutputError, check_out, render, write
    from weightshift.shadow.pipeline import Options, report_from
    from weightshift.shadow.queries import QueryError
    from weightshift.shadow.report import ShadowReportError, parse_time
    from weightshift.shadow.source import SourceError

    out = Path(args.out) if args.out else None
    try:
        if out is not None:
            check_out(out)
        options = Options(
            records=args.records,
            model=args.model,
            stable=args.stable,
            candidate=args.candidate,
            since=parse_time("--since", args.since) if args.since else None,
            until=parse_time("--until", args.until) if args.until else None,
            confidence=args.confidence,
            sample=args.sample,
            divergent=args.divergent,
            memory_limit=args.memory_limit,
        )
        if not 0.5 <= args.confidence < 1:
            raise CommandError(f"--confidence {args.confidence}: give a level in [0.5, 1)")
        athena = _athena(args) if args.engine == "athena" else None
        report = report_from(
            options,
            athena=athena,
            embedder=_embedder(args),
            judge=_judge(args),
            mirror_metrics=_mirror_metrics() if args.mirror_metrics else None,
            progress=_progress(),
        )
        html = render(report) if out is not None else None
        if out is not None:
            write(report, out, html=html)
    except (
        ShadowReportError,
        SourceError,
        OutputError,
        QueryError,
        AthenaError,
        ValueError,
    ) as error:
        raise CommandError(str(error)) from None
    if args.publish:
        _publish(report)
    if args.json:
        print(report.model_dump_json(by_alias=True, indent=2))
    else:
        _summary(report)
    if out is not None:
        print(f"wrote {out / 'report.html'} and {out / 'report.json'}", file=sys.stderr)
    return 0


def _athena(args: argparse.Namespace) -> Any:
    import boto3

    from weightshift.shadow.athena import AthenaEngine

    if not args.athena_database:
        raise CommandError("--engine athena needs --athena-database (where the table is)")
    return AthenaEngine(
        boto3.client("athena"),
        database=args.athena_database,
        table=args.athena_table,
        workgroup=args.athena_workgroup,
        output=args.athena_output,
    )


def _judge(args: argparse.Namespace) -> Any:
    """eval run's pairwise judge (weightshift.evaluation.judge), when asked for."""
    if not args.judge_url and not args.judge_bedrock:
        if args.judge_model:
            raise CommandError("--judge-model goes with --judge-url: give the endpoint too.")
        return None
    from weightshift.evaluation.judge import BedrockJudge, OpenAIJudge, public_url
    from weightshift.evaluation.transport import Retry
    from weightshift.shadow.judging import EvaluationJudge

    if args.judge_bedrock:
        import boto3

        client = boto3.client("bedrock-runtime")
        region = client.meta.region_name
        model = args.judge_bedrock
        return EvaluationJudge(
            lambda _session: BedrockJudge(client, model, region), f"{model} on Bedrock"
        )
    if not args.judge_model:
        raise CommandError("--judge-url needs --judge-model: the model the endpoint serves.")
    url = args.judge_url
    if not url.startswith(("http://", "https://")) or "@" in url.split("//", 1)[1].split("/")[0]:
        raise CommandError(
            "--judge-url: give an http(s) base URL without credentials (the key goes in "
            "$WEIGHTSHIFT_JUDGE_API_KEY)."
        )
    key = os.environ.get("WEIGHTSHIFT_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    model = args.judge_model
    return EvaluationJudge(
        lambda session: OpenAIJudge(session, url, model, api_key=key, retry=Retry()),
        f"{model} at {public_url(url)}",
    )


def _mirror_metrics() -> Any:
    import boto3

    from weightshift.shadow.mirror_metrics import mirror_counts

    client = boto3.client("cloudwatch")
    return lambda model, version, since, until: mirror_counts(client, model, version, since, until)


def _embedder(args: argparse.Namespace) -> Any:
    from weightshift.shadow.text import BedrockEmbeddings, OpenAIEmbeddings

    if args.embeddings_url:
        return OpenAIEmbeddings(
            args.embeddings_url,
            args.embeddings_model,
            api_key=os.environ.get("WEIGHTSHIFT_EMBEDDINGS_API_KEY"),
        )
    if args.embeddings_bedrock:
        return BedrockEmbeddings(args.embeddings_bedrock)
    return None


def _publish(report: Any) -> None:
    from datetime import UTC, datetime

    import boto3
    from botocore.exceptions import ClientError

    from weightshift.shadow.publish import PublishError, publish

    try:
        sent = publish(report, boto3.client("cloudwatch"), datetime.now(UTC))
    except PublishError as error:
        raise CommandError(str(error)) from None
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "error")
        raise CommandError(
            f"--publish: CloudWatch refused the metrics ({code}); check cloudwatch:PutMetricData"
        ) from None
    print(f"published {sent} data points to CloudWatch (namespace weightshift)", file=sys.stderr)


def _summary(report: Any) -> None:
    from weightshift.console import table
    from weightshift.shadow.report import Figure

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4g}"

    rows = []
    for name, figure in report.figures.items():
        if isinstance(figure, Figure):
            rows.append(
                [
                    name,
                    number(figure.value),
                    f"[{number(figure.low)}, {number(figure.high)}]",
                    f"{figure.pairs:,}",
                    figure.method,
                ]
            )
        else:
            rows.append([name, "-", "", "", figure.skipped])
    for name, figure in report.mirror.items():
        if isinstance(figure, Figure):
            rows.append(
                [
                    f"mirror {name}",
                    f"{figure.count:,}",
                    f"[{number(figure.low)}, {number(figure.high)}]",
                    f"{figure.pairs:,}",
                    figure.method,
                ]
            )
        else:
            rows.append([f"mirror {name}", "-", "", "", figure.skipped])
    comparison = report.comparison
    table(
        ["figure", "value", "interval", "pairs", "method"],
        rows,
        title=(
            f"{comparison.model}: {comparison.candidate_version or 'unknown'} against "
            f"{comparison.stable_version}, {report.records.pairs:,} pairs, "
            f"{report.records.malformed:,} malformed lines"
        ),
    )
