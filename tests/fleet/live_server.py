"""A fleet app served by uvicorn on loopback in a thread, for tests that need a real HTTP server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from fleet.app import create_app
from fleet.settings import FleetSettings
from tests.support.mosquitto import free_port


@contextmanager
def serve_in_thread(app: FastAPI, port: int, timeout: float = 15.0) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1:``port``; yields its base URL; stops the server on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def fleet_in_thread(folder: Path, publisher: Any = None, **overrides: Any) -> Iterator[tuple[FastAPI, str]]:
    """A fleet on SQLite in ``folder``, served on a free loopback port, with its controller driven
    by the test (``controller_interval_s=0``); yields the app and its base URL."""
    port = free_port()
    settings = FleetSettings(
        db_url=f"sqlite:///{folder / 'fleet.db'}",
        storage=str(folder / "store"),
        # the URL the fleet writes into desired states is its own
        **{"listen_port": port, "controller_interval_s": 0, **overrides},
    )
    app = create_app(settings, publisher=publisher if publisher is not None else (lambda *_: None))
    with serve_in_thread(app, port) as url:
        yield app, url
