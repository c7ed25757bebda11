"""Moderation on the request path: the client's input, the model's output, the refusal.

- **Input.** What the client wrote is checked before anything is forwarded, in one
  moderation call for the whole conversation (every message's text, and every text part of
  a message sent as parts); a blocked request is answered with the bundle's
  ``refusal_message`` as the model would answer (:func:`refuse`); masked personal data is
  sent masked, each text in its place.
- **Output, whole.** The answer's text and its tool calls' arguments are checked in one
  call; blocked, the answer becomes the refusal message (``finish_reason:
  content_filter``, no tool call); masked, the masked text and arguments. Log
  probabilities go out only with text that was not masked (their tokens are the text).
- **Output, streamed.** The stream is released a few sentences at a time
  (``SentenceBuffer``), each piece once it passed a check covering the text released
  before it (up to ``CONTEXT_CHARS``) and the piece, so a phrase split across pieces is
  caught; a blocked piece ends the answer with the refusal message. Tool calls are gathered
  and released, arguments moderated, in their place among the text; log probabilities go
  with the piece their tokens arrived in. The model server's error event ends the stream
  with an OpenAI error event, counted as an error.

The moderator failing fails the request closed: 503 with ``Retry-After``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.responses import JSONResponse, Response

from weightshift.gateway.moderation import ModerationError, Source, Verdict, Verdicts
from weightshift.gateway.pipeline import Refusal, SentenceBuffer
from weightshift.gateway.protocol import ChatCompletionRequest, CompletionRequest
from weightshift.gateway.sse import (
    DONE,
    answer_events,
    delta_event,
    malformed_event,
    sse_events,
    upstream_error,
    upstream_error_event,
)
from weightshift.gateway.state import Call, Gateway, Outcome

CONTEXT_CHARS = 6_000
"""At most this much of the text released before is checked again with each new piece of a
stream (whole pieces, the latest): a few hundred words' answer is checked whole every time,
while a long one keeps each ApplyGuardrail call within a few text units (billed per 1,000
characters) rather than growing without bound."""


async def moderate(gateway: Gateway, text: str, source: Source, outcome: Outcome) -> Verdict:
    """The moderator's verdict on ``text``, or a 503 refusal where it cannot decide."""
    try:
        return await gateway.moderator.check(text, source)
    except ModerationError as error:
        raise _unavailable(gateway, outcome, error) from None


async def moderate_all(
    gateway: Gateway, texts: Sequence[str], source: Source, outcome: Outcome
) -> Verdicts:
    """The moderator's verdict on ``texts`` together (one call), or a 503 refusal."""
    try:
        return await gateway.moderator.check_all(texts, source)
    except ModerationError as error:
        raise _unavailable(gateway, outcome, error) from None


def _unavailable(gateway: Gateway, outcome: Outcome, error: ModerationError) -> Refusal:
    gateway.metrics.add("ModerationErrors")
    outcome.outcome, outcome.status = "error", 503
    return Refusal(
        503,
        f"Moderation is unavailable, so the request was not served ({error}). Retry.",
        "moderation_unavailable",
        kind="server_error",
        headers={"Retry-After": "2"},
    )


def _blocked(gateway: Gateway, outcome: Outcome) -> str:
    """Count a blocked output; the refusal message that replaces it."""
    gateway.metrics.add("OutputBlocks")
    outcome.outcome = "blocked"
    return gateway.bundle.safety.refusal_message


# --- input ------------------------------------------------------------------------------


