"""A slow link in front of the fleet: a real HTTP proxy on loopback that passes GET bodies at a set rate.

Bundle downloads through it take seconds instead of milliseconds, so a test can kill an agent in
the middle of one. Status, ``Range``/``Content-Range`` and the token pass through unchanged.
"""

from __future__ import annotations

import http.client
import http.server
import threading
import time
from typing import Any
from urllib.parse import urlsplit

_PASSED_REQUEST = ("authorization", "range", "accept", "accept-encoding", "user-agent")
_PASSED_RESPONSE = ("content-length", "content-range", "content-type", "accept-ranges", "etag", "location")


class ThrottledProxy:
    def __init__(self, upstream: str, rate_bytes_s: int, chunk: int = 64 * 1024) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rate = rate_bytes_s
        self.chunk = chunk
        #: bodies stop after ``hold_after`` bytes until ``release()``: a test can act in the middle
        #: of a download however slowly it runs, instead of racing the transfer
        self.hold_after: int | None = None
        self._released = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() in _PASSED_REQUEST}
                conn.request("GET", self.path, headers=headers)
                upstream = conn.getresponse()
                try:
                    self.send_response(upstream.status)
                    for name, value in upstream.getheaders():
                        if name.lower() in _PASSED_RESPONSE:
                            self.send_header(name, value)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    started, sent = time.monotonic(), 0
                    while block := upstream.read(proxy.chunk):
                        self.wfile.write(block)
                        sent += len(block)
                        if proxy.hold_after is not None and sent >= proxy.hold_after:
                            self.wfile.flush()
                            proxy._released.wait(120)
                            started = time.monotonic() - sent / proxy.rate
                        ahead = sent / proxy.rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the agent was killed mid-download: exactly what the tests do
                finally:
                    conn.close()
                    self.close_connection = True

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="throttle", daemon=True)

    def hold(self, after_bytes: int) -> None:
        """Stop every body after ``after_bytes`` bytes until :meth:`release`."""
        self._released.clear()
        self.hold_after = after_bytes

    def release(self) -> None:
        self.hold_after = None
        self._released.set()

    def __enter__(self) -> ThrottledProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
