"""Alert changes to a webhook in Alertmanager's JSON format (version "4"), off the ingest thread.

Ingest only puts changes on a bounded queue (never waits); one sender thread posts them in
batches with a timeout and retries a failed POST with a growing pause. Past the queue's bound, or
after the last attempt, changes are dropped, counted and logged: a receiver that is down must
never hold up ingest or grow the fleet's memory.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from datetime import datetime, timezone
from typing import Any

import httpx

from fleet.alerts.store import AlertState, Change
from fleet.metrics import FleetMetrics
from fleet.ratelog import RateLimitedLog

log = logging.getLogger(__name__)
#: alerts per POST (Alertmanager's receivers take any number; this keeps a body small)
BATCH = 100
#: Alertmanager's "no end time" for an alert that is still firing
NO_END = "0001-01-01T00:00:00Z"


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_labels(c: Change) -> dict[str, str]:
    return {
        "alertname": f"EdgefleetModel{c.rule.capitalize()}",
        "rule": c.rule,
        "device_id": c.device_id,
        "model": c.model,
        "version": c.version,
        "severity": "warning",
    }


def alertmanager_alert(c: Change, base_url: str) -> dict[str, Any]:
    labels = alert_labels(c)
    resolved = c.state == AlertState.RESOLVED.value
    return {
        "status": "resolved" if resolved else "firing",
        "labels": labels,
        "annotations": {
            "summary": f"{c.rule} on {c.device_id}: {c.model} {c.version}",
            "description": f"value {c.value:.4g}, threshold {c.threshold:.4g}"
            + (f" ({c.detail})" if c.detail else ""),
            "value": f"{c.value:.6g}",
            "threshold": f"{c.threshold:.6g}",
        },
        "startsAt": rfc3339(c.started_at),
        "endsAt": rfc3339(c.since) if resolved else NO_END,
        "generatorURL": f"{base_url}/api/v1/alerts?device_id={c.device_id}",
        "fingerprint": hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16],
    }


def alertmanager_payload(changes: list[Change], base_url: str) -> dict[str, Any]:
    """Alertmanager's webhook body (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config)."""
    alerts = [alertmanager_alert(c, base_url) for c in changes]
    firing = any(a["status"] == "firing" for a in alerts)
    common = (
        {k: v for k, v in alerts[0]["labels"].items() if all(a["labels"].get(k) == v for a in alerts)}
        if alerts
        else {}
    )
    return {
        "version": "4",
        "groupKey": '{}:{alertname=~"EdgefleetModel.*"}',
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": "edgefleet",
        "groupLabels": {},
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": base_url,
        "alerts": alerts,
    }


class AlertWebhook:
    """A bounded queue of alert changes and the thread that POSTs them."""

    def __init__(
        self,
        url: str,
        metrics: FleetMetrics,
        *,
        base_url: str = "",
        timeout_s: float = 5.0,
        max_queue: int = 1000,
        attempts: int = 5,
        backoff_s: float = 0.5,
    ) -> None:
        self.url = url
        self.metrics = metrics
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._queue: queue.Queue[Change] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warnings = RateLimitedLog(log)

    def notify(self, changes: list[Change]) -> None:
        """Queue ``changes`` for sending; never blocks (past the bound they are dropped and counted)."""
        for c in changes:
            try:
                self._queue.put_nowait(c)
            except queue.Full:
                self.metrics.alert_webhook.labels("dropped").inc()
                self._warnings.warning(
                    "queue", "alert webhook queue full (%d): change dropped", self._queue.maxsize
                )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 2)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
            while not self._stop.is_set():
                try:
                    batch = [self._queue.get(timeout=0.25)]
                except queue.Empty:
                    continue
                while len(batch) < BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                self._send(client, batch)

    def _send(self, client: httpx.Client, batch: list[Change]) -> None:
        body = alertmanager_payload(batch, self.base_url)
        for attempt in range(1, self.attempts + 1):
            try:
                r = client.post(self.url, json=body)
                if r.status_code < 300:
                    self.metrics.alert_webhook.labels("sent").inc(len(batch))
                    return
                why = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                why = f"{exc.__class__.__name__}: {exc}"
            if attempt < self.attempts and self._stop.wait(self.backoff_s * 2 ** (attempt - 1)):
                break  # stopping: give up now rather than hold the fleet's shutdown
        self.metrics.alert_webhook.labels("dropped").inc(len(batch))
        self._warnings.warning(
            "send",
            "alert webhook %s failed %d times (%s): %d change(s) dropped",
            self.url,
            self.attempts,
            why,
            len(batch),
        )