async def moderate_input(
    gateway: Gateway, parsed: ChatCompletionRequest | CompletionRequest, outcome: Outcome
) -> tuple[list[str] | None, bool]:
    """Moderate what the client wrote, in one call; whether the request is blocked. Masked
    personal data is written into ``parsed`` (each message's text, each text part), so
    the texts to send are always None (kept for the caller: ``pipeline.payload``)."""
    if isinstance(parsed, CompletionRequest):
        verdict = await moderate(gateway, parsed.prompt, "INPUT", outcome)
        if verdict.redacted and not verdict.blocked:
            parsed.prompt = verdict.text
        return None, verdict.blocked
    texts: list[str] = []
    for message in parsed.messages:
        content = message.content
        if isinstance(content, str):
            texts.append(content)
        elif content is not None:
            texts += [part.text for part in content if part.type == "text" and part.text]
    verdicts = await moderate_all(gateway, texts, "INPUT", outcome)
    if verdicts.blocked:
        return None, True
    if verdicts.redacted:
        masked = iter(verdicts.texts)
        for message in parsed.messages:
            content = message.content
            if isinstance(content, str):
                message.content = next(masked)
            elif content is not None:
                for part in content:
                    if part.type == "text" and part.text:
                        part.text = next(masked)
    return None, False


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


# --- output, whole ----------------------------------------------------------------------


async def moderate_answer(
    gateway: Gateway, outcome: Outcome, choice: dict[str, Any], chat: bool, text: str
) -> str:
    """Moderate a whole answer's ``text`` and tool-call arguments in one call: ``choice``
    rewritten with what the client reads (masked, or the refusal message without tool
    calls), whose text is returned."""
    message: dict[str, Any] = choice.setdefault("message", {}) if chat else {}
    calls = [call for call in message.get("tool_calls") or () if isinstance(call, dict)]
    arguments = [str((call.get("function") or {}).get("arguments") or "") for call in calls]
    verdicts = await moderate_all(gateway, [text, *arguments], "OUTPUT", outcome)
    if verdicts.blocked:
        text = _blocked(gateway, outcome)
        choice["finish_reason"] = "content_filter"
        message.pop("tool_calls", None)
        choice["logprobs"] = None  # its tokens are the blocked text
    elif verdicts.redacted:
        text = verdicts.texts[0]
        for call, masked in zip(calls, verdicts.texts[1:], strict=True):
            if call.get("function"):
                call["function"]["arguments"] = masked
        choice["logprobs"] = None  # its tokens are the text before masking
    if verdicts.blocked or verdicts.redacted:
        if chat:
            message["content"] = text
        else:
            choice["text"] = text
    return text


# --- output, streamed -------------------------------------------------------------------


