"""The gateway's bounds before work, its feedback tokens and its model names, against real
processes (the gateway in front of the fake model server): oversized bodies (with and
without ``Content-Length``) answered 413 with the process's memory unmoved, a text too long
to fit refused uncounted, a stream that keeps flowing while a long prompt is counted,
feedback tokens only on the model's answers and every malformed token a 403, and 404
``model_not_found`` for a model this gateway does not serve."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
from starlette.testclient import TestClient
from tokenizers import Tokenizer, models, pre_tokenizers

from tests.gateway_harness import PROJECT, Gateway, Upstream, folder_id, gateway, request
from weightshift.gateway import pipeline
from weightshift.gateway.app import build_app
from weightshift.gateway.feedback import MAX_AGE_SECONDS, FeedbackError, FeedbackTokens
from weightshift.gateway.metrics import Metrics
from weightshift.gateway.moderation import Moderator
from weightshift.gateway.protocol import ChatCompletionRequest
from weightshift.gateway.served import (
    COUNT_BATCH_CHARS,
    COUNT_SLICE_CHARS,
    ServedBundle,
    load_served,
    max_bytes_per_token,
)
from weightshift.gateway.state import Gateway as GatewayState

EXAMPLE = PROJECT / "bundles/support-assistant/v1.5.0"
BUNDLE_ID = "support-assistant/v1.5.0-d80719af096e"
TOKEN = "x-weightshift-feedback-token"
MIB = 1024 * 1024


def _bundle(root: Path, name: str, **routing: Any) -> Path:
    target = root / name
    shutil.copytree(EXAMPLE, target)
    path = target / "config/routing.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **routing}))
    path = target / "config/safety.json"
    # No output moderation: its stream is the plain relay, event by event.
    path.write_text(json.dumps({**json.loads(path.read_text()), "output_moderation": False}))
    return target


@pytest.fixture(scope="module")
def served(model: Upstream) -> Iterator[Gateway]:
    with gateway(EXAMPLE, model.url, bundle_id=BUNDLE_ID, extra=["--metrics", "off"]) as found:
        yield found


@pytest.fixture(scope="module")
def roomy(model: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A bundle taking a million input tokens (its body limit the largest, 4 MiB), its
    output not moderated."""
    root = _bundle(tmp_path_factory.mktemp("roomy"), "roomy", max_input_tokens=1_000_000)
    with gateway(root, model.url, bundle_id=folder_id(root), extra=["--metrics", "off"]) as found:
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


def _chat(url: str, content: str = "How do I change my email?", **fields: Any) -> Any:
    headers = fields.pop("headers", None)
    body = {"model": "support-assistant", "messages": [{"role": "user", "content": content}]}
    return request(f"{url}/v1/chat/completions", {**body, **fields}, headers=headers)


def _connect(url: str, timeout: float) -> http.client.HTTPConnection:
    where = urlsplit(url)
    return http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=timeout)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _post_raw(url: str, body: bytes, *, chunked: bool) -> tuple[int, dict[str, str], bytes]:
    """POST ``body`` to the chat endpoint, with a Content-Length or chunked (none)."""
    connection = _connect(url, 60)
    try:
        connection.putrequest("POST", "/v1/chat/completions")
        connection.putheader("content-type", "application/json")
        if chunked:
            connection.putheader("transfer-encoding", "chunked")
        else:
            connection.putheader("content-length", str(len(body)))
        connection.endheaders()
        step = 256 * 1024
        try:
            for start in range(0, len(body), step):
                piece = body[start : start + step]
                connection.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            if chunked:
                connection.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway answered and stopped reading: its answer is still there
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        connection.close()


def _body(text: str) -> bytes:
    message = {"role": "user", "content": text}
    return json.dumps({"model": "support-assistant", "messages": [message]}).encode()


def _huge(size: int) -> bytes:
    return _body("x" * size)


