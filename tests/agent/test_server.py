"""The HTTP server (agent.http.server): whole responses on kept-alive connections, and every
per-connection resource bounded: head size, header count, slow heads, idle connections, pipelined
requests, open connections, request bodies read ahead. Real sockets on loopback throughout."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import pytest

from agent.http.server import AgentServer, ServerLimits
from agent.service import AgentService, bind

Scope = dict[str, Any]


async def echo(scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """Reads the whole body, answers what it got (the largest part shows how far reading ran ahead)."""
    body, parts = b"", []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        body += message["body"]
        parts.append(len(message["body"]))
        if not message["more_body"]:
            break
    doc = {"method": scope["method"], "path": scope["path"], "size": len(body), "largest_part": max(parts)}
    payload = json.dumps(doc).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


@contextmanager
def serving(app: Callable[..., Any] = echo, **limits: Any) -> Iterator[tuple[AgentServer, int]]:
    sock = bind("127.0.0.1", 0)
    server = AgentServer(app, limits=ServerLimits(**limits))
    thread = threading.Thread(target=server.run, args=([sock],), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    try:
        yield server, sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


class Client:
    """A raw HTTP/1.1 connection; responses are parsed from one buffered reader, so that pipelined
    responses that arrive together are all read."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        self.sock.close()

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, size: int) -> bytes:
        return self.file.read1(size)

    def close(self) -> None:
        self.__exit__()

    def makefile(self, mode: str) -> Any:
        return _KeepOpen(self.file)

    def response(self, method: str = "GET") -> http.client.HTTPResponse:
        r = http.client.HTTPResponse(self, method=method)  # type: ignore[arg-type]
        r.begin()
        return r

    def closed(self) -> bool:
        """The server closed the connection (after whatever it had sent)."""
        try:
            while True:
                if not self.file.read1(65536):
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


