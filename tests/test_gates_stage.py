"""`weightshift gates stage` against GetMetricData answers in the gateways' own format.

moto's CloudWatch keeps value/count sets but computes no percentile rank (``PR(t:)``), so
the answers here are recorded ones, built period by period as CloudWatch returns them for the
queries the gate sends (checked against those queries by botocore's Stubber, pages and all)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from tests.conftest import PROJECT
from weightshift.cli import main
from weightshift.config import load
from weightshift.evidence.sequential import Decision
from weightshift.gates.stage import decide, queries, read_counts
from weightshift.preview.synth import apply_overrides, stack_config
from weightshift.stages import Colour

NOW = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)
STAGE_2 = ["rollout.stage=2"]  # canary 5 %, bakes 4 h, needs 10,000 candidate requests


def config(*overrides: str) -> Any:
    return load(apply_overrides(stack_config(PROJECT, "prod"), [*STAGE_2, *overrides]))


def colour_periods(
    minutes: int, requests: float, *, errors: float, slow: float = 0.01, quality: float = 0.85
) -> dict[str, list[float]]:
    """One colour's values per 60-second period: requests per period and rates."""
    streamed = requests * 0.9
    return {
        "requests": [requests] * minutes,
        "errors": [requests * errors] * minutes,
        "refusals": [requests * 0.002] * minutes,
        "safety": [requests * 0.001] * minutes,
        "first_tokens": [streamed] * minutes,
        "slow_share": [slow * 100] * minutes,
        "quality_sum": [requests * 0.05 * quality] * minutes,
        "quality_count": [requests * 0.05] * minutes,
    }


def answers(
    since: datetime, colours: dict[Colour, dict[str, list[float]]], latency: float
) -> list[dict[str, Any]]:
    """GetMetricData's answer to the gate's queries, split over two pages."""
    results = []
    for query in queries("support-assistant", latency):
        colour, name = query["Id"].split("_", 1)
        values = colours[Colour(colour)][name]
        stamps = [since + timedelta(minutes=i) for i in range(len(values))]
        results.append(
            {
                "Id": query["Id"],
                "Label": query["Id"],
                "Timestamps": stamps,
                "Values": values,
                "StatusCode": "Complete",
            }
        )
    half = len(results) // 2
    return [
        {"MetricDataResults": results[:half], "NextToken": "page-2"},
        {"MetricDataResults": results[half:]},
    ]


def stubbed(since: datetime, until: datetime, pages: list[dict[str, Any]], latency: float) -> Any:
    client = boto3.client("cloudwatch", region_name="us-east-1")
    stubber = Stubber(client)
    wanted = queries("support-assistant", latency)
    stubber.add_response(
        "get_metric_data",
        pages[0],
        {"MetricDataQueries": wanted, "StartTime": since, "EndTime": until},
    )
    stubber.add_response(
        "get_metric_data",
        pages[1],
        {"MetricDataQueries": wanted, "StartTime": since, "EndTime": until, "NextToken": "page-2"},
    )
    stubber.activate()
    return client


def gate(candidate: dict[str, list[float]], stable: dict[str, list[float]], minutes: int) -> Any:
    settings = config()
    latency = settings.rollout.thresholds.latency_p99_seconds
    since = NOW - timedelta(minutes=minutes)
    pages = answers(since, {Colour.GREEN: candidate, Colour.BLUE: stable}, latency)
    counts = read_counts(
        stubbed(since, NOW, pages, latency), "support-assistant", latency, since, NOW
    )
    return decide(settings, counts, since=since, until=NOW)


def by_name(result: Any) -> dict[str, Any]:
    return {c.name: c for c in result.criteria}


def test_equal_colours_never_fail() -> None:
    """5 h at 5 %: 60 candidate and 1,140 stable requests a minute, the same rates."""
    result = gate(colour_periods(300, 60, errors=0.01), colour_periods(300, 1140, errors=0.01), 300)
    criteria = by_name(result)
    assert result.decision is not Decision.FAIL
    assert all(c.verdict.decision is not Decision.FAIL for c in result.criteria)
    assert criteria["bake"].verdict.decision is Decision.PASS
    assert criteria["requests"].verdict.decision is Decision.PASS
    assert criteria["requests"].candidate == 300 * 60
    assert criteria["errors"].candidate == pytest.approx(0.01)
    assert criteria["errors"].verdict.interval[0] < 1 < criteria["errors"].verdict.interval[1]


def test_twice_the_errors_fails_the_stage() -> None:
    result = gate(colour_periods(300, 60, errors=0.02), colour_periods(300, 1140, errors=0.01), 300)
    criteria = by_name(result)
    assert result.decision is Decision.FAIL
    assert criteria["errors"].verdict.decision is Decision.FAIL
    assert criteria["errors"].verdict.estimate == pytest.approx(2.0, rel=0.01)
    assert criteria["errors"].verdict.interval[0] > 1.2
    assert criteria["latency"].verdict.decision is not Decision.FAIL


def test_slow_first_tokens_fail_on_latency() -> None:
    result = gate(
        colour_periods(300, 60, errors=0.01, slow=0.03), colour_periods(300, 1140, errors=0.01), 300
    )
    assert by_name(result)["latency"].verdict.decision is Decision.FAIL


def test_too_few_requests_is_inconclusive_with_the_count_needed() -> None:
    """An hour in: 6 candidate requests a minute, bake not over, 360 of 10,000 requests."""
    result = gate(colour_periods(60, 6, errors=0.01), colour_periods(60, 114, errors=0.01), 60)
    criteria = by_name(result)
    assert result.decision is Decision.INCONCLUSIVE
    assert criteria["requests"].verdict.needed == 10_000 - 360
    assert criteria["bake"].note == "bakes for 180 more minutes"
    assert criteria["errors"].verdict.decision is Decision.INCONCLUSIVE


def test_the_command_reads_the_stack_file_and_cloudwatch_and_exits_on_the_decision(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No Pulumi engine: --since gives the window; boto3's client is the stubbed one."""
    minutes = 300
    since = NOW - timedelta(minutes=minutes)
    latency = config().rollout.thresholds.latency_p99_seconds
    pages = answers(
        since,
        {
            Colour.GREEN: colour_periods(minutes, 60, errors=0.02),
            Colour.BLUE: colour_periods(minutes, 1140, errors=0.01),
        },
        latency,
    )
    client = stubbed(since, NOW, pages, latency)
    monkeypatch.setattr(boto3, "client", lambda *args, **kwargs: client)
    monkeypatch.setattr("weightshift.cli.gates._now", lambda: NOW)
    project = ["--project", str(PROJECT), "--stack", "prod", "--set", "rollout.stage=2"]
    code = main(["gates", "stage", *project, "--since", since.isoformat(), "--json"])
    found = json.loads(capsys.readouterr().out)
    assert code == 1
    assert found["decision"] == "fail"
    errors = next(c for c in found["criteria"] if c["name"] == "errors")
    assert errors["decision"] == "fail"
    assert set(errors) >= {"name", "decision", "candidate", "stable", "estimate", "interval"}


def test_the_command_refuses_a_time_that_is_not_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gates", "stage", "--project", str(PROJECT), "--since", "yesterday"]) == 2
    assert "--since 'yesterday' is not a time" in capsys.readouterr().err
