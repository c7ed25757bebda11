"""What an operator sees besides CloudWatch: one JSON log line per request, and the same
counters and histograms as CloudWatch for a Prometheus that scrapes the pod.

**The request log.** Every answered request writes one line to stderr, a JSON object:
``time``, ``level`` (``INFO``), ``logger`` (``weightshift.gateway.requests``), ``msg``
(``request``), then ``id``, ``colour``, ``version``, ``endpoint``, ``status``, ``outcome``,
``tokens_in``, ``tokens_out``, ``ttft_s`` and ``latency_s``. Never the prompt or the answer.
The event loop only queues the line's fields (no ``logging`` record: that machinery costs
more than the rest of a request's bookkeeping); a thread of its own
(:func:`start_request_log`) formats what has queued every ``REQUEST_LOG_SECONDS`` and
writes it in one write. ``--no-request-log``: no writer, no line.

**Prometheus** (:class:`Prometheus`, ``--prometheus-listen HOST:PORT``): its own registry
and its own listener (prometheus_client's, in a thread), so a scrape never waits on the
loop nor reaches the ALB's port. Counters ``weightshift_<name>_total`` (requests, errors,
timeouts, refusals, input_blocks, output_blocks, moderation_errors, tokens_in, tokens_out,
mirror_sent, mirror_dropped), histograms ``weightshift_time_to_first_token_seconds`` and
``weightshift_latency_seconds``, all labelled ``model``, ``colour``, ``version``; and
``weightshift_quality_score`` by ``model`` and the ``colour`` that answered.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from weightshift.gateway.metrics import COUNTERS

REQUEST_LOGGER = "weightshift.gateway.requests"
"""The ``logger`` of a request's line."""

_COUNTED = tuple(name for name in COUNTERS if name != "Heartbeat")
"""The CloudWatch counters Prometheus also counts (``Heartbeat`` is Prometheus's ``up``)."""
_TIMED = {"TimeToFirstToken": "time_to_first_token_seconds", "Latency": "latency_seconds"}
SECONDS_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def snake(name: str) -> str:
    """``TimeToFirstToken`` -> ``time_to_first_token``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


REQUEST_LOG_SECONDS = 0.1
"""How long the request log's thread lets lines queue before it writes them, at most: one
write (and one wake of the thread) per batch instead of per request."""

_encode = json.JSONEncoder(separators=(",", ":")).encode
_RECORD = f',"level":"INFO","logger":{_encode(REQUEST_LOGGER)},"msg":"request"'
"""The record's own keys after ``time``, the same in every line (encoded once)."""
_second: tuple[int, str] = (-1, "")
"""The last second formatted (``2026-12-08T04:31:34``): lines come many to a second."""


def request_line(created: float, fields: dict[str, Any]) -> str:
    """One request's line: ``fields`` after the record's own keys, as JSON (its time as
    ``datetime.isoformat(timespec="milliseconds")`` writes it, in UTC)."""
    global _second  # noqa: PLW0603 (a cache of the request log's thread)
    second = int(created)  # a time after 1970: its whole seconds, as datetime splits it
    micros = round((created - second) * 1_000_000)
    if micros == 1_000_000:
        second, micros = second + 1, 0
    cached, text = _second
    if second != cached:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (second, text)
    rest = _encode(fields)
    return f'{{"time":"{text}.{micros // 1000:03d}+00:00"{_RECORD}' + (
        "," + rest[1:] if len(rest) > 2 else "}"
    )


class RequestLog:
    """The request log's writer: lines queued by the event loop, formatted and written in
    batches by a thread of its own; :meth:`stop` writes what is queued, then returns."""

    def __init__(self, stream: Any, pause: float = REQUEST_LOG_SECONDS) -> None:
        self._stream = stream
        self._pause = pause
        self._queued: queue.SimpleQueue[tuple[float, dict[str, Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._write, name="weightshift-request-log", daemon=True
        )

    def start(self) -> RequestLog:
        self._thread.start()
        return self

    def put(self, fields: dict[str, Any]) -> None:
        self._queued.put((time.time(), fields))

    def stop(self) -> None:
        global _writer  # noqa: PLW0603 (one request log per process)
        if _writer is self:
            _writer = None
        self._queued.put(None)
        self._thread.join()

    def _write(self) -> None:
        queued = self._queued
        while True:
            first = queued.get()
            if first is not None:
                time.sleep(self._pause)  # let the lines of the next moments join this write
            batch, stopping = [first], first is None
            while not queued.empty():
                batch.append(queued.get_nowait())
            lines = []
            for item in batch:
                if item is None:
                    stopping = True
                else:
                    lines.append(request_line(*item) + "\n")
            if lines:
                with contextlib.suppress(OSError, ValueError):  # stderr gone: lines lost
                    self._stream.write("".join(lines))
                    self._stream.flush()
            if stopping:
                return


_writer: RequestLog | None = None


def start_request_log(stream: Any = None) -> RequestLog:
    """Send the request log, as JSON lines, to ``stream`` (stderr) from a thread of its own;
    stop the returned writer at exit (it writes what is queued)."""
    global _writer  # noqa: PLW0603 (one request log per process)
    _writer = RequestLog(stream or sys.stderr).start()
    return _writer


def request_log_enabled() -> bool:
    """Whether a request's line is written (the request log runs)."""
    return _writer is not None


def log_request(fields: dict[str, Any]) -> None:
    """One request's line (``fields``: see the module docstring); nothing where the request
    log does not run."""
    if _writer is not None:
        _writer.put(fields)


class Prometheus:
    """The gateway's counters and histograms for a scraper, labelled by model, colour and
    version: the children are bound once, so counting is one lock and one add."""

    def __init__(self, model: str, version: str, colour: str) -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "colour", "version")
        values = (model, colour, version)
        self._model = model
        self._counters = {
            name: Counter(
                f"weightshift_{snake(name)}",
                f"{name}, as the CloudWatch metric of that name",
                labels,
                registry=self.registry,
            ).labels(*values)
            for name in _COUNTED
        }
        self._histograms = {
            name: Histogram(
                f"weightshift_{suffix}",
                f"{name} in seconds, as the CloudWatch metric of that name",
                labels,
                buckets=SECONDS_BUCKETS,
                registry=self.registry,
            ).labels(*values)
            for name, suffix in _TIMED.items()
        }
        self._quality = Histogram(
            "weightshift_quality_score",
            "QualityScore: feedback, 0 to 1, by the colour that answered",
            ("model", "colour"),
            buckets=SCORE_BUCKETS,
            registry=self.registry,
        )

    def add(self, name: str, value: int) -> None:
        counter = self._counters.get(name)
        if counter is not None:
            counter.inc(value)

    def observe(self, name: str, seconds: float) -> None:
        histogram = self._histograms.get(name)
        if histogram is not None:
            histogram.observe(seconds)

    def feedback(self, colour: str, score: float) -> None:
        self._quality.labels(self._model, colour).observe(score)

    def serve(self, address: tuple[str, int]) -> Any:
        """Answer ``GET /metrics`` on ``address`` from a thread; the server, to shut down.
        Raises ``OSError`` where the address cannot be bound."""
        server, _thread = start_http_server(address[1], address[0], registry=self.registry)
        return server
