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
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from fleet import event_log, telemetry
from fleet.alerts import store as alert_store
from fleet.alerts.rules import Limits
from fleet.db.models import Device
from fleet.db.session import Database
from fleet.limits import Accepted, IngestLimits, Rejected, RejectReason
from fleet.metrics import FleetMetrics
from fleet.mqtt.client import Inbound
from fleet.ratelog import RateLimitedLog
from fleet.rollout import reports

log = logging.getLogger(__name__)
#: a database error on one message is retried this often before the message is dropped
_ATTEMPTS = 3


class Stored(NamedTuple):
    """One device message that is in the database now (``seq`` for telemetry and events, else None)."""

    device_id: str
    kind: str
    seq: int | None


class Ingest:
    def __init__(
        self,
        db: Database,
        inbox: queue.Queue[Inbound],
        metrics: FleetMetrics,
        *,
        batch: int = 1000,
        max_wait_s: float = 0.2,
        limits: IngestLimits | None = None,
        on_stored: Callable[[list[Stored]], None] | None = None,
        alert_limits: Limits | None = None,
        on_alerts: Callable[[list[alert_store.Change]], None] | None = None,
    ) -> None:
        self.db = db
        self.inbox = inbox
        self.metrics = metrics
        self.batch = batch
        self.max_wait_s = max_wait_s
        self.limits = limits or IngestLimits()
        #: called after every commit with what it stored (e.g. to acknowledge it to the devices)
        self.on_stored = on_stored
        #: alert rules' default thresholds (None: alerts are not evaluated by this ingest)
        self.alert_limits = alert_limits
        #: called after every commit with the alerts that started firing or resolved in it
        self.on_alerts = on_alerts
        self._warnings = RateLimitedLog(log)
        for reason in RejectReason:  # every reason shows on /metrics from the start, at 0
            metrics.ingest_rejected.labels(reason.value)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
            try:
                self.process(items)
            except Exception:  # the thread must outlive anything one batch does
                log.exception("ingest of %d messages failed; they are dropped", len(items))
                self.metrics.ingest_failed.inc(len(items))

    # ---------------------------------------------------------------------------------- batch

    def process(self, items: list[Inbound]) -> list[Stored]:
        """Check each message, store the good ones in one transaction; returns what was stored.

        A message that fails a check is dropped, counted and logged on its own. Should the
        database still refuse the batch, it is stored again message by message, so only the
        offending message is lost.
        """
        accepted: list[Accepted] = []
        for name, payload, received_at in items:
            try:
                checked = self.limits.accept(name, payload, received_at)
            except Rejected as exc:
                self.reject(exc)
                continue
            if checked is not None:
                accepted.append(checked)
        return self.store(accepted)

    def store(self, accepted: list[Accepted]) -> list[Stored]:
        """Store checked messages in one transaction, or one by one if the database refuses that."""
        if not accepted:
            return []
        try:
            return self._commit_retrying(accepted)
        except OperationalError as exc:
            # The database itself is away (or busy for seconds): no single message is to blame.
            log.error(
                "ingest of %d messages failed after %d attempts: %s", len(accepted), _ATTEMPTS, exc.orig
            )
            self.metrics.ingest_failed.inc(len(accepted))
            return []
        except Exception as exc:
            log.warning(
                "ingest batch of %d messages failed (%s: %s); storing them one by one",
                len(accepted),
                exc.__class__.__name__,
                str(exc).splitlines()[0][:300] if str(exc) else "",
            )
        stored: list[Stored] = []
        for one in accepted:
            try:
                stored += self._commit_retrying([one])
            except Exception as exc:
                self.reject(
                    Rejected(
                        one.device_id,
                        RejectReason.DB_ERROR,
                        f"{one.kind}: the database refused it: {exc.__class__.__name__}: "
                        f"{(str(exc).splitlines() or [''])[0][:300]}",
                    )
                )
        return stored

    def reject(self, exc: Rejected) -> None:
        """Count and log (at most once a minute per device) one dropped message."""
        self.metrics.messages_rejected.inc()
        self.metrics.ingest_rejected.labels(exc.reason.value).inc()
        self._warnings.warning(
            exc.device, "dropped a message from device %s (%s): %s", exc.device, exc.reason.value, exc.detail
        )

    def _commit_retrying(self, accepted: list[Accepted]) -> list[Stored]:
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return self.commit(accepted)
            except OperationalError as exc:
                # Replicas update the same device rows: PostgreSQL may pick this batch as a
                # deadlock victim, and SQLite may stay busy; the batch is safe to run again.
                if attempt == _ATTEMPTS:
                    raise
                log.warning("ingest batch failed (attempt %d of %d): %s", attempt, _ATTEMPTS, exc.orig)
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    def commit(self, accepted: list[Accepted]) -> list[Stored]:
        """THE commit point of ingest: one transaction for ``accepted``; returns what it stored.

        ``on_stored`` hears of it only once the transaction is committed.
        """
        tele = [(a.device_id, a.msg, a.received_at) for a in accepted if a.kind == "telemetry"]
        rest = [a for a in accepted if a.kind != "telemetry"]
        unknown: list[Accepted] = []
        #: messages refused inside the transaction; counted and logged only once it committed
        refused: list[tuple[Accepted, Rejected]] = []
        stored: list[Stored] = []
        changes: list[alert_store.Change] = []
        with self.db.session() as s:
            samples = telemetry.store_batch(s, tele) if tele else telemetry.StoredSamples()
            if tele and self.alert_limits is not None:
                # in the same transaction: an alert moves exactly when its window is stored
                changes = alert_store.evaluate(s, alert_store.windows_of(tele), self.alert_limits)
            stored += [Stored(d, "telemetry", seq) for d, seq in samples.keys]
            unknown += [a for a in accepted if a.kind == "telemetry" and a.device_id in samples.unknown]
            ids = {a.device_id for a in rest}
            devices = {d.id: d for d in s.scalars(select(Device).where(Device.id.in_(ids)))} if ids else {}
            events: list[dict[str, Any]] = []  # fleet/event_log.py rows: stored once each
            for a in rest:
                device = devices.get(a.device_id)
                if device is None:
                    unknown.append(a)
                    continue
                msg = a.msg
                if a.kind == "reported":
                    # What a report may change (never above the revision the fleet issued) is
                    # decided in one place: fleet.rollout.reports.
                    try:
                        reports.accept(device, msg, a.received_at, cut=self.limits.cut)
                    except Rejected as exc:
                        refused.append((a, exc))
                        continue
                elif a.kind == "status":
                    device.online = msg.state == "online"
                    device.status_at = a.received_at
                    device.last_seen = a.received_at
                elif a.kind == "events":
                    events.append(event_log.event_row(a.device_id, msg, a.received_at, cut=self.limits.cut))
                stored.append(Stored(a.device_id, a.kind, msg.seq if a.kind == "events" else None))
            if events:
                event_log.store_events(s, events)
        dropped = {id(a) for a in unknown} | {id(a) for a, _ in refused}
        for kind in ("telemetry", "reported", "status", "events"):
            n = sum(1 for a in accepted if a.kind == kind and id(a) not in dropped)
            if n:
                self.metrics.messages_ingested.labels(kind).inc(n)
        self.metrics.telemetry_stored.inc(samples.new)
        for a in unknown:
            self.reject(
                Rejected(a.device_id, RejectReason.UNKNOWN_DEVICE, f"{a.kind} from a device not registered")
            )
        for _, exc in refused:
            self.reject(exc)
        for c in changes:
            self.metrics.alert_changes.labels(c.rule, c.state).inc()
        if self.on_alerts is not None and changes:
            try:
                self.on_alerts(changes)
            except Exception:
                log.exception("the alert hook after an ingest commit failed")
        if self.on_stored is not None and stored:
            try:
                self.on_stored(stored)
            except Exception:  # stored is stored: a failing hook must not store it again
                log.exception("the hook after an ingest commit failed")
        return stored
