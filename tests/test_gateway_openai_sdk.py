"""The real OpenAI Python SDK as the gateway's client: chat whole and streamed (with the usage
chunk), completions, models list and retrieve, and the SDK's error type for each status the
gateway answers (400, 404, 413, 429, 502, 504); every error an OpenAI-shaped JSON body with
the gateway's headers, Starlette's own 404 and 405 included."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.gateway_harness import (
    PROJECT,
    Gateway,
    Upstream,
    folder_id,
    free_port,
    gateway,
    request,
)

EXAMPLE = PROJECT / "bundles/support-assistant/v1.5.0"
MODEL = "support-assistant"
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "How do I reset my password?"}]


def sdk_bundle(root: Path) -> tuple[Path, str]:
    """The example bundle with two slots, a 2 s timeout and no moderation; its id."""
    target = root / "sdk"
    shutil.copytree(EXAMPLE, target)
    (target / "config/routing.json").write_text(
        json.dumps(
            {"max_input_tokens": 2000, "max_concurrent_requests": 2, "request_timeout_seconds": 2}
        )
    )
    safety = json.loads((target / "config/safety.json").read_text())
    safety.update(input_moderation=False, output_moderation=False, pii_redaction=False)
    safety["blocked_categories"] = []
    (target / "config/safety.json").write_text(json.dumps(safety))
    return target, folder_id(target, MODEL)


@pytest.fixture(scope="module")
def served(model: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root, bundle_id = sdk_bundle(tmp_path_factory.mktemp("sdk"))
    extra = ["--metrics", "off", "--max-body-bytes", "4096"]
    with gateway(root, model.url, bundle_id=bundle_id, extra=extra) as found:
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


def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_chat_whole_and_streamed_with_the_usage_chunk(served: Gateway) -> None:
    sdk = client(served.url)
    whole = sdk.chat.completions.create(model=MODEL, messages=ASK)
    assert whole.choices[0].message.content == (
        "Open Settings, then Security. Then choose Reset password."
    )
    assert whole.usage is not None
    assert whole.usage.completion_tokens > 0
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL,
            messages=ASK,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Open Settings, then Security. Then choose Reset password."
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1
    assert usage[0].completion_tokens > 0
    assert not chunks[-1].choices  # the usage chunk comes last, with no choices


def test_completions(served: Gateway) -> None:
    answer = client(served.url).completions.create(model=MODEL, prompt="Reset my password")
    assert answer.choices[0].text.startswith("Open Settings")


def test_models_list_and_retrieve(served: Gateway) -> None:
    sdk = client(served.url)
    (listed,) = sdk.models.list().data
    assert listed.id == MODEL
    assert isinstance(listed.created, int)
    assert listed.created > 0
    assert sdk.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.models.retrieve("gpt-4o")
    assert raised.value.code == "model_not_found"
    assert raised.value.response.headers["x-weightshift-colour"] == "green"


def test_a_bad_request_is_a_bad_request_error(served: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client(served.url).chat.completions.create(
            model=MODEL,
            messages=ASK,
            temperature=5,
        )
    assert raised.value.status_code == 400


def test_a_model_not_served_is_a_not_found_error(served: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client(served.url).chat.completions.create(
            model="not-this-one",
            messages=ASK,
        )
    assert raised.value.code == "model_not_found"


def test_a_body_over_the_cap_is_413(served: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        client(served.url).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x " * 10_000}],
        )
    assert raised.value.status_code == 413


def test_too_many_requests_is_a_rate_limit_error(served: Gateway, model: Upstream) -> None:
    model.control(mode="hang")
    holders = [
        threading.Thread(
            target=request,
            args=(f"{served.url}/v1/chat/completions", {"messages": ASK, "stream": True}),
            kwargs={"timeout": 10},
        )
        for _ in range(2)
    ]
    for holder in holders:
        holder.start()
    try:
        deadline = 50
        while len(model.received()) < 2 and deadline:
            threading.Event().wait(0.1)
            deadline -= 1
        with pytest.raises(openai.RateLimitError) as raised:
            client(served.url).chat.completions.create(
                model=MODEL,
                messages=ASK,
            )
        assert raised.value.status_code == 429
    finally:
        for holder in holders:
            holder.join(15)


def test_a_model_that_does_not_answer_in_time_is_504(served: Gateway, model: Upstream) -> None:
    model.control(mode="hang")
    with pytest.raises(openai.APIStatusError) as raised:
        client(served.url).chat.completions.create(
            model=MODEL,
            messages=ASK,
        )
    assert raised.value.status_code == 504
    assert isinstance(raised.value, openai.InternalServerError)


def test_an_unreachable_model_server_is_502(tmp_path: Path) -> None:
    root, bundle_id = sdk_bundle(tmp_path)
    nowhere = f"http://127.0.0.1:{free_port()}"
    with (
        gateway(root, nowhere, bundle_id=bundle_id, extra=["--metrics", "off"]) as found,
        pytest.raises(openai.InternalServerError) as raised,
    ):
        client(found.url).chat.completions.create(model=MODEL, messages=ASK)
    assert raised.value.status_code == 502


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nowhere", 404), ("GET", "/v1/chat/completions", 405), ("DELETE", "/livez", 405)],
)
def test_starlettes_own_errors_are_openai_json_with_the_headers(
    served: Gateway, method: str, path: str, status: int
) -> None:
    found, headers, body = request(f"{served.url}{path}", method=method)
    assert found == status
    error = json.loads(body)["error"]
    assert error["message"]
    assert error["type"] == "invalid_request_error"
    assert headers["content-type"] == "application/json"
    assert headers["x-weightshift-colour"] == "green"
    assert headers["x-weightshift-version"].startswith(f"{MODEL}/v1.5.0-")
    assert headers["x-request-id"]
    if status == 405:
        assert headers["allow"]


def test_models_items_carry_created(served: Gateway) -> None:
    with urllib.request.urlopen(f"{served.url}/v1/models", timeout=10) as answer:
        (item,) = json.loads(answer.read())["data"]
    assert isinstance(item["created"], int)
