"""Shadow mirroring: requests answered by this (stable) colour, copied to the candidate.

The semantics are Envoy's request mirroring: the copy is fire-and-forget, sent once the
served answer is complete, so it never delays or fails it; its answer is read and
discarded; it is marked (``x-weightshift-shadow: 1``). Copies wait in a bounded queue and
are sent by a fixed number of workers, each with its own timeout; when the queue is full
(the candidate is slow or down) a copy is dropped and counted (``MirrorDropped``), and its
pair records the candidate's side as ``dropped``. Every copy becomes a pair record
(``docs/shadow-records.md``), batched to S3 by :class:`ShadowRecorder`. The mirror is
the observer of the mirror listener's application (``app.build_app``); ``server.py``
builds it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiohttp

from weightshift.gateway.protocol import SHADOW_HEADER
from weightshift.gateway.shadow import Answer, ShadowRecorder, pair_from
from weightshift.gateway.sse import sse_events, upstream_error
from weightshift.gateway.state import Gateway, Outcome

log = logging.getLogger("weightshift.gateway.mirror")


@dataclass(frozen=True)
class Copy:
    """One served request, waiting to be mirrored."""

    body: bytes
    request_id: str
    endpoint: str
    at: datetime
    stable: Answer


def _answer(outcome: Outcome) -> Answer:
    return Answer(
        status=outcome.status,
        outcome=outcome.outcome,  # type: ignore[arg-type]
        latency_ms=None if outcome.latency is None else outcome.latency * 1000,
        ttft_ms=None if outcome.ttft is None else outcome.ttft * 1000,
        tokens_in=outcome.tokens_in,
        tokens_out=outcome.tokens_out,
        refusal=outcome.outcome == "blocked",
        text="".join(outcome.text) if outcome.text else None,
    )


def _failed(outcome: Literal["timeout", "error"], started: float) -> Answer:
    """The candidate's side of a copy that got no answer."""
    return Answer(
        status=None,
        outcome=outcome,
        latency_ms=(time.monotonic() - started) * 1000,
    )


def _by_status(status: int) -> Literal["ok", "refused", "error", "timeout"]:
    """The outcome an answer's status tells: 504 a timeout, 5xx an error, 4xx refused."""
    if status == 504:
        return "timeout"
    if status >= 500:
        return "error"
    return "refused" if status >= 400 else "ok"


@dataclass
class _Read:
    """What the candidate's answer said: its text, tokens, time to first token and outcome,
    read from the answer itself (the outcome header is written before a stream begins, so
    it cannot tell how the stream ended): an error event is ``error`` (``timeout`` where
    its code is), a ``content_filter`` finish ``blocked``, a stream without ``[DONE]``
    ``error``."""

    started: float
    ttft: float | None = None
    text: list[str] = field(default_factory=list)
    tokens_in: int | None = None
    tokens_out: int | None = None
    outcome: Literal["ok", "refused", "blocked", "error", "timeout"] = "ok"

    async def stream(self, response: aiohttp.ClientResponse) -> None:
        ended = False
        async for event in sse_events(response.content.iter_any()):
            if event == b"[DONE]":
                ended = True
                break
            error = upstream_error(event)
            if error is not None:
                self.outcome = "timeout" if error.get("code") == "timeout" else "error"
                return
            self._choices(json.loads(event), "delta")
        if not ended:
            self.outcome = "error"  # cut short

    def whole(self, body: bytes) -> None:
        self._choices(json.loads(body or b"{}"), "message")

    def _choices(self, data: dict[str, Any], key: str) -> None:
        usage = data.get("usage")
        if usage:
            self.tokens_in = usage.get("prompt_tokens")
            self.tokens_out = usage.get("completion_tokens")
        for choice in data.get("choices") or []:
            piece = (choice.get(key) or {}).get("content") or choice.get("text")
            if piece:
                if self.ttft is None and key == "delta":
                    self.ttft = time.monotonic() - self.started
                self.text.append(piece)
            if choice.get("finish_reason") == "content_filter":
                self.outcome = "blocked"


