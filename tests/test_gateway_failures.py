"""Adversarial: a model server that fails or a client that misbehaves, through the real
gateway process in front of the fake model server. Every failure reaches the client as an
error (a 502, or an OpenAI error event ending the stream) and the alarms as ``Errors`` /
``Timeouts``; a passed deadline or a client that leaves cancels the generation upstream."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway_harness import (
    AWS,
    PROJECT,
    Gateway,
    Upstream,
    datapoints,
    folder_id,
    gateway,
    request,
    sse,
)

EXAMPLE = PROJECT / "bundles/support-assistant/v1.5.0"
SERVED: dict[str, str] = {}
"""The id of the bundle ``served`` serves (its metrics' ``Version``)."""


def relayed_bundle(root: Path, timeout: int, slots: int) -> Path:
    """The example bundle without output moderation (streams take the plain relay)."""
    target = root / f"relayed-{timeout}"
    shutil.copytree(EXAMPLE, target)
    routing = json.loads((target / "config/routing.json").read_text())
    routing.update(request_timeout_seconds=timeout, max_concurrent_requests=slots)
    (target / "config/routing.json").write_text(json.dumps(routing))
    safety = json.loads((target / "config/safety.json").read_text())
    safety["output_moderation"] = False
    (target / "config/safety.json").write_text(json.dumps(safety))
    return target


@pytest.fixture(scope="module")
def served(
    model: Upstream, cloudwatch: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A 2-second deadline, metrics every second to the emulated CloudWatch."""
    root = relayed_bundle(tmp_path_factory.mktemp("failures"), timeout=2, slots=8)
    SERVED["id"] = folder_id(root)
    with gateway(
        root,
        model.url,
        bundle_id=SERVED["id"],
        extra=["--metrics", "cloudwatch", "--metrics-interval", "1"],
        env={**AWS, "AWS_ENDPOINT_URL": cloudwatch},
    ) as found:
        yield found


@pytest.fixture(scope="module")
def patient(model: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A deadline far beyond any test (only the client leaving ends a request), 2 slots."""
    root = relayed_bundle(tmp_path_factory.mktemp("patient"), timeout=300, slots=2)
    with gateway(root, model.url, bundle_id=folder_id(root), extra=["--metrics", "off"]) as found:
        yield found


@pytest.fixture(autouse=True)
def reset(model: Upstream) -> None:
    model.control(mode="ok", token_delay=0.0, first_token_delay=0.0)
    model.clear()


def chat(url: str, **fields: Any) -> tuple[int, dict[str, str], bytes]:
    body = {"messages": [{"role": "user", "content": "How do I change my email?"}], **fields}
    return request(f"{url}/v1/chat/completions", body)


def total(cloudwatch: str, name: str) -> float:
    """The sum of ``name`` the gateway has sent so far."""
    dimensions = {"Model": "support-assistant", "Version": SERVED["id"], "Colour": "green"}
    return sum(datapoints(cloudwatch, name, dimensions))


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Whether ``check`` comes true within ``timeout`` (a bound for a hung test only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def counted(cloudwatch: str, name: str, before: float, more: int = 1) -> bool:
    return eventually(lambda: total(cloudwatch, name) >= before + more)


def cancelled(model: Upstream) -> int:
    _, _, state = request(f"{model.url}/state")
    return int(json.loads(state)["cancelled"])


def sdk(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_a_midstream_error_event_is_relayed_as_an_openai_error_and_counted(
    served: Gateway, model: Upstream, cloudwatch: str
) -> None:
    before = total(cloudwatch, "Errors")
    model.control(mode="midstream-error")
    status, _, body = chat(served.url, stream=True)
    assert status == 200  # sent before the failure
    events = sse(body)
    errors = [e for e in events if e != "[DONE]" and "error" in e]
    assert len(errors) == 1
    assert errors[0]["error"]["type"] == "server_error"
    assert "CUDA out of memory" in errors[0]["error"]["message"]
    assert events[-1] == "[DONE]"
    assert counted(cloudwatch, "Errors", before)
    # The official SDK raises it as an API error mid-iteration.
    with pytest.raises(openai.APIError, match="CUDA out of memory"):
        for _ in sdk(served).chat.completions.create(
            model="support-assistant",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
        ):
            pass


@pytest.mark.parametrize("mode", ["not-json", "truncated"])
def test_a_whole_answer_that_is_not_json_is_a_502_and_counted(
    served: Gateway, model: Upstream, cloudwatch: str, mode: str
) -> None:
    before = total(cloudwatch, "Errors")
    model.control(mode=mode)
    status, headers, body = chat(served.url)
    assert status == 502
    assert json.loads(body)["error"]["code"] == "upstream_malformed"
    assert headers["x-weightshift-outcome"] == "error"
    assert counted(cloudwatch, "Errors", before)
    with pytest.raises(openai.InternalServerError) as raised:
        sdk(served).chat.completions.create(
            model="support-assistant", messages=[{"role": "user", "content": "Hi"}]
        )
    assert raised.value.status_code == 502


@pytest.mark.parametrize("mode", ["not-json", "truncated"])
def test_a_broken_stream_ends_with_an_error_event_and_is_counted(
    served: Gateway, model: Upstream, cloudwatch: str, mode: str
) -> None:
    before = total(cloudwatch, "Errors")
    model.control(mode=mode)
    status, _, body = chat(served.url, stream=True)
    assert status == 200
    events = sse(body)
    assert events[0]["choices"][0]["delta"]["content"] == "Hello"  # what came before, relayed
    errors = [e for e in events if e != "[DONE]" and "error" in e]
    assert [e["error"]["code"] for e in errors] == ["upstream_malformed"]
    assert events[-1] == "[DONE]"
    assert counted(cloudwatch, "Errors", before)


def test_a_model_that_does_not_answer_in_time_is_a_504_to_the_sdk(
    served: Gateway, model: Upstream
) -> None:
    model.control(mode="hang")
    with pytest.raises(openai.InternalServerError) as raised:
        sdk(served).chat.completions.create(
            model="support-assistant", messages=[{"role": "user", "content": "Hi"}]
        )
    assert raised.value.status_code == 504
    assert "request_timeout_seconds" in str(raised.value)


def test_a_slow_reader_past_the_deadline_gets_an_error_event_counts_and_cancels_upstream(
    served: Gateway, model: Upstream, cloudwatch: str
) -> None:
    timeouts, errors, gone = total(cloudwatch, "Timeouts"), total(cloudwatch, "Errors"), 0
    gone = cancelled(model)
    model.control(mode="flood")
    host, port = served.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "stream": True}).encode()
    connection.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    # Not reading: the gateway's writes block, and the 2 s deadline passes meanwhile. The
    # upstream is cancelled while the client still does not read.
    assert eventually(lambda: cancelled(model) > gone)
    tail = response.read()[-2000:]  # now read: what was buffered, then the error event
    connection.close()
    assert b'"code": "timeout"' in tail
    assert tail.endswith(b"data: [DONE]\n\n")
    assert counted(cloudwatch, "Timeouts", timeouts)
    assert counted(cloudwatch, "Errors", errors)


def _abandon(gw: Gateway, stream: bool) -> socket.socket:
    """A request sent on a raw socket, to be closed without reading the answer."""
    host, port = gw.url.removeprefix("http://").split(":")
    body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "stream": stream}).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
        b"content-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    return sock


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_client_that_leaves_cancels_the_generation_and_frees_its_slot(
    patient: Gateway, model: Upstream, stream: bool
) -> None:
    model.control(mode="hang")
    gone = cancelled(model)
    sockets = [_abandon(patient, stream) for _ in range(2)]  # both of the 2 slots
    assert eventually(lambda: len(model.received()) == 2)
    for sock in sockets:
        sock.close()
    assert eventually(lambda: cancelled(model) >= gone + 2)  # the model server saw it
    model.control(mode="ok")
    status, _, body = chat(patient.url)  # the slots are free again: not 429
    assert status == 200, body
