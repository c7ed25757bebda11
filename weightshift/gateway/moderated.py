"""Moderation on the request path: the client's input, the model's output, the refusal.

- **Input.** What the client wrote is checked before anything is forwarded; a blocked
  request is answered with the bundle's ``refusal_message`` as the model would answer
  (:func:`refuse`); masked personal data is sent masked, message by message.
- **Output, whole.** The answer's text is checked once; blocked, it becomes the refusal
  message (``finish_reason: content_filter``); masked, the masked text.
- **Output, streamed.** The stream is released a sentence at a time (``SentenceBuffer``),
  each part once it passed; a blocked part ends the answer with the refusal message.

The moderator failing fails the request closed: 503 with ``Retry-After``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from starlette.responses import JSONResponse, Response

from weightshift.gateway.moderation import ModerationError, Source, Verdict
from weightshift.gateway.pipeline import Refusal, SentenceBuffer
from weightshift.gateway.protocol import ChatCompletionRequest, CompletionRequest
from weightshift.gateway.sse import DONE, answer_events, delta_event, sse_events, strip_content
from weightshift.gateway.state import Call, Gateway, Outcome


async def moderate(gateway: Gateway, text: str, source: Source, outcome: Outcome) -> Verdict:
    """The moderator's verdict on ``text``, or a 503 refusal where it cannot decide."""
    try:
        return await gateway.moderator.check(text, source)
    except ModerationError as error:
        gateway.metrics.add("ModerationErrors")
        outcome.outcome, outcome.status = "error", 503
        raise Refusal(
            503,
            f"Moderation is unavailable, so the request was not served ({error}). Retry.",
            "moderation_unavailable",
            kind="server_error",
            headers={"Retry-After": "2"},
        ) from None


def _blocked(gateway: Gateway, outcome: Outcome) -> str:
    """Count a blocked output; the refusal message that replaces it."""
    gateway.metrics.add("OutputBlocks")
    outcome.outcome = "blocked"
    return gateway.bundle.safety.refusal_message


# --- input ------------------------------------------------------------------------------


async def moderate_input(
    gateway: Gateway, parsed: ChatCompletionRequest | CompletionRequest, outcome: Outcome
) -> tuple[list[str] | None, bool]:
    """Moderate what the client wrote; the texts to send (None: unchanged) and whether
    the request is blocked."""
    if isinstance(parsed, CompletionRequest):
        verdict = await moderate(gateway, parsed.prompt, "INPUT", outcome)
        if verdict.redacted and not verdict.blocked:
            parsed.prompt = verdict.text
        return None, verdict.blocked
    texts = [message.text() for message in parsed.messages]
    verdict = await moderate(gateway, "\n\n".join(texts), "INPUT", outcome)
    if verdict.blocked:
        return None, True
    if not verdict.redacted:
        return None, False
    # Masking: one message at a time, so each keeps its own (masked) text.
    masked = [(await moderate(gateway, text, "INPUT", outcome)).text for text in texts]
    return masked, False


def refuse(gateway: Gateway, call: Call) -> Response:
    """Answer with the bundle's refusal message, as the model would answer."""
    parsed, outcome = call.parsed, call.outcome
    message = gateway.bundle.safety.refusal_message
    outcome.text = [message]
    if parsed.stream:
        events = answer_events(call.chat, message, outcome.request_id, gateway.bundle.model)
        outcome.ttft = time.monotonic() - outcome.started
        gateway.finish(outcome)
        call.done()
        return Response(events, media_type="text/event-stream", headers=gateway.headers(outcome))
    gateway.finish(outcome)
    call.done()
    body = _refusal_answer(call.chat, message, outcome.request_id, gateway.bundle.model)
    return JSONResponse(body, headers=gateway.headers(outcome))


def _refusal_answer(chat: bool, text: str, request_id: str, model: str) -> dict[str, Any]:
    """A whole (not streamed) answer of ``text``, filtered."""
    now = int(time.time())
    if chat:
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": now,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "content_filter",
                }
            ],
        }
    return {
        "id": request_id,
        "object": "text_completion",
        "created": now,
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": "content_filter"}],
    }


# --- output -----------------------------------------------------------------------------


async def moderate_answer(
    gateway: Gateway, outcome: Outcome, choice: dict[str, Any], chat: bool, text: str
) -> str:
    """Moderate a whole answer's ``text``: ``choice`` rewritten with what the client reads
    (masked, or the refusal message), which is returned."""
    verdict = await moderate(gateway, text, "OUTPUT", outcome)
    if verdict.blocked:
        text = _blocked(gateway, outcome)
        choice["finish_reason"] = "content_filter"
    elif verdict.redacted:
        text = verdict.text
    if chat:
        choice.setdefault("message", {})["content"] = text
    else:
        choice["text"] = text
    return text


class _Release:
    """Releases moderated text of a stream, in chunks shaped as the model's last one."""

    def __init__(self, gateway: Gateway, outcome: Outcome, chat: bool) -> None:
        self.gateway = gateway
        self.outcome = outcome
        self.chat = chat
        self.template: dict[str, Any] | None = None

    async def __call__(self, text: str) -> tuple[bytes, bool]:
        """The chunk releasing ``text`` once moderated, and whether it ends the answer
        (blocked: the refusal message instead)."""
        if not text:
            return b"", False
        outcome = self.outcome
        verdict = await moderate(self.gateway, text, "OUTPUT", outcome)
        if verdict.blocked:
            refusal = _blocked(self.gateway, outcome)
            outcome.text.append(refusal)
            return delta_event(self.template, self.chat, refusal, "content_filter") + DONE, True
        released = verdict.text if verdict.redacted else text
        outcome.text.append(released)
        if outcome.ttft is None:
            outcome.ttft = time.monotonic() - outcome.started
        return delta_event(self.template, self.chat, released, None), False


async def moderated(
    gateway: Gateway,
    response: aiohttp.ClientResponse,
    outcome: Outcome,
    chat: bool,
    wants_usage: bool,
) -> AsyncIterator[bytes]:
    """The stream, released a sentence at a time once each sentence passed output
    moderation; a blocked sentence ends the answer with the refusal message."""
    buffer = SentenceBuffer()
    release = _Release(gateway, outcome, chat)
    async for event in sse_events(response):
        if event == b"[DONE]":
            chunk, _ = await release(buffer.flush())
            yield chunk + DONE
            return
        data = json.loads(event)
        if _usage_only(data, outcome):
            if wants_usage:
                yield b"data: " + event + b"\n\n"
            continue
        choice = (data.get("choices") or [{}])[0]
        release.template = data
        piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
        if piece:
            ready = buffer.feed(piece)
            if ready is not None:
                chunk, stop = await release(ready)
                yield chunk
                if stop:
                    return
        finish = choice.get("finish_reason")
        if finish or (not piece and chat and (choice.get("delta") or {}).get("role")):
            if finish:
                chunk, stop = await release(buffer.flush())
                yield chunk
                if stop:
                    return
            yield strip_content(data, chat)


def _usage_only(data: dict[str, Any], outcome: Outcome) -> bool:
    """Read a chunk's usage into ``outcome``; whether the chunk carries nothing else."""
    usage = data.get("usage")
    if not usage:
        return False
    outcome.tokens_out = usage.get("completion_tokens")
    outcome.tokens_in = usage.get("prompt_tokens") or outcome.tokens_in
    return not data.get("choices")