# --- bounds before work -------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_body_is_413_before_it_is_parsed_and_memory_stays(
    served: Gateway, model: Upstream, chunked: bool
) -> None:
    body = _huge(8 * MIB)
    before = _rss_mib(served.process.pid)
    for _ in range(2):
        status, headers, answer = _post_raw(served.url, body, chunked=chunked)
        assert status == 413
        error = json.loads(answer)["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
        assert headers["x-weightshift-version"] == BUNDLE_ID
        assert TOKEN not in headers
    assert _rss_mib(served.process.pid) - before < 200
    assert model.received() == []
    # The gateway still answers (the connection's rest was discarded, not kept).
    assert _chat(served.url)[0] == 200


def test_a_text_too_long_to_fit_is_refused_without_counting(
    served: Gateway, model: Upstream
) -> None:
    # 200,000 characters: under the body limit (384 KiB for 8192 tokens), but more than
    # 8192 tokens of at most 17 bytes each could hold.
    status, headers, body = _chat(served.url, "x" * 200_000)
    assert status == 400
    error = json.loads(body)["error"]
    assert error["code"] == "input_too_long"
    assert "whatever they say" in error["message"]
    assert TOKEN not in headers
    assert model.received() == []


def test_a_stream_keeps_flowing_while_a_long_prompt_is_counted(
    roomy: Gateway, model: Upstream
) -> None:
    """A 3.5 MB prompt under the body limit is tokenized (up to the limit of a million
    tokens) while another client's stream is relayed: the stream's events keep arriving
    while the long request is in the gateway (on the event loop, counting froze it)."""
    model.control(text=" ".join(["word"] * 4000), token_delay=0.005)
    events: list[str] = []
    started = threading.Event()

    def read_stream() -> None:
        connection = _connect(roomy.url, 60)
        body = {
            "model": "support-assistant",
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "stream": True,
        }
        connection.request(
            "POST",
            "/v1/chat/completions",
            json.dumps(body),
            {"content-type": "application/json"},
        )
        response = connection.getresponse()
        assert response.status == 200
        while True:
            line = response.readline()
            if not line or line.startswith(b"data: [DONE]"):
                break
            if line.startswith(b"data:"):
                events.append("chunk")
                started.set()
            if "answered" in events:
                break
        connection.close()

    reader = threading.Thread(target=read_stream)
    reader.start()
    assert started.wait(30)
    connection = _connect(roomy.url, 120)
    connection.request(
        "POST",
        "/v1/chat/completions",
        _body("many words " * 320_000),
        {"content-type": "application/json"},
    )
    events.append("sent")
    response = connection.getresponse()
    answer = json.loads(response.read())
    events.append("answered")
    connection.close()
    reader.join(60)
    assert response.status == 400
    assert answer["error"]["code"] == "input_too_long"
    during = events[events.index("sent") : events.index("answered")].count("chunk")
    assert during >= 10, events.count("chunk")


def test_the_system_prompt_and_examples_are_counted_once_not_per_request() -> None:
    bundle = load_served(EXAMPLE, BUNDLE_ID)
    seen: list[list[str]] = []

    class Spy:
        def encode_batch_fast(self, texts: list[str], add_special_tokens: bool) -> Any:
            seen.append(list(texts))
            return bundle.tokenizer.encode_batch_fast(texts, add_special_tokens=add_special_tokens)

    spied = replace(bundle, tokenizer=cast(Tokenizer, Spy()))
    parsed = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "How do I change my email?"}]}
    )
    tokens = pipeline.input_tokens(spied, parsed, pipeline.client_texts(parsed))
    assert seen == [["How do I change my email?"]]
    whole = bundle.count([bundle.system_prompt(None), "How do I change my email?"])
    assert tokens == whole + bundle.few_shot_tokens + 4 * 2


