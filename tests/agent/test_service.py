"""The listening socket: named errors for a taken port, TCP_NODELAY on every connection."""

from __future__ import annotations

import socket

import pytest

from agent.service import bind
from sdk.errors import ConfigError


def test_listening_socket_lets_asyncio_disable_nagle() -> None:
    # asyncio sets TCP_NODELAY on accepted sockets only when proto is TCP; without it each response
    # waits ~40 ms for a delayed ACK between its header and body writes.
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_taken_port_is_named() -> None:
    sock = bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}.*--listen"):
            bind("127.0.0.1", port)
    finally:
        sock.close()
