"""``POST /v1/feedback``: a score for an answer this stack gave, checked by its token.

The token (``feedback.py``) proves the model gave the answer and names the colour that
gave it; an accepted score goes to that colour's quality metric (its rollback alarm reads
it). The body is read up to ``MAX_FEEDBACK_BYTES`` (413 beyond); a malformed body is a 400,
any token this stack did not issue a 403, a second score for an answer a 409.
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from weightshift.gateway.feedback import FeedbackError
from weightshift.gateway.pipeline import Refusal, read_body
from weightshift.gateway.protocol import FeedbackRequest, error_body
from weightshift.gateway.state import Gateway

MAX_FEEDBACK_BYTES = 4096
"""A feedback body is a request id, a score and a token: a few hundred bytes."""


async def feedback(gateway: Gateway, request: Request) -> Response:
    """202 with the colour scored; 400 for a malformed body, 403/409 for a refused token."""
    headers = gateway.common_headers
    try:
        raw = await read_body(
            request.stream(), request.headers.get("content-length"), MAX_FEEDBACK_BYTES
        )
    except Refusal as refusal:
        return JSONResponse(refusal.body, status_code=refusal.status, headers=headers)
    try:
        parsed = FeedbackRequest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return JSONResponse(
            error_body(f"{where}: {first['msg']}", "invalid_request_error", "invalid"),
            status_code=400,
            headers=headers,
        )
    try:
        colour = gateway.tokens.accept(parsed.token, parsed.request_id)
    except FeedbackError as refused:
        return JSONResponse(
            error_body(str(refused), "invalid_request_error", refused.code, "token"),
            status_code=refused.status,
            headers=headers,
        )
    gateway.metrics.feedback(colour, parsed.score)
    return JSONResponse({"accepted": True, "colour": colour}, status_code=202, headers=headers)
