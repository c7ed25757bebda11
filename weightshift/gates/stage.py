"""The stage gate: may the rollout leave its stage? Decided on the candidate's evidence
against the stable colour's, over the same window, from the gateways' own metrics.

What the gateways send (``weightshift/gateway/metrics.py``): every 10 s, by ``Model`` and
``Colour``, the counters ``Requests``, ``Errors``, ``Refusals``, ``OutputBlocks``, the
distribution ``TimeToFirstToken`` (value/count sets, so ``PR(threshold:)`` is the exact share
of first tokens slower than the threshold) and ``QualityScore`` (feedback, 0 to 1). One
``GetMetricData`` call (paged) reads the window at 60-second periods for both colours.

Criteria, each pass, fail or inconclusive (``weightshift.evidence.sequential``):
- ``bake``: the stage's bake time has passed since it started;
- ``requests``: the candidate has served the stage's minimum requests;
- ``errors``, ``refusals``, ``safety`` (output blocks), ``latency`` (first tokens slower than
  ``rollout.thresholds.latencyP99Seconds``): the candidate's rate per request against the
  stable colour's, conditional on the requests each served, failing beyond ``1 + margin``
  times the stable rate;
- ``quality``: the mean feedback score, failing when lower by more than the margin; not
  applicable while neither colour has scores.
The gate fails when any criterion fails, passes when every one passes (or does not apply),
and is inconclusive otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from weightshift.config import StackConfig
from weightshift.evidence.sequential import Decision, Verdict, compare_means, compare_rates
from weightshift.stages import Colour, stage_of, weights_for

NAMESPACE = "weightshift"
PERIOD_SECONDS = 60
RATES = ("errors", "refusals", "safety")
"""Criteria that count a counter per request: Errors, Refusals and OutputBlocks (`queries`)."""


@dataclass(frozen=True)
class Margins:
    """How much worse the candidate may be before a criterion fails."""

    alpha: float = 0.05
    """The probability of failing a candidate within its margins (at every look)."""
    rate: float = 0.2
    """Errors, refusals and safety blocks: relative increase tolerated (0.2: 20 % more)."""
    latency: float = 0.2
    """First tokens over the latency threshold: relative increase tolerated."""
    quality: float = 0.02
    """Mean feedback score: absolute drop tolerated."""


@dataclass
class Counts:
    """One colour's evidence over the window."""

    requests: float = 0.0
    errors: float = 0.0
    refusals: float = 0.0
    safety: float = 0.0
    first_tokens: float = 0.0
    slow: float = 0.0
    quality_sum: float = 0.0
    quality_count: float = 0.0


@dataclass(frozen=True)
class Criterion:
    name: str
    verdict: Verdict
    candidate: float | None = None
    stable: float | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        lower, upper = self.verdict.interval
        return {
            "name": self.name,
            "decision": self.verdict.decision.value,
            "candidate": self.candidate,
            "stable": self.stable,
            "estimate": self.verdict.estimate,
            "interval": [_finite(lower), _finite(upper)],
            "needed": self.verdict.needed,
            "note": self.note,
        }


@dataclass
class StageGate:
    stage: int
    since: datetime
    until: datetime
    criteria: list[Criterion] = field(default_factory=list)

    @property
    def decision(self) -> Decision:
        decisions = {c.verdict.decision for c in self.criteria}
        if Decision.FAIL in decisions:
            return Decision.FAIL
        if Decision.INCONCLUSIVE in decisions:
            return Decision.INCONCLUSIVE
        return Decision.PASS

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "decision": self.decision.value,
            "criteria": [c.to_json() for c in self.criteria],
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def queries(model: str, latency_threshold: float) -> list[dict[str, Any]]:
    """The ``GetMetricData`` queries of both colours (ids ``<colour>_<field>``)."""
    wanted = {
        "requests": ("Requests", "Sum"),
        "errors": ("Errors", "Sum"),
        "refusals": ("Refusals", "Sum"),
        "safety": ("OutputBlocks", "Sum"),
        "first_tokens": ("TimeToFirstToken", "SampleCount"),
        "slow_share": ("TimeToFirstToken", f"PR({latency_threshold:g}:)"),
        "quality_sum": ("QualityScore", "Sum"),
        "quality_count": ("QualityScore", "SampleCount"),
    }
    return [
        {
            "Id": f"{colour.value}_{name}",
            "MetricStat": {
                "Metric": {
                    "Namespace": NAMESPACE,
                    "MetricName": metric,
                    "Dimensions": [
                        {"Name": "Model", "Value": model},
                        {"Name": "Colour", "Value": colour.value},
                    ],
                },
                "Period": PERIOD_SECONDS,
                "Stat": stat,
            },
            "ReturnData": True,
        }
        for colour in Colour
        for name, (metric, stat) in wanted.items()
    ]