class _KeepOpen:
    """The reader as http.client sees it: closing a response leaves it open for the next one."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def close(self) -> None:
        pass


def connect(port: int) -> Client:
    return Client(port)


# ------------------------------------------------------------------------ the agent's server


def test_a_real_response_is_whole_and_keeps_the_connection(
    start_agent: Callable[..., AgentService],
) -> None:
    agent = start_agent()
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as s:
        for _ in range(2):  # keep-alive: the second request uses the same connection
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                data += s.recv(4096)
            assert data.startswith(b"HTTP/1.1 200 ")
            assert data.endswith(b'{"live":true}')
            assert b"server:" not in data.lower()


def test_a_head_request_gets_its_headers_and_keeps_the_connection(
    start_agent: Callable[..., AgentService],
) -> None:
    agent = start_agent()
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as s:
        s.sendall(b"HEAD /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
        assert data.startswith(b"HTTP/1.1 ") and data.endswith(b"\r\n\r\n")
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"}"):
            data += s.recv(4096)
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b'{"live":true}')


# ------------------------------------------------------------------------------ protocol


def test_pipelined_requests_are_answered_in_order() -> None:
    with serving() as (_, port), connect(port) as s:
        s.sendall(b"".join(b"GET /r%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5)))
        assert [json.loads(s.response().read())["path"] for _ in range(5)] == [f"/r{i}" for i in range(5)]


def test_a_chunked_body_and_expect_100_continue_reach_the_app_whole() -> None:
    with serving() as (_, port), connect(port) as s:
        s.sendall(
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        assert json.loads(s.response().read())["size"] == 5
        s.sendall(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"abcd")
        assert json.loads(s.response().read())["size"] == 4


def test_http_1_0_and_upgrade_requests_are_answered_then_closed() -> None:
    with serving() as (_, port):
        with connect(port) as s:
            s.sendall(b"GET /old HTTP/1.0\r\n\r\n")
            r = s.response()
            assert r.status == 200 and r.getheader("connection") == "close"
            r.read()
            assert s.closed()
        with connect(port) as s:  # curl --http2 on http:// asks to switch to h2c; HTTP/1.1 answers
            s.sendall(
                b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n"
            )
            r = s.response()
            assert r.status == 200 and json.loads(r.read())["path"] == "/up"
            assert s.closed()


def test_a_response_without_a_length_is_chunked() -> None:
    async def app(scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one ", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})

    with serving(app) as (_, port), connect(port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        r = s.response()
        assert r.getheader("transfer-encoding") == "chunked" and r.read() == b"one two"


def test_a_malformed_request_is_a_400_in_json_and_the_connection_closes() -> None:
    with serving() as (_, port), connect(port) as s:
        s.sendall(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc")
        r = s.response()
        assert r.status == 400 and "invalid HTTP request" in json.loads(r.read())["error"]
        assert s.closed()


def test_an_app_error_is_a_500_without_details() -> None:
    async def app(scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        raise ValueError("secret detail")

    with serving(app) as (_, port), connect(port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        r = s.response()
        assert r.status == 500 and b"secret" not in r.read()


async def too_large(scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """Answers 413 without reading the body, as the agent does for a declared size past its cap."""
    body = b'{"error":"too large"}'
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def test_an_early_answer_reaches_a_client_still_sending_its_body() -> None:
    """A 4xx sent before the body was read: the rest is read and dropped, not reset."""
    with serving(too_large) as (_, port), connect(port) as s:
        size = 8 * 1024 * 1024
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        s.sendall(b"x" * size)  # a reset here would raise
        r = s.response()
        assert r.status == 413 and r.getheader("connection") == "close" and r.read()
        assert s.closed()


def test_an_endless_body_after_an_early_answer_is_not_read_for_ever() -> None:
    with serving(too_large, skip_bytes=1024 * 1024) as (_, port), connect(port) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%b\r\n" % (65536, b"x" * 65536)
        with pytest.raises(OSError):  # closed once 1 MiB more was dropped; a client cannot send 4 GiB
            for _ in range(65536):
                s.sendall(chunk)


# -------------------------------------------------------------------------------- bounds


def _send_head_of(client: Client, start: bytes, piece: bytes, mib: int) -> None:
    client.sendall(start)
    with contextlib.suppress(OSError):  # the server may close before the client is done
        for _ in range(mib * 1024 * 1024 // len(piece)):
            client.sendall(piece)


def test_a_head_past_the_limit_is_refused_431_and_never_kept() -> None:
    """uvicorn with httptools kept a 180 MB stream of header lines; here the head is cut off."""
    before = psutil.Process().memory_info().rss
    with serving(head_bytes=16 * 1024) as (_, port), connect(port) as s:
        _send_head_of(s, b"GET / HTTP/1.1\r\nHost: x\r\n", b"X-Junk: " + b"a" * 65000 + b"\r\n", 256)
        r = s.response()
        assert r.status == 431 and "head" in json.loads(r.read())["error"]
        assert s.closed()
    assert psutil.Process().memory_info().rss - before < 64 * 1024 * 1024


def test_one_endless_header_line_is_refused_431() -> None:
    with serving(head_bytes=16 * 1024) as (_, port), connect(port) as s:
        _send_head_of(s, b"GET / HTTP/1.1\r\nHost: x\r\nX-Junk: ", b"a" * 65536, 64)
        assert s.response().status == 431


def test_too_many_header_fields_are_refused_431() -> None:
    with serving(headers=20) as (_, port), connect(port) as s:
        s.sendall(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(21)) + b"\r\n")
        assert s.response().status == 431


def test_a_slow_head_is_a_408_and_an_idle_connection_closes() -> None:
    with serving(head_timeout_s=0.3, keep_alive_s=0.3) as (_, port):
        with connect(port) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ... and never the end of the head
            r = s.response()
            assert r.status == 408
        with connect(port) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            s.response().read()
            assert s.closed()  # nothing more sent: closed after keep_alive_s, not kept for ever


def test_open_connections_are_capped_with_a_503() -> None:
    with serving(connections=2) as (_, port):
        held = [connect(port) for _ in range(2)]
        for s in held:  # both served: they are in the server's count now
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            s.response().read()
        with connect(port) as extra:
            r = extra.response()
            assert r.status == 503 and "too many connections" in json.loads(r.read())["error"]
        for s in held:
            s.close()


def test_pipelining_past_the_cap_closes_the_connection() -> None:
    with serving(pipeline=4) as (_, port), connect(port) as s:
        s.sendall(b"".join(b"GET /r%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(50)))
        answered = 0
        try:
            while True:
                s.response().read()
                answered += 1
        except (http.client.HTTPException, OSError):
            pass
        assert answered == 5  # the one being answered and the 4 queued; then the connection closed


def test_a_large_body_is_read_only_a_little_ahead_of_the_app() -> None:
    with serving(body_buffer=64 * 1024) as (_, port), connect(port) as s:
        size = 16 * 1024 * 1024
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        s.sendall(b"x" * size)
        doc = json.loads(s.response().read())
        assert doc["size"] == size
        # what the server held for the app at any time: its read-ahead plus at most one read
        assert doc["largest_part"] <= 64 * 1024 + 256 * 1024


def test_shutdown_lets_a_request_in_flight_finish() -> None:
    gate = threading.Event()

    async def slow(scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        import asyncio

        gate.set()
        await asyncio.sleep(0.5)
        await echo(scope, receive, send)

    with serving(slow) as (server, port), connect(port) as s:
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert gate.wait(10)
        server.should_exit = True
        r = s.response()
        assert r.status == 200 and json.loads(r.read())["path"] == "/slow"
        assert r.getheader("connection") == "close"


def test_garbled_requests_never_break_the_server(caplog: pytest.LogCaptureFixture) -> None:
    """A faulty or hostile client: valid requests with bytes flipped, cut, repeated or inserted.
    Each gets an answer or a closed connection, nothing is logged as a server error, and the server
    answers a good request afterwards."""
    import random

    rng = random.Random(9)
    valid = [
        b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n",
        b'POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n{"inputs":1}',
        b"POST /f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    ]
    with serving(head_timeout_s=0.5, keep_alive_s=0.5) as (_, port):
        for _ in range(150):
            data = bytearray(rng.choice(valid))
            for _ in range(rng.randint(1, 4)):
                if not data:
                    break
                i = rng.randrange(len(data))
                how = rng.randrange(4)
                if how == 0:
                    data[i] = rng.randrange(256)
                elif how == 1:
                    del data[i:]
                elif how == 2:
                    data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
                else:
                    data[i:i] = data[: rng.randint(1, 60)]
            with connect(port) as s:
                s.sock.settimeout(5)
                with contextlib.suppress(OSError):
                    s.sendall(bytes(data))
                    s.sock.shutdown(socket.SHUT_WR)
                assert s.closed()  # answered (or refused) and closed, never hung past the timeouts
        with connect(port) as s:
            s.sendall(valid[0])
            assert s.response().status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
