"""A local OpenAI-compatible model server for the gateway's tests and benchmark.

Run as a process: ``python -m tests.fake_upstream --port 8080``. It answers
``/v1/chat/completions`` and ``/v1/completions`` (streaming or not) the way vLLM does (a
role chunk, one chunk per token, a usage chunk when asked, ``[DONE]``), records every request
body it receives, and is steered through ``POST /control``:

``{"mode": "ok" | "hang" | "error" | "refuse-health" (or one of ``BROKEN``), "text": "...",
"token_delay": 0.0, "first_token_delay": 0.0}``. ``GET /received`` lists the bodies received,
``DELETE /received`` clears them, ``GET /health`` is 200 unless mode is ``refuse-health``.

Also: ``"tool_calls": [{"name": ..., "arguments": "..."}]`` answers with these tool calls
after the text (streamed as vLLM does: the id, type and name first, then the arguments in
pieces; ``finish_reason: tool_calls``). A request asking for ``logprobs`` gets them, one
entry per token, as vLLM sends them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

STATE: dict[str, Any] = {
    "mode": "ok",
    "text": "Open Settings, then Security. Then choose Reset password.",
    "token_delay": 0.0,
    "first_token_delay": 0.0,
    "received": [],
    "cancelled": 0,
    "tool_calls": None,
}


def _logprobs(chat: bool, token: str, offset: int) -> dict[str, Any]:
    """vLLM's log probabilities for one token (chat's ``content`` list, or completions')."""
    if chat:
        entry = {
            "token": token,
            "logprob": -0.25,
            "bytes": list(token.encode()),
            "top_logprobs": [],
        }
        return {"content": [entry]}
    return {
        "text_offset": [offset],
        "token_logprobs": [-0.25],
        "tokens": [token],
        "top_logprobs": [{token: -0.25}],
    }


