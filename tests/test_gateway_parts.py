"""The gateway's parts that decide without I/O: the sentence buffer of moderated streams,
the metrics' datums, feedback tokens, and the request log's writer."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightshift.gateway.feedback import MAX_AGE_SECONDS, FeedbackError, FeedbackTokens
from weightshift.gateway.metrics import COUNTERS, MAX_VALUES_PER_DATUM, Metrics, compact
from weightshift.gateway.pipeline import SentenceBuffer

# --- the sentence buffer -----------------------------------------------------------------


def released(pieces: list[str], buffer: SentenceBuffer) -> list[str]:
    out = [ready for piece in pieces if (ready := buffer.feed(piece)) is not None]
    rest = buffer.flush()
    return [*out, rest] if rest else out


def test_the_first_piece_is_a_short_sentence_later_pieces_gather_several() -> None:
    sentence = "This sentence is exactly forty-two chars. "
    pieces = [word + " " for word in (sentence * 30).split()]
    out = released(pieces, SentenceBuffer(first_chars=64, then_chars=400))
    assert "".join(out).split() == (sentence * 30).split()
    assert 64 <= len(out[0]) < 64 + len(sentence) + 1
    # Then whole sentences, at least 400 characters a call (the last may be short).
    assert all(len(piece) >= 400 for piece in out[1:-1])
    assert all(piece.endswith(". ") for piece in out[:-1])
    assert len(out) <= 1 + (len(sentence) * 30) // 400 + 1


@given(st.lists(st.text(alphabet="ab .!?\n", max_size=30), max_size=40))
def test_nothing_is_lost_or_reordered(pieces: list[str]) -> None:
    assert "".join(released(pieces, SentenceBuffer(first_chars=8, then_chars=20))) == "".join(
        pieces
    )


def test_a_phrase_split_across_chunks_is_released_whole() -> None:
    buffer = SentenceBuffer(first_chars=10, then_chars=10)
    assert buffer.feed("Please wire the mo") is None
    assert buffer.feed("ney today. And") == "Please wire the money today. "
    assert buffer.flush() == "And"


# --- metrics -------------------------------------------------------------------------------


def metrics(**kwargs: Any) -> Metrics:
    return Metrics("m", "m/v1.0.0-abc", "green", interval=10, clock=lambda: 1000.0, **kwargs)


def test_every_counter_is_sent_by_version_and_by_colour_zeros_and_heartbeat_included() -> None:
    found = metrics()
    found.add("Requests", 3)
    found.observe("TimeToFirstToken", 0.25)
    datums = found.snapshot()
    by_version = [{"Name": "Model", "Value": "m"}, {"Name": "Version", "Value": "m/v1.0.0-abc"}]
    by_version.append({"Name": "Colour", "Value": "green"})
    by_colour = [{"Name": "Model", "Value": "m"}, {"Name": "Colour", "Value": "green"}]
    for dimensions in (by_version, by_colour):
        counters = {
            d["MetricName"]: d["Value"]
            for d in datums
            if d["Dimensions"] == dimensions and "Value" in d
        }
        assert set(counters) == set(COUNTERS)
        assert counters["Requests"] == 3
        assert counters["Errors"] == 0  # idle is data
        assert counters["Heartbeat"] == 1
        (ttft,) = [
            d
            for d in datums
            if d["Dimensions"] == dimensions and d["MetricName"] == "TimeToFirstToken"
        ]
        assert (ttft["Values"], ttft["Counts"]) == ([0.25], [1.0])
    assert all(d["StorageResolution"] == 1 for d in datums)


def test_feedback_is_sent_by_the_colour_that_answered_only() -> None:
    found = metrics()
    found.feedback("blue", 0.5)
    (quality,) = [d for d in found.snapshot() if d["MetricName"] == "QualityScore"]
    assert quality["Dimensions"] == [
        {"Name": "Model", "Value": "m"},
        {"Name": "Colour", "Value": "blue"},
    ]


def test_a_failed_send_keeps_its_interval_for_the_next_try_with_its_own_stamp() -> None:
    calls: list[list[dict[str, Any]]] = []

    async def flaky(datums: list[dict[str, Any]]) -> None:
        calls.append(datums)
        if len(calls) == 1:
            raise ConnectionError("reset")

    now = [1000.0]
    found = Metrics("m", "m/v1.0.0-abc", "green", interval=10, clock=lambda: now[0], sink=flaky)
    assert not asyncio.run(found.flush())
    assert (found.sent, found.failed, len(found.pending)) == (0, 1, 1)
    now[0] = 1010.0
    assert asyncio.run(found.flush())  # both intervals in one call, each its own stamp
    beats = [d["Timestamp"].timestamp() for d in calls[1] if d["MetricName"] == "Heartbeat"]
    assert sorted(beats) == [1000.0, 1000.0, 1010.0, 1010.0]  # two dimension sets each
    assert (found.sent, found.failed, found.dropped) == (1, 1, 0)

    async def down(datums: list[dict[str, Any]]) -> None:
        raise ConnectionError("down")

    broken = metrics(sink=down, backlog=2)
    for _ in range(3):
        asyncio.run(broken.flush())
    assert (broken.sent, broken.failed, broken.dropped, len(broken.pending)) == (0, 3, 1, 2)


@given(st.lists(st.floats(min_value=0.001, max_value=600), min_size=1, max_size=2000))
def test_compact_keeps_at_most_150_values_and_percentiles_within_a_bucket(
    values: list[float],
) -> None:
    samples = Counter(round(v, 3) for v in values)
    pairs = compact(samples)
    assert len(pairs) <= MAX_VALUES_PER_DATUM
    assert sum(count for _, count in pairs) == len(values)
    if len(samples) <= MAX_VALUES_PER_DATUM:
        assert pairs == sorted(samples.items())


# --- feedback tokens -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_taken_once_for_its_request_and_for_a_week() -> None:
    clock = Clock()
    pod_a = FeedbackTokens(b"k" * 32, clock)
    pod_b = FeedbackTokens(b"k" * 32, clock)
    token = pod_a.issue("green", "req-1")
    assert pod_b.accept(token, "req-1") == "green"  # any pod with the stack's key
    with pytest.raises(FeedbackError) as again:
        pod_b.accept(token, "req-1")
    assert (again.value.status, again.value.code) == (409, "duplicate_feedback")
    with pytest.raises(FeedbackError, match="does not match request id 'req-2'"):
        pod_a.accept(token, "req-2")
    with pytest.raises(FeedbackError, match="does not match"):
        FeedbackTokens(b"x" * 32, clock).accept(token, "req-1")  # another stack's key
    late = pod_a.issue("blue", "req-3")
    clock.now += MAX_AGE_SECONDS + 1
    with pytest.raises(FeedbackError) as old:
        pod_a.accept(late, "req-3")
    assert old.value.code == "expired_feedback_token"


@pytest.mark.parametrize("token", ["", "green", "green.x.y", "red.1.abc", "green.1.zz.extra"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(FeedbackError) as refused:
        FeedbackTokens(b"k" * 32).accept(token, "req")
    assert refused.value.status == 403


def test_the_gateway_serves_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """``uvicorn.Config(loop="uvloop")`` picks the loop only when uvicorn makes it; the
    gateway makes its own (its listeners share one), so ``server.run`` must ask for uvloop.
    On asyncio's own loop the gateway used 30 % more CPU per stream (docs/gateway.md)."""
    import uvloop

    from weightshift.gateway import server

    ran: list[str] = []

    def fake_run(coroutine: Any) -> None:
        ran.append(coroutine.__qualname__)
        coroutine.close()

    monkeypatch.setattr(uvloop, "run", fake_run)
    server.run(cast("server.Options", object()))
    assert ran == ["serve"]


