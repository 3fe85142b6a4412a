"""The sync service: the agent's side of the MQTT protocol, on background threads.

Threads: paho's network thread (connect, reconnect, callbacks), the reconciler (downloads and
installs), the telemetry clock (samples into the on-disk outbox) and the outbox sender. None of
them touches serving: the agent answers inference requests whether or not the broker is there.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sdk
from agent.sync.download import BundleDownloader
from agent.sync.journal import Journal
from agent.sync.mqtt import MqttLink, Outgoing
from agent.sync.outbox import Outbox, OutboxSender
from agent.sync.ports import StatsPort, StorePort
from agent.sync.reconcile import Reconciler, ReconcileSettings
from agent.sync.reserve import DEFAULT_RESERVE_BYTES, DiskReserve
from agent.sync.telemetry import TelemetrySampler
from sdk import messages
from sdk.credentials import DeviceCredentials
from sdk.errors import ProtocolError
from sdk.keys import public_key_from_b64
from sdk.topics import check_device_id, topic

log = logging.getLogger(__name__)


@dataclass
class SyncConfig:
    fleet_url: str
    broker_url: str  # mqtt://host:port or mqtts://host:port
    device_id: str
    credentials_file: Path  # sdk.credentials.DeviceCredentials JSON
    data_dir: Path
    telemetry_interval_s: float = 10.0
    agent_version: str = sdk.__version__
    profile: str | None = None


@dataclass(frozen=True)
class Tuning:
    """Knobs tests turn down; the defaults suit a device."""

    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    keepalive_s: int = 30
    outbox_max_messages: int = 10_000
    outbox_max_bytes: int = 16 * 1024 * 1024
    #: telemetry and events not acknowledged by the fleet this long after sending go again
    #: (doubling while none comes, up to the maximum).
    ack_timeout_s: float = 10.0
    ack_timeout_max_s: float = 120.0
    #: room kept for the journal and update events when something else fills the disk (0: none)
    disk_reserve_bytes: int = DEFAULT_RESERVE_BYTES
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)


class SyncService:
    def __init__(
        self, config: SyncConfig, store: StorePort, stats: StatsPort, tuning: Tuning | None = None
    ) -> None:
        self.config = config
        self._store = store
        self._stats = stats
        self._tuning = tuning or Tuning()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._link: MqttLink | None = None
        self._outbox: Outbox | None = None
        self._downloader: BundleDownloader | None = None
        self._reconciler: Reconciler | None = None
        self._sender: OutboxSender | None = None
        self._reserve: DiskReserve | None = None

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load credentials and start the background threads; returns at once, broker or not."""
        config, tuning = self.config, self._tuning
        device_id = check_device_id(config.device_id)
        credentials = DeviceCredentials.load_for(config.credentials_file, device_id)
        # The site CA (inline or a file beside the credentials) verifies both mqtts and https.
        tls_context = credentials.ssl_context()
        fleet_key = public_key_from_b64(credentials.fleet_key) if credentials.fleet_key else None
        if fleet_key is None:
            log.warning(
                "%s pins no fleet key: desired states cannot be authenticated (register the device"
                " again with a fleet that signs them)",
                config.credentials_file,
            )
        sync_dir = config.data_dir / "sync"
        sync_dir.mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()  # fresh, so a stopped service can start again
        # written by the telemetry thread, off the path to ready
        self._reserve = reserve = DiskReserve(sync_dir / "reserve", tuning.disk_reserve_bytes)

        self._link = link = MqttLink(
            config.broker_url,
            client_id=device_id,
            username=credentials.mqtt_username,
            password=credentials.mqtt_password,
            tls_context=tls_context,
            will=Outgoing(topic("status", device_id), messages.offline_status().to_bytes()),
            birth=lambda: Outgoing(
                topic("status", device_id), messages.Status(state="online", time=time.time()).to_bytes()
            ),
            keepalive_s=tuning.keepalive_s,
            reconnect_min_s=tuning.reconnect_min_s,
            reconnect_max_s=tuning.reconnect_max_s,
        )
        self._outbox = Outbox(
            sync_dir / "outbox.sqlite3",
            max_messages=tuning.outbox_max_messages,
            max_bytes=tuning.outbox_max_bytes,
        )
        self._sender = sender = OutboxSender(
            self._outbox,
            link,
            {"telemetry": topic("telemetry", device_id), "events": topic("events", device_id)},
            ack_timeout_s=tuning.ack_timeout_s,
            ack_timeout_max_s=tuning.ack_timeout_max_s,
        )
        self._downloader = BundleDownloader(config.fleet_url, credentials.token, tls_context=tls_context)
        self._reconciler = reconciler = Reconciler(
            self._store,
            Journal(sync_dir / "journal.json", reserve),
            self._downloader,
            sync_dir / "downloads",
            send_event=self._send_event,
            send_reported=lambda r: link.publish(
                topic("reported", device_id), r.to_bytes(), qos=1, retain=True
            ),
            agent_version=config.agent_version,
            profile=config.profile or credentials.profile,
            settings=tuning.reconcile,
            device_id=device_id,
            fleet_key=fleet_key,
        )
        self._store.add_listener(lambda name: reconciler.request_report())
        # On paho's thread: only wake the others. A broker that restarted without persistence
        # has lost the retained reported state, so it is published again, and whatever the fleet
        # has not acknowledged may be lost with it, so that goes again too.
        link.on_connected = lambda: (reconciler.request_report(), sender.reconnected())
        link.subscribe(topic("desired", device_id), self._on_desired)
        link.subscribe(topic("ack", device_id), self._on_ack)

        self._spawn("sync-reconcile", reconciler.run)
        self._spawn("sync-outbox", lambda: sender.run(self._stop))
        self._spawn("sync-telemetry", self._telemetry_loop)
        link.start()
        log.info(
            "sync started for device %s (broker %s, fleet %s)", device_id, config.broker_url, config.fleet_url
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Say offline (a clean goodbye, so no last will), flush, and join every thread."""
        self._stop.set()
        if self._reconciler is not None:
            self._reconciler.stop()
        if self._sender is not None:
            self._sender.wake.set()
        for thread in self._threads:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("thread %s did not stop within %.0f s", thread.name, timeout_s)
        if self._sender is not None and not self._sender.drain(min(timeout_s, 3.0)):
            log.info("telemetry not yet delivered stays on disk for the next start")
        if self._link is not None:
            farewell = messages.Status(state="offline", time=time.time())
            self._link.stop(Outgoing(topic("status", self.config.device_id), farewell.to_bytes()), timeout_s)
        if self._downloader is not None:
            self._downloader.close()
        if self._outbox is not None:
            self._outbox.close()
        self._threads.clear()
        self._link = self._downloader = self._outbox = self._reconciler = self._sender = None

    # ------------------------------------------------------------------------------ internals

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _on_desired(self, topic_name: str, payload: bytes) -> None:
        if not payload:
            log.info("desired state cleared on %s; keeping what runs", topic_name)
            return
        assert self._reconciler is not None
        self._reconciler.receive(payload)

    def _on_ack(self, topic_name: str, payload: bytes) -> None:
        try:
            ack = messages.parse_message(messages.Ack, payload)
        except ProtocolError as exc:
            log.warning("ignoring acknowledgement: %s", exc)
            return
        assert self._sender is not None
        self._sender.acknowledged(ack)

    def _send_event(self, event: messages.Event) -> None:
        """Into the outbox, numbered, so it reaches the fleet once however often it is sent."""
        outbox, reserve = self._outbox, self._reserve
        assert outbox is not None and reserve is not None and self._sender is not None
        try:
            reserve.retry_when_full(
                lambda: outbox.append(lambda seq: event.model_copy(update={"seq": seq}).to_bytes(), "events")
            )
        except (sqlite3.Error, OSError) as exc:  # a full disk must not stop the update it reports on
            log.error("could not record the %s event (%s): %s", event.kind, event.reason, exc)
            return
        self._sender.wake.set()

    def _telemetry_loop(self) -> None:
        assert self._outbox is not None and self._sender is not None and self._reserve is not None
        sampler = TelemetrySampler(self.config.data_dir, self._stats, self.config.telemetry_interval_s)
        self._reserve.restore()
        while not self._stop.wait(self.config.telemetry_interval_s):
            self._reserve.restore()  # after a full disk, once there is room again
            try:
                self._outbox.append(lambda seq: sampler.sample(seq).to_bytes())
            except (sqlite3.Error, OSError) as exc:  # a full disk: this sample is lost, not the next
                log.error("could not record telemetry: %s", exc)
            except Exception:  # a broken sensor must not end telemetry for good
                log.exception("could not record telemetry")
            self._sender.wake.set()
