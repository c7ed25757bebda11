"""The request pipeline's steps, each a small function of the bundle and the request.

parse → assemble the prompt → check the limits → (moderate input) → forward → (moderate
output) → record. I/O (the upstream, the moderator, CloudWatch) stays in the serving
modules (``serving_completions.py``, ``upstream.py``, ``moderated.py``); what is decided
here is pure and tested alone:

- **Bounds before work.** The body is read up to the bundle's ``max_body_bytes`` (a larger
  ``Content-Length`` is refused at once, a chunked body once it passes it): 413.
- **Parsing.** The body as JSON, validated by ``protocol.py``; the first error becomes a 400
  naming the field. A ``model`` this gateway does not serve is a 404 ``model_not_found``
  (a shadow copy may name any version of the model: the stable colour checked it).

- **Prompt.** Chat: the bundle's system prompt (its template filled), then the few-shot
  examples as user/assistant turns, then the client's messages unchanged (a client's own
  system message stays where the client put it, after the bundle's). Completions: the same
  as text, ``system\\n\\nUser: input\\nAssistant: output\\n\\n...`` then the client's prompt.
- **Input limit.** Tokens of every message's content by the bundle's tokenizer, plus
  ``MESSAGE_OVERHEAD_TOKENS`` per message, against ``routing.max_input_tokens``; the system
  prompt's and examples' tokens were counted at load. A text of more characters than the
  limit times the tokenizer's ``max_bytes_per_token`` cannot fit: refused uncounted.
- **Sampling.** ``generation.json`` gives every default. A client may set ``temperature``
  (0 to 2), ``top_p`` (above 0, at most 1), ``presence_penalty`` and ``frequency_penalty``
  (-2 to 2), ``seed``,
  ``stop`` (added to the bundle's stop sequences) and ``max_tokens`` (or
  ``max_completion_tokens``) up to the bundle's ``max_tokens`` and any routing rule's
  ``max_output_tokens``; ``top_k`` and ``repetition_penalty`` are the bundle's alone.
- **Routing rules.** ``routing.json`` ``rules`` are tried in order; the first whose every
  ``match`` entry holds applies. Keys: ``header:<name>`` (the request header, exact value),
  ``user`` (the request's ``user`` field), ``model`` (the ``model`` named). A rule may cap
  ``max_output_tokens``; ``priority: batch`` requests may use at most half of
  ``max_concurrent_requests``, so interactive requests always find room.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from weightshift.bundles.schemas import RoutingRule
from weightshift.gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    error_body,
)
from weightshift.gateway.served import MESSAGE_OVERHEAD_TOKENS, ServedBundle

MAX_STOP_SEQUENCES = 16
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


class Refusal(Exception):
    """A request the gateway answers itself, with ``status`` and an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message, kind, code, param)
        self.headers = dict(headers or {})


class UnknownModel(Refusal):
    """A ``model`` this gateway does not serve: 404, as vLLM and OpenAI answer it."""

    def __init__(self, name: str) -> None:
        super().__init__(
            404, f"The model `{name}` does not exist.", "model_not_found", param="model"
        )


