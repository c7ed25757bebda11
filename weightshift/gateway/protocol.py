"""The gateway's wire protocol: the OpenAI-compatible requests it accepts, as pydantic models,
the error object it answers with, and the header that marks a mirrored copy.

A request field the gateway does not know is refused with a 400 naming it (rather than
passed to the model server unseen): everything that reaches the model is either the
bundle's or a field listed here, within the bundle's limits (``docs/gateway.md``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SHADOW_HEADER = "x-weightshift-shadow"
"""Marks a mirrored copy (as Envoy marks the shadow's host): answered, never served."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    """Informational: the gateway serves one model (its bundle's) whatever is named."""
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    user: str | None = Field(default=None, max_length=256)
    n: Literal[1] | None = None
    """One choice per request: moderation and metrics follow one answer."""
    logprobs: bool | int | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        """What the message says: its text, or the text of its text parts."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text or "" for part in self.content if part.type == "text")


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Request):
    prompt: str = Field(min_length=1)
    """One prompt per request (moderation and metrics follow one answer)."""
    echo: Literal[False] | None = None
    """Echoing would return the bundle's system prompt and examples: refused."""
    suffix: str | None = None


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: how good an answer was, 0 (useless) to 1 (perfect)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=200)
    """The answer's ``x-request-id``."""
    score: float = Field(ge=0, le=1)
    token: str = Field(min_length=1, max_length=120)
    """The answer's ``x-weightshift-feedback-token`` (``feedback.py``): proves the answer
    was given, and names the colour that gave it."""


def error_body(message: str, kind: str, code: str, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
