"""Wires the agent together: store, runtimes, scheduler, data plane, HTTP, and the optional sync side.

Start-up is explicit steps: verify the active versions, load them, bind the socket, start the
watcher (and sync), then serve. :meth:`AgentService.start_background` runs the same in a thread
for tests and the bench.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvicorn

from agent.dataplane import DataPlane
from agent.http.app import AgentApp
from agent.metrics import AgentMetrics
from agent.repository import ModelRepository
from agent.settings import AgentSettings
from agent.store import ModelStore
from sdk.errors import ConfigError
from sdk.keys import load_trusted_keys

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
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


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted connections only when it does, and
    # without it every response (headers, then body) waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (change it with --listen)"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class AgentService:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.store = ModelStore(settings.data_dir, load_trusted_keys(settings.trusted_key_paths()))
        self.metrics = AgentMetrics()
        self.executor = ThreadPoolExecutor(
            max_workers=max(4, settings.max_concurrency * 2), thread_name_prefix="infer"
        )
        self.repository = ModelRepository(
            self.store, self.metrics, self.executor, settings.scheduling, settings.threads
        )
        self.dataplane = DataPlane(self.repository, self.metrics)
        self.app = AgentApp(self.dataplane, self.metrics, settings.max_body_bytes)
        self.sock: socket.socket | None = None
        self._server: _Server | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sync: Any = None

    @property
    def port(self) -> int:
        assert self.sock is not None
        return int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    # --------------------------------------------------------------------------------- steps

    def prepare(self) -> None:
        """Everything before serving: bind (a taken port fails fast), verify and load models, start
        the watcher and sync. Connections that arrive meanwhile wait in the listen backlog."""
        self.sock = bind(self.settings.host, self.settings.port)
        self.store.verify_active()
        self.repository.load_all()
        watcher = threading.Thread(target=self._watch, name="store-watcher", daemon=True)
        watcher.start()
        self._threads.append(watcher)
        if self.settings.sync is not None:
            self._start_sync()

    def serve(self) -> None:
        """Serve until interrupted (blocking); then stop the sync side and the watcher."""
        config = uvicorn.Config(
            self.app,
            http="httptools",
            loop="asyncio",
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_keep_alive=30,
        )
        self._server = _Server(config)
        assert self.sock is not None
        try:
            self._server.run(sockets=[self.sock])
        finally:
            self.shutdown()

    def start_background(self) -> AgentService:
        """prepare() and serve() in a thread; returns once the server accepts requests."""
        self.prepare()
        thread = threading.Thread(target=self.serve, name="agent-http", daemon=True)
        thread.start()
        self._threads.append(thread)
        while self._server is None or not self._server.started:
            if not thread.is_alive():
                raise RuntimeError("the agent's HTTP server failed to start")
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=10)

    def shutdown(self) -> None:
        self._stop.set()
        if self._sync is not None:
            try:
                self._sync.stop()
            finally:
                self._sync = None
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.sock is not None:
            self.sock.close()

    # ------------------------------------------------------------------------------ helpers

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.poll_interval_s):
            try:
                self.store.poll_changes()
            except Exception:
                log.exception("checking the model store for changes failed")

    def _start_sync(self) -> None:
        sync = self.settings.sync
        assert sync is not None
        try:
            from agent.sync import SyncConfig, SyncService
        except ImportError as exc:
            raise ConfigError(f"fleet sync is not available in this agent build: {exc}") from None
        self._sync = SyncService(
            SyncConfig(
                fleet_url=sync.fleet_url,
                broker_url=sync.broker_url,
                device_id=sync.device_id,
                credentials_file=sync.credentials_file,
                data_dir=self.settings.data_dir,
                telemetry_interval_s=sync.telemetry_interval_s,
            ),
            store=self.store,
            stats=self.repository,
        )
        self._sync.start()


def run_forever(settings: AgentSettings) -> None:
    service = AgentService(settings)
    service.prepare()
    log.info(
        "edge-agent serving %s on %s",
        ", ".join(f"{n} {v}" for n, v in service.store.active_versions().items()) or "no models",
        service.url,
    )
    service.serve()


__all__ = ["AgentService", "run_forever"]
