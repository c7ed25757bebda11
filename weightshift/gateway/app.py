"""The gateway's ASGI application: its routes, each wired to the module that serves it.

``/v1/chat/completions`` and ``/v1/completions`` (``serving_completions.py``),
``/v1/feedback`` (``serving_feedback.py``), and the few lines of ``/v1/models``,
``/v1/models/{id}``, ``/health`` (ready: the model server answers and the pod does not
drain) and ``/livez`` here. One application per listener, all sharing one
:class:`~weightshift.gateway.state.Gateway`; the mirror listener's passes each answered
request to its ``observer`` (the mirror).

Every status is an OpenAI-shaped JSON error with the usual headers, Starlette's own 404
(no such path) and 405 (wrong method) and an unexpected 500 included: a client's SDK reads
one error shape, and the colour and version headers say which pod answered.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from weightshift.gateway.protocol import error_body
from weightshift.gateway.serving_completions import handle
from weightshift.gateway.serving_feedback import feedback
from weightshift.gateway.state import Gateway, Observer
from weightshift.gateway.upstream import RAW_SEND

STARTED = int(time.time())
"""When this process started: ``created`` of ``/v1/models`` when the publish time is unknown."""

_KINDS = {
    400: ("invalid_request_error", "bad_request"),
    401: ("authentication_error", "unauthorized"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "too_many_requests"),
}


def build_app(
    gateway: Gateway, observer: Observer | None = None, *, created: int | None = None
) -> ASGIApp:
    """The ASGI application: ``observer`` (the mirror) sees each answered request;
    ``created`` is the Unix time ``/v1/models`` gives (the bundle's publication). The
    server's own ``send`` is put in the scope for streams (``upstream.RAW_SEND``)."""
    routes = _routes(gateway, observer, created)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        if scope["type"] == "http" and scope["method"] == "POST":
            kind = _COMPLETIONS.get(scope["path"])
            if kind is not None:
                await _completions(
                    scope, receive, send, gateway=gateway, kind=kind, observer=observer
                )
                return
        await routes(scope, receive, send)

    return app


_COMPLETIONS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
"""The hot routes, answered past Starlette's router and middleware (``_completions``)."""


async def _completions(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    gateway: Gateway,
    kind: str,
    observer: Observer | None,
) -> None:
    """``POST`` to a completions endpoint, straight to its handler: what Starlette's stack
    would add is a router's search, two exception-handling layers and three wrappers of
    ``send`` per request, none of which these routes need. An unexpected failure is
    answered as Starlette's ``server_error`` handler answers it (an OpenAI-shaped 500, if
    nothing was sent yet) and raised, for the server to log."""
    started = False

    async def sending(message: Message) -> None:
        nonlocal started
        started = True
        await send(message)

    request = Request(scope, receive, send)
    try:
        response = await handle(gateway, request, kind, observer)
        await response(scope, receive, sending)
    except Exception:
        if not started:
            body = error_body(
                "The gateway failed to answer (see its log).", "server_error", "internal_error"
            )
            await _error(gateway, request, 500, body)(scope, receive, send)
        raise


def _routes(gateway: Gateway, observer: Observer | None, created: int | None) -> Starlette:
    """The routes, as a Starlette application."""
    listed = _models(gateway, created or STARTED)
    item = listed["data"][0]
    served_names = gateway.bundle.served_names or {gateway.bundle.model, gateway.bundle.version}

    async def chat(request: Request) -> Response:
        return await handle(gateway, request, "chat", observer)

    async def completions(request: Request) -> Response:
        return await handle(gateway, request, "completions", observer)

    async def scored(request: Request) -> Response:
        return await feedback(gateway, request)

    async def models(_: Request) -> Response:
        return JSONResponse(listed, headers=gateway.common_headers)

    async def model(request: Request) -> Response:
        name = request.path_params["model"]
        if name in served_names:
            return JSONResponse(item, headers=gateway.common_headers)
        # vLLM's words for a model it does not serve, as the completions endpoints say them
        message = f"The model `{name}` does not exist."
        body = error_body(message, "invalid_request_error", "model_not_found", "model")
        return _error(gateway, request, 404, body)

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
            Route("/v1/models/{model:path}", model, methods=["GET"]),
            Route("/v1/feedback", scored, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/livez", live, methods=["GET"]),
        ],
        exception_handlers=_exception_handlers(gateway),
    )


def _error(
    gateway: Gateway, request: Request, status: int, body: dict[str, Any], **extra: str
) -> Response:
    """An OpenAI-shaped error with the gateway's usual headers."""
    headers = {
        **gateway.common_headers,
        "x-request-id": request.headers.get("x-request-id")
        or f"ws-{gateway.colour}-{uuid.uuid4().hex}",
        "x-weightshift-outcome": "refused" if status < 500 else "error",
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers)


def _exception_handlers(gateway: Gateway) -> dict[Any, Any]:
    """Starlette's own 404 and 405, and anything unexpected, as OpenAI-shaped errors."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind, code = _KINDS.get(
            exc.status_code,
            ("invalid_request_error" if exc.status_code < 500 else "server_error", "error"),
        )
        message = exc.detail
        if exc.status_code == 404:
            message = f"No such endpoint: {request.method} {request.url.path}."
        elif exc.status_code == 405:
            allowed = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow")
            message = f"{request.method} is not allowed on {request.url.path}" + (
                f": use {allowed}." if allowed else "."
            )
        body = error_body(message, kind, code)
        return _error(gateway, request, exc.status_code, body, **(exc.headers or {}))

    async def server_error(request: Request, _: Exception) -> Response:
        body = error_body(
            "The gateway failed to answer (see its log).", "server_error", "internal_error"
        )
        return _error(gateway, request, 500, body)

    return {HTTPException: http_error, Exception: server_error}


def _models(gateway: Gateway, created: int) -> dict[str, Any]:
    """``/v1/models``: the one model this gateway serves, its version as ``root``."""
    return {
        "object": "list",
        "data": [
            {
                "id": gateway.bundle.model,
                "object": "model",
                "created": created,
                "owned_by": "weightshift",
                "root": gateway.bundle.version,
                "parent": None,
            }
        ],
    }
