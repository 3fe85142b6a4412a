"""Finding 4 on a real uvicorn over loopback, with raw sockets that lie about their bodies."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fleet import auth
from fleet.context import FleetContext
from tests.fleet.conftest import Published
from tests.fleet.live_server import fleet_in_thread

IDLE_S = 1.0


@dataclass
class Live:
    url: str
    port: int
    admin: str


@contextmanager
def serve(tmp_path: Path, **overrides: object) -> Iterator[Live]:
    keys = [tmp_path / "keys" / "signing.pub"]
    with fleet_in_thread(tmp_path, Published(), trust_keys=keys, body_idle_timeout_s=IDLE_S, **overrides) as (
        app,
        url,
    ):
        port = int(url.rsplit(":", 1)[1])
        ctx: FleetContext = app.state.fleet
        with ctx.db.session() as s:
            admin = auth.create_token(s, "admin")
        yield Live(url, port, admin)


@pytest.fixture
def live(tmp_path: Path, signing_key: object) -> Iterator[Live]:
    """A fleet that takes bundles up to 1 MiB and other bodies up to 64 KiB."""
    with serve(tmp_path, max_bundle_mb=1, max_request_kb=64) as fleet:
        yield fleet


def raw_request(live: Live, head: str, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=10)
    sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the one response on ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return status, json.loads(rest[:length])


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the server closes ``sock`` within ``seconds`` (whatever it still sends first)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def upload_head(length: int, token: str | None = None) -> str:
    auth_line = f"Authorization: Bearer {token}\n" if token else ""
    return (
        "POST /api/v1/bundles HTTP/1.1\nHost: fleet\n"
        f"{auth_line}Content-Type: multipart/form-data; boundary=xyz\nContent-Length: {length}\n"
    )


def test_an_upload_without_a_token_is_refused_before_its_body_is_read(
    tmp_path: Path, signing_key: object
) -> None:
    """A 300 MB upload without a token was received in full, then answered 401."""
    with serve(tmp_path) as live:  # the default limit: 300 MB is a bundle the fleet would take
        sock = raw_request(live, upload_head(300 * 1024 * 1024), b"--xyz\r\n" + b"x" * 65536)
        _refused_unread(sock)


def _refused_unread(sock: socket.socket) -> None:
    status, body = read_response(sock)
    assert status == 401 and "Authorization" in body["error"]
    # the server hung up: the rest of the 300 MB cannot be sent
    sent = 0
    with pytest.raises(OSError):
        while sent < 300 * 1024 * 1024:
            sock.sendall(b"x" * (1024 * 1024))
            sent += 1024 * 1024
    assert sent < 64 * 1024 * 1024
    sock.close()


def test_an_upload_over_the_limit_is_refused_from_its_content_length(live: Live) -> None:
    sock = raw_request(live, upload_head(50 * 1024 * 1024, live.admin), b"--xyz\r\n")
    status, body = read_response(sock)
    assert status == 413 and "limit" in body["error"]
    assert closed_within(sock, 5)


def test_a_chunked_upload_is_cut_at_the_limit(live: Live) -> None:
    head = (
        "POST /api/v1/bundles HTTP/1.1\nHost: fleet\n"
        f"Authorization: Bearer {live.admin}\nContent-Type: multipart/form-data; boundary=xyz\n"
        "Transfer-Encoding: chunked\n"
    )
    sock = raw_request(live, head)
    chunk = b"y" * 65536
    body = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="b.efb"\r\n\r\n' + chunk
    sock.sendall(f"{len(body):x}\r\n".encode() + body + b"\r\n")
    with pytest.raises(OSError):
        for _ in range(64):  # 4 MiB, over the 1 MiB limit (plus its framing allowance)
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        # all of it went into buffers: the answer is there to read
        status, answer = read_response(sock)
        assert status == 413 and "limit" in answer["error"]
        raise OSError("answered")
    sock.close()


def test_a_lying_content_length_cannot_hold_a_connection(tmp_path: Path, signing_key: object) -> None:
    """2 GiB announced, a few bytes sent: 408 and closed after the idle timeout; others are served meanwhile."""
    with serve(tmp_path) as live:  # the default limit: 2 GiB is a bundle the fleet would take
        started = time.monotonic()
        sock = raw_request(live, upload_head(2 * 1024**3, live.admin), b"--xyz\r\n")
        with httpx.Client(base_url=live.url, timeout=5) as client:
            for _ in range(3):
                assert client.get("/healthz").status_code == 200
                r = client.get("/api/v1/devices", headers={"Authorization": f"Bearer {live.admin}"})
                assert r.status_code == 200
        status, body = read_response(sock)
        assert status == 408 and "stalled" in body["error"]
        assert closed_within(sock, 5)
        assert time.monotonic() - started < IDLE_S + 8
        sock.close()


def test_a_json_body_over_the_request_limit_is_refused(live: Live) -> None:
    r = httpx.post(
        f"{live.url}/api/v1/devices",
        json={"device_id": "d0", "labels": {"x": "y" * 100_000}},
        headers={"Authorization": f"Bearer {live.admin}"},
    )
    assert r.status_code == 413 and "limit" in r.json()["error"]
