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

A CloudWatch brownout costs delay, not data: each interval is closed on time into a bounded
backlog (its datums stamped with its own start), and a separate task sends the backlog with
short timeouts and one retry (``cloudwatch_client``), keeping what failed for the next try.
Shutdown sends what is left with a deadline (``SHUTDOWN_FLUSH_SECONDS``), then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

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
CONNECT_TIMEOUT_SECONDS = 2
READ_TIMEOUT_SECONDS = 5
"""A ``PutMetricData`` call: 2 s to connect, 5 s to answer, one retry (at most ~15 s)."""
RETRY_PAUSE_SECONDS = 2.0
"""After a failed call, the pause before the queued intervals are tried again."""
DEFAULT_BACKLOG = 180
"""Closed intervals kept while CloudWatch fails (30 minutes at 10 s); then the oldest go."""
SHUTDOWN_FLUSH_SECONDS = 8.0
"""At shutdown, the last send's deadline: well inside the 30 s the pod's
``terminationGracePeriodSeconds`` leaves after the drain and the answers in flight."""

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


class Exporter(Protocol):
    """Another place the same signals go as they happen (``observe.Prometheus``)."""

    def add(self, name: str, value: int) -> None: ...

    def observe(self, name: str, seconds: float) -> None: ...

    def feedback(self, colour: str, score: float) -> None: ...


class Metrics:
    """Counts and samples of one interval for one gateway (model, version, colour).

    :meth:`run` closes an interval at its end (a snapshot, stamped with the interval's own
    start) and never waits for CloudWatch: snapshots queue in a bounded backlog that a
    separate task sends, oldest first, several intervals in one call. A send that fails
    leaves its intervals queued for the next try, so a brownout delays datapoints but never
    merges two intervals into one datapoint nor loses a ``Heartbeat``; past ``backlog``
    intervals the oldest are dropped and counted (``dropped``).
    """

    def __init__(
        self,
        model: str,
        version: str,
        colour: str,
        *,
        interval: float = 10.0,
        sink: Sink | None = None,
        clock: Callable[[], float] = time.time,
        backlog: int = DEFAULT_BACKLOG,
        exporter: Exporter | None = None,
    ) -> None:
        self.model = model
        self.version = version
        self.colour = colour
        self.interval = interval
        self.sink = sink
        self.clock = clock
        self.backlog = backlog
        self.exporter = exporter
        self.counts: Counter[str] = Counter()
        self.samples: dict[str, Counter[float]] = {name: Counter() for name in DISTRIBUTIONS}
        self.quality: dict[str, Counter[float]] = {}
        self.pending: deque[list[dict[str, Any]]] = deque()
        """Closed intervals not sent yet, oldest first (each its own datums and stamp)."""
        self.sent = 0
        """Calls that succeeded."""
        self.failed = 0
        """Calls that failed (their intervals stayed queued)."""
        self.dropped = 0
        """Intervals dropped unsent: the backlog was full, or shutdown's deadline passed."""
        self._started = self._window(clock())
        self._wake = asyncio.Event()

    def _window(self, now: float) -> float:
        return math.floor(now / self.interval) * self.interval

    def add(self, name: str, value: int = 1) -> None:
        self.counts[name] += value
        if self.exporter is not None:
            self.exporter.add(name, value)

    def observe(self, name: str, seconds: float) -> None:
        # Milliseconds are resolution enough, and rounding keeps the value set small
        # (``round(x * 1000) / 1000``: half the cost of ``round(x, 3)``, per request).
        self.samples[name][round(seconds * 1000) / 1000] += 1
        if self.exporter is not None:
            self.exporter.observe(name, seconds)

    def feedback(self, colour: str, score: float) -> None:
        self.quality.setdefault(colour, Counter())[round(score, 3)] += 1
        if self.exporter is not None:
            self.exporter.feedback(colour, score)

    def _dimensions(self, colour: str | None = None, version: bool = True) -> list[dict[str, str]]:
        found = [{"Name": "Model", "Value": self.model}]
        if version:
            found.append({"Name": "Version", "Value": self.version})
        found.append({"Name": "Colour", "Value": colour or self.colour})
        return found

    def snapshot(self) -> list[dict[str, Any]]:
        """The datums of the interval that ended (stamped with its start), and a fresh
        interval: the next one, or the current one if the clock moved further."""
        stamp = datetime.fromtimestamp(self._started, UTC)
        counts, samples, quality = self.counts, self.samples, self.quality
        self.counts = Counter()
        self.samples = {name: Counter() for name in DISTRIBUTIONS}
        self.quality = {}
        # A timer that fires a little early must not stamp the next interval like this one;
        # one that fires late (a starved process) leaves windows whose counts fell into
        # this one: they still get their Heartbeat (the process was alive), nothing else.
        ended, now = self._started, self._window(self.clock())
        self._started = max(ended + self.interval, now)
        skipped = [
            ended + self.interval * n
            for n in range(1, min(round((now - ended) / self.interval), self.backlog))
        ]
        base = {"Timestamp": stamp, "StorageResolution": 1}
        both = (self._dimensions(), self._dimensions(version=False))
        if skipped:
            log.warning("metrics: %d intervals closed late; their heartbeats sent", len(skipped))
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
        datums += _late_heartbeats(skipped, both)
        sets = [
            (name, dimensions, values) for dimensions in both for name, values in samples.items()
        ]
        sets += [
            ("QualityScore", self._dimensions(colour, version=False), values)
            for colour, values in quality.items()
        ]
        for name, dims, values in sets:
            datums += _distribution(base, name, dims, values)
        return datums

    def close_interval(self) -> None:
        """Queue the interval that ended for sending; never waits."""
        datums = self.snapshot()
        if self.sink is None:
            return
        self.pending.append(datums)
        self._trim()
        self._wake.set()

    def _trim(self) -> None:
        over = len(self.pending) - self.backlog
        if over > 0:
            for _ in range(over):
                self.pending.popleft()
            self.dropped += over
            log.warning(
                "metrics backlog full (%d intervals): the oldest %d dropped, %d in all",
                self.backlog,
                over,
                self.dropped,
            )

    async def send_pending(self) -> bool:
        """One ``PutMetricData`` call with the oldest queued intervals (whole intervals, at
        most ``MAX_DATUMS_PER_CALL`` datums); whether it succeeded. A failed or cancelled
        call puts its intervals back, at the front."""
        assert self.sink is not None
        taken: list[list[dict[str, Any]]] = []
        batch: list[dict[str, Any]] = []
        while self.pending and (
            not batch or len(batch) + len(self.pending[0]) <= MAX_DATUMS_PER_CALL
        ):
            datums = self.pending.popleft()
            taken.append(datums)
            batch += datums
        try:
            for start in range(0, len(batch), MAX_DATUMS_PER_CALL):
                await self.sink(batch[start : start + MAX_DATUMS_PER_CALL])
        except BaseException as error:
            self.pending.extendleft(reversed(taken))
            self._trim()
            if not isinstance(error, Exception):
                raise  # cancelled: the intervals wait for the next try (or shutdown's)
            self.failed += 1
            log.warning(
                "metrics not sent (%s: %s): %d intervals kept for the next try",
                type(error).__name__,
                error,
                len(self.pending),
            )
            return False
        self.sent += 1
        return True

    async def flush(self) -> bool:
        """Close the interval in progress and send everything queued (tests, shutdown);
        whether all of it went."""
        self.close_interval()
        while self.pending:
            if not await self.send_pending():
                return False
        return True

    async def run(self) -> None:
        """Close every interval at its end, until cancelled; a separate task sends them,
        so a slow send never delays the next snapshot."""
        sender = asyncio.create_task(self._send_loop()) if self.sink is not None else None
        try:
            while True:
                next_end = self._started + self.interval
                await asyncio.sleep(max(0.0, next_end - self.clock()))
                self.close_interval()
        finally:
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                if not await self.send_pending():
                    # CloudWatch is failing: try again after a pause (new intervals queue).
                    await asyncio.sleep(min(self.interval, RETRY_PAUSE_SECONDS))

    async def close(self, deadline: float) -> None:
        """At shutdown, after :meth:`run` was cancelled: the interval in progress and
        everything queued, sent with at most ``deadline`` seconds to do it; what is left
        is dropped (logged), so CloudWatch never holds up the pod's exit."""
        if self.sink is None:
            return
        try:
            async with asyncio.timeout(deadline):
                await self.flush()
        except TimeoutError:
            pass
        if self.pending:
            lost = len(self.pending)
            self.dropped += lost
            self.pending.clear()
            log.warning("metrics: %d intervals not sent at shutdown (CloudWatch too slow)", lost)


