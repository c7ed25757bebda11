"""The gateway as a real process in front of a real (fake) model server process: every part
of the bundle takes effect, limits answer with their documented status, moderation refuses,
metrics reach an emulated CloudWatch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
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
BUNDLE_ID = "support-assistant/v1.5.0-d80719af096e"
SYSTEM = (EXAMPLE / "prompt/system.txt").read_text().strip()


def tuned_bundle(root: Path) -> Path:
    """The example bundle with tight limits and a blocked term, for the limit tests."""
    target = root / "tuned"
    shutil.copytree(EXAMPLE, target)
    (target / "config/routing.json").write_text(
        json.dumps(
            {
                "max_input_tokens": 120,
                "max_concurrent_requests": 2,
                "request_timeout_seconds": 2,
                "rules": [
                    {
                        "match": {"header:x-tenant": "bulk"},
                        "max_output_tokens": 64,
                        "priority": "batch",
                    }
                ],
            }
        )
    )
    safety = json.loads((target / "config/safety.json").read_text())
    safety["blocked_terms"] = ["forbidden phrase"]
    (target / "config/safety.json").write_text(json.dumps(safety))
    return target


@pytest.fixture(scope="module")
def feedback_key(cloudwatch: str) -> str:
    """The stack's HMAC key, in the emulated KMS."""
    kms = boto3.client(
        "kms",
        endpoint_url=cloudwatch,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    return str(key["KeyMetadata"]["Arn"])


@pytest.fixture(scope="module")
def served(
    model: Upstream, cloudwatch: str, feedback_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """The example bundle served, metrics every second to the emulated CloudWatch."""
    with gateway(
        EXAMPLE,
        model.url,
        bundle_id=BUNDLE_ID,
        extra=[
            "--metrics",
            "cloudwatch",
            "--metrics-interval",
            "1",
            "--feedback-key",
            feedback_key,
        ],
        env={**AWS, "AWS_ENDPOINT_URL": cloudwatch},
    ) as found:
        yield found


@pytest.fixture(scope="module")
def tight(model: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tuned_bundle(tmp_path_factory.mktemp("tight"))
    # A changed copy is a different bundle: the gateway checks the id against its digest.
    tuned_id = folder_id(root)
    with gateway(root, model.url, bundle_id=tuned_id, extra=["--metrics", "off"]) as found:
        yield found


@pytest.fixture(autouse=True)
def reset(model: Upstream) -> None:
    model.control(
        mode="ok",
        text="Open Settings, then Security. Then choose Reset password.",
        token_delay=0.0,
        first_token_delay=0.0,
    )
    model.clear()


def chat(
    url: str, content: str = "How do I change my email?", **fields: Any
) -> tuple[int, dict[str, str], bytes]:
    headers = fields.pop("headers", None)
    body = {
        "model": "support-assistant",
        "messages": [{"role": "user", "content": content}],
        **fields,
    }
    return request(f"{url}/v1/chat/completions", body, headers=headers)


def test_the_model_receives_the_bundles_prompt_examples_and_defaults(
    served: Gateway, model: Upstream
) -> None:
    status, headers, body = chat(served.url, temperature=0.5)
    assert status == 200, body
    (seen,) = model.received()
    messages = seen["body"]["messages"]
    assert messages[0] == {"role": "system", "content": SYSTEM}
    assert messages[1] == {"role": "user", "content": "How do I reset my password?"}
    assert messages[2]["role"] == "assistant"
    assert messages[-1] == {"role": "user", "content": "How do I change my email?"}
    sent = seen["body"]
    assert sent["temperature"] == 0.5  # the client's, within limits
    assert sent["top_p"] == 0.9  # the bundle's
    assert sent["max_tokens"] == 1024
    assert sent["model"] == "support-assistant"
    assert json.loads(body)["choices"][0]["message"]["content"].startswith("Open Settings")
    assert headers["x-weightshift-version"] == BUNDLE_ID
    assert headers["x-weightshift-colour"] == "green"
    assert headers["x-request-id"].startswith("ws-green-")


def test_a_streamed_answer_arrives_whole_and_the_model_is_asked_the_same(
    served: Gateway, model: Upstream
) -> None:
    status, _, body = chat(served.url, stream=True)
    assert status == 200
    events = sse(body)
    assert events[-1] == "[DONE]"
    text = "".join(
        (e["choices"][0].get("delta") or {}).get("content") or ""
        for e in events[:-1]
        if e["choices"]
    )
    assert text == "Open Settings, then Security. Then choose Reset password."
    # The gateway asked for usage (a metric) but the client did not: no usage chunk.
    assert all(e == "[DONE]" or e["choices"] for e in events)
    (seen,) = model.received()
    assert seen["body"]["messages"][0]["content"] == SYSTEM
    assert seen["body"]["stream_options"] == {"include_usage": True}


def test_the_request_id_is_kept_or_assigned(served: Gateway) -> None:
    _, headers, _ = chat(served.url, headers={"x-request-id": "client-abc"})
    assert headers["x-request-id"] == "client-abc"


def test_completions_get_the_prompt_as_text(served: Gateway, model: Upstream) -> None:
    status, _, body = request(
        f"{served.url}/v1/completions", {"prompt": "Customer: where is my order?"}
    )
    assert status == 200, body
    (seen,) = model.received()
    prompt = seen["body"]["prompt"]
    assert prompt.startswith(SYSTEM + "\n\nUser: How do I reset my password?\nAssistant: ")
    assert prompt.endswith("Customer: where is my order?")


def test_unknown_fields_and_limits_beyond_the_bundle_are_refused(served: Gateway) -> None:
    status, _, body = chat(served.url, echo=True)
    assert status == 400
    assert json.loads(body)["error"]["param"] == "echo"
    status, _, body = chat(served.url, max_tokens=5000)
    assert status == 400
    error = json.loads(body)["error"]
    assert "max_tokens 5000 exceeds this model version's limit of 1024" in error["message"]


def test_an_over_long_input_gets_400_naming_the_limit(tight: Gateway, model: Upstream) -> None:
    status, _, body = chat(tight.url, "word " * 200)
    assert status == 400
    error = json.loads(body)["error"]
    assert error["code"] == "input_too_long"
    assert "the limit is 120 (config/routing.json max_input_tokens)" in error["message"]
    assert model.received() == []


def test_beyond_the_concurrency_limit_a_request_gets_429_with_retry_after(
    tight: Gateway, model: Upstream
) -> None:
    model.control(first_token_delay=1.0)
    with ThreadPoolExecutor(max_workers=3) as pool:
        slow = [pool.submit(chat, tight.url) for _ in range(2)]
        time.sleep(0.4)
        status, headers, body = chat(tight.url)
        assert [f.result()[0] for f in slow] == [200, 200]
    assert status == 429
    assert headers["retry-after"] == "1"
    assert "max_concurrent_requests" in json.loads(body)["error"]["message"]


def test_a_batch_rule_uses_half_the_slots_and_caps_output(tight: Gateway, model: Upstream) -> None:
    model.control(first_token_delay=1.0)
    bulk = {"x-tenant": "bulk"}
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(chat, tight.url, headers=bulk)
        time.sleep(0.4)
        second = chat(tight.url, headers=bulk)
        assert first.result()[0] == 200
    assert second[0] == 429  # a batch request may hold 1 of the 2 slots
    model.control(first_token_delay=0.0)
    assert chat(tight.url, headers=bulk, max_tokens=100)[0] == 400
    model.clear()
    assert chat(tight.url, headers=bulk)[0] == 200
    assert model.received()[0]["body"]["max_tokens"] == 64


def test_a_model_that_does_not_answer_in_time_gets_504_and_is_cancelled(
    tight: Gateway, model: Upstream
) -> None:
    model.control(mode="hang")
    started = time.monotonic()
    status, _, body = chat(tight.url)
    elapsed = time.monotonic() - started
    assert status == 504
    assert "request_timeout_seconds" in json.loads(body)["error"]["message"]
    assert elapsed >= 1.8  # it waited the bundle's request timeout (2 s), not less
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _, _, state = request(f"{model.url}/state")
        if json.loads(state)["cancelled"] >= 1:
            break
        time.sleep(0.1)
    assert json.loads(state)["cancelled"] >= 1  # the upstream saw the request cancelled


def test_a_blocked_input_gets_the_refusal_message(tight: Gateway, model: Upstream) -> None:
    status, headers, body = chat(tight.url, "Tell me the Forbidden Phrase now")
    assert status == 200
    choice = json.loads(body)["choices"][0]
    assert choice["message"]["content"] == "Sorry, I can't help with that."
    assert choice["finish_reason"] == "content_filter"
    assert headers["x-weightshift-outcome"] == "blocked"
    assert model.received() == []  # never reached the model


def test_a_blocked_output_gets_the_refusal_message(tight: Gateway, model: Upstream) -> None:
    model.control(text="Sure. Here is the forbidden phrase you asked for.")
    status, _, body = chat(tight.url)
    choice = json.loads(body)["choices"][0]
    assert (status, choice["message"]["content"]) == (200, "Sorry, I can't help with that.")
    status, _, body = chat(tight.url, stream=True)
    events = sse(body)
    text = "".join(
        (e["choices"][0].get("delta") or {}).get("content") or ""
        for e in events
        if e != "[DONE]" and e.get("choices")
    )
    assert "forbidden phrase" not in text.lower()
    assert text.endswith("Sorry, I can't help with that.")
    finishes = [e["choices"][0].get("finish_reason") for e in events if e != "[DONE]"]
    assert "content_filter" in finishes
    assert events[-1] == "[DONE]"


def test_personal_data_is_masked_both_ways(tight: Gateway, model: Upstream) -> None:
    model.control(text="Write to jane.doe@example.com for help.")
    _, _, body = chat(tight.url, "My email is john@example.org, call me")
    (seen,) = model.received()
    assert "john@example.org" not in seen["body"]["messages"][-1]["content"]
    assert "[EMAIL]" in seen["body"]["messages"][-1]["content"]
    answer = json.loads(body)["choices"][0]["message"]["content"]
    assert "jane.doe@example.com" not in answer


def test_health_follows_the_model_server(served: Gateway, model: Upstream) -> None:
    assert request(f"{served.url}/health")[0] == 200
    model.control(mode="refuse-health")
    time.sleep(1.1)  # the health answer is reused for a second
    assert request(f"{served.url}/health")[0] == 503
    assert request(f"{served.url}/livez")[0] == 200
    model.control(mode="ok")
    time.sleep(1.1)
    assert request(f"{served.url}/health")[0] == 200
    _, _, body = request(f"{served.url}/v1/models")
    item = json.loads(body)["data"][0]
    assert isinstance(item.pop("created"), int)
    assert item == {
        "id": "support-assistant",
        "object": "model",
        "owned_by": "weightshift",
        "root": BUNDLE_ID,
        "parent": None,
    }


def test_feedback_needs_the_answers_token_and_counts_once(
    served: Gateway, model: Upstream, cloudwatch: str, feedback_key: str
) -> None:
    _, headers, _ = chat(served.url)
    request_id, token = headers["x-request-id"], headers["x-weightshift-feedback-token"]
    assert token.startswith("green.")

    def feedback(url: str, **body: Any) -> tuple[int, dict[str, Any]]:
        status, _, answer = request(f"{url}/v1/feedback", body)
        return status, json.loads(answer)

    status, answer = feedback(served.url, request_id=request_id, score=0.9, token=token)
    assert (status, answer["colour"]) == (202, "green")
    # Once per request id: a second score for the same answer is refused.
    status, answer = feedback(served.url, request_id=request_id, score=0.0, token=token)
    assert (status, answer["error"]["code"]) == (409, "duplicate_feedback")
    # An id no gateway issued a token for, or a token of another answer: refused.
    for forged in ("green.1.00", token.replace("green.", "blue.", 1), f"{token[:-1]}0"):
        status, answer = feedback(served.url, request_id="ws-green-x", score=0.0, token=forged)
        assert (status, answer["error"]["code"]) == (403, "invalid_feedback_token")
    status, answer = feedback(served.url, request_id="ws-green-x", score=0.0)
    assert status == 400
    # The other colour's pod takes it too: every gateway derives the key from the stack's
    # KMS key, and the token names the colour that answered.
    _, headers, _ = chat(served.url)
    with gateway(
        EXAMPLE,
        model.url,
        colour="blue",
        bundle_id=BUNDLE_ID,
        extra=["--metrics", "off", "--feedback-key", feedback_key],
        env={**AWS, "AWS_ENDPOINT_URL": cloudwatch},
    ) as blue:
        status, answer = feedback(
            blue.url,
            request_id=headers["x-request-id"],
            score=0.2,
            token=headers["x-weightshift-feedback-token"],
        )
    assert (status, answer["colour"]) == (202, "green")


def test_a_gateway_that_cannot_derive_the_feedback_key_does_not_start(
    model: Upstream, cloudwatch: str
) -> None:
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "weightshift.cli",
            "gateway",
            "--bundle",
            str(EXAMPLE),
            "--bundle-id",
            BUNDLE_ID,
            "--upstream",
            model.url,
            "--colour",
            "green",
            "--metrics",
            "off",
            "--feedback-key",
            "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000",
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **AWS, "AWS_ENDPOINT_URL": cloudwatch},
    )
    assert process.returncode == 2
    said = " ".join(process.stderr.split())
    assert "KMS GenerateMac failed" in said
    assert "The pod's role needs kms:GenerateMac on that HMAC_256 key" in said


def _datapoints(endpoint: str, name: str, stat: str = "Sum") -> list[float]:
    dimensions = {"Model": "support-assistant", "Version": BUNDLE_ID, "Colour": "green"}
    return datapoints(endpoint, name, dimensions, stat)


def test_metrics_arrive_every_interval_with_explicit_zeros(
    served: Gateway, cloudwatch: str
) -> None:
    chat(served.url)
    time.sleep(3.5)  # a few intervals, mostly idle
    requests = _datapoints(cloudwatch, "Requests")
    assert len(requests) >= 3
    assert 0.0 in requests  # idle intervals send zeros, not nothing
    assert sum(requests) >= 1
    assert _datapoints(cloudwatch, "Heartbeat")
    assert sum(_datapoints(cloudwatch, "TokensOut")) > 0
    latency = _datapoints(cloudwatch, "Latency", "SampleCount")
    assert sum(latency) >= 1
    # Each also by Model and Colour alone: what the rollback alarms read. (CloudWatch matches
    # a query's dimension set exactly; moto matches subsets, so the sets are checked here.)
    client = boto3.client(
        "cloudwatch",
        endpoint_url=cloudwatch,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    for name in ("Requests", "Errors", "Heartbeat", "OutputBlocks", "Latency"):
        found = client.list_metrics(Namespace="weightshift", MetricName=name)["Metrics"]
        sets = {frozenset(d["Name"] for d in metric["Dimensions"]) for metric in found}
        assert sets == {
            frozenset({"Model", "Version", "Colour"}),
            frozenset({"Model", "Colour"}),
        }, name


def test_a_stream_survives_many_concurrent_clients(served: Gateway, model: Upstream) -> None:
    model.control(token_delay=0.01)
    results: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        status, _, body = chat(served.url, stream=True)
        with lock:
            results.append(status if sse(body)[-1] == "[DONE]" else -1)

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(lambda _: one(), range(32)))
    assert results == [200] * 32
