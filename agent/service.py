"""Wires the agent together: store, runtimes, scheduler, data plane, HTTP, and the optional sync side.

Start-up is explicit steps: bind the socket, check the active versions against their verification
stamps, start loading them (:mod:`agent.preload`) while the HTTP side is imported and built, start
the watcher (and check the sync side's configuration), then serve; once serving, the sync side
starts, every active version is re-hashed in the background (see :mod:`agent.stamp`) and the
session cache is checked and filled (:mod:`agent.session_cache`).
:meth:`AgentService.start_background` runs the same in a thread for tests and the bench.
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from agent.early import EarlyLoads
from agent.memory import release_freed_memory
from agent.preload import Preloader
from agent.priority import lowest_priority
from agent.session_cache import SessionCache
from agent.settings import AgentSettings
from agent.store import ModelStore
from sdk.errors import ConfigError
from sdk.keys import load_trusted_keys

if TYPE_CHECKING:
    from agent.dataplane import DataPlane
    from agent.http.app import AgentApp
    from agent.http.server import AgentServer
    from agent.metrics import AgentMetrics
    from agent.repository import ModelRepository

log = logging.getLogger(__name__)


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
    metrics: AgentMetrics
    repository: ModelRepository
    dataplane: DataPlane
    app: AgentApp

    def __init__(self, settings: AgentSettings, early: EarlyLoads | None = None) -> None:
        """Open the store, bind (a taken port fails before any model loads), check the active
        versions, and build the HTTP side while their runtimes load in the background.
        ``early``: sessions ``edge-agent serve`` started before its imports (:mod:`agent.early`);
        used only for versions the check here accepts."""
        self.settings = settings
        settings.check_exposure()
        self.store = ModelStore(settings.data_dir, load_trusted_keys(settings.trusted_key_paths()))
        self.sock: socket.socket = bind(settings.host, settings.port)
        try:
            self.store.verify_active(full=False)
            self.session_cache = SessionCache(settings.data_dir) if settings.session_cache else None
            self._preloader = Preloader(self.store, settings.threads, early, self.session_cache).start()
            self.executor = ThreadPoolExecutor(
                max_workers=max(4, settings.max_concurrency * 2), thread_name_prefix="infer"
            )
            self._build_http()
        except BaseException:
            self.sock.close()
            if early is not None:
                early.close()
            raise
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sync: Any = None
        #: set once the sync side has started (or failed to), or at once without one
        self._sync_started = threading.Event()
        if settings.sync is None:
            self._sync_started.set()
        #: an error that stops the agent after it started serving (the sync side failing to start)
        self._fatal: BaseException | None = None

    def _build_http(self) -> None:
        # Imported here, not at the top: the HTTP side's imports now pass while the preloader builds
        # the ONNX Runtime sessions (without the GIL).
        from agent.dataplane import DataPlane
        from agent.http.app import AgentApp
        from agent.http.server import make_server
        from agent.metrics import AgentMetrics
        from agent.repository import ModelRepository

        settings = self.settings
        self.metrics = AgentMetrics()
        self.repository = ModelRepository(
            self.store,
            self.metrics,
            self.executor,
            settings.scheduling,
            settings.threads,
            monitoring=settings.monitor_settings(),
            shadowing=settings.shadow_settings(),
            session_cache=self.session_cache,
        )
        self.dataplane = DataPlane(self.repository, self.metrics)
        self.app = AgentApp(
            self.dataplane,
            self.metrics,
            settings.max_body_bytes,
            max_json_bytes=settings.max_json_bytes,
            api_token=settings.api_token.get_secret_value() if settings.api_token else None,
        )
        self._server: AgentServer = make_server(self.app, settings.tls)
        connections = self._server.connections
        self.repository.activity.connections = lambda: len(connections)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.tls else "http"
        return f"{scheme}://{self.settings.host}:{self.port}"

    # --------------------------------------------------------------------------------- steps

    def prepare(self) -> None:
        """The rest before serving: serve the loaded models, start the watcher, check the sync
        side's configuration. Connections that arrive meanwhile wait in the listen backlog."""
        self.repository.load_all(self._preloader.take())
        watcher = threading.Thread(target=self._watch, name="store-watcher", daemon=True)
        watcher.start()
        self._threads.append(watcher)
        if self.settings.sync is not None:
            self._check_sync()

    def serve(self) -> None:
        """Serve until interrupted (blocking); then stop the sync side and the watcher."""
        verifier = threading.Thread(target=self._verify_in_full, name="store-verifier", daemon=True)
        verifier.start()
        self._threads.append(verifier)
        if self.settings.sync is not None:
            syncing = threading.Thread(target=self._start_sync_when_serving, name="sync-start", daemon=True)
            syncing.start()
            self._threads.append(syncing)
        try:
            self._server.run(sockets=[self.sock])
        finally:
            self.shutdown()
        if self._fatal is not None:
            raise self._fatal

    def start_background(self) -> AgentService:
        """prepare() and serve() in a thread; returns once the server accepts requests."""
        self.prepare()
        thread = threading.Thread(target=self.serve, name="agent-http", daemon=True)
        thread.start()
        self._threads.append(thread)
        while not self._server.started or not self._sync_started.is_set():
            if not thread.is_alive():
                raise RuntimeError("the agent's HTTP server failed to start")
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=10)

    def shutdown(self) -> None:
        self._stop.set()
        # a sync side still starting is stopped once it has
        self._sync_started.wait(timeout=30)
        if self._sync is not None:
            try:
                self._sync.stop()
            finally:
                self._sync = None
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.app.close()
        self.sock.close()
        self.repository.save_monitoring()

    # ------------------------------------------------------------------------------ helpers

    def _verify_in_full(self) -> None:
        """Re-hash every active version once the server runs; a damaged one is replaced (the
        previous version, or nothing) through the same listener path as any other change."""
        # Reading every model file is a core's worth of work for a while: let start-up finish and
        # let requests go first (a thread's nice value is its own on Linux).
        self._wait_until_serving()
        # The session builds' parse buffers are free now: give them back (agent.memory), once,
        # after ready rather than before it.
        release_freed_memory("start-up")
        lowest_priority()
        try:
            self.store.verify_active(full=True)
            self.store.poll_changes()
        except Exception:
            log.exception("verifying the active models in the background failed")
        # The session cache, in the same spirit: its entries re-hashed, then the missing ones built
        # (each a second session build: after start-up, never before ready).
        try:
            self.repository.check_session_cache()
            self.repository.fill_session_cache()
        except Exception:
            log.exception("checking or filling the session cache failed")

    def _wait_until_serving(self) -> bool:
        """Block until the server answers (True) or the agent stops first (False)."""
        while not self._server.started:
            if self._stop.wait(0.01):
                return False
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.poll_interval_s):
            try:
                self.store.poll_changes()
            except Exception:
                log.exception("checking the model store for changes failed")

    def _check_sync(self) -> None:
        """The sync side's configuration errors before serving (a wrong credentials file fails the
        start, in one line); the sync side itself starts once the server is up."""
        from sdk.credentials import DeviceCredentials
        from sdk.topics import check_device_id

        sync = self.settings.sync
        assert sync is not None
        DeviceCredentials.load_for(sync.credentials_file, check_device_id(sync.device_id)).ssl_context()

    def _start_sync_when_serving(self) -> None:
        """Start the sync side once the server answers: its imports (MQTT, HTTP client, the message
        schemas: 150-250 ms of CPU on a 2-core device) are not on the path to ready. If it cannot
        start, the agent stops with its error, as it did when the sync side started first."""
        try:
            if self._wait_until_serving() and not self._stop.is_set():
                self._start_sync()
        except BaseException as exc:
            log.error("the fleet sync cannot start: %s", exc)
            self._fatal = exc
            self._server.should_exit = True
        finally:
            self._sync_started.set()

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


def run_forever(settings: AgentSettings, early: EarlyLoads | None = None) -> None:
    service = AgentService(settings, early)
    service.prepare()
    # What start-up built lives as long as the process: keep it out of the cyclic collector, whose
    # full passes over it took 20-40 ms each on the bench machine (none ran during the bench's
    # load, but one would be a p99 spike). Only here, where the agent owns the process; a test
    # process starts many agents and must collect them. ``edge-agent serve`` starts with the
    # collector off (agent.cli): it comes back on here, for what serving allocates. The ~850
    # objects start-up left unreachable stay frozen (a collection now would cost tens of ms).
    gc.freeze()
    gc.enable()
    log.info(
        "edge-agent serving %s on %s",
        ", ".join(f"{n} {v}" for n, v in service.store.active_versions().items()) or "no models",
        service.url,
    )
    service.serve()


__all__ = ["AgentService", "run_forever"]
