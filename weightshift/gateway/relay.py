"""The plain stream relay: a streamed answer without output moderation, bytes untouched.

The hot path of a streaming gateway: whole events are passed on as the model server sent
them; a chunk is parsed only where it carries usage (read for the metrics, and dropped for
a client that did not ask for it) or where a mirror needs the answer's text for its pair.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator

import aiohttp

from weightshift.gateway.state import Outcome

_TEXT = re.compile(rb'"(?:content|text)":\s*"[^"]')
"""A chunk carrying answer text (the first one is the time to first token; the role-only
chunk a chat stream starts with is not)."""


async def relay(
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
    """``ready``'s events with usage read (and dropped unless wanted), text kept if asked."""
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
