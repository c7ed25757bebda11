"""Moderation under attack (issue 16): a blocked phrase split across a stream's pieces, tool
calls and log probabilities under output moderation (a blocked argument blocks), personal
data in content parts, one moderation call per request for the input, the model server's
mid-stream error under moderation. The gateway runs as a real process in front of the fake
model server; the input's call count is read in process, with the local moderator and with a
stubbed Bedrock client."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import boto3
import openai
import pytest
from botocore.stub import Stubber
from openai.types.chat import ChatCompletionToolParam

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
from weightshift.bundles.schemas import Safety
from weightshift.gateway import state
from weightshift.gateway.moderated import moderate_answer, moderate_input
from weightshift.gateway.moderation import (
    BedrockModerator,
    LocalModerator,
    Source,
    Verdict,
    Verdicts,
)
from weightshift.gateway.protocol import ChatCompletionRequest

EXAMPLE = PROJECT / "bundles/support-assistant/v1.5.0"
REFUSAL = "Sorry, I can't help with that."
TERMS = ["forbidden phrase", "launch codes"]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Find an order.",
            "parameters": {"type": "object", "properties": {"order": {"type": "string"}}},
        },
    }
]


def guarded_bundle(root: Path) -> Path:
    """The example bundle with both moderations, blocked terms and masking, locally
    enforceable (no categories)."""
    target = root / "guarded"
    shutil.copytree(EXAMPLE, target)
    safety = json.loads((target / "config/safety.json").read_text())
    safety.update(blocked_terms=TERMS, blocked_categories=[], pii_redaction=True)
    safety.update(input_moderation=True, output_moderation=True)
    (target / "config/safety.json").write_text(json.dumps(safety))
    return target


@pytest.fixture(scope="module")
def guarded(
    model: Upstream, cloudwatch: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    root = guarded_bundle(tmp_path_factory.mktemp("guarded"))
    with gateway(
        root,
        model.url,
        colour="blue",
        bundle_id=folder_id(root),
        extra=["--metrics", "cloudwatch", "--metrics-interval", "1"],
        env={**AWS, "AWS_ENDPOINT_URL": cloudwatch},
    ) as found:
        yield found


@pytest.fixture(autouse=True)
def reset(model: Upstream) -> None:
    model.control(
        mode="ok",
        text="Open Settings, then Security. Then choose Reset password.",
        token_delay=0.0,
        first_token_delay=0.0,
        tool_calls=None,
    )
    model.clear()


def chat(url: str, content: Any = "Where is my order?", **fields: Any) -> tuple[int, bytes]:
    body = {
        "model": "support-assistant",
        "messages": [{"role": "user", "content": content}],
        **fields,
    }
    status, _, answer = request(f"{url}/v1/chat/completions", body)
    return status, answer


def chunks(body: bytes) -> list[dict[str, Any]]:
    events = sse(body)
    assert events[-1] == "[DONE]"
    return [event for event in events if event != "[DONE]"]


def streamed_text(events: list[dict[str, Any]]) -> str:
    return "".join(
        (e["choices"][0].get("delta") or {}).get("content") or ""
        for e in events
        if e.get("choices")
    )


def streamed_calls(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        call
        for e in events
        if e.get("choices")
        for call in (e["choices"][0].get("delta") or {}).get("tool_calls") or ()
    ]


def finishes(events: list[dict[str, Any]]) -> list[str]:
    return [
        e["choices"][0]["finish_reason"]
        for e in events
        if e.get("choices") and e["choices"][0].get("finish_reason")
    ]


# --- a phrase split across pieces ----------------------------------------------------------

SPLIT = (
    "Here is a first sentence, long enough to pass sixty-four characters: forbidden\n"
    "phrase comes right after the line break. And more."
)
"""The first piece ends at the line break (a sentence end past 64 characters): each piece
alone passes, the two together hold the blocked phrase."""


def test_a_blocked_phrase_split_across_pieces_is_blocked_in_the_stream(
    guarded: Gateway, model: Upstream
) -> None:
    model.control(text=SPLIT)
    status, body = chat(guarded.url)
    assert json.loads(body)["choices"][0]["message"]["content"] == REFUSAL  # whole: blocked
    status, body = chat(guarded.url, stream=True)
    events = chunks(body)
    text = streamed_text(events)
    assert status == 200
    assert not re.search(r"forbidden\s+phrase", text, re.IGNORECASE)
    assert "comes right after" not in text
    assert text.endswith(REFUSAL)
    assert finishes(events) == ["content_filter"]


def test_masked_pieces_stay_masked_when_checked_with_what_came_before(
    guarded: Gateway, model: Upstream
) -> None:
    text = (
        "Write to jane.doe@example.com about it, she answers within the day.\n"
        "Or call +1 415 555 0100 any time. Then send the form to ops@example.org."
    )
    model.control(text=text)
    _, body = chat(guarded.url, stream=True)
    got = streamed_text(chunks(body))
    assert got == (
        "Write to [EMAIL] about it, she answers within the day.\n"
        "Or call [PHONE] any time. Then send the form to [EMAIL]."
    )


# --- tool calls and log probabilities --------------------------------------------------------

ARGUMENTS = '{"order": "A-1234", "note": "deliver to the back door"}'


def test_streamed_tool_calls_arrive_under_output_moderation(
    guarded: Gateway, model: Upstream
) -> None:
    model.control(
        text="Let me look that up.", tool_calls=[{"name": "lookup_order", "arguments": ARGUMENTS}]
    )
    _, body = chat(guarded.url, stream=True, tools=TOOLS)
    events = chunks(body)
    assert streamed_text(events) == "Let me look that up."
    (call,) = streamed_calls(events)
    assert call["id"] == "call_fake0"
    assert call["function"] == {"name": "lookup_order", "arguments": ARGUMENTS}
    assert finishes(events) == ["tool_calls"]
    # In order: the text, then the call, then the finish.
    kinds = [
        "text"
        if (e["choices"][0].get("delta") or {}).get("content")
        else "call"
        if (e["choices"][0].get("delta") or {}).get("tool_calls")
        else "finish"
        if e["choices"][0].get("finish_reason")
        else "other"
        for e in events
        if e.get("choices")
    ]
    assert [k for k in kinds if k != "other"] == ["text", "call", "finish"]


def test_the_openai_sdk_streams_the_tool_call_under_output_moderation(
    guarded: Gateway, model: Upstream
) -> None:
    model.control(text="", tool_calls=[{"name": "lookup_order", "arguments": ARGUMENTS}])
    client = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="support-assistant",
        messages=[{"role": "user", "content": "Where is order A-1234?"}],
        tools=cast(list[ChatCompletionToolParam], TOOLS),
        stream=True,
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        for call in choice.delta.tool_calls or ():
            assert call.function is not None
            name += call.function.name or ""
            arguments += call.function.arguments or ""
        finish = choice.finish_reason or finish
    assert (name, json.loads(arguments), finish) == (
        "lookup_order",
        json.loads(ARGUMENTS),
        "tool_calls",
    )


def test_a_tool_call_argument_with_a_blocked_term_blocks_the_answer(
    guarded: Gateway, model: Upstream
) -> None:
    blocked = '{"order": "A-1234", "note": "send the launch codes"}'
    model.control(
        text="Let me look that up.", tool_calls=[{"name": "lookup_order", "arguments": blocked}]
    )
    _, body = chat(guarded.url, stream=True, tools=TOOLS)
    events = chunks(body)
    assert streamed_calls(events) == []
    assert "launch codes" not in json.dumps(events)
    assert streamed_text(events).endswith(REFUSAL)
    assert finishes(events) == ["content_filter"]
    _, body = chat(guarded.url, tools=TOOLS)  # whole: the same
    choice = json.loads(body)["choices"][0]
    assert choice["message"]["content"] == REFUSAL
    assert not choice["message"].get("tool_calls")
    assert choice["finish_reason"] == "content_filter"


def test_personal_data_in_a_tool_call_argument_is_masked(guarded: Gateway, model: Upstream) -> None:
    arguments = '{"order": "A-1234", "email": "jane.doe@example.com"}'
    model.control(text="", tool_calls=[{"name": "lookup_order", "arguments": arguments}])
    _, body = chat(guarded.url, stream=True, tools=TOOLS)
    (call,) = streamed_calls(chunks(body))
    assert json.loads(call["function"]["arguments"]) == {"order": "A-1234", "email": "[EMAIL]"}


def test_streamed_logprobs_arrive_with_their_text_under_output_moderation(
    guarded: Gateway, model: Upstream
) -> None:
    model.control(text=SPLIT.replace("forbidden\nphrase", "allowed\nwords"))
    _, body = chat(guarded.url, stream=True, logprobs=True)
    events = chunks(body)
    text = streamed_text(events)
    tokens = [
        entry["token"]
        for e in events
        if e.get("choices") and e["choices"][0].get("logprobs")
        for entry in e["choices"][0]["logprobs"]["content"]
    ]
    assert "".join(tokens) == text == SPLIT.replace("forbidden\nphrase", "allowed\nwords")
    # Each chunk carries the log probabilities of the tokens that begin in its text (a
    # token the piece's end cuts goes with the piece it begins in).
    shown, scored = "", ""
    for e in events:
        if not e.get("choices"):
            continue
        shown += (e["choices"][0].get("delta") or {}).get("content") or ""
        logprobs = e["choices"][0].get("logprobs")
        scored += "".join(entry["token"] for entry in (logprobs or {}).get("content") or ())
        assert scored.startswith(shown), (shown, scored)
        assert len(scored) - len(shown) < 16  # at most the rest of one token ahead


def test_logprobs_of_masked_text_are_not_sent(guarded: Gateway, model: Upstream) -> None:
    model.control(text="Write to jane.doe@example.com for help.")
    _, body = chat(guarded.url, stream=True, logprobs=True)
    assert "jane.doe" not in body.decode()
    _, body = chat(guarded.url, logprobs=True)
    assert "jane.doe" not in body.decode()
    assert json.loads(body)["choices"][0]["message"]["content"] == "Write to [EMAIL] for help."


# --- input: parts, one call ------------------------------------------------------------------


def test_personal_data_in_a_text_part_is_masked(guarded: Gateway, model: Upstream) -> None:
    parts = [
        {"type": "text", "text": "My email is john@example.org"},
        {"type": "text", "text": "and my card 4111 1111 1111 1111."},
    ]
    status, _ = chat(guarded.url, parts)
    assert status == 200
    (seen,) = model.received()
    sent = seen["body"]["messages"][-1]["content"]
    assert [part["text"] for part in sent] == ["My email is [EMAIL]", "and my card [CARD]."]


def test_a_blocked_term_in_a_text_part_blocks(guarded: Gateway, model: Upstream) -> None:
    parts = [{"type": "text", "text": "hello"}, {"type": "text", "text": "the Launch Codes"}]
    _, body = chat(guarded.url, parts)
    assert json.loads(body)["choices"][0]["message"]["content"] == REFUSAL
    assert model.received() == []


def conversation(size: int) -> ChatCompletionRequest:
    """A conversation of ``size`` messages; the fourth mentions an e-mail address, the
    sixth is sent as text parts."""
    messages: list[dict[str, Any]] = []
    for index in range(size):
        role = "user" if index % 2 == 0 else "assistant"
        messages.append({"role": role, "content": f"Message number {index}."})
    messages[3]["content"] = "Reach me at jane@example.com please."
    messages[5]["content"] = [
        {"type": "text", "text": "Part one."},
        {"type": "text", "text": "Part two, bob@example.net."},
    ]
    return ChatCompletionRequest.model_validate({"messages": messages})


class Counting:
    """A moderator that counts the calls made to the one it wraps."""

    name = "counting"

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    async def check(self, text: str, source: Source) -> Verdict:
        self.calls += 1
        verdict: Verdict = await self.inner.check(text, source)
        return verdict

    async def check_all(self, texts: Sequence[str], source: Source) -> Verdicts:
        self.calls += 1
        verdicts: Verdicts = await self.inner.check_all(texts, source)
        return verdicts


def serve_input(moderator: Any, parsed: ChatCompletionRequest) -> bool:
    gateway = cast(state.Gateway, SimpleNamespace(moderator=moderator, metrics=None))
    outcome = state.Outcome("req-1", time.monotonic())
    _, blocked = asyncio.run(moderate_input(gateway, parsed, outcome))
    return blocked


def sent_texts(parsed: ChatCompletionRequest) -> list[str]:
    return [message.text() for message in parsed.messages]


def test_a_21_message_conversation_makes_one_local_moderation_call() -> None:
    safety = Safety(refusal_message=REFUSAL, blocked_terms=TERMS, pii_redaction=True)
    moderator = Counting(LocalModerator(safety))
    parsed = conversation(21)
    assert not serve_input(moderator, parsed)
    assert moderator.calls == 1
    texts = sent_texts(parsed)
    assert texts[3] == "Reach me at [EMAIL] please."
    assert texts[5] == "Part one.\nPart two, [EMAIL]."
    assert texts[4] == "Message number 4."


def test_a_21_message_conversation_makes_one_apply_guardrail_call() -> None:
    client = boto3.client(
        "bedrock-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    parsed = conversation(21)
    blocks = [
        "Message number 0.",
        "Message number 1.",
        "Message number 2.",
        "Reach me at jane@example.com please.",
        "Message number 4.",
        "Part one.",
        "Part two, bob@example.net.",
        *(f"Message number {index}." for index in range(6, 21)),
    ]
    masked = [text.replace("jane@example.com", "{EMAIL}") for text in blocks]
    masked = [text.replace("bob@example.net", "{EMAIL}") for text in masked]
    pii = [
        {"match": "jane@example.com", "type": "EMAIL", "action": "ANONYMIZED"},
        {"match": "bob@example.net", "type": "EMAIL", "action": "ANONYMIZED"},
    ]
    usage = dict.fromkeys(
        (
            "topicPolicyUnits",
            "contentPolicyUnits",
            "wordPolicyUnits",
            "sensitiveInformationPolicyUnits",
            "sensitiveInformationPolicyFreeUnits",
            "contextualGroundingPolicyUnits",
        ),
        1,
    )
    with Stubber(client) as stubber:
        stubber.add_response(
            "apply_guardrail",
            {
                "usage": usage,
                "action": "GUARDRAIL_INTERVENED",
                "outputs": [{"text": text} for text in masked],
                "assessments": [
                    {"sensitiveInformationPolicy": {"piiEntities": pii, "regexes": []}}
                ],
            },
            {
                "guardrailIdentifier": "gr-abc123",
                "guardrailVersion": "3",
                "source": "INPUT",
                "content": [{"text": {"text": text}} for text in blocks],
            },
        )
        assert not serve_input(BedrockModerator("gr-abc123", "3", client=client), parsed)
        stubber.assert_no_pending_responses()  # exactly the one call, and no other
    texts = sent_texts(parsed)
    assert texts[3] == "Reach me at {EMAIL} please."
    assert texts[5] == "Part one.\nPart two, {EMAIL}."
    assert texts[20] == "Message number 20."


def test_bedrock_outputs_that_do_not_match_the_blocks_are_never_misplaced() -> None:
    """Masked, but one output for two blocks: each text is asked about alone."""

    class Guardrail:
        def __init__(self) -> None:
            self.asked: list[list[str]] = []

        def apply_guardrail(self, **params: Any) -> dict[str, Any]:
            texts = [block["text"]["text"] for block in params["content"]]
            self.asked.append(texts)
            pii = {"match": "x", "type": "EMAIL", "action": "ANONYMIZED"}
            joined = " ".join(texts).replace("a@b.co", "{EMAIL}")
            return {
                "action": "GUARDRAIL_INTERVENED",
                "outputs": [{"text": joined}],
                "assessments": [{"sensitiveInformationPolicy": {"piiEntities": [pii]}}],
            }

    guardrail = Guardrail()
    moderator = BedrockModerator("gr-abc123", "3", client=guardrail)
    verdicts = asyncio.run(moderator.check_all(["hi", "", "mail a@b.co"], "INPUT"))
    assert verdicts.texts == ("hi", "", "mail {EMAIL}")
    assert guardrail.asked == [["hi", "mail a@b.co"], ["hi"], ["mail a@b.co"]]


# --- whole answers: tool calls moderated ------------------------------------------------------


def whole(choice: dict[str, Any], text: str) -> tuple[dict[str, Any], state.Outcome]:
    safety = Safety(refusal_message=REFUSAL, blocked_terms=TERMS, pii_redaction=True)
    metrics = SimpleNamespace(add=lambda *_: None)
    bundle = SimpleNamespace(safety=safety)
    gateway = cast(
        state.Gateway,
        SimpleNamespace(moderator=LocalModerator(safety), metrics=metrics, bundle=bundle),
    )
    outcome = state.Outcome("req-1", time.monotonic())
    asyncio.run(moderate_answer(gateway, outcome, choice, True, text))
    return choice, outcome


def test_a_whole_answers_tool_call_arguments_are_moderated() -> None:
    def call(arguments: str) -> dict[str, Any]:
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
            ],
        }
        return {"index": 0, "message": message, "finish_reason": "tool_calls", "logprobs": {}}

    choice, outcome = whole(call('{"q": "the launch codes"}'), "")
    assert (choice["message"]["content"], choice["finish_reason"]) == (REFUSAL, "content_filter")
    assert "tool_calls" not in choice["message"]
    assert outcome.outcome == "blocked"
    choice, _ = whole(call('{"q": "jane@example.com"}'), "")
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"q": "[EMAIL]"}'
    assert choice["message"]["content"] in (None, "")
    assert choice["logprobs"] is None
    choice, _ = whole(call('{"q": "fine"}'), "")
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"q": "fine"}'


# --- the model server failing mid-answer, under moderation ---------------------------------


def _errors(endpoint: str) -> float:
    return sum(datapoints(endpoint, "Errors", {"Model": "support-assistant", "Colour": "blue"}))


def test_a_midstream_error_under_moderation_reaches_the_client_and_is_counted(
    guarded: Gateway, model: Upstream, cloudwatch: str
) -> None:
    before = _errors(cloudwatch)
    model.control(mode="midstream-error")
    status, body = chat(guarded.url, stream=True)
    assert status == 200
    events = sse(body)
    assert events[-1] == "[DONE]"
    (error,) = [e["error"] for e in events if e != "[DONE]" and "error" in e]
    assert "CUDA out of memory" in error["message"]
    assert error["type"] == "server_error"
    assert "stop" not in finishes([e for e in events if e != "[DONE]"])
    # The official SDK raises it.
    client = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError, match="CUDA out of memory"):
        for _ in client.chat.completions.create(
            model="support-assistant",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        ):
            pass
    deadline = time.monotonic() + 20  # bounds a hung test only: metrics go every second
    while _errors(cloudwatch) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _errors(cloudwatch) >= before + 2