# --- the request log ---------------------------------------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass


def test_the_request_log_writes_what_queued_in_one_write_in_order_and_all_by_stop() -> None:
    from weightshift.gateway.observe import RequestLog

    sink = _Sink()
    writer = RequestLog(sink, pause=0.01)
    for number in range(3):  # queued before the thread runs: its first batch holds all
        writer.put({"id": f"r{number}", "status": 200, "ttft_s": None})
    writer.start()
    writer.put({"id": "r3", "status": 400, "ttft_s": None})
    writer.stop()  # returns once what was queued is written
    assert len(sink.writes) in (1, 2)
    assert sink.writes[0].count("\n") >= 3
    lines = [json.loads(line) for text in sink.writes for line in text.splitlines()]
    assert [line["id"] for line in lines] == ["r0", "r1", "r2", "r3"]
    assert list(lines[0]) == ["time", "level", "logger", "msg", "id", "status", "ttft_s"]
    assert (lines[0]["level"], lines[0]["logger"], lines[0]["msg"]) == (
        "INFO",
        "weightshift.gateway.requests",
        "request",
    )


def test_a_request_line_goes_to_the_running_request_log_and_nowhere_once_it_stops() -> None:
    from weightshift.gateway.observe import log_request, request_log_enabled, start_request_log

    sink = _Sink()
    writer = start_request_log(sink)
    assert request_log_enabled()
    log_request({"id": "a"})
    writer.stop()
    log_request({"id": "b"})  # after stop: not queued for a writer that is gone
    assert [json.loads(line)["id"] for text in sink.writes for line in text.splitlines()] == ["a"]