def test_a_long_text_is_counted_in_slices_and_no_further_than_the_limit() -> None:
    bundle = load_served(EXAMPLE, BUNDLE_ID)
    text = "How do I change my email address? " * 20_000  # 700,000 characters
    whole = len(bundle.tokenizer.encode(text, add_special_tokens=False).ids)
    sliced = bundle.count([text])
    assert abs(sliced - whole) <= len(text) // COUNT_SLICE_CHARS + 1
    tokenized: list[int] = []

    class Spy:
        def encode_batch_fast(self, texts: list[str], add_special_tokens: bool) -> Any:
            tokenized.append(sum(len(t) for t in texts))
            return bundle.tokenizer.encode_batch_fast(texts, add_special_tokens=add_special_tokens)

    spied = replace(bundle, tokenizer=cast(Tokenizer, Spy()))
    assert spied.count([text], limit=1000) > 1000
    assert sum(tokenized) <= COUNT_BATCH_CHARS + COUNT_SLICE_CHARS  # one batch of 700,000


def test_the_byte_bound_holds_only_for_tokenizers_that_keep_every_character() -> None:
    assert max_bytes_per_token(load_served(EXAMPLE, BUNDLE_ID).tokenizer) == 17
    vocab = {"[UNK]": 0, "a": 1, "b": 2}
    words = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()  # drops whitespace: no bound
    assert max_bytes_per_token(words) is None
    fused = Tokenizer(models.BPE({"[UNK]": 0, "a": 1}, [], unk_token="[UNK]", fuse_unk=True))
    assert max_bytes_per_token(fused) is None  # any unknown run is one token
    each = Tokenizer(models.BPE({"[UNK]": 0, "a": 1, "ab": 2}, [], unk_token="[UNK]"))
    assert max_bytes_per_token(each) == 5  # "[UNK]" is the longest entry


# --- feedback only for the model's answers -----------------------------------------------


def _feedback(url: str, **body: Any) -> tuple[int, dict[str, Any]]:
    status, _, answer = request(f"{url}/v1/feedback", body)
    return status, json.loads(answer)


def test_a_body_that_is_not_json_gets_no_token_and_no_score(
    served: Gateway, model: Upstream
) -> None:
    accepted = 0
    for n in range(50):
        status, headers, _ = _post_not_json(served.url, "victim-1")
        assert status == 400
        assert TOKEN not in headers
        assert headers["x-request-id"] == "victim-1"
        forged = f"green.{n}.0123456789abcdef01234567.0123456789abcdef0123456789abcdef"
        status, _ = _feedback(served.url, request_id="victim-1", score=0, token=forged)
        accepted += status == 202
    assert accepted == 0
    assert model.received() == []


def _post_not_json(url: str, request_id: str) -> tuple[int, dict[str, str], bytes]:
    connection = _connect(url, 30)
    try:
        connection.request(
            "POST",
            "/v1/chat/completions",
            b"not json",
            {"content-type": "application/json", "x-request-id": request_id},
        )
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        connection.close()


def test_only_the_models_answers_carry_a_token(served: Gateway, model: Upstream) -> None:
    status, headers, _ = _chat(served.url, headers={"x-request-id": "same"})
    assert status == 200
    assert TOKEN in headers
    first = headers[TOKEN]
    status, headers, _ = _chat(served.url, headers={"x-request-id": "same"}, stream=True)
    assert status == 200
    assert TOKEN in headers
    second = headers[TOKEN]
    # Two answers to the same x-request-id: each scored once (the gateway's id is the key).
    assert _feedback(served.url, request_id="same", score=1, token=first)[0] == 202
    assert _feedback(served.url, request_id="same", score=1, token=second)[0] == 202
    assert _feedback(served.url, request_id="same", score=0, token=first)[0] == 409
    assert _feedback(served.url, request_id="other", score=0, token=second)[0] == 403
    # Refused by the gateway, or failed by the model server: no token.
    for refused in (
        _chat(served.url, temperature=9),
        _chat(served.url, model="gpt-4o"),
    ):
        assert refused[0] in (400, 404)
        assert TOKEN not in refused[1]
    model.control(mode="error")
    status, headers, _ = _chat(served.url)
    assert status == 500
    assert TOKEN not in headers


