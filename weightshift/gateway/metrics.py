"""The gateway's signals: counted in memory, sent to CloudWatch every interval (10 s).

Every interval sends every counter, **zeros included**, and a ``Heartbeat`` of 1: "no
requests" is then data, not missing data, and a gateway that stops reporting is a gateway
that stopped. Durations are sent as value/count sets (``Values`` and ``Counts`` of
``PutMetricData``), so CloudWatch computes true percentiles (p50, p99) over them. All
datapoints are high resolution (``StorageResolution`` 1), so alarms can evaluate 10-second
periods. Namespace ``weightshift``. Every counter and duration is sent twice: by ``Model``,
``Version`` (the full bundle id) and ``Colour``, to compare versions; and by ``Model`` and
``Colour`` alone, which the rollback alarms read, so a colour's alarms see its pods whichever
version they run (a rolling update of the candidate keeps its heartbeat). ``QualityScore`` is
sent by ``Model`` and ``Colour`` only: feedback may reach the other colour's pod, which knows
the colour that answered but not its version.

Counters: ``Requests`` (every request the pipeline saw), ``Errors`` (answered 5xx: upstream
errors, unreachable upstream, timeouts, moderation failures), ``Timeouts`` (of which timed
out), ``Refusals`` (refused by a limit: 400 too long or invalid, 429 too many), ``InputBlocks``
and ``OutputBlocks`` (moderation replaced the answer with the refusal message),
``ModerationErrors``, ``TokensIn``, ``TokensOut``, ``MirrorSent``, ``MirrorDropped``,
``Heartbeat``. Distributions: ``TimeToFirstToken`` (streamed requests, seconds from the
request to the first answer byte), ``Latency`` (seconds to the last byte), ``QualityScore``
(feedback, 0 to 1).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

NAMESPACE = "weightshift"
COUNTERS = (
    "Requests",
    "Errors",
    "Timeouts",
    "Refusals",
    "InputBlocks",
    "OutputBlocks",
    "ModerationErrors",
    "TokensIn",
    "TokensOut",
    "MirrorSent",
    "MirrorDropped",
    "Heartbeat",
)
UNITS = {
    "TokensIn": "Count",
    "TokensOut": "Count",
    "TimeToFirstToken": "Seconds",
    "Latency": "Seconds",
    "QualityScore": "None",
}
DISTRIBUTIONS = ("TimeToFirstToken", "Latency")
MAX_VALUES_PER_DATUM = 150
"""CloudWatch: a datum's value/count set holds at most 150 distinct values."""
MAX_DATUMS_PER_CALL = 1000
"""CloudWatch: at most 1,000 metric datums per PutMetricData request."""

log = logging.getLogger("weightshift.gateway.metrics")

Sink = Callable[[list[dict[str, Any]]], Awaitable[None]]


def compact(samples: Counter[float]) -> list[tuple[float, int]]:
    """Value/count pairs, at most ``MAX_VALUES_PER_DATUM`` per datum: exact while few,
    else grouped into geometric buckets (each ~1 % wide, then wider until they fit), a
    bucket's value its count-weighted mean, so percentiles stay within a bucket's width."""
    if len(samples) <= MAX_VALUES_PER_DATUM:
        return sorted(samples.items())
    ratio = 1.01
    while True:
        buckets: dict[int, list[float]] = {}
        for value, count in samples.items():
            key = -(10**9) if value <= 0 else math.floor(math.log(value) / math.log(ratio))
            slot = buckets.setdefault(key, [0.0, 0.0])
            slot[0] += value * count
            slot[1] += count
        if len(buckets) <= MAX_VALUES_PER_DATUM:
            return sorted((total / count, int(count)) for total, count in buckets.values())
        ratio *= 1.5


