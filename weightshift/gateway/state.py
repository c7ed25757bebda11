"""What the serving modules share: the gateway's state (one per pod) and one request's.

:class:`Gateway` holds the served bundle, the model server's clients on localhost (its
keep-alive pool for answers, ``wire.py``; aiohttp for its ``/health``), the moderator, the
metrics and the feedback-token key, the number of requests in flight and whether the pod
drains; it writes the headers every answer carries and records a finished request's
metrics. :class:`Outcome` is what happened to one request (the metrics, the mirror's pair
and the headers read it), :class:`Call` the request on its way, holding a :class:`Slot`
(one of the version's ``max_concurrent_requests``).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp

from weightshift.gateway.feedback import TOKEN_HEADER, FeedbackTokens, random_key
from weightshift.gateway.metrics import Metrics
from weightshift.gateway.moderation import Moderator
from weightshift.gateway.observe import log_request, request_log_enabled
from weightshift.gateway.protocol import ChatCompletionRequest, CompletionRequest
from weightshift.gateway.served import ServedBundle
from weightshift.gateway.wire import Pool

_TOKEN_HEADER = TOKEN_HEADER.encode("latin-1")
UPSTREAM_HEALTH_TTL = 1.0
"""Seconds a model server health answer is reused by ``/health``."""


def new_id() -> str:
    """A request id of the gateway's own (96 random bits, hex)."""
    return secrets.token_hex(12)


@dataclass
class Outcome:
    """What happened to one request: the metrics, the mirror's pair and the headers."""

    request_id: str
    started: float
    endpoint: str = "chat"
    """``chat`` or ``completions``."""
    status: int = 200
    outcome: str = "ok"
    """ok, refused, blocked, error, timeout."""
    tokens_in: int | None = None
    tokens_out: int | None = None
    ttft: float | None = None
    latency: float | None = None
    text: list[str] = field(default_factory=list)
    """The answer's text, kept only where a mirror needs it for its pair."""
    id: str = field(default_factory=new_id)
    """The gateway's own id for the request (its feedback token is bound to it; the
    client's ``x-request-id`` is only for correlation)."""
    forwarded: bool = False
    """Whether the model server was asked: only its 200 answers carry a feedback token."""


Observer = Callable[[bytes, Mapping[str, str], Outcome], None]
"""Called once a request is answered (the mirror copies it then)."""


