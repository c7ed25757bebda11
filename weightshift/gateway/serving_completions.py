"""``POST /v1/chat/completions`` and ``POST /v1/completions``: one request, end to end.

Admission (the body parsed, the routing rule found, a concurrency slot taken or 429),
the pipeline's checks (input limit, sampling), input moderation, then the model server's
answer whole or streamed (``upstream.py``). Whatever the gateway refuses itself is answered
here as an OpenAI-style error, with the same headers as an answer.
"""

from __future__ import annotations

import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from weightshift.bundles.schemas import RoutingRule
from weightshift.gateway import pipeline
from weightshift.gateway.moderated import moderate_input, refuse
from weightshift.gateway.pipeline import Refusal
from weightshift.gateway.state import Call, Gateway, Observer, Outcome, Slot
from weightshift.gateway.upstream import complete, stream


async def handle(
    gateway: Gateway,
    request: Request,
    kind: str,
    observer: Observer | None = None,
) -> Response:
    """Answer one request; ``kind``: ``chat`` or ``completions``."""
    outcome = Outcome(
        request.headers.get("x-request-id") or f"ws-{gateway.colour}-{uuid.uuid4().hex}",
        time.monotonic(),
        kind,
    )
    gateway.metrics.add("Requests")
    raw = await request.body()
    slot = Slot(gateway)
    try:
        parsed = pipeline.parse(raw, kind)
        rule = pipeline.rule_for(gateway.bundle, request.headers, parsed)
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
        call = Call(parsed, outcome, raw, request.headers, observer, slot)
        return await _serve(gateway, call, rule)
    except Refusal as refusal:
        if outcome.outcome == "ok":
            outcome.outcome = "refused"
        outcome.status = refusal.status
        gateway.finish(outcome)
        if observer is not None:
            observer(raw, request.headers, outcome)
        return JSONResponse(
            refusal.body,
            status_code=refusal.status,
            headers={**gateway.headers(outcome), **refusal.headers},
        )
    finally:
        if not slot.handed_to_stream:
            slot.release()


async def _serve(gateway: Gateway, call: Call, rule: RoutingRule | None) -> Response:
    """An admitted request: checked, moderated, forwarded."""
    bundle, parsed, outcome = gateway.bundle, call.parsed, call.outcome
    system = bundle.system_prompt(parsed.user)
    tokens = pipeline.input_tokens(bundle, parsed, system)
    pipeline.check_input(bundle, tokens)
    outcome.tokens_in = tokens
    sampling = pipeline.sampling(bundle, parsed, rule)
    texts: list[str] | None = None
    if bundle.safety.input_moderation:
        texts, blocked = await moderate_input(gateway, parsed, outcome)
        if blocked:
            gateway.metrics.add("InputBlocks")
            outcome.outcome = "blocked"
            return refuse(gateway, call)
    payload = pipeline.payload(bundle, parsed, sampling, texts)
    if parsed.stream:
        return await stream(gateway, call, payload)
    return await complete(gateway, call, payload)
