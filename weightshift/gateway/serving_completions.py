"""``POST /v1/chat/completions`` and ``POST /v1/completions``: one request, end to end.

Bounds before work: the body read up to the bundle's ``max_body_bytes`` (413, before it is
parsed). Admission: the body parsed, its ``model`` one this gateway serves (404
``model_not_found`` otherwise, counted as no request), the routing rule found, a
concurrency slot taken or 429. Then the pipeline's checks (the input's length before it is
tokenized, its tokens, sampling), input moderation, then the model server's answer whole or
streamed (``upstream.py``). Whatever the gateway refuses itself is answered here as an
OpenAI-style error, with the same headers as an answer (and no feedback token).

Counting tokens is CPU work proportional to the text: a text of more than
``INLINE_COUNT_CHARS`` is counted on a worker thread (``COUNT_THREADS`` of them), so a long
prompt never stalls the streams this process relays; a short one is counted inline, which
is cheaper than a thread hop.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from weightshift.bundles.schemas import RoutingRule
from weightshift.gateway import pipeline
from weightshift.gateway.moderated import moderate_input, refuse
from weightshift.gateway.pipeline import Refusal, UnknownModel
from weightshift.gateway.protocol import SHADOW_HEADER
from weightshift.gateway.state import Call, Gateway, Observer, Outcome, Slot
from weightshift.gateway.upstream import complete, stream

INLINE_COUNT_CHARS = 1024
"""Up to this many characters, tokens are counted on the event loop (about 0.1 ms for the
bundled tokenizer, less than handing the work to a thread and back)."""
COUNT_THREADS = 2
"""Threads counting long texts (the tokenizer releases the GIL while it works)."""

_counting: ThreadPoolExecutor | None = None


def _counter() -> ThreadPoolExecutor:
    global _counting  # noqa: PLW0603 (one pool per process, made on first use)
    if _counting is None:
        _counting = ThreadPoolExecutor(COUNT_THREADS, thread_name_prefix="weightshift-count")
    return _counting


async def handle(
    gateway: Gateway,
    request: Request,
    kind: str,
    observer: Observer | None = None,
) -> Response:
    """Answer one request; ``kind``: ``chat`` or ``completions``."""
    outcome = Outcome(request.headers.get("x-request-id") or "", time.monotonic(), kind)
    if not outcome.request_id:
        outcome.request_id = f"ws-{gateway.colour}-{outcome.id}"
    headers = request.headers
    try:
        raw = await pipeline.read_body(
            request.stream(), headers.get("content-length"), gateway.bundle.max_body_bytes
        )
    except Refusal as refusal:
        # Not mirrored: the body was not read.
        gateway.metrics.add("Requests")
        return _refused(gateway, outcome, refusal)
    slot = Slot(gateway)
    try:
        try:
            parsed = pipeline.parse(raw, kind)
        except Refusal:
            gateway.metrics.add("Requests")
            raise
        pipeline.check_model(gateway.bundle, parsed.model, SHADOW_HEADER in headers)
        gateway.metrics.add("Requests")
        rule = pipeline.rule_for(gateway.bundle, headers, parsed)
        limit = pipeline.concurrency_limit(gateway.bundle, rule)
        if gateway.in_flight >= limit:
            raise Refusal(
                429,
                f"This model version is answering {gateway.in_flight} requests, its limit "
                f"(config/routing.json max_concurrent_requests). Retry shortly.",
                "too_many_requests",
                kind="rate_limit_error",
                headers={"Retry-After": "1"},
            )
        slot.take()
        call = Call(parsed, outcome, raw, headers, observer, slot)
        return await _serve(gateway, call, rule)
    except UnknownModel as unknown:
        # Not a request to this model: no metric, no mirror (as a 404 for a path).
        outcome.status, outcome.outcome = unknown.status, "refused"
        return JSONResponse(
            unknown.body, status_code=unknown.status, headers=gateway.headers(outcome)
        )
    except Refusal as refusal:
        response = _refused(gateway, outcome, refusal)
        if observer is not None:
            observer(raw, headers, outcome)
        return response
    finally:
        if not slot.handed_to_stream:
            slot.release()


def _refused(gateway: Gateway, outcome: Outcome, refusal: Refusal) -> Response:
    """The gateway's own answer to a request it refused, recorded."""
    if outcome.outcome == "ok":
        outcome.outcome = "refused"
    outcome.status = refusal.status
    gateway.finish(outcome)
    return JSONResponse(
        refusal.body,
        status_code=refusal.status,
        headers={**gateway.headers(outcome), **refusal.headers},
    )


async def _serve(gateway: Gateway, call: Call, rule: RoutingRule | None) -> Response:
    """An admitted request: checked, moderated, forwarded."""
    bundle, parsed, outcome = gateway.bundle, call.parsed, call.outcome
    texts = pipeline.client_texts(parsed)
    if pipeline.check_length(bundle, texts) <= INLINE_COUNT_CHARS:
        tokens = pipeline.input_tokens(bundle, parsed, texts)
    else:
        loop = asyncio.get_running_loop()
        tokens = await loop.run_in_executor(
            _counter(), pipeline.input_tokens, bundle, parsed, texts
        )
    pipeline.check_input(bundle, tokens)
    outcome.tokens_in = tokens
    sampling = pipeline.sampling(bundle, parsed, rule)
    masked: list[str] | None = None
    if bundle.safety.input_moderation:
        masked, blocked = await moderate_input(gateway, parsed, outcome)
        if blocked:
            gateway.metrics.add("InputBlocks")
            outcome.outcome = "blocked"
            return refuse(gateway, call)
    body = pipeline.payload_json(bundle, parsed, sampling, masked)
    outcome.forwarded = True
    if parsed.stream:
        return await stream(gateway, call, body)
    return await complete(gateway, call, body)
