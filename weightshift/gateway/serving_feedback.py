"""``POST /v1/feedback``: a score for an answer this stack gave, checked by its token.

The token (``feedback.py``) proves the answer was given and names the colour that gave
it; an accepted score goes to that colour's quality metric (its rollback alarm reads it).
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from weightshift.gateway.feedback import FeedbackError
from weightshift.gateway.protocol import FeedbackRequest, error_body
from weightshift.gateway.state import Gateway


async def feedback(gateway: Gateway, request: Request) -> Response:
    """202 with the colour scored; 400 for a malformed body, 403/409 for a refused token."""
    try:
        parsed = FeedbackRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return JSONResponse(
            error_body(f"{where}: {first['msg']}", "invalid_request_error", "invalid"),
            status_code=400,
        )
    try:
        colour = gateway.tokens.accept(parsed.token, parsed.request_id)
    except FeedbackError as refused:
        return JSONResponse(
            error_body(str(refused), "invalid_request_error", refused.code, "token"),
            status_code=refused.status,
        )
    gateway.metrics.feedback(colour, parsed.score)
    return JSONResponse({"accepted": True, "colour": colour}, status_code=202)
