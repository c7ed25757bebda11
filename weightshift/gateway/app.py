"""The gateway's ASGI application: its routes, each wired to the module that serves it.

``/v1/chat/completions`` and ``/v1/completions`` (``serving_completions.py``),
``/v1/feedback`` (``serving_feedback.py``), and the few lines of ``/v1/models``,
``/health`` (ready: the model server answers and the pod does not drain) and ``/livez``
here. One application per listener, all sharing one :class:`~weightshift.gateway.state.Gateway`;
the mirror listener's passes each answered request to its ``observer`` (the mirror).
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from weightshift.gateway.serving_completions import handle
from weightshift.gateway.serving_feedback import feedback
from weightshift.gateway.state import Gateway, Observer


def build_app(gateway: Gateway, observer: Observer | None = None) -> Starlette:
    """The ASGI application: ``observer`` (the mirror) sees each answered request."""

    async def chat(request: Request) -> Response:
        return await handle(gateway, request, "chat", observer)

    async def completions(request: Request) -> Response:
        return await handle(gateway, request, "completions", observer)

    async def scored(request: Request) -> Response:
        return await feedback(gateway, request)

    async def models(_: Request) -> Response:
        return JSONResponse(_models(gateway), headers=gateway.common_headers)

    async def health(_: Request) -> Response:
        ready = not gateway.draining and await gateway.upstream_ready()
        return JSONResponse(
            {"ready": ready, "version": gateway.bundle.version, "colour": gateway.colour},
            status_code=200 if ready else 503,
        )

    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/feedback", scored, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/livez", live, methods=["GET"]),
        ],
    )


def _models(gateway: Gateway) -> dict[str, Any]:
    """``/v1/models``: the one model this gateway serves, its version as ``root``."""
    return {
        "object": "list",
        "data": [
            {
                "id": gateway.bundle.model,
                "object": "model",
                "owned_by": "weightshift",
                "root": gateway.bundle.version,
            }
        ],
    }
