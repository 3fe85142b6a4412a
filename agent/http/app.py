"""A lean ASGI app for the Open Inference Protocol v2 REST API; every route calls the data plane.

No web framework: the routes are few and fixed, and a framework's request parsing would add
latency and memory on small devices. Errors are mapped to a status in one place
(:meth:`AgentApp.__call__`): an :class:`EdgeError` carries its own ``http_status``.

With an API token, every endpoint but ``/v2/health/*`` needs ``Authorization: Bearer <token>``
(health stays open for load balancers and orchestrators). A request body is read in chunks into one
buffer under a size cap; bodies above :data:`LARGE_BODY_BYTES` are read and parsed one at a time,
large JSON in a worker process (:mod:`agent.http.offload`), so a huge request bounds memory and
never stalls the event loop that answers health checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from agent.dataplane import DataPlane
from agent.http.codec import HEADER_LENGTH, JSON_SLICE, decode_request, encode_response_parts
from agent.http.offload import OffloadedDecoder
from agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from agent.metrics import AgentMetrics
from sdk.errors import EdgeError, ModelNotFoundError, ProtocolError

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
#: status, body (or the parts of one, sent one after the other), headers
Reply = tuple[int, bytes | list[bytes], list[tuple[bytes, bytes]]]

_JSON = [(b"content-type", b"application/json")]
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_JSON_BYTES = 8 * 1024 * 1024
#: bodies above this are read one at a time and parsed off the event loop.
LARGE_BODY_BYTES = 1024 * 1024
#: feedback bodies: 10,000 labels with 100-character ids fit; parsed on the event loop, so kept small.
MAX_FEEDBACK_BYTES = 2 * 1024 * 1024
#: response bodies in parts (a JSON header and binary tensors) up to this size are sent joined.
JOIN_BELOW_BYTES = 256 * 1024
#: a client that sends nothing for this long while its body is due is cut off (408).
BODY_IDLE_TIMEOUT_S = 30.0


class BodyTooLargeError(ProtocolError):
    http_status = 413


class MethodNotAllowedError(ProtocolError):
    http_status = 405


class BodyTimeoutError(ProtocolError):
    http_status = 408


class UnauthorizedError(ProtocolError):
    http_status = 401


class _ClientGone(Exception):
    pass


if sys.version_info >= (3, 11):

    async def _within(awaitable: Awaitable[dict[str, Any]], seconds: float) -> dict[str, Any]:
        """``await awaitable`` or TimeoutError after ``seconds``. asyncio.timeout, not wait_for:
        wait_for wraps the receive in a task of its own, ~20 us per request body."""
        async with asyncio.timeout(seconds):
            return await awaitable

else:  # pragma: no cover - Python 3.10

    async def _within(awaitable: Awaitable[dict[str, Any]], seconds: float) -> dict[str, Any]:
        return await asyncio.wait_for(awaitable, seconds)


def _json(status: int, doc: dict[str, Any]) -> Reply:
    return status, json.dumps(doc, separators=(",", ":")).encode("utf-8"), _JSON


def _int_or_zero(text: str) -> int:
    return int(text) if text.isdigit() else 0


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class AgentApp:
    def __init__(
        self,
        dataplane: DataPlane,
        metrics: AgentMetrics,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        *,
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
        api_token: str | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.max_json_bytes = max_json_bytes
        self._token = api_token.encode("utf-8") if api_token else None
        self._large_bodies = asyncio.Semaphore(1)
        self._offload = OffloadedDecoder()

    def close(self) -> None:
        """Stop the request parser process, if one was started."""
        self._offload.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        after: list[Callable[[], None]] = []
        try:
            self._authorize(scope)
            status, body, headers = await self._route(scope, receive, after)
        except _ClientGone:
            return
        except EdgeError as exc:
            status, body, headers = _json(exc.http_status, {"error": str(exc)})
            if isinstance(exc, UnauthorizedError):
                headers = [*headers, (b"www-authenticate", b"Bearer")]
        except Exception:
            log.exception("unexpected error serving %s %s", scope["method"], scope["path"])
            status, body, headers = _json(500, {"error": "internal error; see the agent's log"})
        if status >= 400:
            self.metrics.http_errors.labels(str(status)).inc()
        parts = body if isinstance(body, list) else [body]
        size = sum(len(p) for p in parts)
        if len(parts) > 1 and size <= JOIN_BELOW_BYTES:
            # One write, one TCP segment: each part is a send() of its own (TCP_NODELAY), and a
            # client woken by the first often has to wait for the next.
            parts = [b"".join(parts)]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(size).encode())],
            }
        )
        parts.reverse()  # popped as sent: each part is freed once it is on its way
        while parts:
            part = parts.pop()
            await send({"type": "http.response.body", "body": part, "more_body": bool(parts)})
        for hook in after:  # monitoring: the caller has its answer already
            hook()

    def _authorize(self, scope: Scope) -> None:
        if self._token is None or scope["path"].startswith("/v2/health/"):
            return
        given = _header(scope, b"authorization") or ""
        scheme, _, token = given.partition(" ")
        # compare_digest: the time taken says nothing about how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8"), self._token):
            raise UnauthorizedError("this agent needs Authorization: Bearer <api token>")

    async def _route(self, scope: Scope, receive: Receive, after: list[Callable[[], None]]) -> Reply:
        method: str = scope["method"]
        parts = scope["path"].strip("/").split("/")
        dp = self.dataplane
        if parts == ["metrics"]:
            self._only(method, "GET")
            return 200, self.metrics.exposition(), [(b"content-type", METRICS_CONTENT_TYPE.encode())]
        if parts[0] != "v2":
            return _json(404, {"error": f"no such endpoint: {scope['path']}"})
        if parts == ["v2"]:
            self._only(method, "GET")
            return _json(200, dp.server_metadata())
        if parts == ["v2", "health", "live"]:
            self._only(method, "GET")
            return _json(200, {"live": dp.live()})
        if parts == ["v2", "health", "ready"]:
            self._only(method, "GET")
            ready = dp.ready()
            return _json(200 if ready else 503, {"ready": ready})
        if len(parts) < 3 or parts[1] != "models" or not parts[2]:
            return _json(404, {"error": f"no such endpoint: {scope['path']}"})
        name, rest, version = parts[2], parts[3:], None
        if rest[:1] == ["versions"]:
            if len(rest) < 2 or not rest[1]:
                return _json(404, {"error": f"no such endpoint: {scope['path']}"})
            version, rest = rest[1], rest[2:]
        if rest == []:
            self._only(method, "GET")
            return _json(200, dp.model_metadata(name, version))
        if rest == ["ready"]:
            self._only(method, "GET")
            try:
                return _json(200, {"name": name, "ready": dp.model_ready(name, version)})
            except ModelNotFoundError as exc:
                return _json(404, {"name": name, "ready": False, "error": str(exc)})
        if rest == ["infer"]:
            self._only(method, "POST")
            return await self._infer(scope, receive, name, version, after)
        if rest == ["feedback"] and version is None:
            self._only(method, "POST")
            return await self._feedback(scope, receive, name)
        return _json(404, {"error": f"no such endpoint: {scope['path']}"})

    async def _feedback(self, scope: Scope, receive: Receive, name: str) -> Reply:
        self.dataplane.repository.monitor(name)  # an unknown model is refused before its body is read
        body = await self._read_body(scope, receive, json_only=True, cap=MAX_FEEDBACK_BYTES)
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise ProtocolError(f"the feedback body is not valid JSON: {exc}") from None
        return _json(200, self.dataplane.feedback(name, doc))

    async def _infer(
        self, scope: Scope, receive: Receive, name: str, version: str | None, after: list[Callable[[], None]]
    ) -> Reply:
        # Resolve the model first: a request for an unknown model is refused before its body is read.
        self.dataplane.model_ready(name, version)
        if (_header(scope, b"content-encoding") or "identity") != "identity":
            raise ProtocolError("compressed request bodies are not supported; send them uncompressed")
        header_length = _header(scope, HEADER_LENGTH.encode())
        declared = _header(scope, b"content-length")
        large = declared is None or not declared.isdigit() or int(declared) > LARGE_BODY_BYTES
        # One large body at a time: memory stays near one body and its parse, whatever the clients do.
        async with self._large_bodies if large else contextlib.nullcontext():
            body = await self._read_body(scope, receive, json_only=header_length is None)
            json_size = len(body) if header_length is None else _int_or_zero(header_length)
            if json_size > LARGE_BODY_BYTES:
                request = await self._offload.decode(body, header_length, name, version)
            elif len(body) > LARGE_BODY_BYTES:  # binary tensors: copies that release the GIL
                request = await asyncio.to_thread(decode_request, body, header_length, name, version)
            else:
                request = decode_request(body, header_length, name, version)
            del body
            response = await self.dataplane.infer(request)
            if response.after is not None:
                after.append(response.after)
            if sum(t.data.size for t in response.outputs) > JSON_SLICE:
                payload, json_length = await asyncio.to_thread(encode_response_parts, response, request)
            else:
                payload, json_length = encode_response_parts(response, request)
            del request, response
        if json_length is None:
            return 200, payload, _JSON
        return (
            200,
            payload,
            [
                (b"content-type", b"application/octet-stream"),
                (HEADER_LENGTH.encode(), str(json_length).encode()),
            ],
        )

    async def _read_body(
        self, scope: Scope, receive: Receive, *, json_only: bool, cap: int | None = None
    ) -> bytes | bytearray:
        """The body, refused (413) as soon as it passes the cap: the JSON cap for a JSON body."""
        cap = (
            min(self.max_json_bytes, self.max_body_bytes, cap or self.max_body_bytes)
            if json_only
            else self.max_body_bytes
        )
        what = "JSON request body" if json_only else "request body"
        hint = "; send large tensors with the binary tensor extension" if json_only else ""
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise BodyTooLargeError(f"the {what} is {declared} bytes; this agent accepts at most {cap}{hint}")
        if declared is not None and declared.isdigit() and int(declared) > LARGE_BODY_BYTES:
            return await self._read_sized_body(receive, int(declared))
        body: bytes | bytearray = b""
        while True:
            chunk, more = await self._next_chunk(receive)
            if len(body) + len(chunk) > cap:
                raise BodyTooLargeError(f"the {what} passes the {cap}-byte cap of this agent{hint}")
            if not body:
                body = chunk  # the common case, one chunk: no copy
            else:
                if isinstance(body, bytes):
                    body = bytearray(body)
                body += chunk
            if not more:
                return body

    @staticmethod
    async def _next_chunk(receive: Receive) -> tuple[bytes, bool]:
        try:
            message = await _within(receive(), BODY_IDLE_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise BodyTimeoutError(f"no request body data for {BODY_IDLE_TIMEOUT_S:g} s") from None
        if message["type"] == "http.disconnect":
            raise _ClientGone
        return message.get("body", b""), message.get("more_body", False)

    async def _read_sized_body(self, receive: Receive, size: int) -> bytearray:
        """A large body of a declared size (already checked against the cap), read into one buffer
        of exactly that size: no growing copies."""
        body = bytearray(size)
        view = memoryview(body)
        filled = 0
        more = True
        while more:
            chunk, more = await self._next_chunk(receive)
            if filled + len(chunk) > size:
                raise ProtocolError(f"the request body is longer than its Content-Length {size}")
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        view.release()
        if filled != size:
            raise ProtocolError(f"the request body ended after {filled} of its {size} bytes")
        return body

    @staticmethod
    def _only(method: str, allowed: str) -> None:
        if method != allowed:
            raise MethodNotAllowedError(f"{method} is not allowed here; use {allowed}")

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
