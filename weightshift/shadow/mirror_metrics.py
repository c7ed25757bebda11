"""The gateways' own count of shadow copies dropped before they were sent (their queue was
full: ``MirrorDropped``, beside ``MirrorSent``), from CloudWatch.

Those copies never reach the records, so only the metrics can say how many there were. The
stable colour's gateways publish them by ``Model``, ``Version`` (the stable bundle) and
``Colour`` (``weightshift/gateway/metrics.py``); every colour found is summed.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from weightshift.gateway.metrics import NAMESPACE

METRICS = ("MirrorSent", "MirrorDropped")
MAX_POINTS = 1440
"""Periods per metric: the period grows with the window so one page holds them."""


def mirror_counts(
    cloudwatch: Any, model: str, stable_version: str, since: datetime, until: datetime
) -> tuple[int, int]:
    """(sent, dropped) shadow copies the stable gateways counted in [since, until)."""
    found = []
    for name in METRICS:
        pages = cloudwatch.get_paginator("list_metrics").paginate(
            Namespace=NAMESPACE,
            MetricName=name,
            Dimensions=[
                {"Name": "Model", "Value": model},
                {"Name": "Version", "Value": stable_version},
            ],
        )
        for page in pages:
            found.extend(page.get("Metrics", []))
    if not found:
        return 0, 0
    seconds = max(60.0, (until - since).total_seconds())
    period = max(60, math.ceil(seconds / MAX_POINTS / 60) * 60)
    queries = [
        {
            "Id": f"m{index}",
            "Label": metric["MetricName"],
            "MetricStat": {"Metric": metric, "Period": period, "Stat": "Sum"},
        }
        for index, metric in enumerate(found)
    ]
    totals = dict.fromkeys(METRICS, 0.0)
    for start in range(0, len(queries), 500):
        token: str | None = None
        while True:
            extra = {"NextToken": token} if token else {}
            answer = cloudwatch.get_metric_data(
                MetricDataQueries=queries[start : start + 500],
                StartTime=since,
                EndTime=until,
                **extra,
            )
            for result in answer.get("MetricDataResults", []):
                name = found[int(result["Id"][1:])]["MetricName"]
                totals[name] += sum(result.get("Values", []))
            token = answer.get("NextToken")
            if not token:
                break
    return round(totals["MirrorSent"]), round(totals["MirrorDropped"])
