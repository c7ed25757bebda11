"""The gateway's metrics under a CloudWatch brownout, its Prometheus endpoint and its request
log: real gateway processes, moto's server as CloudWatch behind a proxy that can hang."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway_harness import (
    AWS,
    PROJECT,
    Upstream,
    aws_emulator,
    free_port,
    request,
    stop,
    wait_for,
)

EXAMPLE = PROJECT / "bundles/support-assistant/v1.5.0"
BUNDLE_ID = "support-assistant/v1.5.0-d80719af096e"
WAIT = 90.0
"""Bounds waits for events; only a hung test reaches it."""


class Brownout:
    """A proxy in front of moto's CloudWatch that, while hanging, accepts each request and
    never answers it (a CloudWatch brownout); otherwise forwards it."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.release = threading.Event()
        self.release.set()
        self.held = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if not outer.release.is_set():
                    with outer.lock:
                        outer.held += 1
                    outer.release.wait(120)
                    self.close_connection = True
                    return  # never answered
                forwarded = urllib.request.Request(
                    outer.target + self.path,
                    data=body,
                    method="POST",
                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                )
                try:
                    with urllib.request.urlopen(forwarded, timeout=30) as answer:
                        status, headers, data = answer.status, answer.headers, answer.read()
                except urllib.error.HTTPError as error:
                    status, headers, data = error.code, error.headers, error.read()
                self.send_response(status)
                for name in ("content-type", "smithy-protocol", "x-amzn-requestid"):
                    if headers.get(name):
                        self.send_header(name, headers[name])
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def hang(self) -> None:
        self.release = threading.Event()

    def recover(self) -> None:
        self.release.set()


@contextlib.contextmanager
def brownout(target: str) -> Iterator[Brownout]:
    proxy = Brownout(target)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.recover()
        proxy.server.shutdown()
        proxy.server.server_close()


@contextlib.contextmanager
def launched(
    upstream_url: str, log: Path, extra: list[str], env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A gateway process serving the example bundle, its stderr written to ``log``."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "weightshift.cli",
        "gateway",
        "--bundle",
        str(EXAMPLE),
        "--bundle-id",
        BUNDLE_ID,
        "--upstream",
        upstream_url,
        "--colour",
        "green",
        "--listen",
        f"127.0.0.1:{port}",
        *extra,
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            args, cwd=PROJECT, env={**os.environ, **(env or {})}, stderr=sink
        )
        try:
            wait_for(f"http://127.0.0.1:{port}/livez", process=process)
            yield f"http://127.0.0.1:{port}", process
        finally:
            if process.poll() is None:
                stop(process)


@pytest.fixture(autouse=True)
def reset(model: Upstream) -> None:
    model.control(mode="ok", token_delay=0.0, first_token_delay=0.0)


def _heartbeats(since: float) -> list[float]:
    """The stamps (from ``since`` on) of the Heartbeats moto received, by Model, Version and
    Colour (moto's backend is the process's: earlier tests' gateways left theirs)."""
    from moto.cloudwatch.models import cloudwatch_backends

    backend = cloudwatch_backends["123456789012"]["us-east-1"]
    return sorted(
        datum.timestamp.timestamp()
        for datum in list(backend.metric_data)
        if datum.name == "Heartbeat"
        and datum.timestamp.timestamp() >= since
        and {d.name for d in datum.dimensions} == {"Model", "Version", "Colour"}
    )


