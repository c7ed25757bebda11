"""The gateway's HTTP application: the pipeline's steps wired to the upstream model server.

One ``Gateway`` per pod: the served bundle, a pooled HTTP client to the model server on
localhost, the moderator, the metrics, and (on the stable colour, for shadow rollouts) the
mirror. ``app()`` is the ASGI application the ALB reaches; ``mirror_app()`` the same
requests answered from this colour and copied to the candidate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from weightshift.gateway import pipeline
from weightshift.gateway.feedback import TOKEN_HEADER, FeedbackError, FeedbackTokens, random_key
from weightshift.gateway.metrics import Metrics
from weightshift.gateway.moderation import ModerationError, Moderator
from weightshift.gateway.pipeline import Refusal, SentenceBuffer
from weightshift.gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    error_body,
)
from weightshift.gateway.served import ServedBundle

log = logging.getLogger("weightshift.gateway")

PASSTHROUGH = (
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "logprobs",
    "top_logprobs",
    "user",
    "suffix",
)
"""Client fields forwarded as they are (everything else is the bundle's or refused)."""
SHADOW_HEADER = "x-weightshift-shadow"
"""Marks a mirrored copy (as Envoy marks the shadow's host): answered, never served."""
UPSTREAM_HEALTH_TTL = 1.0
"""Seconds a model server health answer is reused by ``/health``."""


@dataclass
class Outcome:
    """What happened to one request: the metrics, the mirror's pair and the headers."""

    request_id: str
    started: float
    endpoint: str = "chat"
    """``chat`` or ``completions``."""
    status: int = 200
    outcome: str = "ok"
    """ok, refused, blocked, error, timeout."""
    tokens_in: int | None = None
    tokens_out: int | None = None
    ttft: float | None = None
    latency: float | None = None
    text: list[str] = field(default_factory=list)
    """The answer's text, kept only where a mirror needs it for its pair."""


Observer = Callable[[bytes, Mapping[str, str], Outcome], None]
"""Called once a request is answered (the mirror copies it then)."""


@dataclass
class Call:
    """One request on its way through the pipeline."""

    parsed: ChatCompletionRequest | CompletionRequest
    outcome: Outcome
    raw: bytes
    headers: Mapping[str, str]
    observer: Observer | None
    slot: Slot

    @property
    def chat(self) -> bool:
        return isinstance(self.parsed, ChatCompletionRequest)

    def done(self) -> None:
        """Tell the observer (the mirror) the answer is complete."""
        if self.observer is not None:
            self.observer(self.raw, self.headers, self.outcome)


class Slot:
    """One of the version's ``max_concurrent_requests``: held from admission until the
    answer is complete (for a stream, until its last byte)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.held = False
        self.handed_to_stream = False

    def take(self) -> None:
        self.gateway.in_flight += 1
        self.held = True

    def release(self) -> None:
        if self.held:
            self.gateway.in_flight -= 1
            self.held = False


class Gateway:
    """The state one gateway shares across requests."""

    def __init__(
        self,
        bundle: ServedBundle,
        upstream: str,
        colour: str,
        moderator: Moderator,
        metrics: Metrics,
        *,
        tokens: FeedbackTokens | None = None,
        client: aiohttp.ClientSession | None = None,
    ) -> None:
        self.bundle = bundle
        self.upstream = upstream.rstrip("/")
        self.colour = colour
        self.moderator = moderator
        self.metrics = metrics
        self.tokens = tokens or FeedbackTokens(random_key())
        self.client = client
        self.in_flight = 0
        self.draining = False
        self._health: tuple[float, bool] = (0.0, False)
        self.common_headers = {
            "x-weightshift-colour": colour,
            "x-weightshift-version": bundle.version,
        }

    async def start(self) -> None:
        if self.client is None:
            limit = self.bundle.routing.max_concurrent_requests + 16
            self.client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                auto_decompress=False,
            )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    # --- health ------------------------------------------------------------------------

    async def upstream_ready(self) -> bool:
        checked, ready = self._health
        now = time.monotonic()
        if now - checked < UPSTREAM_HEALTH_TTL:
            return ready
        assert self.client is not None
        try:
            async with asyncio.timeout(2):
                async with self.client.get(f"{self.upstream}/health") as response:
                    ready = response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            ready = False
        self._health = (now, ready)
        return ready

    # --- the request path --------------------------------------------------------------

    def _headers(self, outcome: Outcome) -> dict[str, str]:
        return {
            **self.common_headers,
            "x-request-id": outcome.request_id,
            "x-weightshift-outcome": outcome.outcome,
            TOKEN_HEADER: self.tokens.issue(self.colour, outcome.request_id),
        }

    def _finish(self, outcome: Outcome) -> None:
        metrics = self.metrics
        outcome.latency = time.monotonic() - outcome.started
        metrics.observe("Latency", outcome.latency)
        if outcome.ttft is not None:
            metrics.observe("TimeToFirstToken", outcome.ttft)
        if outcome.tokens_in:
            metrics.add("TokensIn", outcome.tokens_in)
        if outcome.tokens_out:
            metrics.add("TokensOut", outcome.tokens_out)
        if outcome.outcome in ("error", "timeout"):
            metrics.add("Errors")
        if outcome.outcome == "timeout":
            metrics.add("Timeouts")
        if outcome.outcome == "refused":
            metrics.add("Refusals")

    async def _moderate(self, text: str, source: str, outcome: Outcome) -> Any:
        try:
            return await self.moderator.check(text, source)  # type: ignore[arg-type]
        except ModerationError as error:
            self.metrics.add("ModerationErrors")
            outcome.outcome, outcome.status = "error", 503
            raise Refusal(
                503,
                f"Moderation is unavailable, so the request was not served ({error}). Retry.",
                "moderation_unavailable",
                kind="server_error",
                headers={"Retry-After": "2"},
            ) from None

    async def handle(
        self,
        request: Request,
        kind: str,
        observer: Observer | None = None,
    ) -> Response:
        """``kind``: ``chat`` or ``completions``."""
        outcome = Outcome(
            request.headers.get("x-request-id") or f"ws-{self.colour}-{uuid.uuid4().hex}",
            time.monotonic(),
            kind,
        )
        self.metrics.add("Requests")
        raw = await request.body()
        slot = Slot(self)
        try:
            parsed = self._parse(raw, kind)
            rule = pipeline.rule_for(self.bundle, request.headers, parsed)
            limit = pipeline.concurrency_limit(self.bundle, rule)
            if self.in_flight >= limit:
                raise Refusal(
                    429,
                    f"This model version is answering {self.in_flight} requests, its limit "
                    f"(config/routing.json max_concurrent_requests). Retry shortly.",
                    "too_many_requests",
                    kind="rate_limit_error",
                    headers={"Retry-After": "1"},
                )
            slot.take()
            call = Call(parsed, outcome, raw, request.headers, observer, slot)
            return await self._serve(call, rule)
        except Refusal as refusal:
            if outcome.outcome == "ok":
                outcome.outcome = "refused"
            outcome.status = refusal.status
            self._finish(outcome)
            if observer is not None:
                observer(raw, request.headers, outcome)
            return JSONResponse(
                refusal.body,
                status_code=refusal.status,
                headers={**self._headers(outcome), **refusal.headers},
            )
        finally:
            if not slot.handed_to_stream:
                slot.release()

    def _parse(self, raw: bytes, kind: str) -> ChatCompletionRequest | CompletionRequest:
        try:
            data = json.loads(raw)
        except ValueError:
            raise Refusal(400, "The body is not JSON.", "invalid_json") from None
        model = ChatCompletionRequest if kind == "chat" else CompletionRequest
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = str(first["msg"])
            if first["type"] == "extra_forbidden":
                message = "not a field this gateway accepts (see docs/gateway.md)"
            raise Refusal(400, f"{where}: {message}", "invalid_request", param=where) from None

    async def _serve(self, call: Call, rule: Any) -> Response:
        bundle, parsed, outcome = self.bundle, call.parsed, call.outcome
        system = bundle.system_prompt(parsed.user)
        tokens = pipeline.input_tokens(bundle, parsed, system)
        pipeline.check_input(bundle, tokens)
        outcome.tokens_in = tokens
        sampling = pipeline.sampling(bundle, parsed, rule)
        texts: list[str] | None = None
        if bundle.safety.input_moderation:
            texts, blocked = await self._moderate_input(parsed, outcome)
            if blocked:
                self.metrics.add("InputBlocks")
                outcome.outcome = "blocked"
                return self._refuse(call)
        payload = self._payload(parsed, sampling, texts)
        if parsed.stream:
            return await self._stream(call, payload)
        return await self._complete(call, payload)

    async def _moderate_input(
        self, parsed: ChatCompletionRequest | CompletionRequest, outcome: Outcome
    ) -> tuple[list[str] | None, bool]:
        """Moderate what the client wrote; the texts to send (None: unchanged) and whether
        the request is blocked."""
        if isinstance(parsed, CompletionRequest):
            verdict = await self._moderate(parsed.prompt, "INPUT", outcome)
            if verdict.redacted and not verdict.blocked:
                parsed.prompt = verdict.text
            return None, verdict.blocked
        texts = [message.text() for message in parsed.messages]
        verdict = await self._moderate("\n\n".join(texts), "INPUT", outcome)
        if verdict.blocked:
            return None, True
        if not verdict.redacted:
            return None, False
        # Masking: one message at a time, so each keeps its own (masked) text.
        masked = [(await self._moderate(text, "INPUT", outcome)).text for text in texts]
        return masked, False

    def _payload(
        self,
        parsed: ChatCompletionRequest | CompletionRequest,
        sampling: dict[str, Any],
        texts: list[str] | None,
    ) -> dict[str, Any]:
        passthrough = {
            name: getattr(parsed, name)
            for name in PASSTHROUGH
            if getattr(parsed, name, None) is not None
        }
        payload: dict[str, Any] = {**passthrough, **sampling, "model": self.bundle.model}
        if isinstance(parsed, ChatCompletionRequest):
            payload["messages"] = pipeline.chat_messages(self.bundle, parsed, texts=texts)
        else:
            payload["prompt"] = pipeline.completion_prompt(self.bundle, parsed)
        if parsed.stream:
            # Usage arrives in a last chunk only when asked for: the gateway always asks
            # (tokens out are a metric) and drops it for clients that did not.
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        return payload

    def _endpoint(self, parsed: ChatCompletionRequest | CompletionRequest) -> str:
        path = "chat/completions" if isinstance(parsed, ChatCompletionRequest) else "completions"
        return f"{self.upstream}/v1/{path}"

    def _refuse(self, call: Call) -> Response:
        """Answer with the bundle's refusal message, as the model would answer."""
        parsed, outcome = call.parsed, call.outcome
        message = self.bundle.safety.refusal_message
        outcome.text = [message]
        if parsed.stream:
            events = _events(parsed, message, outcome.request_id, self.bundle.model)
            outcome.ttft = time.monotonic() - outcome.started
            self._finish(outcome)
            call.done()
            return Response(events, media_type="text/event-stream", headers=self._headers(outcome))
        self._finish(outcome)
        call.done()
        body = _answer(parsed, message, outcome.request_id, self.bundle.model)
        return JSONResponse(body, headers=self._headers(outcome))

    async def _complete(self, call: Call, payload: dict[str, Any]) -> Response:
        parsed, outcome = call.parsed, call.outcome
        assert self.client is not None
        timeout = self.bundle.routing.request_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                async with self.client.post(
                    self._endpoint(parsed),
                    json=payload,
                    headers={"x-request-id": outcome.request_id},
                ) as response:
                    status, body = response.status, await response.read()
        except TimeoutError:
            raise _timed_out(outcome, f"did not answer within {timeout} s") from None
        except aiohttp.ClientError as error:
            raise _unreachable(outcome, error) from None
        outcome.status = status
        if status >= 500:
            outcome.outcome = "error"
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if status != 200 or not isinstance(data, dict):
            self._finish(outcome)
            call.done()
            return Response(
                body,
                status_code=status,
                media_type="application/json",
                headers=self._headers(outcome),
            )
        usage = data.get("usage") or {}
        outcome.tokens_in = usage.get("prompt_tokens") or outcome.tokens_in
        outcome.tokens_out = usage.get("completion_tokens")
        choice = (data.get("choices") or [{}])[0]
        chat = isinstance(parsed, ChatCompletionRequest)
        text = ((choice.get("message") or {}).get("content") if chat else choice.get("text")) or ""
        if self.bundle.safety.output_moderation and text:
            verdict = await self._moderate(text, "OUTPUT", outcome)
            if verdict.blocked:
                self.metrics.add("OutputBlocks")
                outcome.outcome = "blocked"
                text = self.bundle.safety.refusal_message
                choice["finish_reason"] = "content_filter"
            elif verdict.redacted:
                text = verdict.text
            if chat:
                choice.setdefault("message", {})["content"] = text
            else:
                choice["text"] = text
        if call.observer is not None:
            outcome.text = [text]
        self._finish(outcome)
        call.done()
        return JSONResponse(data, headers=self._headers(outcome))

    async def _stream(self, call: Call, payload: dict[str, Any]) -> Response:
        parsed, outcome, slot = call.parsed, call.outcome, call.slot
        assert self.client is not None
        timeout = self.bundle.routing.request_timeout_seconds
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                response = await self.client.post(
                    self._endpoint(parsed),
                    json=payload,
                    headers={"x-request-id": outcome.request_id},
                )
        except TimeoutError:
            raise _timed_out(outcome, f"did not start answering within {timeout} s") from None
        except aiohttp.ClientError as error:
            raise _unreachable(outcome, error) from None
        if response.status != 200:
            body = await response.read()
            response.release()
            outcome.status = response.status
            outcome.outcome = "error" if response.status >= 500 else "refused"
            self._finish(outcome)
            call.done()
            return Response(
                body,
                status_code=response.status,
                media_type="application/json",
                headers=self._headers(outcome),
            )
        wants_usage = bool((parsed.stream_options or {}).get("include_usage"))
        moderate = self.bundle.safety.output_moderation
        keep_text = call.observer is not None
        chat = call.chat

        async def events() -> AsyncIterator[bytes]:
            try:
                async with asyncio.timeout_at(deadline):
                    relay = (
                        self._moderated(response, outcome, chat, wants_usage)
                        if moderate
                        else _relay(response, outcome, wants_usage, keep_text, chat)
                    )
                    async for chunk in relay:
                        yield chunk
            except TimeoutError:
                outcome.outcome = "timeout"
                yield _error_event(
                    f"The model did not finish within {timeout} s "
                    "(config/routing.json request_timeout_seconds); the answer was cut off.",
                    "timeout",
                )
            except aiohttp.ClientError as error:
                outcome.outcome = "error"
                yield _error_event(f"The model server failed mid-answer ({error}).", "upstream")
            except Refusal as refusal:
                yield _error_event(str(refusal), str(refusal.body["error"]["code"]))
            finally:
                # Closing the connection cancels generation upstream (client gone, timeout,
                # or blocked output).
                response.close()
                slot.release()
                self._finish(outcome)
                call.done()

        slot.handed_to_stream = True
        return StreamingResponse(
            events(), media_type="text/event-stream", headers=self._headers(outcome)
        )

    async def _moderated(
        self,
        response: aiohttp.ClientResponse,
        outcome: Outcome,
        chat: bool,
        wants_usage: bool,
    ) -> AsyncIterator[bytes]:
        """The stream, released a sentence at a time once each sentence passed output
        moderation; a blocked sentence ends the answer with the refusal message."""
        buffer = SentenceBuffer()
        template: dict[str, Any] | None = None

        async def release(text: str) -> tuple[bytes, bool]:
            if not text:
                return b"", False
            verdict = await self._moderate(text, "OUTPUT", outcome)
            if verdict.blocked:
                self.metrics.add("OutputBlocks")
                outcome.outcome = "blocked"
                refusal = self.bundle.safety.refusal_message
                outcome.text.append(refusal)
                return _delta_event(
                    template, chat, refusal, "content_filter"
                ) + b"data: [DONE]\n\n", True
            released = verdict.text if verdict.redacted else text
            outcome.text.append(released)
            if outcome.ttft is None:
                outcome.ttft = time.monotonic() - outcome.started
            return _delta_event(template, chat, released, None), False

        async for event in _sse_events(response):
            if event == b"[DONE]":
                chunk, _ = await release(buffer.flush())
                yield chunk + b"data: [DONE]\n\n"
                return
            data = json.loads(event)
            if data.get("usage"):
                outcome.tokens_out = data["usage"].get("completion_tokens")
                outcome.tokens_in = data["usage"].get("prompt_tokens") or outcome.tokens_in
                if not data.get("choices"):
                    if wants_usage:
                        yield b"data: " + event + b"\n\n"
                    continue
            choices = data.get("choices") or [{}]
            choice = choices[0]
            template = data
            piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
            finish = choice.get("finish_reason")
            if piece:
                ready = buffer.feed(piece)
                if ready is not None:
                    chunk, stop = await release(ready)
                    yield chunk
                    if stop:
                        return
            if finish or (not piece and chat and (choice.get("delta") or {}).get("role")):
                if finish:
                    chunk, stop = await release(buffer.flush())
                    yield chunk
                    if stop:
                        return
                yield _strip_content(data, chat)

    # --- other endpoints -----------------------------------------------------------------

    async def feedback(self, request: Request) -> Response:
        try:
            parsed = FeedbackRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return JSONResponse(
                error_body(f"{where}: {first['msg']}", "invalid_request_error", "invalid"),
                status_code=400,
            )
        try:
            colour = self.tokens.accept(parsed.token, parsed.request_id)
        except FeedbackError as refused:
            return JSONResponse(
                error_body(str(refused), "invalid_request_error", refused.code, "token"),
                status_code=refused.status,
            )
        self.metrics.feedback(colour, parsed.score)
        return JSONResponse({"accepted": True, "colour": colour}, status_code=202)

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.bundle.model,
                    "object": "model",
                    "owned_by": "weightshift",
                    "root": self.bundle.version,
                }
            ],
        }