class _Stream:
    """A moderated stream's state: the text released (the latest ``CONTEXT_CHARS``, as the
    model wrote it and as the client read it), the log probabilities and tool calls held
    back, and the shape of the model's last chunk."""

    def __init__(self, gateway: Gateway, outcome: Outcome, chat: bool) -> None:
        self.gateway = gateway
        self.outcome = outcome
        self.chat = chat
        self.template: dict[str, Any] | None = None
        self.released: list[tuple[str, str]] = []
        """Pieces released, (as written, as read), the latest ``CONTEXT_CHARS`` or so."""
        self.context = 0
        self.logprobs: list[dict[str, Any]] = []
        self.calls: dict[int, dict[str, Any]] = {}

    async def on_chunk(
        self, data: dict[str, Any], buffer: SentenceBuffer
    ) -> tuple[list[bytes], bool]:
        """What one chunk of the model's releases, in order, and whether the answer ends."""
        out: list[bytes] = []
        chat = self.chat
        choice = (data.get("choices") or [{}])[0]
        self.template = data
        delta = (choice.get("delta") or {}) if chat else {}
        piece = delta.get("content") if chat else choice.get("text")
        logprobs = choice.get("logprobs")
        if piece:
            if self.calls:  # text after tool calls: the calls go first
                chunk, stop = await self.tool_calls()
                out.append(chunk)
                if stop:
                    return out, True
            if logprobs:
                self.logprobs.append(logprobs)
            ready = buffer.feed(piece)
            if ready is not None:
                chunk, stop = await self.text(ready)
                out.append(chunk)
                if stop:
                    return out, True
        calls = delta.get("tool_calls")
        if calls:
            chunk, stop = await self.text(buffer.flush())  # the text before them goes first
            out.append(chunk)
            if stop:
                return out, True
            if logprobs and not piece:
                self.logprobs.append(logprobs)
            self.gather(calls)
        elif logprobs and not piece:
            self.logprobs.append(logprobs)
        if choice.get("finish_reason"):
            chunk, stop = await self.finish(buffer)
            out.append(chunk)
            if not stop:
                out.append(_bare(data, chat))
            return out, stop
        if not piece and not calls and chat and delta.get("role"):
            out.append(_bare(data, chat))
        return out, False

    async def finish(self, buffer: SentenceBuffer) -> tuple[bytes, bool]:
        """What is held back, released at the answer's end: the text, then the tool calls."""
        chunk, stop = await self.text(buffer.flush())
        if not stop:
            more, stop = await self.tool_calls()
            chunk += more
        return chunk, stop

    async def text(self, text: str) -> tuple[bytes, bool]:
        """The chunk releasing ``text`` once moderated with the text released before it, and
        whether it ends the answer (blocked: the refusal message instead)."""
        if not text:
            return b"", False
        gateway, outcome = self.gateway, self.outcome
        written = "".join(piece for piece, _ in self.released)
        verdict = await moderate(gateway, written + text, "OUTPUT", outcome)
        if verdict.blocked:
            return self._refusal(), True
        shown = text
        if verdict.redacted:
            read = "".join(piece for _, piece in self.released)
            if verdict.text.startswith(read):
                shown = verdict.text[len(read) :]
            else:  # masking reached across the pieces' boundary: mask the piece alone
                alone = await moderate(gateway, text, "OUTPUT", outcome)
                if alone.blocked:
                    return self._refusal(), True
                shown = alone.text
        self.released.append((text, shown))
        self.context += len(text)
        while self.context > CONTEXT_CHARS and len(self.released) > 1:
            self.context -= len(self.released.pop(0)[0])
        outcome.text.append(shown)
        if outcome.ttft is None:
            outcome.ttft = time.monotonic() - outcome.started
        fields: dict[str, Any] = {"delta": {"content": shown}} if self.chat else {"text": shown}
        return self._chunk(fields, masked=shown != text), False

    def gather(self, deltas: list[Any]) -> None:
        """Add a chunk's tool-call deltas to the calls held back (strings concatenated, as
        OpenAI's clients join them)."""
        for delta in deltas:
            index = delta.get("index", 0)
            call = self.calls.get(index)
            if call is None:
                call = self.calls[index] = {"index": index, "function": {"arguments": ""}}
            for key in ("id", "type"):
                if delta.get(key):
                    call[key] = delta[key]
            function = delta.get("function") or {}
            if function.get("name"):
                call["function"]["name"] = call["function"].get("name", "") + function["name"]
            if function.get("arguments"):
                call["function"]["arguments"] += function["arguments"]

    async def tool_calls(self) -> tuple[bytes, bool]:
        """The chunk releasing the calls held back once their arguments passed (one call
        for them all), and whether it ends the answer."""
        if not self.calls:
            return b"", False
        calls = [self.calls[index] for index in sorted(self.calls)]
        self.calls = {}
        arguments = [call["function"]["arguments"] for call in calls]
        verdicts = await moderate_all(self.gateway, arguments, "OUTPUT", self.outcome)
        if verdicts.blocked:
            return self._refusal(), True
        for call, masked in zip(calls, verdicts.texts, strict=True):
            call["function"]["arguments"] = masked
        if self.outcome.ttft is None:
            self.outcome.ttft = time.monotonic() - self.outcome.started
        return self._chunk({"delta": {"tool_calls": calls}}, masked=verdicts.redacted), False

    def _chunk(self, fields: dict[str, Any], *, masked: bool) -> bytes:
        """A chunk of ``fields`` shaped as the model's last one, with the log probabilities
        held back (dropped where the text was masked: their tokens are the text)."""
        base = dict(
            self.template or {"object": "chat.completion.chunk" if self.chat else "text_completion"}
        )
        base.pop("usage", None)
        choice: dict[str, Any] = {"index": 0, **fields}
        if self.logprobs:
            if not masked:
                choice["logprobs"] = _merged(self.logprobs)
            self.logprobs = []
        choice["finish_reason"] = None
        base["choices"] = [choice]
        return b"data: " + json.dumps(base, separators=(",", ":")).encode() + b"\n\n"

    def _refusal(self) -> bytes:
        """The refusal message that ends a blocked answer."""
        refusal = _blocked(self.gateway, self.outcome)
        self.outcome.text.append(refusal)
        return delta_event(self.template, self.chat, refusal, "content_filter") + DONE