def _tool_call_deltas(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls as vLLM streams them: the id, type and name, then the arguments in pieces."""
    deltas: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        deltas.append(
            {
                "index": index,
                "id": f"call_fake{index}",
                "type": "function",
                "function": {"name": call["name"], "arguments": ""},
            }
        )
        arguments = call["arguments"]
        for start in range(0, len(arguments), 7):
            deltas.append({"index": index, "function": {"arguments": arguments[start : start + 7]}})
    return deltas


def _tokens(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


async def _answer(request: Request, chat: bool) -> Response:
    body = json.loads(await request.body())
    STATE["received"].append(
        {"path": request.url.path, "body": body, "headers": dict(request.headers)}
    )
    mode = STATE["mode"]
    if mode == "hang":
        # Headers now, then nothing: the caller must give up and close the connection,
        # which cancels this stream (counted, so tests see the cancellation arrive).
        async def hang() -> AsyncIterator[bytes]:
            try:
                await asyncio.sleep(3600)
                yield b""
            except asyncio.CancelledError:
                STATE["cancelled"] += 1
                raise

        return StreamingResponse(hang(), media_type="text/event-stream")
    if mode == "error":
        return JSONResponse(
            {"error": {"message": "model crashed", "type": "server_error"}}, status_code=500
        )
    if mode in BROKEN:
        return _broken(mode, chat, bool(body.get("stream")))
    text = STATE["text"]
    tokens = _tokens(text)
    usage = {
        "prompt_tokens": 42,
        "completion_tokens": len(tokens),
        "total_tokens": 42 + len(tokens),
    }
    created = int(time.time())
    ident = "chatcmpl-fake" if chat else "cmpl-fake"
    model = body.get("model", "fake")
    calls = STATE["tool_calls"] if chat else None
    wants_logprobs = bool(body.get("logprobs"))
    if not body.get("stream"):
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            if chat
            else {"index": 0, "text": text, "finish_reason": "stop"}
        )
        if calls:
            choice["message"]["tool_calls"] = [
                {
                    "id": f"call_fake{index}",
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
                for index, call in enumerate(calls)
            ]
            choice["message"]["content"] = text or None
            choice["finish_reason"] = "tool_calls"
        if wants_logprobs:
            entries = [_logprobs(chat, token, 0) for token in tokens if token]
            choice["logprobs"] = (
                {"content": [e["content"][0] for e in entries]}
                if chat
                else {k: [v for e in entries for v in e[k]] for k in _logprobs(False, "", 0)}
            )
        await asyncio.sleep(STATE["first_token_delay"])
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
        )
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choice: dict[str, Any] | None, extra: dict[str, Any] | None = None) -> bytes:
        data = {
            "id": ident,
            "object": kind,
            "created": created,
            "model": model,
            "choices": [choice] if choice is not None else [],
        }
        data.update(extra or {})
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    async def stream() -> AsyncIterator[bytes]:
        if chat:
            yield event(
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            )
        await asyncio.sleep(STATE["first_token_delay"])
        offset = 0
        for token in tokens if text or not calls else []:
            piece = {"content": token} if chat else None
            choice: dict[str, Any] = (
                {"index": 0, "delta": piece, "finish_reason": None}
                if chat
                else {"index": 0, "text": token, "finish_reason": None}
            )
            if wants_logprobs:
                choice["logprobs"] = _logprobs(chat, token, offset)
                offset += len(token)
            yield event(choice)
            if STATE["token_delay"]:
                await asyncio.sleep(STATE["token_delay"])
        for delta in _tool_call_deltas(calls or []):
            yield event({"index": 0, "delta": {"tool_calls": [delta]}, "finish_reason": None})
        yield event(
            {"index": 0, "delta": {}, "finish_reason": "tool_calls" if calls else "stop"}
            if chat
            else {"index": 0, "text": "", "finish_reason": "stop"}
        )
        if include_usage:
            yield event(None, {"usage": usage})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


BROKEN = ("midstream-error", "not-json", "truncated", "flood")
"""Modes of a model server that fails (adversarial tests): ``midstream-error`` streams a
token, then vLLM's error event (``data: {"error": {...}}``) and ``[DONE]`` (a whole answer:
200 with a JSON body cut short); ``not-json`` answers 200 with a body that is not JSON (a
stream: a token, then a ``data:`` line that is not JSON); ``truncated`` answers JSON cut
short (a stream: a token, then half an event, then the end, no ``[DONE]``); ``flood``
streams large events as fast as it can (64 KiB each, for ~60 s), counting the stream as
``cancelled`` when its reader leaves before the end."""


def _chunk(chat: bool, piece: str) -> bytes:
    choice: dict[str, Any] = (
        {"index": 0, "delta": {"content": piece}, "finish_reason": None}
        if chat
        else {"index": 0, "text": piece, "finish_reason": None}
    )
    data: dict[str, Any] = {
        "id": "fake",
        "object": "chat.completion.chunk" if chat else "text_completion",
    }
    data.update({"created": int(time.time()), "model": "fake", "choices": [choice]})
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def _broken(mode: str, chat: bool, stream: bool) -> Response:
    if not stream:
        whole = json.dumps({"id": "x", "object": "chat.completion", "choices": []})
        if mode == "not-json":
            return Response(b"<html>Bad gateway</html>", media_type="text/html")
        return Response(whole[: len(whole) // 2].encode(), media_type="application/json")
    first = _chunk(chat, "Hello")

    async def events() -> AsyncIterator[bytes]:
        if mode == "flood":
            finished = False
            try:
                piece = "x" * 65536
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    yield _chunk(chat, piece)
                    await asyncio.sleep(0)
                finished = True
                yield b"data: [DONE]\n\n"
            finally:
                if not finished:
                    STATE["cancelled"] += 1
            return
        yield first
        await asyncio.sleep(0.05)
        if mode == "midstream-error":
            error = {"object": "error", "message": "CUDA out of memory", "type": "InternalError"}
            yield b"data: " + json.dumps({"error": {**error, "code": 500}}).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        elif mode == "not-json":
            yield b"data: <html>oops</html>\n\n"
            yield b"data: [DONE]\n\n"
        else:  # truncated
            yield first[: len(first) // 2]

    return StreamingResponse(events(), media_type="text/event-stream")


async def chat(request: Request) -> Response:
    return await _answer(request, chat=True)


async def completions(request: Request) -> Response:
    return await _answer(request, chat=False)


async def health(_: Request) -> Response:
    return Response(status_code=503 if STATE["mode"] == "refuse-health" else 200)


async def control(request: Request) -> Response:
    STATE.update(json.loads(await request.body()))
    return JSONResponse({k: v for k, v in STATE.items() if k != "received"})


async def state(_: Request) -> Response:
    return JSONResponse({k: v for k, v in STATE.items() if k != "received"})


async def received(request: Request) -> Response:
    if request.method == "DELETE":
        STATE["received"] = []
    return JSONResponse(STATE["received"])


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/control", control, methods=["POST"]),
        Route("/state", state, methods=["GET"]),
        Route("/received", received, methods=["GET", "DELETE"]),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        loop="uvloop",
        http="httptools",
        access_log=False,
    )


if __name__ == "__main__":
    main()
