"""Forwarding to the model server: a whole answer, or a streamed one, and their failures.

Both are bounded by ``routing.request_timeout_seconds`` (a whole answer: to its last
byte; a stream: from the request to its last event, however slowly the client reads).
Before the answer has begun, a timeout is a 504 and an unreachable model server a 502;
a whole answer that is not JSON (or JSON cut short) is a 502 too. Once a stream has begun,
a failure (the model server's own error event, an event that is not ``data:`` JSON, a
stream cut short, the deadline) ends it with an OpenAI error event; every one of them is
counted (``Errors``, and ``Timeouts`` for the deadline). Closing the upstream connection
cancels generation there: done when the deadline passes, the answer is blocked, or the
client leaves, whole answer or stream (a whole answer's response watches the ASGI
``http.disconnect`` while the model server works).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from weightshift.gateway.moderated import moderate_answer, moderated
from weightshift.gateway.pipeline import Refusal
from weightshift.gateway.protocol import error_body
from weightshift.gateway.relay import Relayer, client_transport, relay
from weightshift.gateway.sse import error_event, malformed_event
from weightshift.gateway.state import Call, Gateway, Outcome
from weightshift.gateway.wire import Answer, UpstreamError

ENDING_GRACE = 10.0
"""Seconds a stream past its deadline waits for a slow client to take its error event
(the upstream is cancelled and the request counted first); then the connection is cut."""

CLIENT_GONE = 499
"""The status recorded for a request whose client left before its answer (nginx's)."""

RAW_SEND = "weightshift.send"
"""The scope key of the server's own ASGI ``send`` (``app.py`` puts it there), to which a
stream writes its body chunks: past Starlette's wrappers, which cost a call each per chunk
and only watch for the response's start (sent through them)."""


async def complete(gateway: Gateway, call: Call, payload: bytes) -> Response:
    """A whole answer: the model server's, output-moderated where the bundle says so. The
    slot is handed to the response, which asks the model server while watching the client:
    a client that leaves cancels the request upstream and frees the slot."""
    call.slot.handed_to_stream = True
    return _Whole(gateway, call, payload)


class _Whole(Response):
    """A whole answer, computed when the response is sent (so the ASGI ``receive`` is at
    hand to see the client leave)."""

    def __init__(self, gateway: Gateway, call: Call, payload: bytes) -> None:
        self.gateway, self.call, self.payload = gateway, call, payload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway, call = self.gateway, self.call
        work = asyncio.ensure_future(_answer(gateway, call, self.payload))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()  # the client left (or this task was): cancel upstream
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                call.outcome.status = CLIENT_GONE
                gateway.finish(call.outcome)
                call.done()
            call.slot.release()
        if not work.cancelled():
            await work.result()(scope, receive, send)


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone (the body was read already, so the next message is
    ``http.disconnect``, sent when the connection closes)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _answer(gateway: Gateway, call: Call, payload: bytes) -> Response:
    """The whole answer's response, recorded (metrics, mirror): the model's, or an error."""
    try:
        return await _ask(gateway, call, payload)
    except Refusal as refusal:
        outcome = call.outcome
        if outcome.outcome == "ok":
            outcome.outcome = "refused"
        outcome.status = refusal.status
        gateway.finish(outcome)
        call.done()
        return JSONResponse(
            refusal.body,
            status_code=refusal.status,
            headers={**gateway.headers(outcome), **refusal.headers},
        )


async def _ask(gateway: Gateway, call: Call, payload: bytes) -> Response:
    outcome = call.outcome
    timeout = gateway.bundle.routing.request_timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            answer = await _request(gateway, call, payload)
            try:
                status, body = answer.status, await answer.read()
            finally:
                answer.close()  # cancelled (the client left, the deadline): upstream too
    except TimeoutError:
        raise _timed_out(outcome, f"did not answer within {timeout} s") from None
    except UpstreamError as error:
        raise _unreachable(outcome, error) from None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if status == 200 and not isinstance(data, dict):
        outcome.outcome = "error"
        raise Refusal(
            502,
            "The model server answered with a body that is not a JSON object "
            f"({body[:80].decode('utf-8', 'replace')!r}).",
            "upstream_malformed",
            kind="server_error",
        )
    outcome.status = status
    if status != 200:
        if status >= 500:
            outcome.outcome = "error"
        return _passed_on(gateway, call, body if isinstance(data, dict) else None, status)
    assert isinstance(data, dict)
    usage = data.get("usage") or {}
    outcome.tokens_in = usage.get("prompt_tokens") or outcome.tokens_in
    outcome.tokens_out = usage.get("completion_tokens")
    choice = (data.get("choices") or [{}])[0]
    chat = call.chat
    text = ((choice.get("message") or {}).get("content") if chat else choice.get("text")) or ""
    if gateway.bundle.safety.output_moderation:  # tool-call arguments too, text or not
        text = await moderate_answer(gateway, outcome, choice, chat, text)
    if call.observer is not None:
        outcome.text = [text]
    gateway.finish(outcome)
    call.done()
    return JSONResponse(data, headers=gateway.headers(outcome))


async def stream(gateway: Gateway, call: Call, payload: bytes) -> Response:
    """A streamed answer: the slot is handed to the stream, released after its last byte."""
    outcome = call.outcome
    timeout = gateway.bundle.routing.request_timeout_seconds
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            answer = await _request(gateway, call, payload)
            if answer.status != 200:
                try:
                    body: bytes | None = await answer.read()
                finally:
                    answer.close()
    except TimeoutError:
        raise _timed_out(outcome, f"did not start answering within {timeout} s") from None
    except UpstreamError as error:
        raise _unreachable(outcome, error) from None
    if answer.status != 200:
        outcome.outcome = "error" if answer.status >= 500 else "refused"
        try:
            json.loads(body or b"")
        except ValueError:
            body = None
        return _passed_on(gateway, call, body, answer.status)
    call.slot.handed_to_stream = True
    return _Stream(gateway, call, answer, deadline, timeout)


async def _request(gateway: Gateway, call: Call, payload: bytes) -> Answer:
    """The model server's answer to ``payload`` (the JSON body, ``pipeline.payload_json``):
    its status and headers; the body follows."""
    path = gateway.endpoint_path(call.parsed)
    return await gateway.wire.request(path, payload, {"x-request-id": call.outcome.request_id})


class _Stream(Response):
    """The stream's events, relayed or moderated, until the deadline, which bounds the
    writes to the client too (a slow reader): past it the upstream is cancelled, the
    request counted as a timeout and an error event ends the stream. However it ends
    (done, failed, client gone) the request is then finished: its upstream closed, its slot
    released, its metrics recorded, the mirror told.

    The hot path of a streaming gateway, so a plain ASGI response, relaying with
    ``relay.py`` over ``wire.py``: on the gateway's server each chunk is written to the
    client from the upstream parser's callback (no task wakes per chunk); elsewhere it is
    sent to the server's ``send`` (``RAW_SEND``, past any wrapper of ``send``). A watch of
    ``receive`` sees the client leave, which cancels the relay (this task; the upstream
    connection is then closed, which cancels the generation)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        gateway: Gateway,
        call: Call,
        answer: Answer,
        deadline: float,
        timeout: int,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            *gateway.raw_headers(call.outcome),
            (b"content-type", b"text/event-stream; charset=utf-8"),
        ]
        self.gateway, self.call, self.upstream = gateway, call, answer
        self.deadline, self.timeout = deadline, timeout
        self.ended = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        watch = asyncio.ensure_future(_disconnected(receive))
        gone = finished = False

        def left(_: object) -> None:  # the client left: the relay (this task) is cancelled
            nonlocal gone
            if not finished and not watch.cancelled():
                gone = True
                task.cancel()

        watch.add_done_callback(left)
        try:
            await self._relay(send, scope.get(RAW_SEND, send))
        except asyncio.CancelledError:
            if not gone:
                raise  # cancelled from outside (the server shutting down)
            task.uncancel()
        finally:
            finished = True
            watch.cancel()
            self._end()

    async def _relay(self, send: Send, raw: Send) -> None:
        call = self.call
        outcome = call.outcome
        ending = b""
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            async with asyncio.timeout_at(self.deadline):
                ending = await _pass_on(self.gateway, call, self.upstream, raw)
        except TimeoutError:
            outcome.outcome = "timeout"
            ending = error_event(
                f"The model did not finish within {self.timeout} s "
                "(config/routing.json request_timeout_seconds); the answer was cut off.",
                "timeout",
            )
        self._end()
        last = {"type": "http.response.body", "body": ending, "more_body": False}
        cycle = client_transport(raw)
        if cycle is not None and not cycle.flow.write_paused:
            await raw(last)  # uvicorn's send waits only while writing is paused: no timer
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ENDING_GRACE):
                await raw(last)

    def _end(self) -> None:
        """Finish the request, once: closing the connection cancels generation upstream
        (client gone, deadline, blocked output)."""
        if self.ended:
            return
        self.ended = True
        call = self.call
        self.upstream.close()
        call.slot.release()
        self.gateway.finish(call.outcome)
        call.done()


async def _pass_on(gateway: Gateway, call: Call, answer: Answer, send: Send) -> bytes:
    """Send the stream's events, relayed or moderated, as they come; the error event that
    ends a stream failing mid-answer (outcome ``error``), else nothing."""
    outcome, chat = call.outcome, call.chat
    wants_usage = bool((call.parsed.stream_options or {}).get("include_usage"))
    try:
        if not gateway.bundle.safety.output_moderation:
            keep_text = call.observer is not None
            relayer = Relayer(outcome, wants_usage=wants_usage, keep_text=keep_text, chat=chat)
            return await relay(answer, relayer, send)
        async for chunk in moderated(gateway, answer.chunks(), outcome, chat, wants_usage):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamError as error:
        outcome.outcome = "error"
        return error_event(f"The model server failed mid-answer ({error}).", "upstream")
    except ValueError as error:  # an event that is not JSON (the moderated path parses)
        outcome.outcome = "error"
        return malformed_event(str(error).encode())
    except Refusal as refusal:
        return error_event(str(refusal), str(refusal.body["error"]["code"]))
    return b""


def _passed_on(gateway: Gateway, call: Call, body: bytes | None, status: int) -> Response:
    """The model server's own error answer passed on as it is; one that is not JSON (a
    proxy's page) becomes an OpenAI error of the same status."""
    call.outcome.status = status
    gateway.finish(call.outcome)
    call.done()
    if body is None:
        body = json.dumps(
            error_body(
                f"The model server answered {status} without an OpenAI error.",
                "server_error" if status >= 500 else "invalid_request_error",
                "upstream_error",
            )
        ).encode()
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