class Gateway:
    """The state one gateway shares across requests."""

    def __init__(
        self,
        bundle: ServedBundle,
        upstream: str,
        colour: str,
        moderator: Moderator,
        metrics: Metrics,
        *,
        tokens: FeedbackTokens | None = None,
        client: aiohttp.ClientSession | None = None,
    ) -> None:
        self.bundle = bundle
        self.upstream = upstream.rstrip("/")
        self.colour = colour
        self.moderator = moderator
        self.metrics = metrics
        self.tokens = tokens or FeedbackTokens(random_key())
        self.client = client
        """aiohttp, for the model server's ``/health``."""
        self.wire = Pool(self.upstream, keep=bundle.routing.max_concurrent_requests + 16)
        """The answers' client (``wire.py``): the relay's hot path."""
        self.in_flight = 0
        self.draining = False
        self._health: tuple[float, bool] = (0.0, False)
        self.version = bundle.version
        """The bundle's full id (formatted once)."""
        self.common_headers = {
            "x-weightshift-colour": colour,
            "x-weightshift-version": self.version,
        }
        self._raw_common = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in self.common_headers.items()
        ]

    async def start(self) -> None:
        if self.client is None:
            limit = self.bundle.routing.max_concurrent_requests + 16
            self.client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                auto_decompress=False,
            )

    async def close(self) -> None:
        self.wire.close()
        if self.client is not None:
            await self.client.close()

    async def upstream_ready(self) -> bool:
        """Whether the model server answers its ``/health`` (reused for a second)."""
        checked, ready = self._health
        now = time.monotonic()
        if now - checked < UPSTREAM_HEALTH_TTL:
            return ready
        assert self.client is not None
        try:
            async with asyncio.timeout(2):
                async with self.client.get(f"{self.upstream}/health") as response:
                    ready = response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            ready = False
        self._health = (now, ready)
        return ready

    def endpoint_path(self, parsed: ChatCompletionRequest | CompletionRequest) -> str:
        """The model server's path for ``parsed`` (under ``--upstream``'s)."""
        if isinstance(parsed, ChatCompletionRequest):
            return "/v1/chat/completions"
        return "/v1/completions"

    def headers(self, outcome: Outcome) -> dict[str, str]:
        """The headers of an answer: colour, version, request id, outcome, and a feedback
        token where the model server answered 200 (never for what the gateway refused or
        the model server failed: feedback scores the model's answers only)."""
        headers = {
            **self.common_headers,
            "x-request-id": outcome.request_id,
            "x-weightshift-outcome": outcome.outcome,
        }
        token = self._feedback_token(outcome)
        if token is not None:
            headers[TOKEN_HEADER] = token
        return headers

    def raw_headers(self, outcome: Outcome) -> list[tuple[bytes, bytes]]:
        """:meth:`headers` as an ASGI response's raw headers (the constant ones encoded
        once)."""
        raw = [
            *self._raw_common,
            (b"x-request-id", outcome.request_id.encode("latin-1")),
            (b"x-weightshift-outcome", outcome.outcome.encode("latin-1")),
        ]
        token = self._feedback_token(outcome)
        if token is not None:
            raw.append((_TOKEN_HEADER, token.encode("latin-1")))
        return raw

    def _feedback_token(self, outcome: Outcome) -> str | None:
        """The answer's feedback token: only where the model server answered 200."""
        if outcome.forwarded and outcome.status == 200 and outcome.outcome in ("ok", "blocked"):
            return self.tokens.issue(self.colour, outcome.request_id, outcome.id)
        return None

    def finish(self, outcome: Outcome) -> None:
        """Record a finished request's metrics, and its line in the request log."""
        metrics = self.metrics
        outcome.latency = time.monotonic() - outcome.started
        metrics.observe("Latency", outcome.latency)
        if outcome.ttft is not None:
            metrics.observe("TimeToFirstToken", outcome.ttft)
        if outcome.tokens_in:
            metrics.add("TokensIn", outcome.tokens_in)
        if outcome.tokens_out:
            metrics.add("TokensOut", outcome.tokens_out)
        if outcome.outcome in ("error", "timeout"):
            metrics.add("Errors")
        if outcome.outcome == "timeout":
            metrics.add("Timeouts")
        if outcome.outcome == "refused":
            metrics.add("Refusals")
        if request_log_enabled():
            log_request(
                {
                    "id": outcome.request_id,
                    "colour": self.colour,
                    "version": self.version,
                    "endpoint": outcome.endpoint,
                    "status": outcome.status,
                    "outcome": outcome.outcome,
                    "tokens_in": outcome.tokens_in,
                    "tokens_out": outcome.tokens_out,
                    "ttft_s": None if outcome.ttft is None else _tenths_ms(outcome.ttft),
                    "latency_s": _tenths_ms(outcome.latency),
                }
            )


def _tenths_ms(seconds: float) -> float:
    """``seconds`` to 0.1 ms (as ``round(seconds, 4)``, at half its cost)."""
    return round(seconds * 10000) / 10000


class Slot:
    """One of the version's ``max_concurrent_requests``: held from admission until the
    answer is complete (for a stream, until its last byte)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.held = False
        self.handed_to_stream = False

    def take(self) -> None:
        self.gateway.in_flight += 1
        self.held = True

    def release(self) -> None:
        if self.held:
            self.gateway.in_flight -= 1
            self.held = False


@dataclass
class Call:
    """One request on its way through the pipeline."""

    parsed: ChatCompletionRequest | CompletionRequest
    outcome: Outcome
    raw: bytes
    headers: Mapping[str, str]
    observer: Observer | None
    slot: Slot

    @property
    def chat(self) -> bool:
        return isinstance(self.parsed, ChatCompletionRequest)

    def done(self) -> None:
        """Tell the observer (the mirror) the answer is complete."""
        if self.observer is not None:
            self.observer(self.raw, self.headers, self.outcome)
