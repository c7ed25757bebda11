"""A local OpenAI-compatible judge for ``weightshift eval run``'s tests, whose verdicts follow
from what it is shown, so the expected counts are known.

Run as a process: ``python -m tests.fake_judge --port 8090``. ``POST /v1/chat/completions``
reads the judge prompt (``weightshift/evaluation/judge_prompt_v1.txt``): the question and
answers A and B between their markers. The question steers it:

- ``want:WORD``: the answer containing WORD wins (as A or B, wherever it was shown); both or
  neither: tie.
- ``judge:garbage``: an answer with no verdict, every time (a judge failure).
- ``judge:garbage-once``: no verdict the first time this question is asked, then as above.
- ``judge:hang``: while ``{"hang": true}`` was posted to ``/control``, no answer comes until
  the caller leaves.

``GET /received`` lists what it was asked (question, A, B), ``DELETE /received`` clears it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

STATE: dict[str, Any] = {"hang": False, "received": []}


def _between(text: str, start: str, end: str) -> str:
    found = re.search(re.escape(start) + r"\n(.*)\n" + re.escape(end), text, re.DOTALL)
    return found.group(1) if found else ""


def parts(message: str) -> tuple[str, str, str]:
    """The question and answers A and B of a rendered judge prompt."""
    return (
        _between(message, "[User question]", "[End of user question]"),
        _between(message, "[Answer A]", "[End of answer A]"),
        _between(message, "[Answer B]", "[End of answer B]"),
    )


def verdict(question: str, a: str, b: str) -> str:
    want = re.search(r"want:(\S+)", question)
    word = want.group(1) if want else None
    in_a, in_b = (word is not None and word in a), (word is not None and word in b)
    if in_a and not in_b:
        return "A"
    if in_b and not in_a:
        return "B"
    return "tie"


async def chat(request: Request) -> Response:
    body = json.loads(await request.body())
    message = body["messages"][-1]["content"]
    question, a, b = parts(message)
    earlier = sum(1 for seen in STATE["received"] if seen["question"] == question)
    STATE["received"].append({"question": question, "a": a, "b": b, "model": body.get("model")})
    # Hangs until the caller leaves (or the hang is lifted): a stopped run's connection.
    while "judge:hang" in question and STATE["hang"] and not await request.is_disconnected():
        await asyncio.sleep(0.05)
    if "judge:garbage" in question and not ("judge:garbage-once" in question and earlier):
        text = "Both answers have merit. I would rather not choose."
    else:
        text = f'Reasoning in one line.\n{{"verdict": "{verdict(question, a, b)}"}}'
    return JSONResponse(
        {
            "id": "judge-fake",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "judge"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
        }
    )


async def control(request: Request) -> Response:
    STATE.update(json.loads(await request.body()))
    return JSONResponse({"hang": STATE["hang"]})


async def received(request: Request) -> Response:
    if request.method == "DELETE":
        STATE["received"] = []
    return JSONResponse(STATE["received"])


async def health(_: Request) -> Response:
    return Response(status_code=200)


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/control", control, methods=["POST"]),
        Route("/received", received, methods=["GET", "DELETE"]),
        Route("/health", health, methods=["GET"]),
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
        access_log=False,
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