def read_counts(
    cloudwatch: Any, model: str, latency_threshold: float, since: datetime, until: datetime
) -> dict[Colour, Counts]:
    """Both colours' counts over [since, until), period by period, paged."""
    found: dict[str, dict[datetime, float]] = {}
    for result in _results(cloudwatch, queries(model, latency_threshold), since, until):
        values = found.setdefault(result["Id"], {})
        for stamp, value in zip(
            result.get("Timestamps", []), result.get("Values", []), strict=True
        ):
            values[stamp] = float(value)
    counts = {colour: Counts() for colour in Colour}
    for colour, tally in counts.items():
        for name in ("requests", "errors", "refusals", "safety", "first_tokens"):
            setattr(tally, name, sum(found.get(f"{colour.value}_{name}", {}).values()))
        tally.quality_sum = sum(found.get(f"{colour.value}_quality_sum", {}).values())
        tally.quality_count = sum(found.get(f"{colour.value}_quality_count", {}).values())
        samples = found.get(f"{colour.value}_first_tokens", {})
        shares = found.get(f"{colour.value}_slow_share", {})
        # PR(t:) is the percentage of the period's first tokens slower than t.
        tally.slow = round(
            sum(samples.get(stamp, 0.0) * share / 100 for stamp, share in shares.items())
        )
    return counts


def _results(
    cloudwatch: Any, metric_queries: list[dict[str, Any]], since: datetime, until: datetime
) -> Iterator[Mapping[str, Any]]:
    token: str | None = None
    while True:
        extra = {"NextToken": token} if token else {}
        answer = cloudwatch.get_metric_data(
            MetricDataQueries=metric_queries, StartTime=since, EndTime=until, **extra
        )
        yield from answer.get("MetricDataResults", [])
        token = answer.get("NextToken")
        if not token:
            return


def decide(
    config: StackConfig,
    counts: Mapping[Colour, Counts],
    *,
    since: datetime,
    until: datetime,
    margins: Margins | None = None,
) -> StageGate:
    """The gate of the configured stage over [since, until)."""
    margins = margins or Margins()
    rollout = config.rollout
    stage = stage_of(rollout.strategy, rollout.stage, rollout.mirror_percent)
    gate = StageGate(rollout.stage, since, until)
    candidate, stable = counts[rollout.candidate], counts[rollout.stable]
    gate.criteria.append(_bake(stage.duration, until - since))
    gate.criteria.append(_enough(stage.min_requests, candidate.requests))
    if (
        weights_for(
            rollout.strategy, rollout.stage, rollout.candidate, rollout.mirror_percent
        ).reaching(rollout.candidate)
        == 0
    ):
        return gate
    served = (candidate.requests, stable.requests)
    for name in RATES:
        events = (getattr(candidate, name), getattr(stable, name))
        gate.criteria.append(_rate(name, events, served, margin=margins.rate, alpha=margins.alpha))
    slow, timed = (candidate.slow, stable.slow), (candidate.first_tokens, stable.first_tokens)
    gate.criteria.append(_rate("latency", slow, timed, margin=margins.latency, alpha=margins.alpha))
    gate.criteria.append(_quality(candidate, stable, margins))
    return gate


def _bake(duration: timedelta | None, elapsed: timedelta) -> Criterion:
    if duration is None or elapsed >= duration:
        return Criterion("bake", Verdict(Decision.PASS, None, (0.0, 0.0)), note="baked")
    left = duration - elapsed
    return Criterion(
        "bake",
        Verdict(Decision.INCONCLUSIVE, None, (0.0, 0.0)),
        note=f"bakes for {math.ceil(left.total_seconds() / 60)} more minutes",
    )


def _enough(minimum: int | None, served: float) -> Criterion:
    if minimum is None or served >= minimum:
        return Criterion("requests", Verdict(Decision.PASS, None, (0.0, 0.0)), candidate=served)
    return Criterion(
        "requests",
        Verdict(Decision.INCONCLUSIVE, None, (0.0, 0.0), needed=math.ceil(minimum - served)),
        candidate=served,
        note=f"the stage needs {minimum:,} candidate requests",
    )


def _rate(
    name: str,
    events: tuple[float, float],
    exposure: tuple[float, float],
    *,
    margin: float,
    alpha: float,
) -> Criterion:
    """``events`` and ``exposure`` (requests) of the candidate, then of the stable colour."""
    (events_c, events_s), (exposure_c, exposure_s) = events, exposure
    rate_c = events_c / exposure_c if exposure_c else None
    rate_s = events_s / exposure_s if exposure_s else None
    if not exposure_c or not exposure_s:
        verdict = Verdict(Decision.INCONCLUSIVE, None, (0.0, math.inf))
        return Criterion(name, verdict, rate_c, rate_s, note="a colour served no requests")
    verdict = compare_rates(
        round(events_c),
        round(events_s),
        share=exposure_c / (exposure_c + exposure_s),
        margin=margin,
        alpha=alpha,
        candidate_requests=round(exposure_c),
    )
    return Criterion(name, verdict, rate_c, rate_s)


def _quality(candidate: Counts, stable: Counts, margins: Margins) -> Criterion:
    if not candidate.quality_count and not stable.quality_count:
        verdict = Verdict(Decision.PASS, None, (-1.0, 1.0))
        return Criterion("quality", verdict, note="not applicable: no feedback scores yet")
    verdict = compare_means(
        candidate.quality_sum,
        round(candidate.quality_count),
        stable.quality_sum,
        round(stable.quality_count),
        margin=margins.quality,
        alpha=margins.alpha,
    )
    mean_c = candidate.quality_sum / candidate.quality_count if candidate.quality_count else None
    mean_s = stable.quality_sum / stable.quality_count if stable.quality_count else None
    return Criterion("quality", verdict, mean_c, mean_s)
