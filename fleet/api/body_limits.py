"""A pure ASGI middleware that bounds every request body: in size, and in how long it may stall.

Routes read bodies through ``receive``; uvicorn has no body timeout, so a client that announces
2 GiB and sends a few bytes would hold its connection (and the route waiting on it) forever. Here
``receive`` waits at most ``idle_timeout_s`` for each chunk (408), refuses a ``Content-Length``
over the limit before any byte is read (413), and counts the bytes of chunked bodies as they come
(413). Answering before the body is read makes the server close the connection, so nothing more
of it is received.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class BodyError(HTTPException):
    """A body too large or too slow; raised from ``receive``, so inside whatever route reads it."""

    def __init__(self, status_code: int, detail: str) -> None:
        # the rest of the body was not read: this connection cannot carry another request
        super().__init__(status_code, detail, headers={"Connection": "close"})


class BodyLimits:
    def __init__(self, app: ASGIApp, *, limit: Callable[[Scope], int], idle_timeout_s: float) -> None:
        self.app = app
        #: the largest body (bytes) the request in ``scope`` may send
        self.limit = limit
        self.idle_timeout_s = idle_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope)
        length = _content_length(scope)
        if length is not None and length > limit:
            await _answer(send, 413, f"the request body of {length} bytes is over the limit of {limit} bytes")
            return
        received = 0
        done = not _has_body(scope, length)
        started = False

        async def bounded_receive() -> Message:
            nonlocal received, done
            if done:  # after the body: e.g. a streaming response listening for a disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout_s)
            except asyncio.TimeoutError:
                raise BodyError(
                    408, f"the request body stalled: nothing came for {self.idle_timeout_s:g} s"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyError(413, f"the request body is over the limit of {limit} bytes")
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not done:
                    # Answered before the body was read (a 401 to an upload without a token): the
                    # server closes the connection instead of reading the rest to reuse it.
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, bounded_receive, watched_send)
        except BodyError as exc:
            # The app's handlers usually answer it; this is for one that let it through.
            if started:
                raise
            await _answer(send, exc.status_code, str(exc.detail))


def _has_body(scope: Scope, length: int | None) -> bool:
    if length is not None:
        return length > 0
    return any(
        name == b"transfer-encoding" and b"chunked" in value.lower()
        for name, value in scope.get("headers", ())
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _answer(send: Send, status: int, error: str) -> None:
    log.info("refused a request body (%d): %s", status, error)
    body = json.dumps({"error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