class Metrics:
    """Counts and samples of one interval for one gateway (model, version, colour)."""

    def __init__(
        self,
        model: str,
        version: str,
        colour: str,
        *,
        interval: float = 10.0,
        sink: Sink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model = model
        self.version = version
        self.colour = colour
        self.interval = interval
        self.sink = sink
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.samples: dict[str, Counter[float]] = {name: Counter() for name in DISTRIBUTIONS}
        self.quality: dict[str, Counter[float]] = {}
        self.sent = 0
        self.failed = 0
        self._started = self._window(clock())

    def _window(self, now: float) -> float:
        return math.floor(now / self.interval) * self.interval

    def add(self, name: str, value: int = 1) -> None:
        self.counts[name] += value

    def observe(self, name: str, seconds: float) -> None:
        # Milliseconds are resolution enough, and rounding keeps the value set small.
        self.samples[name][round(seconds, 3)] += 1

    def feedback(self, colour: str, score: float) -> None:
        self.quality.setdefault(colour, Counter())[round(score, 3)] += 1

    def _dimensions(self, colour: str | None = None, version: bool = True) -> list[dict[str, str]]:
        found = [{"Name": "Model", "Value": self.model}]
        if version:
            found.append({"Name": "Version", "Value": self.version})
        found.append({"Name": "Colour", "Value": colour or self.colour})
        return found

    def snapshot(self) -> list[dict[str, Any]]:
        """The datums of the interval that ended, and a fresh interval."""
        stamp = datetime.fromtimestamp(self._started, UTC)
        counts, samples, quality = self.counts, self.samples, self.quality
        self.counts = Counter()
        self.samples = {name: Counter() for name in DISTRIBUTIONS}
        self.quality = {}
        self._started = self._window(self.clock())
        base = {"Timestamp": stamp, "StorageResolution": 1}
        both = (self._dimensions(), self._dimensions(version=False))
        datums: list[dict[str, Any]] = [
            {
                **base,
                "MetricName": name,
                "Dimensions": dimensions,
                "Value": float(1 if name == "Heartbeat" else counts.get(name, 0)),
                "Unit": UNITS.get(name, "Count"),
            }
            for dimensions in both
            for name in COUNTERS
        ]
        sets = [
            (name, dimensions, values) for dimensions in both for name, values in samples.items()
        ]
        sets += [
            ("QualityScore", self._dimensions(colour, version=False), values)
            for colour, values in quality.items()
        ]
        for name, dims, values in sets:
            pairs = compact(values)
            for start in range(0, len(pairs), MAX_VALUES_PER_DATUM):
                chunk = pairs[start : start + MAX_VALUES_PER_DATUM]
                datums.append(
                    {
                        **base,
                        "MetricName": name,
                        "Dimensions": dims,
                        "Values": [value for value, _ in chunk],
                        "Counts": [float(count) for _, count in chunk],
                        "Unit": UNITS[name],
                    }
                )
        return datums

    async def flush(self) -> None:
        """Send the interval that ended; a failed call is tried once more (a lost heartbeat
        is what the dead man's switch counts), then dropped: the next interval is due."""
        datums = self.snapshot()
        if self.sink is None:
            return
        for start in range(0, len(datums), MAX_DATUMS_PER_CALL):
            batch = datums[start : start + MAX_DATUMS_PER_CALL]
            for attempt in (1, 2):
                try:
                    await self.sink(batch)
                    break
                except Exception as error:  # noqa: BLE001 (a failed send never stops the gateway)
                    log.warning(
                        "metrics not sent, attempt %d (%s): %s",
                        attempt,
                        type(error).__name__,
                        error,
                    )
                    if attempt == 1:
                        await asyncio.sleep(min(1.0, self.interval / 10))
            else:
                self.failed += 1
                return
        self.sent += 1

    async def run(self) -> None:
        """Send every interval, at the interval's end, until cancelled."""
        while True:
            next_end = self._started + self.interval
            await asyncio.sleep(max(0.0, next_end - self.clock()))
            await self.flush()


def cloudwatch_sink(client: Any) -> Sink:
    """Send datums with ``PutMetricData`` (boto3 is synchronous: off the event loop)."""

    async def send(datums: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(client.put_metric_data, Namespace=NAMESPACE, MetricData=datums)

    return send
