"""One JSON request over HTTP, the way ``weightshift eval run`` asks gateways and judges:
bounded in time and size, retried with backoff on what may pass (429, 5xx, a dropped or timed
out connection), never on what will not (any other 4xx).

A 429 or 503 with ``Retry-After`` waits what it says (at most :data:`MAX_RETRY_AFTER`
seconds); otherwise the wait doubles from ``backoff`` with jitter. The last failure is
raised as :class:`TransportError`, saying what was tried and what came back.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 30.0
MAX_BODY_BYTES = 16 * 1024 * 1024
"""An answer larger than this is refused, not read into memory."""


class TransportError(Exception):
    """A request that did not get a usable answer after its retries."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    """Names in lower case."""
    body: Any
    """The parsed JSON body."""
    seconds: float
    """From sending the request to the last byte of the answer (the attempt that answered)."""


@dataclass
class Retry:
    attempts: int = 4
    """Tries in all, the first included."""
    backoff: float = 0.5
    """Seconds before the second try; doubled for each later one."""
    timeout: float = 120.0
    """Seconds one try may take, to the last byte."""
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)
    """How to wait between tries (tests wait for nothing)."""

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait after failed try ``attempt`` (1-based)."""
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), MAX_RETRY_AFTER)
            except ValueError:
                pass  # an HTTP date, or nonsense: back off as usual
        base = self.backoff * 2 ** (attempt - 1)
        return float(base * (0.5 + random.random()))


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: Mapping[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    retry: Retry,
    what: str,
    accept: Callable[[int, Mapping[str, str]], bool] = lambda status, _: status == 200,
) -> Answer:
    """POST ``body`` to ``url``; the first answer whose status ``accept`` takes, parsed.

    ``what`` names the request in errors (``the candidate's gateway``). ``accept`` sees the
    status and the headers (names in lower case). A status neither accepted nor retryable
    fails at once (not retried: asking again gets the same)."""
    last = "no attempt"
    for attempt in range(1, retry.attempts + 1):
        retry_after: str | None = None
        started = time.monotonic()
        try:
            async with session.post(
                url,
                json=body,
                headers=dict(headers or {}),
                timeout=aiohttp.ClientTimeout(total=retry.timeout),
            ) as response:
                data = await response.content.read(MAX_BODY_BYTES + 1)
                seconds = time.monotonic() - started
                lowered = {name.lower(): value for name, value in response.headers.items()}
                if len(data) > MAX_BODY_BYTES:
                    raise TransportError(
                        f"{what} answered more than {MAX_BODY_BYTES:,} bytes ({url})",
                        status=response.status,
                        retryable=False,
                    )
                status = response.status
                if accept(status, lowered):
                    try:
                        parsed = json.loads(data)
                    except ValueError:
                        last = f"HTTP {status} with a body that is not JSON"
                    else:
                        return Answer(status, lowered, parsed, seconds)
                elif status in RETRY_STATUSES:
                    last = f"HTTP {status}{_error_text(data)}"
                    retry_after = lowered.get("retry-after")
                else:
                    raise TransportError(
                        f"{what} answered HTTP {status}{_error_text(data)} ({url})",
                        status=status,
                        retryable=False,
                    )
        except (aiohttp.ClientError, TimeoutError) as error:
            last = (
                f"no answer within {retry.timeout:g} s"
                if isinstance(error, TimeoutError)
                else f"{type(error).__name__}: {error}"
            )
        if attempt < retry.attempts:
            await retry.sleep(retry.delay(attempt, retry_after))
    raise TransportError(f"{what} failed {retry.attempts} times, last: {last} ({url})")


def _error_text(data: bytes) -> str:
    """`` (message)`` from an OpenAI-shaped error body, or nothing."""
    try:
        message = json.loads(data)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f" ({str(message)[:200]})"