_TEXT = re.compile(rb'"(?:content|text)":\s*"[^"]')
"""A chunk carrying answer text (the first one is the time to first token; the role-only
chunk a chat stream starts with is not)."""


async def _sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The ``data:`` payloads of a server-sent event stream, whatever the network chunking."""
    pending = b""
    async for chunk in response.content.iter_any():
        pending += chunk
        while b"\n\n" in pending:
            event, pending = pending.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    yield line[5:].strip()


async def _relay(
    response: aiohttp.ClientResponse,
    outcome: Outcome,
    wants_usage: bool,
    keep_text: bool,
    chat: bool,
) -> AsyncIterator[bytes]:
    """The stream as the model server sends it, bytes untouched, whole events only; the
    usage chunk read for the metrics (and dropped for a client that did not ask for it)."""
    pending = b""
    async for chunk in response.content.iter_any():
        pending += chunk
        cut = pending.rfind(b"\n\n")
        if cut < 0:
            continue
        ready, pending = pending[: cut + 2], pending[cut + 2 :]
        if outcome.ttft is None and _TEXT.search(ready):
            outcome.ttft = time.monotonic() - outcome.started
        if b'"usage"' in ready or keep_text:
            ready = _inspect(ready, outcome, wants_usage, keep_text, chat)
        if ready:
            yield ready
    if pending:
        yield pending


def _inspect(
    ready: bytes, outcome: Outcome, wants_usage: bool, keep_text: bool, chat: bool
) -> bytes:
    kept: list[bytes] = []
    for event in ready.split(b"\n\n"):
        if not event:
            continue
        payload = event.removeprefix(b"data:").strip()
        if payload and payload != b"[DONE]":
            data = json.loads(payload)
            usage = data.get("usage")
            if usage:
                outcome.tokens_out = usage.get("completion_tokens")
                outcome.tokens_in = usage.get("prompt_tokens") or outcome.tokens_in
                if not data.get("choices") and not wants_usage:
                    continue
            if keep_text:
                choice = (data.get("choices") or [{}])[0]
                piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                if piece:
                    outcome.text.append(piece)
        kept.append(event + b"\n\n")
    return b"".join(kept)


def _delta_event(
    template: dict[str, Any] | None, chat: bool, text: str, finish: str | None
) -> bytes:
    base = dict(template or {"object": "chat.completion.chunk" if chat else "text_completion"})
    base.pop("usage", None)
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if chat:
        choice["delta"] = {"content": text}
    else:
        choice["text"] = text
    base["choices"] = [choice]
    return b"data: " + json.dumps(base, separators=(",", ":")).encode() + b"\n\n"


def _strip_content(data: dict[str, Any], chat: bool) -> bytes:
    """A chunk passed on without its content (released separately, moderated)."""
    choice = dict((data.get("choices") or [{}])[0])
    if chat and "delta" in choice:
        choice["delta"] = {k: v for k, v in choice["delta"].items() if k != "content"}
    elif not chat:
        choice["text"] = ""
    return (
        b"data: "
        + json.dumps({**data, "choices": [choice]}, separators=(",", ":")).encode()
        + b"\n\n"
    )


def _error_event(message: str, code: str) -> bytes:
    body = error_body(message, "server_error", code)
    return b"data: " + json.dumps(body).encode() + b"\n\ndata: [DONE]\n\n"


def _answer(
    parsed: ChatCompletionRequest | CompletionRequest, text: str, request_id: str, model: str
) -> dict[str, Any]:
    now = int(time.time())
    if isinstance(parsed, ChatCompletionRequest):
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


def _timed_out(outcome: Outcome, what: str) -> Refusal:
    """504: the model ``what`` (``did not answer within 120 s``); the caller cancels it."""
    outcome.outcome = "timeout"
    return Refusal(
        504,
        f"The model {what} (config/routing.json request_timeout_seconds); the request was "
        "cancelled.",
        "timeout",
        kind="server_error",
    )


def _unreachable(outcome: Outcome, error: Exception) -> Refusal:
    """502: no answer could be had from the model server at all."""
    outcome.outcome = "error"
    return Refusal(
        502,
        f"The model server is unreachable ({error}).",
        "upstream_unavailable",
        kind="server_error",
    )


def _events(
    parsed: ChatCompletionRequest | CompletionRequest, text: str, request_id: str, model: str
) -> bytes:
    chat = isinstance(parsed, ChatCompletionRequest)
    template = {
        "id": request_id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    return _delta_event(template, chat, text, "content_filter") + b"data: [DONE]\n\n"


def build_app(gateway: Gateway, observer: Observer | None = None) -> Starlette:
    """The ASGI application: ``observer`` (the mirror) sees each answered request."""

    async def chat(request: Request) -> Response:
        return await gateway.handle(request, "chat", observer)

    async def completions(request: Request) -> Response:
        return await gateway.handle(request, "completions", observer)

    async def models(_: Request) -> Response:
        return JSONResponse(gateway.models(), headers=gateway.common_headers)

    async def health(_: Request) -> Response:
        ready = not gateway.draining and await gateway.upstream_ready()
        return JSONResponse(
            {"ready": ready, "version": gateway.bundle.version, "colour": gateway.colour},
            status_code=200 if ready else 503,
        )

    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/feedback", gateway.feedback, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/livez", live, methods=["GET"]),
        ],
    )
