"""What an operator sees besides CloudWatch: one JSON log line per request, and the same
counters and histograms as CloudWatch for a Prometheus that scrapes the pod.

**The request log.** Every answered request writes one line to stderr through ``logging``
(logger ``weightshift.gateway.requests``), a JSON object: ``time``, ``level``, ``logger``,
``msg`` (``request``), then ``id``, ``colour``, ``version``, ``endpoint``, ``status``,
``outcome``, ``tokens_in``, ``tokens_out``, ``ttft_s`` and ``latency_s``. Never the prompt
or the answer. The line is formatted and written by a logging thread
(:func:`start_request_log`): the event loop only queues a record.

**Prometheus** (:class:`Prometheus`, ``--prometheus-listen HOST:PORT``): its own registry
and its own listener (prometheus_client's, in a thread), so a scrape never waits on the
loop nor reaches the ALB's port. Counters ``weightshift_<name>_total`` (requests, errors,
timeouts, refusals, input_blocks, output_blocks, moderation_errors, tokens_in, tokens_out,
mirror_sent, mirror_dropped), histograms ``weightshift_time_to_first_token_seconds`` and
``weightshift_latency_seconds``, all labelled ``model``, ``colour``, ``version``; and
``weightshift_quality_score`` by ``model`` and the ``colour`` that answered.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import sys
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from weightshift.gateway.metrics import COUNTERS

REQUEST_LOGGER = "weightshift.gateway.requests"
requests_log = logging.getLogger(REQUEST_LOGGER)

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


class JsonFormatter(logging.Formatter):
    """One JSON object per record; a record's ``fields`` (a dict) become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        return json.dumps(line, separators=(",", ":"))


class _Queued(QueueHandler):
    """Queues the record as it is: formatting waits for the logging thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def start_request_log(stream: Any = None) -> QueueListener:
    """Send the request log, as JSON lines, to ``stream`` (stderr) from a thread of its own;
    stop the returned listener at exit (it writes what is queued)."""
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    listener = QueueListener(lines, handler)
    requests_log.handlers[:] = [_Queued(lines)]
    requests_log.setLevel(logging.INFO)
    requests_log.propagate = False
    listener.start()
    return listener


def log_request(fields: dict[str, Any]) -> None:
    """One request's line (``fields``: see the module docstring); nothing if not enabled."""
    if requests_log.isEnabledFor(logging.INFO):
        requests_log.info("request", extra={"fields": fields})


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
