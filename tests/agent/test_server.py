"""The HTTP server: whole responses on a kept-alive connection (after a HEAD too), no server name."""

from __future__ import annotations

import socket
from collections.abc import Callable

from agent.service import AgentService


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