def cloudwatch_client(session: Any) -> Any:
    """A CloudWatch client that gives up quickly: a brownout must cost an interval's send,
    not minutes (boto3's defaults: 60 s to read, up to 5 attempts)."""
    from botocore.config import Config  # noqa: PLC0415 (only where metrics go out)

    return session.client(
        "cloudwatch",
        config=Config(
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            retries={"total_max_attempts": 2, "mode": "standard"},
        ),
    )


def cloudwatch_sink(client: Any) -> Sink:
    """Send datums with ``PutMetricData``. boto3 is synchronous: each call runs in a daemon
    thread of its own, so a call CloudWatch never answers cannot hold up the loop nor,
    at exit, the process (``asyncio.to_thread``'s executor is joined at exit)."""

    async def send(datums: list[dict[str, Any]]) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        def call() -> None:
            error: BaseException | None = None
            try:
                client.put_metric_data(Namespace=NAMESPACE, MetricData=datums)
            except Exception as exc:  # noqa: BLE001 (handed to the waiting task)
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, error)

        threading.Thread(target=call, name="cloudwatch-put", daemon=True).start()
        await done

    return send


def _late_heartbeats(
    starts: list[float], dimension_sets: tuple[list[dict[str, str]], ...]
) -> list[dict[str, Any]]:
    """A Heartbeat for each interval a late timer skipped, stamped with its own start."""
    return [
        {
            "Timestamp": datetime.fromtimestamp(start, UTC),
            "StorageResolution": 1,
            "MetricName": "Heartbeat",
            "Dimensions": dimensions,
            "Value": 1.0,
            "Unit": "Count",
        }
        for start in starts
        for dimensions in dimension_sets
    ]


def _distribution(
    base: dict[str, Any], name: str, dimensions: list[dict[str, str]], values: Counter[float]
) -> list[dict[str, Any]]:
    """A distribution as value/count sets, at most ``MAX_VALUES_PER_DATUM`` per datum."""
    pairs = compact(values)
    return [
        {
            **base,
            "MetricName": name,
            "Dimensions": dimensions,
            "Values": [value for value, _ in chunk],
            "Counts": [float(count) for _, count in chunk],
            "Unit": UNITS[name],
        }
        for chunk in (
            pairs[start : start + MAX_VALUES_PER_DATUM]
            for start in range(0, len(pairs), MAX_VALUES_PER_DATUM)
        )
    ]
