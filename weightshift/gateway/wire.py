"""The model server's HTTP/1.1 client: an asyncio ``Protocol`` with httptools' parser.

Why not aiohttp, which the gateway uses elsewhere (health checks, the mirror): relaying a
stream is the gateway's hot path, one network chunk per token, and aiohttp's client spends
most of a chunk's cost in Python around its parser (its protocol's ``data_received``, the
payload's ``StreamReader``, the reader task woken per chunk). Here the chunk goes from
httptools' C parser to one callback (``on_body``), which hands it to the consumer's
``sink`` synchronously: the relay writes it to the client from there (``upstream.py``),
with no task woken and no buffer between. The parser is httptools (uvicorn's, a maintained
binding of llhttp): the HTTP itself is not hand-parsed here.

What it does, and no more (its one peer is the model server, next to it in the pod):

- ``POST`` with a JSON body (``Content-Length``), one request at a time per connection;
  answers with a ``Content-Length``, chunked, or read to the connection's end.
- A keep-alive pool: a connection is reused once its answer was read to the end and the
  server allows it (LIFO; one idle for longer than ``idle_seconds`` is closed). A reused
  connection that the server had closed meanwhile (the request met a closed socket before
  any answer byte) is retried once on a new one; nothing else is retried.
- Timeouts: connecting is bounded by ``connect_seconds``; the first byte, idle gaps and the
  deadline are the caller's (``asyncio.timeout`` around :meth:`Pool.request`, the reads and
  the stream's wait), and whatever interrupts an exchange (timeout, cancellation: the
  client left) closes its connection, which cancels the generation upstream.
- Backpressure: the consumer pauses reading (:meth:`Answer.pause`) while its client's
  buffer is full, and resumes it once it drained.
- Failures are :class:`UpstreamError`: no connection, malformed HTTP, an answer cut short.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import cast
from urllib.parse import urlsplit

import httptools

IDLE_SECONDS = 60.0
"""How long an idle keep-alive connection is kept (vLLM's server closes its own sooner)."""
CONNECT_SECONDS = 5.0
HIGH_WATER = 256 * 1024
"""Bytes of body read but not yet taken (:meth:`Answer.chunks`) above which reading pauses."""


class UpstreamError(Exception):
    """The model server could not be reached, broke HTTP, or cut its answer short."""


class _Stale(UpstreamError):
    """A reused connection closed before any byte of the answer: safe to retry once."""


class Answer:
    """One exchange's answer: the status and headers once they are in, then the body, read
    whole (:meth:`read`) or pushed chunk by chunk to a ``sink`` (:meth:`push`)."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_error",
        "_paused",
        "_waiter",
        "complete",
        "headers",
        "sink",
        "started",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn: _Connection | None = conn
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self.sink: Callable[[bytes], None] | None = None
        self.complete = False
        self.started = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None

    def header(self, name: bytes) -> bytes | None:
        """The header ``name`` (lower case), if the answer has it."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    async def read(self) -> bytes:
        """The whole body (the exchange is complete then, its connection back in the pool)."""
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        self.sink = chunks.append  # gathered as parsed: no wake-up per chunk, no pause
        if self._paused:
            self._paused = False
            self.resume()
        while not self.complete:
            await self.wait()
        return b"".join(chunks)

    def push(self, sink: Callable[[bytes], None]) -> None:
        """From now on, hand each body chunk to ``sink`` as it is parsed (those parsed
        already first). ``sink`` runs in the protocol's callback: it must not block, and
        an exception it raises fails the exchange."""
        self.sink = sink
        chunks, self._chunks = self._chunks, []
        for chunk in chunks:
            sink(chunk)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it comes (for a consumer that awaits between chunks: the moderated
        stream); reading pauses while more than ``HIGH_WATER`` bytes wait to be taken."""
        while True:
            if self._chunks:
                chunks, self._chunks, self._buffered = self._chunks, [], 0
                if self._paused:
                    self._paused = False
                    self.resume()
                yield b"".join(chunks)
            elif self.complete:
                return
            else:
                await self.wait()

    async def wait(self) -> None:
        """Until the answer is complete or :meth:`wake` is called; :class:`UpstreamError`
        if the exchange failed. Cancelled (the caller's timeout, the client gone): the
        connection is closed."""
        if self._error is not None:
            raise self._error
        if self.complete:
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        except BaseException:
            self.close()
            raise
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def wake(self) -> None:
        """End the current :meth:`wait` (a sink asking its task for attention)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause(self) -> None:
        """Stop reading from the model server (its writes then block: backpressure)."""
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.pause_reading()

    def resume(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.resume_reading()

    def close(self) -> None:
        """Done with this answer: an unfinished exchange's connection is closed (which
        cancels the generation upstream); a finished one's is already back in the pool."""
        conn, self._conn = self._conn, None
        if conn is not None and not self.complete:
            conn.abandon()

    def _fail(self, error: UpstreamError) -> None:
        if self.complete or self._error is not None:
            return
        self._error = error
        self._conn = None
        self.wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the model server; the parser's callbacks fill the
    answer of the exchange in progress."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: Answer | None = None
        self.headers_ready: asyncio.Future[None] | None = None
        self.idle_since = 0.0
        self.closed = False
        self.to_close = False
        """The answer has no length: it ends when the connection does."""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        answer = self.answer
        if answer is None:  # bytes nobody asked for: this connection is not to be trusted
            self.abandon()
            return
        answer.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:  # a sink failed: not HTTP's fault
            cause = error.__context__ or error
            self._broken(UpstreamError(f"the answer could not be relayed: {cause!r}"))
        except httptools.HttpParserError as error:  # an upgrade (101) included
            self._broken(UpstreamError(f"malformed HTTP from the model server: {error}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
        answer = self.answer
        if answer is None:
            return
        if self.to_close and self.headers_ready is None:  # read to the end: it is complete
            self.on_message_complete()
            return
        if not answer.started:
            self._broken(_Stale("the model server closed the connection before answering"))
        else:
            self._broken(UpstreamError("the connection closed before the answer was complete"))

    # httptools' callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.answer is not None
        self.answer.headers.append((name, value))

    def on_headers_complete(self) -> None:
        answer = self.answer
        assert answer is not None
        answer.status = self.parser.get_status_code()
        if not self.parser.should_keep_alive() and answer.header(b"content-length") is None:
            self.to_close = answer.header(b"transfer-encoding") is None
        ready, self.headers_ready = self.headers_ready, None
        if ready is not None and not ready.done():
            ready.set_result(None)

    def on_body(self, body: bytes) -> None:
        answer = self.answer
        assert answer is not None
        sink = answer.sink
        if sink is not None:
            sink(body)
            return
        answer._chunks.append(body)
        answer._buffered += len(body)
        if answer._buffered > HIGH_WATER and not answer._paused:
            answer._paused = True
            answer.pause()
        answer.wake()

    def on_message_complete(self) -> None:
        answer = self.answer
        assert answer is not None
        self.answer = None
        answer.complete = True
        answer._conn = None
        answer.wake()
        if self.to_close or self.closed or not self.parser.should_keep_alive():
            self.abandon()
        else:
            self.pool.release(self)

    # the exchange
    def send(self, head: bytes, body: bytes) -> Answer:
        assert self.transport is not None
        self.answer = Answer(self)
        self.headers_ready = asyncio.get_running_loop().create_future()
        self.transport.resume_reading()  # paused by the last exchange's reader, maybe
        self.transport.write(head + body)
        return self.answer

    def abandon(self) -> None:
        """Close the connection (an exchange in progress is given up: the model server sees
        the client leave)."""
        self.closed = True
        self.pool.discard(self)
        if self.transport is not None:
            self.transport.close()

    def _broken(self, error: UpstreamError) -> None:
        answer, self.answer = self.answer, None
        ready, self.headers_ready = self.headers_ready, None
        if ready is not None and not ready.done():
            ready.set_exception(error)
        if answer is not None:
            answer._fail(error)
        self.abandon()


class Pool:
    """Keep-alive connections to one model server (``base``: its ``http(s)://host:port``)."""

    def __init__(
        self,
        base: str,
        *,
        keep: int = 64,
        idle_seconds: float = IDLE_SECONDS,
        connect_seconds: float = CONNECT_SECONDS,
    ) -> None:
        parts = urlsplit(base)
        self.host = parts.hostname or "localhost"
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        authority = parts.netloc.rpartition("@")[2]
        self._host_header = b"host: " + authority.encode("idna") + b"\r\n"
        self.keep, self.idle_seconds, self.connect_seconds = keep, idle_seconds, connect_seconds
        self._idle: collections.deque[_Connection] = collections.deque()
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self.tls else None

    async def request(self, path: str, body: bytes, headers: dict[str, str]) -> Answer:
        """``POST`` ``body`` (JSON) to ``path``; the answer once its status and headers are
        in. :class:`UpstreamError` where none can be had."""
        head = self._head(path, body, headers)
        for attempt in (1, 2):
            conn, reused = await self._connection()
            ready = None
            try:
                answer = conn.send(head, body)
                ready = conn.headers_ready
                assert ready is not None
                await ready
            except _Stale:
                if reused and attempt == 1:
                    continue
                raise UpstreamError(
                    "the model server closed the connection before answering"
                ) from None
            except BaseException:  # a timeout or cancellation: the exchange is given up
                conn.abandon()
                if ready is not None and ready.done() and not ready.cancelled():
                    ready.exception()  # retrieved: no "never retrieved" warning
                raise
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def _head(self, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        lines = [
            f"POST {self.prefix}{path} HTTP/1.1\r\n".encode("latin-1"),
            self._host_header,
            b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
        ]
        for name, value in headers.items():
            text = f"{name}: {value}\r\n"
            if any(c in text[:-2] for c in "\r\n\0"):
                raise UpstreamError(f"the header {name} holds a line break; not sent")
            lines.append(text.encode("latin-1", "replace"))
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _connection(self) -> tuple[_Connection, bool]:
        """An idle connection (reused: True), or a new one."""
        idle = self._idle
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_seconds:
                return conn, True
            conn.abandon()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_seconds):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self._ssl
                )
        except TimeoutError:
            raise UpstreamError(
                f"no connection to {self.host}:{self.port} within {self.connect_seconds} s"
            ) from None
        except OSError as error:
            raise UpstreamError(
                f"cannot connect to {self.host}:{self.port}: {error.strerror or error}"
            ) from None
        return protocol, False

    def release(self, conn: _Connection) -> None:
        """``conn``'s exchange is complete: kept for the next (the oldest idle connection
        closed if it idled too long, or if too many are kept)."""
        now = time.monotonic()
        conn.idle_since = now
        idle = self._idle
        idle.append(conn)
        while idle and (len(idle) > self.keep or now - idle[0].idle_since >= self.idle_seconds):
            idle.popleft().abandon()

    def discard(self, conn: _Connection) -> None:
        if self._idle and conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().abandon()
