"""A local OpenAI-compatible model server for the gateway's tests and benchmark.

Run as a process: ``python -m tests.fake_upstream --port 8080``. It answers
``/v1/chat/completions`` and ``/v1/completions`` (streaming or not) the way vLLM does (a
role chunk, one chunk per token, a usage chunk when asked, ``[DONE]``), records every request
body it receives, and is steered through ``POST /control``:

``{"mode": "ok" | "hang" | "error" | "refuse-health", "text": "...", "token_delay": 0.0,
"first_token_delay": 0.0}``. ``GET /received`` lists the bodies received, ``DELETE
/received`` clears them, ``GET /health`` is 200 unless mode is ``refuse-health``.
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
}


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
    if not body.get("stream"):
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            if chat
            else {"index": 0, "text": text, "finish_reason": "stop"}
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
        for token in tokens:
            piece = {"content": token} if chat else None
            yield event(
                {"index": 0, "delta": piece, "finish_reason": None}
                if chat
                else {"index": 0, "text": token, "finish_reason": None}
            )
            if STATE["token_delay"]:
                await asyncio.sleep(STATE["token_delay"])
        yield event(
            {"index": 0, "delta": {}, "finish_reason": "stop"}
            if chat
            else {"index": 0, "text": "", "finish_reason": "stop"}
        )
        if include_usage:
            yield event(None, {"usage": usage})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


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
