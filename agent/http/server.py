"""The HTTP server around :class:`agent.http.app.AgentApp`: uvicorn with httptools.

Imported only when the agent serves (uvicorn is ~20 ms of imports, see :mod:`agent.service`).
SIGTERM/SIGINT only ask the server to stop, so the agent can shut its sync side down first.
"""

from __future__ import annotations

import contextlib
import signal
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from agent.settings import ServerTLS


class AgentServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, which would kill the process
    before the agent stops its sync side; here a signal only asks the server to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def make_server(app: Any, tls: ServerTLS | None = None) -> AgentServer:
    ssl_options: dict[str, Any] = {}
    if tls is not None:
        ssl_options = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
        if tls.client_ca is not None:
            ssl_options.update(ssl_ca_certs=str(tls.client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    config = uvicorn.Config(
        app,
        http="httptools",
        loop="asyncio",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=30,
        # Nothing sits in front of the agent to forward client addresses, and the agent's name in
        # every response is bytes for nothing.
        proxy_headers=False,
        server_header=False,
        # No websocket endpoints: "auto" would import the websockets package (~30 ms) at start.
        ws="none",
        **ssl_options,
    )
    # Load now (protocol classes, TLS context), while the models load in the background
    # (agent.preload), rather than after them when the server starts.
    config.load()
    return AgentServer(config)
