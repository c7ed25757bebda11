"""The plain stream relay: a streamed answer without output moderation, bytes untouched.

The hot path of a streaming gateway: whole events are passed on as the model server sent
them, everything the model server has sent by the time the relay reads passed on as one
chunk (one write to the client, however many events it holds); a chunk is parsed only where
it carries usage (read for the metrics, and dropped for a client that did not ask for it),
where a mirror needs the answer's text for its pair, or where a byte search says it may be
broken: an error event of the model server's (relayed as an OpenAI error event, ending the
answer: outcome ``error``) or an event that is not ``data:`` JSON (an error event too). A
stream that ends before ``[DONE]`` was cut short: an error event ends it.
"""

from __future__ import annotations

import json
import re
import time

import aiohttp
from starlette.types import Send

from weightshift.gateway.sse import (
    DONE,
    ERROR_MARK,
    malformed_event,
    upstream_error,
    upstream_error_event,
)
from weightshift.gateway.state import Outcome

_TEXT = re.compile(rb'"(?:content|text)":\s*"[^"]')
"""A chunk carrying answer text (the first one is the time to first token; the role-only
chunk a chat stream starts with is not)."""


def _framed(ready: bytes) -> bool:
    """Whether every event of ``ready`` (whole events) is one ``data: {...}`` line or
    ``data: [DONE]``: byte counts, no parsing (a raw blank line cannot occur inside JSON, so
    each ``\\n\\n`` ends an event). False only sends the block to the slow path, which decides."""
    events = ready.count(b"\n\n")
    done = DONE in ready
    opened = ready.startswith(b"data: {") + ready.count(b"\n\ndata: {")
    return opened + done == events and ready.count(b"}\n\n") + done == events


async def relay(
    response: aiohttp.ClientResponse,
    outcome: Outcome,
    send: Send,
    *,
    wants_usage: bool,
    keep_text: bool,
    chat: bool,
) -> bytes:
    """Pass the stream on to the ASGI ``send`` as the model server sends it, bytes
    untouched, whole events only; the usage chunk read for the metrics (and dropped for a
    client that did not ask for it). An upstream error event, a malformed event or a stream
    cut short ends it: the OpenAI error event that does is returned, not sent (outcome
    ``error``); else ``b""``. A loop, not a generator: each chunk costs no call but
    ``send``'s."""
    readany = response.content.readany
    pending = b""
    ended = False
    while True:
        chunk = await readany()
        if not chunk:
            break
        pending = pending + chunk if pending else chunk
        cut = pending.rfind(b"\n\n")
        if cut < 0:
            continue
        ready, pending = pending[: cut + 2], pending[cut + 2 :]
        if outcome.ttft is None and _TEXT.search(ready):
            outcome.ttft = time.monotonic() - outcome.started
        if b'"usage"' in ready or keep_text or ERROR_MARK in ready or not _framed(ready):
            ready, failure = _inspect(ready, outcome, wants_usage, keep_text, chat)
            if failure is not None:
                outcome.outcome = "error"
                return ready + failure
        ended = ready.endswith(DONE)
        if ready:
            await send({"type": "http.response.body", "body": ready, "more_body": True})
    if not ended:
        outcome.outcome = "error"
        return malformed_event(pending.strip() or b"the stream ended before [DONE]")
    return b""


def _inspect(
    ready: bytes, outcome: Outcome, wants_usage: bool, keep_text: bool, chat: bool
) -> tuple[bytes, bytes | None]:
    """``ready``'s events with usage read (and dropped unless wanted), text kept if asked;
    and the error event that ends the answer there, if one of them is broken or an error."""
    kept: list[bytes] = []
    for event in ready.split(b"\n\n"):
        if not event:
            continue
        for line in event.split(b"\n"):
            if line.startswith(b":") or not line:
                continue  # an SSE comment
            if not line.startswith(b"data:"):
                return b"".join(kept), malformed_event(line)
            payload = line[5:].strip()
            if payload == b"[DONE]":
                continue
            try:
                error = upstream_error(payload)
                data = json.loads(payload) if error is None else None
            except ValueError:
                return b"".join(kept), malformed_event(line)
            if error is not None:
                return b"".join(kept), upstream_error_event(error)
            if not isinstance(data, dict):
                return b"".join(kept), malformed_event(line)
            usage = data.get("usage")
            if usage:
                outcome.tokens_out = usage.get("completion_tokens")
                outcome.tokens_in = usage.get("prompt_tokens") or outcome.tokens_in
                if not data.get("choices") and not wants_usage:
                    break
            if keep_text:
                choice = (data.get("choices") or [{}])[0]
                piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                if piece:
                    outcome.text.append(piece)
        else:
            kept.append(event + b"\n\n")
    return b"".join(kept), None