@given(
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text())),
)
def test_a_request_line_is_the_record_json_with_datetime_s_own_time(
    created: float, fields: dict[str, Any]
) -> None:
    """The line is built from pieces encoded once (per process, per second): the same
    text as encoding the whole record, time formatted by ``datetime``, would give."""
    from datetime import UTC, datetime

    from weightshift.gateway.observe import request_line

    record = {
        "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": "INFO",
        "logger": "weightshift.gateway.requests",
        "msg": "request",
    }
    fields = {key: value for key, value in fields.items() if key not in record}
    assert request_line(created, fields) == json.dumps({**record, **fields}, separators=(",", ":"))


@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=20))
def test_a_token_s_mac_is_hmac_sha256_under_the_key(
    colour: str, request_id: str, answer: str
) -> None:
    import hmac

    from weightshift.gateway.feedback import MAC_HEX

    key = b"k" * 32
    tokens = FeedbackTokens(key, clock=lambda: 1_700_000_000)
    message = f"{colour}.1700000000.{answer}.{request_id}".encode(errors="surrogatepass")
    expected = hmac.digest(key, message, "sha256").hex()[:MAC_HEX]
    assert tokens._mac(colour, 1_700_000_000, answer, request_id) == expected
    assert tokens._mac(colour, 1_700_000_000, answer, request_id) == expected  # key intact


@given(st.floats(min_value=0, max_value=600, allow_nan=False))
def test_a_latency_is_kept_to_the_millisecond(seconds: float) -> None:
    recorded = metrics()
    recorded.observe("Latency", seconds)
    (kept,) = recorded.samples["Latency"]
    assert abs(kept - seconds) <= 0.0005 + 1e-9
    assert kept == round(kept, 3)


_CHAT_MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system"]), "content": st.text()}
    ),
    min_size=1,
    max_size=4,
)


@pytest.mark.parametrize("templated", [False, True], ids=["constant-prompt", "templated"])
@given(messages=_CHAT_MESSAGES, temperature=st.none() | st.floats(0, 2), masked=st.booleans())
def test_the_upstream_body_is_the_payload_as_json(
    templated: bool, messages: list[dict[str, str]], temperature: float | None, masked: bool
) -> None:
    """``payload_json`` splices the prompt encoded at load (where the system prompt is the
    same for every request) into the rest: the model server receives what ``payload``
    describes, whatever the client's messages say."""
    from dataclasses import replace

    from tests.gateway_harness import PROJECT, folder_id
    from weightshift.gateway import pipeline
    from weightshift.gateway.protocol import ChatCompletionRequest
    from weightshift.gateway.served import PromptTemplate

    root = PROJECT / "bundles/support-assistant/v1.5.0"
    bundle = _served(root, folder_id(root))
    assert bundle.prompt_json is not None  # the example's prompt has no variables
    if templated:
        template = PromptTemplate.parse("You serve {{user}} today.")
        bundle = replace(bundle, system=template, prompt_json=None)
    request = ChatCompletionRequest.model_validate(
        {"messages": messages, "temperature": temperature, "stream": True, "user": "ann"}
    )
    texts = [f"masked {n}" for n in range(len(messages))] if masked else None
    sampled = pipeline.sampling(bundle, request, None)
    expected = pipeline.payload(bundle, request, sampled, texts)
    body = pipeline.payload_json(bundle, request, sampled, texts)
    assert json.loads(body) == expected
    assert body.isascii()


_SERVED: dict[str, Any] = {}


def _served(root: Any, bundle_id: str) -> Any:
    from weightshift.gateway.served import load_served

    if bundle_id not in _SERVED:
        _SERVED[bundle_id] = load_served(root, bundle_id)
    return _SERVED[bundle_id]
