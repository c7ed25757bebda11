"""Server-sent events on the wire: the model server's read, the gateway's own written.

Reading: :func:`sse_events`, the ``data:`` payloads of a stream whatever its network
chunking (the moderated relay and the mirror read streams this way; the plain relay passes
bytes on untouched, ``relay.py``). Writing: the chunks the gateway composes itself, shaped
like the model server's own (a text delta, a chunk without its content, an error, a whole
canned answer).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from weightshift.gateway.protocol import error_body

DONE = b"data: [DONE]\n\n"
"""The event that ends an OpenAI-style stream."""


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The ``data:`` payloads of a server-sent event stream (its body's ``chunks``, as they
    come), whatever the network chunking."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        while b"\n\n" in pending:
            event, pending = pending.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    yield line[5:].strip()


def delta_event(
    template: dict[str, Any] | None, chat: bool, text: str, finish: str | None
) -> bytes:
    """A chunk carrying ``text``, shaped as ``template`` (the model's last chunk) is."""
    base = dict(template or {"object": "chat.completion.chunk" if chat else "text_completion"})
    base.pop("usage", None)
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if chat:
        choice["delta"] = {"content": text}
    else:
        choice["text"] = text
    base["choices"] = [choice]
    return b"data: " + json.dumps(base, separators=(",", ":")).encode() + b"\n\n"


def strip_content(data: dict[str, Any], chat: bool) -> bytes:
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


def error_event(message: str, code: str) -> bytes:
    """An error ending a stream that has already begun (its status is sent)."""
    body = error_body(message, "server_error", code)
    return b"data: " + json.dumps(body).encode() + b"\n\n" + DONE


ERROR_MARK = b'{"error"'
"""How the model server's error event begins (vLLM: ``data: {"error": {...}}``, sent in place
of the rest of an answer that failed mid-way). A block of events without these bytes holds no
error event: a byte search, so the plain relay need not parse what it passes on."""


def upstream_error(payload: bytes) -> dict[str, Any] | None:
    """The error object of the model server's error event ``payload`` (a ``data:`` payload),
    or None when ``payload`` is not one (an answer chunk; not JSON raises ``ValueError``)."""
    if not payload.startswith(ERROR_MARK):
        return None
    data = json.loads(payload)
    error = data.get("error") if isinstance(data, dict) else None
    if error is None:
        return None
    return error if isinstance(error, dict) else {"message": str(error)}


def upstream_error_event(error: dict[str, Any]) -> bytes:
    """The OpenAI error event (and ``[DONE]``) for the model server's mid-answer ``error``."""
    message = error.get("message") or "unknown error"
    return error_event(f"The model server failed mid-answer: {message}", "upstream_error")


def malformed_event(what: bytes) -> bytes:
    """The error event for a stream the model server broke (not ``data:`` JSON, or cut
    short before ``[DONE]``); ``what`` is the start of the offending bytes."""
    shown = what[:80].decode("utf-8", "replace")
    return error_event(
        f"The model server sent a malformed stream ({shown!r}); the answer was cut off.",
        "upstream_malformed",
    )


def answer_events(chat: bool, text: str, request_id: str, model: str) -> bytes:
    """A whole stream of one chunk: ``text``, filtered (the refusal message)."""
    template = {
        "id": request_id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    return delta_event(template, chat, text, "content_filter") + DONE