async def read_body(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    """The request body from ``chunks``, or a 413 once it is known to pass ``limit`` bytes:
    at once from its ``Content-Length`` (``declared``), else while it is read."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(f"{int(declared)} bytes", limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _too_large(f"more than {limit} bytes", limit)
        parts.append(chunk)
    return b"".join(parts)


def _too_large(size: str, limit: int) -> Refusal:
    return Refusal(
        413,
        f"The request body has {size}; this gateway reads at most {limit} (from "
        "config/routing.json max_input_tokens, or the gateway's body limit).",
        "request_too_large",
    )


def check_model(bundle: ServedBundle, name: str | None, shadow: bool = False) -> None:
    """404 unless ``name`` is absent or one this gateway serves (``shadow``: a mirrored
    copy, which may name another version of the same model)."""
    if name is None or name in bundle.served_names:
        return
    if shadow and name.partition("/")[0] == bundle.model:
        return
    raise UnknownModel(name)


def parse(raw: bytes, kind: str) -> ChatCompletionRequest | CompletionRequest:
    """The request ``raw`` as ``kind`` (``chat`` or ``completions``) reads it, or a 400."""
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


def rule_for(
    bundle: ServedBundle,
    headers: Mapping[str, str],
    request: ChatCompletionRequest | CompletionRequest,
) -> RoutingRule | None:
    """The first routing rule every ``match`` entry of which holds for this request."""
    for rule in bundle.routing.rules:
        if all(_holds(key, value, headers, request) for key, value in rule.match.items()):
            return rule
    return None


def _holds(
    key: str,
    value: str,
    headers: Mapping[str, str],
    request: ChatCompletionRequest | CompletionRequest,
) -> bool:
    if key.startswith("header:"):
        return headers.get(key.removeprefix("header:").lower()) == value
    if key == "user":
        return request.user == value
    if key == "model":
        return request.model == value
    return False  # an unknown key never matches (documented: header:, user, model)


def concurrency_limit(bundle: ServedBundle, rule: RoutingRule | None) -> int:
    limit = bundle.routing.max_concurrent_requests
    if rule is not None and rule.priority == "batch":
        return max(1, limit // 2)
    return limit


def sampling(
    bundle: ServedBundle,
    request: ChatCompletionRequest | CompletionRequest,
    rule: RoutingRule | None,
) -> dict[str, Any]:
    """The sampling parameters sent upstream: the bundle's, with the client's allowed
    overrides (refused beyond the bundle's limits)."""
    generation = bundle.generation
    cap = generation.max_tokens
    source = "config/generation.json max_tokens"
    if rule is not None and rule.max_output_tokens is not None and rule.max_output_tokens < cap:
        cap, source = rule.max_output_tokens, "the matching routing rule's max_output_tokens"
    asked = request.max_tokens
    param = "max_tokens"
    if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens is not None:
        asked, param = request.max_completion_tokens, "max_completion_tokens"
    if asked is not None and asked > cap:
        raise Refusal(
            400,
            f"{param} {asked} exceeds this model version's limit of {cap} ({source}).",
            "max_tokens_exceeded",
            param=param,
        )
    stops = list(generation.stop)
    extra = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    stops += [s for s in extra if s not in stops]
    if len(stops) > MAX_STOP_SEQUENCES:
        raise Refusal(
            400,
            f"{len(stops)} stop sequences (the bundle's {len(generation.stop)} and yours); at "
            f"most {MAX_STOP_SEQUENCES}.",
            "too_many_stop_sequences",
            param="stop",
        )
    chosen: dict[str, Any] = {
        "temperature": _pick(request.temperature, generation.temperature),
        "top_p": _pick(request.top_p, generation.top_p),
        "presence_penalty": _pick(request.presence_penalty, generation.presence_penalty),
        "frequency_penalty": _pick(request.frequency_penalty, generation.frequency_penalty),
        "max_tokens": asked if asked is not None else cap,
        "top_k": generation.top_k,
        "repetition_penalty": generation.repetition_penalty,
    }
    if stops:
        chosen["stop"] = stops
    seed = _pick(request.seed, generation.seed)
    if seed is not None:
        chosen["seed"] = seed
    return chosen


def _pick(given: Any, default: Any) -> Any:
    return default if given is None else given


def chat_messages(
    bundle: ServedBundle,
    request: ChatCompletionRequest,
    now: datetime | None = None,
    texts: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The conversation the model server receives: system prompt, examples, the client's
    messages (with ``texts`` replacing their text where input moderation redacted it)."""
    return [
        {"role": "system", "content": bundle.system_prompt(request.user, now)},
        *bundle.few_shot_messages,
        *client_messages(request, texts),
    ]


def client_messages(
    request: ChatCompletionRequest, texts: list[str] | None = None
) -> list[dict[str, Any]]:
    """The client's messages as sent on (``texts``: as :func:`chat_messages` takes them)."""
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(request.messages):
        data = message.model_dump(exclude_none=True)
        if texts is not None and isinstance(message.content, str):
            data["content"] = texts[index]
        messages.append(data)
    return messages


def completion_prompt(
    bundle: ServedBundle, request: CompletionRequest, now: datetime | None = None
) -> str:
    """The text the model server completes: the system prompt and examples, then the
    client's prompt."""
    examples = "".join(
        f"User: {example.input}\nAssistant: {example.output}\n\n" for example in bundle.few_shot
    )
    return f"{bundle.system_prompt(request.user, now)}\n\n{examples}{request.prompt}"


def payload(
    bundle: ServedBundle,
    request: ChatCompletionRequest | CompletionRequest,
    sampled: dict[str, Any],
    texts: list[str] | None,
    *,
    messages: bool = True,
) -> dict[str, Any]:
    """The body the model server receives: the client fields passed through, ``sampled``
    (:func:`sampling`'s answer) and the prompt (``texts``: the client's messages as input
    moderation masked them, if it did; ``messages=False``: a chat body without them, for
    :func:`payload_json`)."""
    passthrough = {
        name: getattr(request, name)
        for name in PASSTHROUGH
        if getattr(request, name, None) is not None
    }
    body: dict[str, Any] = {**passthrough, **sampled, "model": bundle.model}
    if isinstance(request, ChatCompletionRequest):
        if messages:
            body["messages"] = chat_messages(bundle, request, texts=texts)
    else:
        body["prompt"] = completion_prompt(bundle, request)
    if request.stream:
        # Usage arrives in a last chunk only when asked for: the gateway always asks
        # (tokens out are a metric) and drops it for clients that did not.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
"""Compact JSON, ASCII only (as ``json.dumps`` writes it); bodies built here hold no cycles."""


def payload_json(
    bundle: ServedBundle,
    request: ChatCompletionRequest | CompletionRequest,
    sampled: dict[str, Any],
    texts: list[str] | None,
) -> bytes:
    """:func:`payload` as the JSON body the model server receives. A chat request's system
    prompt and examples, where they are the same for every request (the system prompt has
    no ``{{variable}}``), were encoded once (``ServedBundle.prompt_json``) and are spliced
    in; the rest is encoded here."""
    fixed = bundle.prompt_json
    if fixed is None or not isinstance(request, ChatCompletionRequest):
        return _encode(payload(bundle, request, sampled, texts)).encode()
    body = payload(bundle, request, sampled, texts, messages=False)
    client = _encode(client_messages(request, texts))  # "[...]"
    messages = f"[{fixed},{client[1:]}" if len(client) > 2 else f"[{fixed}]"
    return f'{_encode(body)[:-1]},"messages":{messages}}}'.encode()


def client_texts(request: ChatCompletionRequest | CompletionRequest) -> list[str]:
    """What the client wrote: the prompt, or each message's text."""
    if isinstance(request, CompletionRequest):
        return [request.prompt]
    return [message.text() for message in request.messages]


def check_length(bundle: ServedBundle, texts: list[str]) -> int:
    """The characters of ``texts``; refused (400) where they are too many to fit whatever
    they say (more than ``max_input_tokens`` tokens of the longest a token can be)."""
    chars = sum(len(text) for text in texts)
    per_token = bundle.max_bytes_per_token
    limit = bundle.routing.max_input_tokens
    if per_token is not None and chars > limit * per_token:
        raise Refusal(
            400,
            f"The request has {chars} characters: more than {limit} input tokens whatever "
            f"they say (a token of this model's tokenizer is at most {per_token} bytes); the "
            "limit is config/routing.json max_input_tokens. Shorten the messages.",
            "input_too_long",
            param="messages",
        )
    return chars


def input_tokens(
    bundle: ServedBundle,
    request: ChatCompletionRequest | CompletionRequest,
    texts: list[str],
) -> int:
    """Tokens the request puts in front of the model, by the bundle's tokenizer (``texts``:
    :func:`client_texts`); once past the limit, counting stops (the answer is above it)."""
    fixed = bundle.system_prompt_tokens(request.user) + bundle.few_shot_tokens
    overhead = MESSAGE_OVERHEAD_TOKENS * (
        1 if isinstance(request, CompletionRequest) else 1 + len(texts)
    )
    budget = bundle.routing.max_input_tokens - fixed - overhead
    return bundle.count(texts, limit=max(budget, 0)) + fixed + overhead


def check_input(bundle: ServedBundle, tokens: int) -> None:
    limit = bundle.routing.max_input_tokens
    if tokens > limit:
        raise Refusal(
            400,
            f"The request has at least {tokens} input tokens (system prompt and examples "
            f"included, counted with this model's tokenizer); the limit is {limit} "
            "(config/routing.json max_input_tokens). Shorten the messages.",
            "input_too_long",
            param="messages",
        )


_SENTENCE_END = re.compile("(?<=[.!?\u3002\uff01\uff1f])\\s|\n")
"""A sentence ends after ., ! or ? (and their CJK full-width forms) and a space, or at a
line break."""


class SentenceBuffer:
    """Streamed output held back until a sentence ends, so that each piece released to the
    client has been moderated as a whole sentence (a phrase split across stream chunks is
    still caught). The first piece is released from ``first_chars`` characters on (time to
    first token is the first sentence or so); later pieces gather at least ``then_chars``
    (whole sentences), so a long answer costs a few moderation calls, not one per sentence:
    each call counts against the account's guardrail quotas and is billed by text unit
    (1,000 characters)."""

    def __init__(self, first_chars: int = 64, then_chars: int = 400) -> None:
        self.min_chars = first_chars
        self.then_chars = then_chars
        self._pending = ""

    def feed(self, text: str) -> str | None:
        """Add ``text``; the part ready to release (ends at a sentence boundary), if any."""
        self._pending += text
        if len(self._pending) < self.min_chars:
            return None
        cut = -1
        for match in _SENTENCE_END.finditer(self._pending):
            if match.end() >= self.min_chars:
                cut = match.end()
        if cut < 0:
            return None
        ready, self._pending = self._pending[:cut], self._pending[cut:]
        self.min_chars = self.then_chars
        return ready

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return rest
