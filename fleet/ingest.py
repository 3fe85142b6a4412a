"""Drains the MQTT inbox in batches: each batch of device messages is one database transaction.

Batching is what lets one process keep up with thousands of telemetry messages a second: the
cost of a commit (an fsync on SQLite, a round trip on PostgreSQL) is paid per batch, not per message.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from fleet import event_log, telemetry
from fleet.db.models import Device
from fleet.db.session import Database
from fleet.metrics import FleetMetrics
from fleet.mqtt.client import Inbound
from sdk.errors import ProtocolError
from sdk.messages import Event, ReportedState, Status, Telemetry, parse_message
from sdk.topics import parse_topic

log = logging.getLogger(__name__)


class Ingest:
    def __init__(
        self,
        db: Database,
        inbox: queue.Queue[Inbound],
        metrics: FleetMetrics,
        *,
        batch: int = 1000,
        max_wait_s: float = 0.2,
    ) -> None:
        self.db = db
        self.inbox = inbox
        self.metrics = metrics
        self.batch = batch
        self.max_wait_s = max_wait_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_committed: Callable[[list[Any]], object] | None = None  # delivery acks: fleet/acks.py

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-ingest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _collect(self) -> list[Inbound]:
        try:
            items = [self.inbox.get(timeout=0.25)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.max_wait_s
        while len(items) < self.batch:
            try:
                items.append(self.inbox.get_nowait())
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    items.append(self.inbox.get(timeout=min(left, 0.02)))
                except queue.Empty:
                    continue
        return items

    def _run(self) -> None:
        while not self._stop.is_set():
            items = self._collect()
            if not items:
                continue
            for attempt in range(1, 4):
                try:
                    self.process(items)
                    break
                except OperationalError as exc:
                    # Replicas update the same device rows: PostgreSQL may pick this batch as a
                    # deadlock victim, and SQLite may stay busy; the batch is safe to run again.
                    log.warning("ingest batch failed (attempt %d of 3): %s", attempt, exc.orig)
                    time.sleep(0.05 * attempt)
                except Exception:
                    log.exception("ingest of %d messages failed; they are dropped", len(items))
                    self.metrics.ingest_failed.inc(len(items))
                    break
            else:
                self.metrics.ingest_failed.inc(len(items))

    # ---------------------------------------------------------------------------------- batch

    def process(self, items: list[Inbound]) -> None:
        parsed: list[tuple[str, str, Any, float]] = []
        for name, payload, received_at in items:
            try:
                device_id, kind = parse_topic(name)
                if kind == "telemetry":
                    msg: Any = parse_message(Telemetry, payload)
                elif kind == "reported":
                    msg = parse_message(ReportedState, payload)
                elif kind == "status":
                    if not payload:
                        continue  # a retained status being cleared
                    msg = parse_message(Status, payload)
                elif kind == "events":
                    msg = parse_message(Event, payload)
                else:
                    continue
            except ProtocolError as exc:
                self.metrics.messages_rejected.inc()
                log.debug("dropped a message on %s: %s", name, exc)
                continue
            parsed.append((device_id, kind, msg, received_at))
        if not parsed:
            return
        unknown = 0
        tele = [(d, m, t) for d, k, m, t in parsed if k == "telemetry"]
        rest = [p for p in parsed if p[1] != "telemetry"]
        with self.db.session() as s:
            stored = telemetry.store_batch(s, tele) if tele else 0
            ids = {d for d, _, _, _ in rest}
            devices = {d.id: d for d in s.scalars(select(Device).where(Device.id.in_(ids)))} if ids else {}
            events: list[dict[str, Any]] = []  # fleet/event_log.py rows: stored once each
            for device_id, kind, msg, received_at in rest:
                device = devices.get(device_id)
                if device is None:
                    unknown += 1
                    continue
                if kind == "reported":
                    self._reported(device, msg, received_at)
                elif kind == "status":
                    device.online = msg.state == "online"
                    device.status_at = received_at
                    device.last_seen = received_at
                elif kind == "events":
                    events.append(event_log.event_row(device_id, msg, received_at))
            if events:
                event_log.store_events(s, events)
        if self.on_committed is not None:  # delivery acks (fleet/acks.py): only after the commit
            self.on_committed(parsed)
        unknown += len(tele) - stored
        for kind in ("telemetry", "reported", "status", "events"):
            n = sum(1 for _, k, _, _ in parsed if k == kind)
            if n:
                self.metrics.messages_ingested.labels(kind).inc(n)
        self.metrics.telemetry_stored.inc(stored)
        if unknown:
            self.metrics.messages_rejected.inc(unknown)

    @staticmethod
    def _reported(device: Device, msg: ReportedState, received_at: float) -> None:
        # Replicas may see a device's reports out of order: never go back to an older revision.
        if msg.revision < device.reported_revision:
            return
        device.reported_revision = msg.revision
        device.reported_models = [m.model_dump(exclude_none=True) for m in msg.models]
        device.agent_version = msg.agent_version
        device.last_error = msg.last_error
        device.reported_at = received_at
        device.last_seen = received_at
        if device.profile is None and msg.profile:
            device.profile = msg.profile