def _merged(logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several chunks' log probabilities as one chunk's (their lists joined: chat's
    ``content``, completions' ``tokens``, ``token_logprobs``, ...)."""
    if len(logprobs) == 1:
        return logprobs[0]
    merged: dict[str, Any] = {}
    for item in logprobs:
        for key, value in item.items():
            have = merged.get(key)
            if isinstance(value, list):
                merged[key] = (have if isinstance(have, list) else []) + value
            elif key not in merged:
                merged[key] = value
    return merged


async def moderated(
    gateway: Gateway,
    body: AsyncIterator[bytes],
    outcome: Outcome,
    chat: bool,
    wants_usage: bool,
) -> AsyncIterator[bytes]:
    """The stream, released a few sentences at a time once each piece passed output
    moderation (with the text before it), tool calls and log probabilities in their place;
    a blocked piece ends the answer with the refusal message, the model server's error
    event with an error event."""
    buffer = SentenceBuffer()
    state = _Stream(gateway, outcome, chat)
    async for event in sse_events(body):
        if event == b"[DONE]":
            chunk, stop = await state.finish(buffer)
            yield chunk if stop else chunk + DONE
            return
        data = _decode(event, outcome)
        if isinstance(data, bytes):
            yield data
            return
        if _usage_only(data, outcome):
            if wants_usage:
                yield b"data: " + event + b"\n\n"
            continue
        chunks, stop = await state.on_chunk(data, buffer)
        for chunk in chunks:
            yield chunk
        if stop:
            return
    # The model server closed the stream without [DONE]: the answer is incomplete.
    outcome.outcome = "error"
    yield malformed_event(b"(the stream ended before [DONE])")


def _decode(event: bytes, outcome: Outcome) -> dict[str, Any] | bytes:
    """The model server's chunk, or the error event that ends the stream: its own error
    event, or a chunk that is not JSON. Held-back text is then dropped: it was never
    moderated, and the answer failed."""
    try:
        error = upstream_error(event)
        data = json.loads(event) if error is None else None
    except ValueError:
        outcome.outcome = "error"
        return malformed_event(event)
    if error is not None or not isinstance(data, dict):
        outcome.outcome = "error"
        return upstream_error_event(error or {"message": repr(data)})
    return data


def _bare(data: dict[str, Any], chat: bool) -> bytes:
    """A chunk passed on without its text, tool calls and log probabilities (released
    separately, moderated): the role that begins a chat, the finish reason that ends it."""
    choice = dict((data.get("choices") or [{}])[0])
    choice.pop("logprobs", None)
    if chat and "delta" in choice:
        choice["delta"] = {
            k: v for k, v in (choice["delta"] or {}).items() if k not in ("content", "tool_calls")
        }
    elif not chat:
        choice["text"] = ""
    body = {**data, "choices": [choice]}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _usage_only(data: dict[str, Any], outcome: Outcome) -> bool:
    """Read a chunk's usage into ``outcome``; whether the chunk carries nothing else."""
    usage = data.get("usage")
    if not usage:
        return False
    outcome.tokens_out = usage.get("completion_tokens")
    outcome.tokens_in = usage.get("prompt_tokens") or outcome.tokens_in
    return not data.get("choices")