def _until(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _chat(url: str) -> int:
    status, _, _ = request(
        f"{url}/v1/chat/completions",
        {"messages": [{"role": "user", "content": "How do I reset my password?"}]},
    )
    return status


def test_a_cloudwatch_brownout_delays_heartbeats_but_loses_none(
    model: Upstream, tmp_path: Path
) -> None:
    since = float(int(time.time()))
    with aws_emulator() as cloudwatch, brownout(cloudwatch) as proxy:
        env = {**AWS, "AWS_ENDPOINT_URL_CLOUDWATCH": proxy.url}
        extra = ["--metrics", "cloudwatch", "--metrics-interval", "1"]
        with launched(model.url, tmp_path / "gateway.log", extra, env) as (url, _):
            _until(lambda: len(_heartbeats(since)) >= 2, "the first heartbeats")
            proxy.hang()
            # Hung until a send and its one retry gave up, and the next send is hung too.
            _until(lambda: proxy.held >= 3, "three sends held by the hung endpoint")
            assert _chat(url) == 200  # serving goes on meanwhile
            proxy.recover()
            recovered = time.time()
            _until(
                lambda: bool(_heartbeats(since)) and _heartbeats(since)[-1] >= recovered,
                "a heartbeat stamped after the recovery",
            )
            stamps = _heartbeats(since)
    # Every interval, the hung ones included, arrived once, with its own timestamp.
    assert len(stamps) == len(set(stamps))
    assert stamps == [stamps[0] + n for n in range(len(stamps))]
    assert stamps[-1] - stamps[0] >= 10  # the brownout lasted several intervals


def test_sigterm_during_a_cloudwatch_hang_exits_within_the_grace_period(
    model: Upstream, tmp_path: Path
) -> None:
    with aws_emulator() as cloudwatch, brownout(cloudwatch) as proxy:
        proxy.hang()
        env = {**AWS, "AWS_ENDPOINT_URL_CLOUDWATCH": proxy.url}
        extra = ["--metrics", "cloudwatch", "--metrics-interval", "1"]
        with launched(model.url, tmp_path / "gateway.log", extra, env) as (_, process):
            _until(lambda: proxy.held >= 1, "a send held by the hung endpoint")
            process.send_signal(signal.SIGTERM)
            # The pod's grace period leaves 30 s after the drain and the answers in flight.
            try:
                code = process.wait(30)
            except subprocess.TimeoutExpired:
                pytest.fail("the gateway did not exit within 30 s of SIGTERM")
    assert code == 0
    assert "not sent at shutdown" in (tmp_path / "gateway.log").read_text()


def _scrape(address: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("weightshift_") and not sample.name.endswith("_created"):
                labels = sample.labels
                if "le" in labels or labels.get("colour") != "green":
                    continue
                assert labels["model"] == "support-assistant"
                assert labels["version"] == BUNDLE_ID
                found[sample.name] = sample.value
    return found


def test_prometheus_counts_what_cloudwatch_counts_and_each_request_logs_one_json_line(
    model: Upstream, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "gateway.log"
    extra = ["--metrics", "off", "--prometheus-listen", address]
    with launched(model.url, log, extra) as (url, _):
        for _ in range(3):
            assert _chat(url) == 200
        status, _, _ = request(
            f"{url}/v1/chat/completions", {"messages": [], "secret": "do not log me"}
        )
        assert status == 400
        found = _scrape(address)
    assert found["weightshift_requests_total"] == 4
    assert found["weightshift_refusals_total"] == 1
    assert found["weightshift_errors_total"] == 0
    assert found["weightshift_latency_seconds_count"] == 4
    assert found["weightshift_tokens_out_total"] > 0
    assert "weightshift_time_to_first_token_seconds_count" in found
    lines = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith("{") and '"logger":"weightshift.gateway.requests"' in line
    ]
    assert [line["status"] for line in lines] == [200, 200, 200, 400]
    assert [line["outcome"] for line in lines] == ["ok", "ok", "ok", "refused"]
    first = lines[0]
    assert (first["colour"], first["version"]) == ("green", BUNDLE_ID)
    assert first["id"]
    assert first["latency_s"] > 0
    assert first["tokens_out"] > 0
    assert {"tokens_in", "ttft_s", "endpoint", "time"} <= set(first)
    text = log.read_text()
    assert "reset my password" not in text
    assert "do not log me" not in text


def test_no_request_log_writes_no_line_for_a_request(model: Upstream, tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    with launched(model.url, log, ["--metrics", "off", "--no-request-log"]) as (url, _):
        assert _chat(url) == 200
    text = log.read_text()
    assert "serving" in text  # the gateway's own log is there
    assert "weightshift.gateway.requests" not in text


def test_every_interval_has_its_own_heartbeat_even_when_the_loop_closes_them_late() -> None:
    from weightshift.gateway.metrics import Metrics

    now = [1000.2]
    metrics = Metrics("m", "m/v1.0.0-abcdefabcdef", "green", interval=1, clock=lambda: now[0])
    metrics.add("Requests")
    now[0] = 1000.9  # a timer that fires early closes 1000, and the next is 1001
    first = metrics.snapshot()
    now[0] = 1005.3  # a starved loop wakes 4 intervals late
    late = metrics.snapshot()
    beats = sorted(
        d["Timestamp"].timestamp()
        for d in first + late
        if d["MetricName"] == "Heartbeat" and len(d["Dimensions"]) == 3
    )
    assert beats == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]
    now[0] = 1006.0
    (beat,) = [
        d
        for d in metrics.snapshot()
        if d["MetricName"] == "Heartbeat" and len(d["Dimensions"]) == 3
    ]
    assert beat["Timestamp"].timestamp() == 1005.0
