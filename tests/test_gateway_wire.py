"""The model server's client (``weightshift/gateway/wire.py``) against real local servers
that send exactly the bytes each test needs: chunked and ``Content-Length`` answers,
keep-alive reuse, a connection the server closed, an answer cut short, malformed HTTP, a
slow server, cancellation, backpressure; and the plain relay over it. Through the gateway
process: malformed HTTP from the model server is a 502, counted."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import socketserver
import threading
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway_harness import PROJECT, folder_id, free_port, gateway, request
from weightshift.gateway.relay import Relayer, client_transport, relay
from weightshift.gateway.state import Outcome
from weightshift.gateway.wire import HIGH_WATER, Answer, Pool, UpstreamError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
READ_SIZE = 256 * 1024
"""The most one socket read delivers (uvloop's buffer)."""
HANG_GUARD = 20.0
"""Seconds after which a test that waits for an event fails instead of hanging."""


def run(coro: Awaitable[None]) -> None:
    """On uvloop, as the gateway runs."""

    async def guarded() -> None:
        await asyncio.wait_for(coro, HANG_GUARD)

    uvloop.run(guarded())


class Server:
    """A local server calling ``handler`` per connection; counts its connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Pool]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        pool = Pool(f"http://127.0.0.1:{self.port}")
        try:
            yield pool
        finally:
            pool.close()
            server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request (head and ``Content-Length`` body); b"" when the client closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


async def until_complete(answer: Answer) -> None:
    while not answer.complete:
        await answer.wait()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def test_a_chunked_answer_is_pushed_to_the_sink_as_each_chunk_is_parsed() -> None:
    got: list[bytes] = []
    first_seen = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED_HEAD + chunk(b"hello "))
        await first_seen.wait()  # the second is sent only once the first reached the sink
        writer.write(chunk(b"world") + b"0\r\n\r\n")
        await reader.read()

    async def main() -> None:
        async with Server(handler).running() as pool:
            answer = await pool.request("/v1/chat/completions", b"{}", {"x-request-id": "r1"})
            assert answer.status == 200
            assert answer.header(b"content-type") == b"text/event-stream"

            def sink(data: bytes) -> None:
                got.append(data)
                first_seen.set()

            answer.push(sink)
            await until_complete(answer)
            answer.close()

    run(main())
    assert got == [b"hello ", b"world"]


def test_content_length_answers_reuse_one_keep_alive_connection() -> None:
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while request_ := await read_request(reader):
            heads.append(request_)
            body = json.dumps({"n": len(heads)}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body))

    server = Server(handler)

    async def main() -> None:
        async with server.running() as pool:
            for expected in (1, 2, 3):
                answer = await pool.request("/v1/completions", b'{"a":1}', {"x-request-id": "r"})
                assert json.loads(await answer.read()) == {"n": expected}
                answer.close()

    run(main())
    assert server.connections == 1
    assert heads[0].startswith(b"POST /v1/completions HTTP/1.1\r\n")
    assert b"\r\nx-request-id: r\r\n" in heads[0]
    assert b"\r\ncontent-length: 7\r\n" in heads[0]
    assert heads[0].endswith(b'\r\n\r\n{"a":1}')


def test_a_kept_connection_the_server_closed_is_retried_once_on_a_new_one() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        if server.connections == 1:
            await read_request(reader)  # the next request meets a closing socket: no answer

    server = Server(handler)

    async def main() -> None:
        async with server.running() as pool:
            for _ in range(2):
                answer = await pool.request("/v1/completions", b"{}", {})
                assert await answer.read() == b"ok"

    run(main())
    assert server.connections == 2


def test_a_new_connection_closed_before_any_answer_is_an_upstream_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # then closed, nothing answered

    server = Server(handler)

    async def main() -> None:
        async with server.running() as pool:
            with pytest.raises(UpstreamError, match="closed the connection before answering"):
                await pool.request("/v1/completions", b"{}", {})

    run(main())
    assert server.connections == 1  # not retried: the request may have been taken


def test_an_answer_cut_short_mid_body_fails_after_what_came_before() -> None:
    got: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED_HEAD + chunk(b"data: 1\n\n"))
        await writer.drain()

    async def main() -> None:
        async with Server(handler).running() as pool:
            answer = await pool.request("/v1/chat/completions", b"{}", {})
            answer.push(got.append)
            with pytest.raises(UpstreamError, match="closed before the answer was complete"):
                await until_complete(answer)

    run(main())
    assert got == [b"data: 1\n\n"]


def test_an_answer_without_a_length_ends_with_its_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")

    async def main() -> None:
        async with Server(handler).running() as pool:
            answer = await pool.request("/v1/completions", b"{}", {})
            assert await answer.read() == b"all of it"

    run(main())


@pytest.mark.parametrize(
    "reply",
    [b"HELLO\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\n"],
    ids=["not-http", "bad-length"],
)
def test_malformed_http_from_the_server_is_an_upstream_error(reply: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await reader.read()

    async def main() -> None:
        async with Server(handler).running() as pool:
            with pytest.raises(UpstreamError, match="malformed HTTP"):
                await pool.request("/v1/completions", b"{}", {})

    run(main())


def test_a_server_that_does_not_answer_is_the_callers_timeout_and_is_hung_up_on() -> None:
    hung_up = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the client closes
        hung_up.set()

    async def main() -> None:
        async with Server(handler).running() as pool:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await pool.request("/v1/completions", b"{}", {})
            await hung_up.wait()  # the model server sees the request given up

    run(main())


def test_a_stream_cancelled_mid_answer_closes_its_connection() -> None:
    hung_up = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED_HEAD + chunk(b"data: 1\n\n"))
        await reader.read()
        hung_up.set()

    async def main() -> None:
        async with Server(handler).running() as pool:
            answer = await pool.request("/v1/chat/completions", b"{}", {})
            got = asyncio.Event()
            answer.push(lambda _: got.set())
            waiting = asyncio.ensure_future(answer.wait())
            await got.wait()
            while answer._waiter is None:  # the relay is waiting for the model server
                await asyncio.sleep(0)
            waiting.cancel()  # the client left: the relay is cancelled
            await hung_up.wait()

    run(main())


def test_a_reader_that_does_not_take_pauses_the_server_then_gets_everything() -> None:
    """Backpressure: past ``HIGH_WATER`` bytes untaken, reading stops (the server's writes
    then block in the kernel's buffers); taking resumes it, and every byte arrives."""
    piece = b"x" * 65536
    total = 256

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED_HEAD)
        for _ in range(total):
            writer.write(chunk(piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def main() -> None:
        async with Server(handler).running() as pool:
            answer = await pool.request("/v1/chat/completions", b"{}", {})
            body = answer.chunks()
            first = await anext(body)
            while not answer._paused:  # the reader takes nothing more for now
                await asyncio.sleep(0.01)
            held = answer._buffered
            await asyncio.sleep(0.1)  # the server keeps writing meanwhile, if it can
            assert answer._buffered == held  # it cannot: nothing more was read
            assert held <= HIGH_WATER + READ_SIZE  # what the read that crossed it brought
            received = len(first)
            async for data in body:
                received += len(data)
            assert received == total * len(piece)

    run(main())


def test_connecting_to_nothing_is_an_upstream_error() -> None:
    async def main() -> None:
        pool = Pool(f"http://127.0.0.1:{free_port()}")
        with pytest.raises(UpstreamError, match="cannot connect"):
            await pool.request("/v1/completions", b"{}", {})

    run(main())


def test_a_header_value_with_a_line_break_is_not_sent() -> None:
    pool = Pool("http://127.0.0.1:1")
    with pytest.raises(UpstreamError, match="line break"):
        pool._head("/v1/completions", b"{}", {"x-request-id": "a\r\nx-evil: 1"})


def _events(*payloads: str) -> list[bytes]:
    return [f"data: {p}\n\n".encode() for p in payloads]


@pytest.mark.parametrize("split", [1, 7, 4096], ids=["byte-by-byte", "7-bytes", "whole"])
def test_the_relay_passes_whole_events_untouched_and_reads_usage(split: int) -> None:
    events = _events(
        '{"choices":[{"delta":{"role":"assistant"}}]}',
        '{"choices":[{"delta":{"content":"Hi"}}]}',
        '{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1}}',
        "[DONE]",
    )
    stream = b"".join(events)
    sent: list[bytes] = []
    outcome = Outcome("r", 0.0)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED_HEAD)
        for start in range(0, len(stream), split):
            writer.write(chunk(stream[start : start + split]))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await reader.read()

    async def send(message: Any) -> None:
        sent.append(message["body"])

    async def main() -> None:
        async with Server(handler).running() as pool:
            answer = await pool.request("/v1/chat/completions", b"{}", {})
            relayer = Relayer(outcome, wants_usage=False, keep_text=False, chat=True)
            assert await relay(answer, relayer, send) == b""

    run(main())
    assert b"".join(sent) == events[0] + events[1] + events[3]  # usage dropped: not asked
    assert all(part.endswith(b"\n\n") for part in sent)  # whole events only
    assert (outcome.tokens_in, outcome.tokens_out, outcome.outcome) == (5, 1, "ok")
    assert outcome.ttft is not None


def test_the_relay_ends_on_the_model_servers_error_event() -> None:
    outcome = Outcome("r", 0.0)
    sent: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        body = b"".join(
            _events('{"choices":[{"delta":{"content":"Hi"}}]}', '{"error":{"message":"oom"}}')
        )
        writer.write(CHUNKED_HEAD + chunk(body))
        await reader.read()  # never ends the answer: the relay must stop on its own

    async def send(message: Any) -> None:
        sent.append(message["body"])

    async def main() -> None:
        async with Server(handler).running() as pool:
            answer = await pool.request("/v1/chat/completions", b"{}", {})
            relayer = Relayer(outcome, wants_usage=False, keep_text=False, chat=True)
            ending = await relay(answer, relayer, send)
            answer.close()
            assert b'"code": "upstream_error"' in ending
            assert b"oom" in ending
            assert ending.startswith(b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n')

    run(main())
    assert outcome.outcome == "error"


# -- through the gateway process -----------------------------------------------------------


class _Garbage(socketserver.BaseRequestHandler):
    """A model server that answers every request with bytes that are not HTTP."""

    def handle(self) -> None:
        self.request.recv(65536)
        self.request.sendall(b"SPDY/9 totally not http\r\n\r\n")


@contextmanager
def garbage_server() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Garbage)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _errors(address: str) -> float:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "weightshift_errors_total":
                return float(sample.value)
    raise AssertionError("no weightshift_errors_total")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_malformed_http_from_the_model_server_is_a_502_and_counted(
    stream: bool, tmp_path: Path
) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(PROJECT / "bundles/support-assistant/v1.5.0", root)
    address = f"127.0.0.1:{free_port()}"
    extra = ["--metrics", "off", "--prometheus-listen", address]
    with garbage_server() as url, gateway(root, url, bundle_id=folder_id(root), extra=extra) as gw:
        body = {"messages": [{"role": "user", "content": "Hi"}], "stream": stream}
        status, _, answer = request(f"{gw.url}/v1/chat/completions", body)
        assert status == 502
        assert json.loads(answer)["error"]["code"] == "upstream_unavailable"
        assert "malformed HTTP" in json.loads(answer)["error"]["message"]
        assert _errors(address) == 1


def test_on_the_gateways_server_the_relay_writes_to_the_clients_transport() -> None:
    """The direct path (``relay.client_transport``) is found under uvicorn with httptools,
    as the gateway serves, once a chunked response has started: were an upgrade of uvicorn
    to rename what it reads, the relay would fall back to ``send`` per chunk (correct but
    slower), and this test says so."""
    found: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        before = client_transport(send)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        cycle = client_transport(send)
        found.extend([before is None, cycle is not None])
        if cycle is not None:
            cycle.transport.write(b"2\r\nok\r\n")  # as relay() frames a chunk
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def main() -> None:
        config = uvicorn.Config(
            app, http="httptools", loop="none", lifespan="off", log_level="warning"
        )
        server = uvicorn.Server(config)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readuntil(b"0\r\n\r\n")
        writer.close()
        server.should_exit = True
        await serving
        assert b"transfer-encoding: chunked" in head
        assert body == b"2\r\nok\r\n0\r\n\r\n"

    run(main())
    assert found == [True, True]


def reading(answer: Answer | None) -> bool:
    """Whether ``answer``'s connection reads from the model server (not yet asked: True;
    complete: False, and the flood was never held back)."""
    if answer is None:
        return True
    if answer.complete or answer._conn is None or answer._conn.transport is None:
        return False
    return bool(answer._conn.transport.is_reading())


def test_a_client_that_does_not_read_pauses_the_model_server_on_the_direct_path() -> None:
    """Backpressure through the gateway's server: the model server floods, the client
    reads nothing; once the client's buffer passes its high-water mark the relay stops
    reading from the model server (whose writes then block), so the gateway holds a
    bounded amount; when the client reads again, everything arrives."""
    event = b'data: {"x":"' + b"y" * 65000 + b'"}\n\n'
    events = 200
    sent = [0]
    state: dict[str, Any] = {}

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED_HEAD)
        for _ in range(events):
            writer.write(chunk(event))
            await writer.drain()
            sent[0] += 1
        writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()

    async def main() -> None:
        async with Server(flood).running() as pool:

            async def app(scope: Any, receive: Any, send: Any) -> None:
                assert scope["type"] == "http"
                answer = await pool.request("/v1/chat/completions", b"{}", {})
                state["answer"] = answer
                await send({"type": "http.response.start", "status": 200, "headers": []})
                relayer = Relayer(Outcome("r", 0.0), wants_usage=False, keep_text=False, chat=True)
                state["ending"] = ending = await relay(answer, relayer, send)
                await send({"type": "http.response.body", "body": ending, "more_body": False})

            config = uvicorn.Config(
                app, http="httptools", loop="none", lifespan="off", log_level="warning"
            )
            server = uvicorn.Server(config)
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            serving = asyncio.ensure_future(server.serve(sockets=[sock]))
            while not server.started:
                await asyncio.sleep(0.01)
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            client.connect(sock.getsockname())
            client.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            while reading(state.get("answer")):
                await asyncio.sleep(0.01)  # until the relay paused the model server
            held = sent[0]
            await asyncio.sleep(0.2)  # the model server would go on, could it write
            assert sent[0] == held < events  # it could not: the gateway holds a bounded part
            client.setblocking(False)
            received = b""
            while not received.endswith(b"0\r\n\r\n"):
                try:
                    received += client.recv(1 << 20)
                except BlockingIOError:
                    await asyncio.sleep(0.005)
            client.close()
            server.should_exit = True
            await serving
            assert received.count(b'data: {"x":') == events
            # [DONE] is held back to go out with the response's end, in one write
            assert state["ending"] == b"data: [DONE]\n\n"
            assert received.endswith(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")

    run(main())