class Mirror:
    """The stable colour's copies to the candidate, and their pairs."""

    def __init__(
        self,
        gateway: Gateway,
        target: str,
        *,
        queue_size: int = 256,
        workers: int = 16,
        timeout: float = 120.0,
        recorder: ShadowRecorder | None = None,
    ) -> None:
        self.gateway = gateway
        self.target = target.rstrip("/")
        self.queue: asyncio.Queue[Copy] = asyncio.Queue(maxsize=queue_size)
        self.workers = workers
        self.timeout = timeout
        self.recorder = recorder
        self.candidate_version: str | None = None
        """The candidate's bundle id, as its last answer named it (a dropped copy's pair
        names the version that was then the candidate)."""
        self.client: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def observe(self, raw: bytes, headers: Mapping[str, str], outcome: Outcome) -> None:
        """Called when a served answer is complete: queue its copy, or drop it."""
        # The pair's time is the request's arrival: now, less the time it took to answer.
        arrived = datetime.now(UTC) - timedelta(seconds=time.monotonic() - outcome.started)
        copy = Copy(raw, outcome.request_id, outcome.endpoint, arrived, _answer(outcome))
        try:
            self.queue.put_nowait(copy)
        except asyncio.QueueFull:
            self.gateway.metrics.add("MirrorDropped")
            self._pair(copy, Answer(status=None, outcome="dropped"), None)

    def tasks(self) -> list[asyncio.Task[None]]:
        if self.client is None:
            self.client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.workers),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=3),
            )
        if self.recorder is not None:
            self.recorder.start()
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]
        return list(self._tasks)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.recorder is not None:
            await self.recorder.stop()
        if self.client is not None:
            await self.client.close()

    async def _work(self) -> None:
        while True:
            copy = await self.queue.get()
            try:
                answer, version = await self._send(copy)
                self.gateway.metrics.add("MirrorSent")
                self._pair(copy, answer, version)
            except Exception as error:  # noqa: BLE001 (a copy must never take the worker down)
                log.warning("mirroring %s failed: %s", copy.request_id, error)
            finally:
                self.queue.task_done()

    async def _send(self, copy: Copy) -> tuple[Answer, str | None]:
        """The candidate's answer to ``copy``, and the version that gave it."""
        assert self.client is not None
        path = "chat/completions" if copy.endpoint == "chat" else "completions"
        started = time.monotonic()
        read = _Read(started)
        try:
            async with asyncio.timeout(self.timeout):
                async with self.client.post(
                    f"{self.target}/v1/{path}",
                    data=copy.body,
                    headers={
                        "content-type": "application/json",
                        "x-request-id": copy.request_id,
                        SHADOW_HEADER: "1",
                    },
                ) as response:
                    version = response.headers.get("x-weightshift-version")
                    status = response.status
                    if response.content_type == "text/event-stream":
                        await read.stream(response)
                    elif status == 200:
                        read.whole(await response.read())
                    else:
                        read.outcome = _by_status(status)
        except TimeoutError:
            return _failed("timeout", started), None
        except (aiohttp.ClientError, ValueError):
            return _failed("error", started), None
        return Answer(
            status=status,
            outcome=read.outcome,
            latency_ms=(time.monotonic() - started) * 1000,
            ttft_ms=None if read.ttft is None else read.ttft * 1000,
            tokens_in=read.tokens_in,
            tokens_out=read.tokens_out,
            refusal=read.outcome == "blocked",
            text="".join(read.text),
        ), version

    def _pair(self, copy: Copy, candidate: Answer, version: str | None) -> None:
        if self.recorder is None:
            return
        if version is not None:
            self.candidate_version = version
        candidate_version = version or self.candidate_version
        try:
            body = json.loads(copy.body)
        except ValueError:
            body = {"unparsed": copy.body.decode(errors="replace")}
        try:
            pair = pair_from(
                request_id=copy.request_id,
                time=copy.at,
                model=self.gateway.bundle.model,
                stable_version=self.gateway.bundle.version,
                candidate_version=candidate_version,
                endpoint="chat" if copy.endpoint == "chat" else "completions",
                body=body if isinstance(body, dict) else {"body": body},
                stable=copy.stable,
                candidate=candidate,
                keep_text=self.recorder.keep_text,
            )
        except ValueError as error:
            log.warning("no pair for %s: %s", copy.request_id, error)
            return
        self.recorder.record(pair)