@pytest.mark.parametrize(
    "token",
    [
        "green.\u00b9\u00b2\u00b3.0123456789abcdef01234567.0123456789abcdef0123456789abcdef",
        "green.1.0123456789abcdef01234567.0123456789abcdef0123456789abcde\u00e9",
        "green.1.0123456789abcdef01234567.\u0660123456789abcdef0123456789abcdef",
        "green.1.0123456789abcdef01234567.0123456789ABCDEF0123456789ABCDEF",
        "green.1.0123456789abcdef01234567.0123456789abcdef",
        "green.1.0123456789abcdef0123456.0123456789abcdef0123456789abcdef",
        "green.1.0123456789abcdef01234567.MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3",
        "green.1.0123456789abcdef01234567.0123456789abcdef0123456789abcdef",
        "green.99999999999999999999.0123456789abcdef01234567.0123456789abcdef0123456789abcdef",
        "green.1.00",
        "green.\u00b9\u00b2.0123456789abcdef0123456789abcdef",
        "green.1.0123456789abcdef0123456789abcde\u00e9",
        "blue..0.0",
    ],
)
def test_every_malformed_or_forged_token_is_403(served: Gateway, token: str) -> None:
    status, answer = _feedback(served.url, request_id="req-\u00b9", score=0.5, token=token)
    assert status == 403, answer
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == "token"


def test_an_expired_or_reissued_token_is_refused() -> None:
    now = [1_800_000_000.0]
    tokens = FeedbackTokens(b"k" * 32, lambda: now[0])
    token = tokens.issue("green", "req", "0123456789abcdef01234567")
    again = tokens.issue("green", "req", "0123456789abcdef01234567")
    assert tokens.accept(token, "req") == "green"
    with pytest.raises(FeedbackError) as twice:
        tokens.accept(again, "req")  # the same answer: scored once
    assert twice.value.status == 409
    late = tokens.issue("blue", "req")
    now[0] += MAX_AGE_SECONDS + 1
    with pytest.raises(FeedbackError) as old:
        tokens.accept(late, "req")
    assert (old.value.status, old.value.code) == (403, "expired_feedback_token")


# --- model names ---------------------------------------------------------------------------


def test_a_model_this_gateway_does_not_serve_is_404(served: Gateway, model: Upstream) -> None:
    status, headers, body = _chat(served.url, model="gpt-4o")
    assert status == 404
    assert json.loads(body) == {
        "error": {
            "message": "The model `gpt-4o` does not exist.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    assert headers["x-weightshift-version"] == BUNDLE_ID
    assert model.received() == []
    for name in ("support-assistant", BUNDLE_ID):
        assert _chat(served.url, model=name)[0] == 200
    status, _, _ = request(
        f"{served.url}/v1/completions", {"model": "support-assistant/v9.9.9-abc", "prompt": "hi"}
    )
    assert status == 404


class _Counted:
    def __init__(self) -> None:
        self.added: list[str] = []

    def add(self, name: str, value: int = 1) -> None:
        self.added.append(name)

    def observe(self, name: str, seconds: float) -> None:
        self.added.append(name)

    def feedback(self, colour: str, score: float) -> None:
        pass


def test_a_404_for_the_model_counts_as_no_request_and_no_error() -> None:
    bundle = load_served(EXAMPLE, BUNDLE_ID)
    counted = _Counted()
    state = GatewayState(
        bundle, "http://127.0.0.1:9", "green", cast(Moderator, None), cast(Metrics, counted)
    )
    with TestClient(build_app(state)) as client:
        answer = client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert answer.status_code == 404
        assert counted.added == []
        assert client.post("/v1/chat/completions", content=b"not json").status_code == 400
        assert "Requests" in counted.added
        assert "Errors" not in counted.added


def test_the_bundle_serves_its_names_and_a_body_limit_from_its_input_limit() -> None:
    bundle: ServedBundle = load_served(EXAMPLE, BUNDLE_ID)
    assert bundle.served_names == frozenset({"support-assistant", BUNDLE_ID})
    assert bundle.max_body_bytes == 8192 * 48
    assert load_served(EXAMPLE, BUNDLE_ID, max_body_bytes=1000).max_body_bytes == 1000
