"""The agent's HTTP/1.1 server: asyncio and httptools (llhttp) around the ASGI app
:class:`agent.http.app.AgentApp`, with every per-connection resource bounded (:class:`ServerLimits`).

Why not uvicorn, which served the agent before:
- A request head had no bound. uvicorn with httptools took a 180 MB stream of header lines and
  kept it (the agent's resident memory grew 87 MB, measured), so one client could exhaust a
  device's memory; httptools also joins a long header line by repeated ``bytes +=``, quadratic
  CPU. Here a head is refused (431) once it passes :attr:`ServerLimits.head_bytes`, and must
  arrive within :attr:`ServerLimits.head_timeout_s` (408).
- Connections and pipelined requests had no cap either (here 503 beyond
  :attr:`ServerLimits.connections`; a connection that pipelines more than
  :attr:`ServerLimits.pipeline` requests gets those answered, then is closed).
- Its import (click, logging.config, multiprocessing for its supervisors) was ~20 ms of the agent's
  ~250 ms start-up, and its per-request path, written for every ASGI app, ~0.1 ms of the agent's
  c=1 overhead.

Only what the agent's ASGI app uses is implemented: ``http`` scopes (no websockets, no lifespan),
responses with a Content-Length (chunked when an app gives none). Request parsing is llhttp's,
which refuses what request smuggling needs (Content-Length with Transfer-Encoding, bad chunks).
SIGTERM/SIGINT only ask the server to stop (a second one skips the grace period), so the agent can
shut its sync side down first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import ssl
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools

from agent.settings import ServerTLS

log = logging.getLogger(__name__)

App = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[..., Awaitable[None]]], Awaitable[None]
]


@dataclass(frozen=True)
class ServerLimits:
    #: request line and header fields; a head that goes on past this is refused (431). Checked per
    #: read, so a head may pass it by at most one read (256 KiB) before it is refused.
    head_bytes: int = 64 * 1024
    #: header fields in one request (431 beyond)
    headers: int = 100
    #: a request head must arrive within this, once its first byte has (408)
    head_timeout_s: float = 30.0
    #: an idle kept-alive connection is closed after this
    keep_alive_s: float = 30.0
    #: open connections; one more is answered 503 and closed
    connections: int = 512
    #: requests a client may send ahead of the answers on one connection; those are answered,
    #: then the connection closes
    pipeline: int = 16
    #: request body bytes read ahead of the app; reading pauses beyond (so a body is never
    #: buffered whole here: the app reads it under its own caps)
    body_buffer: int = 64 * 1024
    #: a body the app answered before reading it (an early 413) is read and dropped up to this
    #: many bytes, so that the client, still sending, reads the answer rather than a reset; past
    #: it (an endless chunked body) the connection closes
    skip_bytes: int = 64 * 1024 * 1024
    #: on shutdown, time the requests in flight get to finish
    grace_s: float = 30.0
    #: a TLS client must finish its handshake within this
    tls_handshake_s: float = 10.0


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


_STATUS_LINES = {int(s): _status_line(int(s)) for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"connection: close\r\n"
_ASGI = {"version": "3.0", "spec_version": "2.3"}
#: a response head is joined to a first body part up to this size (a copy), else written alone
_JOIN_BELOW = 64 * 1024
#: after refusing a request, how long what the client still sends is read and dropped before closing
LINGER_S = 2.0


def error_response(status: int, message: str) -> bytes:
    """A whole response of the server's own (not the app's): a JSON error, and the connection closes."""
    body = json.dumps({"error": message}).encode()
    return b"".join(
        (
            _STATUS_LINES.get(status) or _status_line(status),
            b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
            _CLOSE,
            b"\r\n",
            body,
        )
    )


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the connection answers ``status`` (if any)
    and closes."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Exchange:
    """One request and its response: the ASGI ``receive`` and ``send`` of one app call."""

    __slots__ = (
        "buffered",
        "chunked",
        "chunks",
        "complete",
        "conn",
        "delivered",
        "event",
        "expect_continue",
        "finished",
        "gone",
        "head",
        "is_head",
        "keep_alive",
        "remaining",
        "scope",
        "started",
    )

    def __init__(
        self, conn: _Connection, scope: dict[str, Any], keep_alive: bool, expect_continue: bool
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.complete = False  # the whole request body has arrived
        self.delivered = False  # ...and the app has had its last part
        self.event: asyncio.Event | None = None  # made only when receive() has to wait
        self.started = False
        self.finished = False
        self.gone = False  # the client disconnected
        self.head = b""  # the response head, held until the first body part: one write
        self.remaining: int | None = None
        self.chunked = False
        self.is_head = scope["method"] == "HEAD"

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()

    async def receive(self) -> dict[str, Any]:
        if self.expect_continue:
            self.expect_continue = False
            if not self.started:
                self.conn.write(_CONTINUE)
        while (
            not self.chunks
            and not (self.complete and not self.delivered)
            and not self.gone
            and not self.finished
        ):
            self.conn.resume_reading()
            if self.event is None:
                self.event = asyncio.Event()
            self.event.clear()
            await self.event.wait()
        if self.gone or self.finished:
            return {"type": "http.disconnect"}
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        if self.complete:
            self.delivered = True
        else:
            self.conn.resume_reading()
        return {"type": "http.request", "body": body, "more_body": not self.complete}

    async def send(self, message: dict[str, Any]) -> None:
        conn = self.conn
        if conn.write_paused and not self.gone:
            await conn.drain()
        if self.gone:
            return
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {kind}")
            self._begin_response(message)
        elif not self.finished:
            if kind != "http.response.body":
                raise RuntimeError(f"expected http.response.body, got {kind}")
            self._send_body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"{kind} sent after the response was complete")

    def _begin_response(self, message: dict[str, Any]) -> None:
        self.started = True
        self.expect_continue = False
        status = int(message["status"])
        if not self.complete:
            # The app answered before the whole body came (an early 4xx): the rest of it is not
            # read and thrown away on a kept-alive connection; the connection closes instead.
            self.keep_alive = False
        head = [_STATUS_LINES.get(status) or _status_line(status)]
        length: int | None = None
        for name, value in message.get("headers", ()):
            if b"\r" in name or b"\n" in name or b"\r" in value or b"\n" in value or b":" in name:
                raise RuntimeError(f"invalid response header {name!r}")
            lower = name.lower()
            if lower == b"content-length":
                length = int(value)
            elif lower == b"connection":
                if b"close" in value.lower():
                    self.keep_alive = False
                continue
            head += (name, b": ", value, b"\r\n")
        if not self.keep_alive:
            head.append(_CLOSE)
        if length is None and not self.is_head and status >= 200 and status not in (204, 304):
            self.chunked = True
            head.append(b"transfer-encoding: chunked\r\n")
        self.remaining = length
        head.append(b"\r\n")
        self.head = b"".join(head)

    def _send_body(self, body: bytes, more: bool) -> None:
        if self.is_head:
            body = b""
        elif self.chunked:
            body = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + (b"" if more else b"0\r\n\r\n")
        elif self.remaining is not None:
            self.remaining -= len(body)
            if self.remaining < 0:
                raise RuntimeError("the response body is longer than its Content-Length")
        head, self.head = self.head, b""
        if head and len(body) <= _JOIN_BELOW:
            body = head + body  # one write, one TCP segment (the socket has TCP_NODELAY)
        elif head:
            self.conn.write(head)
        if body:
            self.conn.write(body)
        if not more:
            if self.remaining and not self.is_head:
                raise RuntimeError("the response body is shorter than its Content-Length")
            self.finished = True
            self.wake()
            self.conn.exchange_done(self)


class _Connection(asyncio.Protocol):
    """One client connection: parses requests as they arrive and answers them in order."""

    def __init__(self, server: AgentServer) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.scheme = "http"
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.current: _Exchange | None = None  # the exchange being answered
        self.parsing: _Exchange | None = None  # the exchange whose request is arriving
        self.pipeline: deque[_Exchange] = deque()
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect_continue = False
        self.in_head = False
        self.began = False
        self.head_bytes = 0
        self.reading_done = False
        self.skipping = False  # reading and dropping the rest of an answered request's body
        self.skipped = 0
        self.discarding = False
        self.closed = False
        self.read_paused = False
        self.write_paused = False
        self.drained: asyncio.Event | None = None
        self.timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if len(self.server.connections) >= self.limits.connections:
            log.warning(
                "refused a connection: %d are open, the most this agent takes", self.limits.connections
            )
            transport.write(error_response(503, "too many connections to this agent; try again later"))
            transport.close()
            self.closed = True
            return
        self.server.connections.add(self)
        self.scheme = "https" if transport.get_extra_info("sslcontext") is not None else "http"
        self.client = _address(transport.get_extra_info("peername"))
        self.local = _address(transport.get_extra_info("sockname"))
        self._arm(self.limits.keep_alive_s, self._idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self._disarm()
        for ex in (self.current, self.parsing, *self.pipeline):
            if ex is not None and not ex.finished:
                ex.gone = True
                ex.wake()
        if self.drained is not None:
            self.drained.set()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drained is not None:
            self.drained.set()

    def data_received(self, data: bytes) -> None:
        if self.closed or self.discarding:
            return
        if self.skipping:
            self.skipped += len(data)
            if self.skipped > self.limits.skip_bytes:
                log.info(
                    "closed the connection of %s: its unread body passes %d bytes",
                    _shown(self.client),
                    self.limits.skip_bytes,
                )
                self.close()
                return
            self._arm(self.limits.keep_alive_s, self.close)
        self.began = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The client asked to switch protocols (h2c, websocket): the agent answers the request
            # in HTTP/1.1, as RFC 9110 allows, and closes, since the bytes after it are not HTTP/1.1.
            self._read_no_more()
            return
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused) and refused.status is None:
                log.info("stopped reading from %s: %s", _shown(self.client), refused)
                self._read_no_more()
            elif isinstance(refused, _Refused):
                self.refuse(refused.status, str(refused))
            else:
                log.error("parsing a request failed", exc_info=refused)
                self.refuse(400, "invalid HTTP request")
            return
        except httptools.HttpParserError as exc:
            self.refuse(400, f"invalid HTTP request: {exc}")
            return
        if self.in_head:
            # A head that began in this read counts from the next one: the bytes before it in this
            # read may have been the last request's body.
            self.head_bytes = 0 if self.began else self.head_bytes + len(data)
            if self.head_bytes > self.limits.head_bytes:
                self.refuse(431, f"the request head passes {self.limits.head_bytes} bytes")

    # --------------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self.began = True
        self.in_head = True
        self.head_bytes = 0
        self.url = b""
        self.headers = []
        self.expect_continue = False
        self._arm(self.limits.head_timeout_s, self._slow_head)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.limits.headers:
            raise _Refused(431, f"a request may have at most {self.limits.headers} header fields")
        name = name.lower()
        # llhttp keeps trailing whitespace, which is not part of a field value (RFC 9110 5.5).
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self._disarm()
        parser = self.parser
        version = parser.get_http_version()
        try:
            url = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            raise _Refused(400, "invalid request target") from None
        raw_path = url.path or b"/"
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version,
            "method": parser.get_method().decode("ascii"),
            "scheme": self.scheme,
            "path": path,
            "raw_path": raw_path,
            "query_string": url.query or b"",
            "root_path": "",
            "headers": self.headers,
            "client": self.client,
            "server": self.local,
        }
        keep_alive = version == "1.1" and parser.should_keep_alive() and not self.server.should_exit
        ex = _Exchange(self, scope, keep_alive, self.expect_continue)
        self.parsing = ex
        if self.current is None:
            self._answer(ex)
            return
        if len(self.pipeline) >= self.limits.pipeline:
            # not answered: the ones before it are, then the connection closes
            raise _Refused(None, f"more than {self.limits.pipeline} requests pipelined")
        # Answered in order: the next request waits, and so does reading, until this one is done.
        self.pipeline.append(ex)
        self._pause_reading()

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is None or ex.finished or ex.gone:
            return  # answered already (an early 4xx); the connection closes after it
        ex.chunks.append(body)
        ex.buffered += len(body)
        if ex.buffered > self.limits.body_buffer:
            self._pause_reading()
        ex.wake()

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        if ex is not None:
            ex.complete = True
            ex.wake()
        if self.skipping:
            self.close()

    # ------------------------------------------------------------------------- exchanges

    def _answer(self, ex: _Exchange) -> None:
        self.current = ex
        task = self.loop.create_task(self._run(ex))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _run(self, ex: _Exchange) -> None:
        try:
            await self.server.app(ex.scope, ex.receive, ex.send)
        except Exception:
            log.exception("unexpected error serving %s %s", ex.scope["method"], ex.scope["path"])
            self._abandon(ex)
        else:
            if not ex.finished and not ex.gone:
                log.error(
                    "the app returned without a whole response to %s %s", ex.scope["method"], ex.scope["path"]
                )
                self._abandon(ex)

    def _abandon(self, ex: _Exchange) -> None:
        if ex.gone or ex.finished:
            return
        if not ex.started:
            self.write(error_response(500, "internal error; see the agent's log"))
        ex.finished = True
        ex.wake()
        self.close()

    def exchange_done(self, ex: _Exchange) -> None:
        self.current = None
        if not ex.complete and not self.reading_done and not self.closed:
            # Answered before its body was read (an early 4xx): the rest is read and dropped, then
            # the connection closes. Closing at once would reset a client still sending its body,
            # which would then see the reset instead of the answer.
            self.skipping = True
            self.resume_reading()
            self._arm(self.limits.keep_alive_s, self.close)
            return
        if not ex.keep_alive or self.server.should_exit:
            self.close()
            return
        if self.pipeline:
            nxt = self.pipeline.popleft()
            self.resume_reading()
            self._answer(nxt)
            return
        if self.reading_done:
            self.close()
            return
        self.resume_reading()
        if not self.in_head and self.parsing is None:
            self._arm(self.limits.keep_alive_s, self._idle)

    def shutdown(self) -> None:
        """The server stops: close now if idle, else once the request being answered is."""
        if self.current is None:
            self.close()
        else:
            self.current.keep_alive = False
            self.pipeline.clear()

    # ---------------------------------------------------------------------------- helpers

    def refuse(self, status: int | None, message: str) -> None:
        """Answer ``status`` (when no response is under way) and close: the request cannot be served."""
        log.info("refused a request from %s: %s", _shown(self.client), message)
        if status is None or self.current is not None or self.transport is None or self.closed:
            self.close()
            return
        self.transport.write(error_response(status, message))
        # Close after a moment of reading and dropping what the client still sends: closing with
        # unread bytes resets the connection, and a reset can destroy the answer before the client
        # has read it (the "lingering close" of Apache and nginx).
        self.discarding = True
        self.reading_done = True
        self.in_head = False
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.read_paused = False
        self.transport.resume_reading()
        self._arm(LINGER_S, self.close)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.drained is None:
            self.drained = asyncio.Event()
        while self.write_paused and not self.closed:
            self.drained.clear()
            await self.drained.wait()

    def close(self) -> None:
        self._disarm()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()  # after what is queued is written
        if self.transport is not None:
            self.server.connections.discard(self)

    def _read_no_more(self) -> None:
        """Answer the requests read so far, then close."""
        self.reading_done = True
        self.in_head = False
        self._disarm()
        self._pause_reading()
        last = self.pipeline[-1] if self.pipeline else self.current
        if last is None:
            self.close()
        else:
            last.keep_alive = False

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.closed and not self.reading_done:
            self.read_paused = False
            self.transport.resume_reading()

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self.timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _idle(self) -> None:
        self.timer = None
        if self.current is None:
            self.close()

    def _slow_head(self) -> None:
        self.timer = None
        self.refuse(408, f"the request head did not arrive within {self.limits.head_timeout_s:g} s")


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


def _shown(address: tuple[str, int] | None) -> str:
    return "an unknown client" if address is None else f"{address[0]}:{address[1]}"


class AgentServer:
    """Serves an ASGI app on sockets bound by the caller until :attr:`should_exit` is set (by a
    signal or another thread)."""

    def __init__(
        self, app: App, ssl_context: ssl.SSLContext | None = None, limits: ServerLimits | None = None
    ) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.limits = limits or ServerLimits()
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.started = False
        self.should_exit = False
        self.force_exit = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by serve()

    def run(self, sockets: list[Any]) -> None:
        asyncio.run(self.serve(sockets))

    async def serve(self, sockets: list[Any]) -> None:
        self.loop = asyncio.get_running_loop()
        with self._signals_stop():
            servers = [
                await self.loop.create_server(
                    lambda: _Connection(self),
                    sock=sock,
                    ssl=self.ssl_context,
                    backlog=2048,
                    ssl_handshake_timeout=self.limits.tls_handshake_s if self.ssl_context else None,
                )
                for sock in sockets
            ]
            self.started = True
            try:
                while not self.should_exit:
                    await asyncio.sleep(0.1)
            finally:
                await self._shutdown(servers)

    async def _shutdown(self, servers: list[asyncio.Server]) -> None:
        for server in servers:
            server.close()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = self.loop.time() + self.limits.grace_s
        while self.tasks and not self.force_exit and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for task in list(self.tasks):
            task.cancel()

    @contextlib.contextmanager
    def _signals_stop(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum: int, frame: Any) -> None:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

        original = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def server_ssl_context(tls: ServerTLS) -> ssl.SSLContext:
    """TLS 1.2 or newer with the agent's certificate; with a client CA, only clients with a
    certificate from that CA (never the system's CAs) get in."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.client_ca is not None:
        context.load_verify_locations(cafile=str(tls.client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def make_server(app: App, tls: ServerTLS | None = None, limits: ServerLimits | None = None) -> AgentServer:
    # The TLS context now (a bad certificate fails the start), while the models load in the
    # background (agent.preload), rather than after them when the server starts.
    return AgentServer(app, server_ssl_context(tls) if tls is not None else None, limits)
