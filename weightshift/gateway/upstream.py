"""Forwarding to the model server: a whole answer, or a streamed one, and their failures.

Both are bounded by ``routing.request_timeout_seconds`` (a whole answer: to its last
byte; a stream: from the request to its last event). Before the answer has begun, a
timeout is a 504 and an unreachable model server a 502; once a stream has begun, a failure
ends it with an error event. Closing the upstream connection cancels generation there.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from starlette.responses import JSONResponse, Response, StreamingResponse

from weightshift.gateway.moderated import moderate_answer, moderated
from weightshift.gateway.pipeline import Refusal
from weightshift.gateway.relay import relay
from weightshift.gateway.sse import error_event
from weightshift.gateway.state import Call, Gateway, Outcome


async def complete(gateway: Gateway, call: Call, payload: dict[str, Any]) -> Response:
    """A whole answer: the model server's, output-moderated where the bundle says so."""
    parsed, outcome = call.parsed, call.outcome
    assert gateway.client is not None
    timeout = gateway.bundle.routing.request_timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            async with gateway.client.post(
                gateway.endpoint(parsed),
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
        return _passed_on(gateway, call, body, status)
    usage = data.get("usage") or {}
    outcome.tokens_in = usage.get("prompt_tokens") or outcome.tokens_in
    outcome.tokens_out = usage.get("completion_tokens")
    choice = (data.get("choices") or [{}])[0]
    chat = call.chat
    text = ((choice.get("message") or {}).get("content") if chat else choice.get("text")) or ""
    if gateway.bundle.safety.output_moderation and text:
        text = await moderate_answer(gateway, outcome, choice, chat, text)
    if call.observer is not None:
        outcome.text = [text]
    gateway.finish(outcome)
    call.done()
    return JSONResponse(data, headers=gateway.headers(outcome))


async def stream(gateway: Gateway, call: Call, payload: dict[str, Any]) -> Response:
    """A streamed answer: the slot is handed to the stream, released after its last byte."""
    outcome = call.outcome
    assert gateway.client is not None
    timeout = gateway.bundle.routing.request_timeout_seconds
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            response = await gateway.client.post(
                gateway.endpoint(call.parsed),
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
        outcome.outcome = "error" if response.status >= 500 else "refused"
        return _passed_on(gateway, call, body, response.status)
    call.slot.handed_to_stream = True
    return StreamingResponse(
        _events(gateway, call, response, deadline, timeout),
        media_type="text/event-stream",
        headers=gateway.headers(outcome),
    )


async def _events(
    gateway: Gateway,
    call: Call,
    response: aiohttp.ClientResponse,
    deadline: float,
    timeout: int,
) -> AsyncIterator[bytes]:
    """The stream's events, relayed or moderated, until ``deadline``; then the request is
    finished (its slot released, its metrics recorded, the mirror told)."""
    outcome, chat = call.outcome, call.chat
    wants_usage = bool((call.parsed.stream_options or {}).get("include_usage"))
    try:
        async with asyncio.timeout_at(deadline):
            events = (
                moderated(gateway, response, outcome, chat, wants_usage)
                if gateway.bundle.safety.output_moderation
                else relay(response, outcome, wants_usage, call.observer is not None, chat)
            )
            async for chunk in events:
                yield chunk
    except TimeoutError:
        outcome.outcome = "timeout"
        yield error_event(
            f"The model did not finish within {timeout} s "
            "(config/routing.json request_timeout_seconds); the answer was cut off.",
            "timeout",
        )
    except aiohttp.ClientError as error:
        outcome.outcome = "error"
        yield error_event(f"The model server failed mid-answer ({error}).", "upstream")
    except Refusal as refusal:
        yield error_event(str(refusal), str(refusal.body["error"]["code"]))
    finally:
        # Closing the connection cancels generation upstream (client gone, timeout,
        # or blocked output).
        response.close()
        call.slot.release()
        gateway.finish(outcome)
        call.done()


def _passed_on(gateway: Gateway, call: Call, body: bytes, status: int) -> Response:
    """The model server's own answer (an error, or not JSON), passed on as it is."""
    call.outcome.status = status
    gateway.finish(call.outcome)
    call.done()
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers=gateway.headers(call.outcome),
    )


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
