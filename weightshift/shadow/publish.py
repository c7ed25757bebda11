"""The report's summary figures as CloudWatch metrics, for dashboards and a shadow gate.

Namespace ``weightshift``, dimensions ``Model`` and ``Version`` (the candidate's bundle id):
each figure is sent as its value and, where known, its interval's bounds (``...Low``,
``...High``), and ``ShadowPairs`` says how many pairs the report read, so a reader can
judge the figures as the report does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from weightshift.shadow.report import Figure, Report

NAMESPACE = "weightshift"
METRICS = {
    "exact_match": ("ShadowExactMatch", "None"),
    "refusal_delta": ("ShadowRefusalDelta", "None"),
    "block_delta": ("ShadowBlockDelta", "None"),
    "p99_latency_ratio": ("ShadowP99LatencyRatio", "None"),
    "token_ratio": ("ShadowTokenRatio", "None"),
    "edit_distance": ("ShadowEditDistance", "None"),
    "rouge_l": ("ShadowRougeL", "None"),
    "semantic_similarity": ("ShadowSemanticSimilarity", "None"),
    "judge_win_rate": ("ShadowJudgeWinRate", "None"),
}
"""Report figure -> CloudWatch metric name and unit."""
BATCH = 20


class PublishError(ValueError):
    """A report that cannot be published; the message says why."""


def metric_data(report: Report, when: datetime) -> list[dict[str, Any]]:
    """The metric data points for ``report``, stamped ``when``."""
    if report.comparison.candidate_version is None:
        raise PublishError(
            "--publish: the candidate answered no copy in this window, so its version is "
            "unknown and its metrics would have no Version to go under"
        )
    dimensions = [
        {"Name": "Model", "Value": report.comparison.model},
        {"Name": "Version", "Value": report.comparison.candidate_version},
    ]
    data: list[dict[str, Any]] = [
        {
            "MetricName": "ShadowPairs",
            "Dimensions": dimensions,
            "Timestamp": when,
            "Value": float(report.records.pairs),
            "Unit": "Count",
        }
    ]
    for name, (metric, unit) in METRICS.items():
        figure = report.figures.get(name)
        if not isinstance(figure, Figure):
            continue
        for suffix, value in (("", figure.value), ("Low", figure.low), ("High", figure.high)):
            if value is None:
                continue
            data.append(
                {
                    "MetricName": metric + suffix,
                    "Dimensions": dimensions,
                    "Timestamp": when,
                    "Value": float(value),
                    "Unit": unit,
                }
            )
    return data


def publish(report: Report, client: Any, when: datetime) -> int:
    """Put ``report``'s metrics (batches of ``BATCH``); the number of data points sent."""
    data = metric_data(report, when)
    for start in range(0, len(data), BATCH):
        client.put_metric_data(Namespace=NAMESPACE, MetricData=data[start : start + BATCH])
    return len(data)
