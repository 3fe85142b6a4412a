"""A lean ASGI app for the Open Inference Protocol v2 REST API; every route calls the data plane.

No web framework: the routes are few and fixed, and a framework's request parsing would add
latency and memory on small devices. Errors are mapped to a status in one place
(:meth:`AgentApp.__call__`): an :class:`EdgeError` carries its own ``http_status``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agent.dataplane import DataPlane
from agent.http.codec import HEADER_LENGTH, decode_request, encode_response
from agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from agent.metrics import AgentMetrics
from sdk.errors import EdgeError, ModelNotFoundError, ProtocolError

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Reply = tuple[int, bytes, list[tuple[bytes, bytes]]]

_JSON = [(b"content-type", b"application/json")]
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024


class BodyTooLargeError(ProtocolError):
    http_status = 413


class MethodNotAllowedError(ProtocolError):
    http_status = 405


class _ClientGone(Exception):
    pass


def _json(status: int, doc: dict[str, Any]) -> Reply:
    return status, json.dumps(doc, separators=(",", ":")).encode("utf-8"), _JSON


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class AgentApp:
    def __init__(
        self, dataplane: DataPlane, metrics: AgentMetrics, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    ) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            status, body, headers = await self._route(scope, receive)
        except _ClientGone:
            return
        except EdgeError as exc:
            status, body, headers = _json(exc.http_status, {"error": str(exc)})
        except Exception:
            log.exception("unexpected error serving %s %s", scope["method"], scope["path"])
            status, body, headers = _json(500, {"error": "internal error; see the agent's log"})
        if status >= 400:
            self.metrics.http_errors.labels(str(status)).inc()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Receive) -> Reply:
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
            return await self._infer(scope, receive, name, version)
        return _json(404, {"error": f"no such endpoint: {scope['path']}"})

    async def _infer(self, scope: Scope, receive: Receive, name: str, version: str | None) -> Reply:
        # Resolve the model first: a request for an unknown model is refused before its body is read.
        self.dataplane.model_ready(name, version)
        if (_header(scope, b"content-encoding") or "identity") != "identity":
            raise ProtocolError("compressed request bodies are not supported; send them uncompressed")
        body = await self._read_body(scope, receive)
        request = decode_request(body, _header(scope, HEADER_LENGTH.encode()), name, version)
        response = await self.dataplane.infer(request)
        payload, header_length = encode_response(response, request)
        if header_length is None:
            return 200, payload, _JSON
        return (
            200,
            payload,
            [
                (b"content-type", b"application/octet-stream"),
                (HEADER_LENGTH.encode(), str(header_length).encode()),
            ],
        )

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        cap = self.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise BodyTooLargeError(f"the request body is {declared} bytes; this agent accepts at most {cap}")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                raise BodyTooLargeError(f"the request body passes the {cap}-byte cap of this agent")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

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
