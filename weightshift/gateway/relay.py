"""The plain stream relay: a streamed answer without output moderation, bytes untouched.

The hot path of a streaming gateway: whole events are passed on as the model server sent
them, each chunk of the model server's as it is parsed (``wire.py``), written to the client
in the parser's callback where the server allows it (:func:`relay`); a chunk is parsed only where
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
from typing import Any

from starlette.types import Send

from weightshift.gateway.sse import (
    DONE,
    ERROR_MARK,
    malformed_event,
    upstream_error,
    upstream_error_event,
)
from weightshift.gateway.state import Outcome
from weightshift.gateway.wire import Answer

_BRACE = ord("}")
# Byte searches here use ``find``, not ``in``: on CPython 3.11 ``needle in data`` first tries
# the needle as an integer (a byte value) and raises and clears a TypeError, several times the
# cost of the search itself, on every chunk relayed.
_TEXT = re.compile(rb'"(?:content|text)":\s*"[^"]')
"""A chunk carrying answer text (the first one is the time to first token; the role-only
chunk a chat stream starts with is not)."""


def _framed(ready: bytes) -> bool:
    """Whether every event of ``ready`` (whole events) is one ``data: {...}`` line or
    ``data: [DONE]``: byte counts, no parsing (a raw blank line cannot occur inside JSON, so
    each ``\\n\\n`` ends an event). False only sends the block to the slow path, which decides."""
    events = ready.count(b"\n\n")
    done = ready.find(DONE) >= 0
    opened = ready.startswith(b"data: {") + ready.count(b"\n\ndata: {")
    return opened + done == events and ready.count(b"}\n\n") + done == events


class Relayer:
    """The plain relay's state for one stream: :meth:`feed` takes the model server's
    chunks as they come and returns the whole events to pass on (bytes untouched; usage
    read for the metrics and dropped for a client that did not ask for it); once one is
    broken (an upstream error event, a malformed event) ``failure`` holds the ending (the
    events before it and the OpenAI error event) and nothing more is taken. Synchronous:
    it runs in the upstream protocol's callback (``upstream.py``)."""

    __slots__ = ("chat", "ended", "failure", "keep_text", "outcome", "pending", "wants_usage")

    def __init__(self, outcome: Outcome, *, wants_usage: bool, keep_text: bool, chat: bool):
        self.outcome = outcome
        self.wants_usage, self.keep_text, self.chat = wants_usage, keep_text, chat
        self.pending = b""
        self.ended = False
        self.failure: bytes | None = None

    def feed(self, chunk: bytes) -> bytes:
        """The whole events of what has come so far, to pass on now (``b""``: none yet)."""
        if self.failure is not None:
            return b""
        pending = self.pending + chunk if self.pending else chunk
        cut = pending.rfind(b"\n\n")
        if cut < 0:
            self.pending = pending
            return b""
        ready, self.pending = pending[: cut + 2], pending[cut + 2 :]
        outcome = self.outcome
        if outcome.ttft is None and _TEXT.search(ready):
            outcome.ttft = time.monotonic() - outcome.started
        if (
            self.keep_text
            or ready.find(b'"usage"') >= 0
            or ready.find(ERROR_MARK) >= 0
            or not _framed(ready)
        ):
            ready, failure = _inspect(ready, outcome, self.wants_usage, self.keep_text, self.chat)
            if failure is not None:
                outcome.outcome = "error"
                self.failure = ready + failure
                return b""
        self.ended = ready.endswith(DONE)
        return ready

    def finish(self) -> bytes:
        """The stream's ending once the model server's answer is over: the failure's error
        event, or one for a stream that ended before ``[DONE]`` (cut short); else ``b""``."""
        if self.failure is not None:
            return self.failure
        if not self.ended:
            self.outcome.outcome = "error"
            return malformed_event(self.pending.strip() or b"the stream ended before [DONE]")
        return b""


_UVICORN_HTTPTOOLS = "uvicorn.protocols.http.httptools_impl"


def client_transport(send: Send) -> Any | None:
    """The client connection under the ASGI ``send``, for writing body chunks to it from
    the upstream's parser callback: uvicorn's httptools request cycle (the gateway's
    server), once it has sent a chunked response's start; None for any other server
    (the relay then awaits ``send`` per chunk). Its ``transport``, ``flow`` (write paused,
    ``drain``) and ``disconnected`` are what its own ``send`` uses for a body chunk; the
    chunk is framed as that ``send`` frames it, and the response is ended through it."""
    cycle = getattr(send, "__self__", None)
    if (
        type(cycle).__module__ != _UVICORN_HTTPTOOLS
        or getattr(cycle, "chunked_encoding", None) is not True
        or getattr(cycle, "response_complete", True)
        or not hasattr(cycle, "transport")
        or not hasattr(cycle, "flow")
    ):
        return None
    return cycle


async def relay(answer: Answer, relayer: Relayer, send: Send) -> bytes:
    """Pass the model server's ``answer`` on to the client through ``relayer``; the
    stream's ending (``Relayer.finish``; on the direct path after the last events, ending
    with ``[DONE]``, held back for it), which the caller sends. :class:`UpstreamError`
    when the model server's answer broke off; cancelled (the deadline, the client gone),
    the upstream connection is closed.

    On the gateway's server each chunk is written to the client's transport in the
    parser's callback, as it is parsed: no task wakes per chunk. While the client's
    buffer is above its high-water mark, reading from the model server pauses (it then
    stops generating ahead of a slow reader) until the buffer drains."""
    cycle = client_transport(send)
    if cycle is None:
        async for chunk in answer.chunks():
            ready = relayer.feed(chunk)
            if relayer.failure is not None:
                break
            if ready:
                await send({"type": "http.response.body", "body": ready, "more_body": True})
        return relayer.finish()
    write, flow = cycle.transport.write, cycle.flow
    feed, outcome = relayer.feed, relayer.outcome
    plain = not relayer.keep_text
    blocked = False
    held = b""
    """Events ending with ``[DONE]``, held back to go out with the response's end (one
    write, not two); written at once if anything follows them."""

    def sink(chunk: bytes) -> None:
        nonlocal blocked, held
        if (  # the usual chunk, one whole answer event, passed on as it is (what feed does)
            plain
            and outcome.ttft is not None
            and not relayer.pending
            and relayer.failure is None
            and chunk.startswith(b"data: {")
            and chunk.find(b"\n\n") == len(chunk) - 2  # one event, ending the chunk,
            and chunk[-3] == _BRACE  # a JSON object's
            and chunk.find(b'"usage"') < 0
            and chunk.find(ERROR_MARK) < 0
        ):
            ready = chunk
        else:
            ready = feed(chunk)
        if ready:
            if cycle.disconnected:
                return  # the watch of ``receive`` cancels the relay
            if held:
                write(b"%x\r\n%b\r\n" % (len(held), held))
                held = b""
            if relayer.ended and ready.endswith(DONE):
                held = ready
                return
            write(b"%x\r\n%b\r\n" % (len(ready), ready))
            if flow.write_paused and not blocked:
                blocked = True
                answer.pause()
                answer.wake()
        elif relayer.failure is not None:
            answer.wake()

    answer.push(sink)
    while not answer.complete and relayer.failure is None:
        await answer.wait()
        if blocked:
            await flow.drain()
            blocked = False
            answer.resume()
    return held + relayer.finish()


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
