"""Alerts reach a webhook in Alertmanager's JSON format: devices publish telemetry to a real
Mosquitto, the fleet ingests it, and a real HTTP receiver on loopback gets the alerts (after a
failed first POST, which the fleet retries). A receiver that is gone never holds up ingest."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from fleet import auth
from fleet.alerts.store import Change
from fleet.alerts.webhook import AlertWebhook
from fleet.app import create_app
from fleet.metrics import FleetMetrics
from fleet.settings import FleetSettings
from sdk import keys
from tests.fleet.monitoring import MEASURED, Sender
from tests.support.bundles import make_bundle
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.waiting import wait_until


class Receiver:
    """An HTTP receiver on loopback that answers its first ``fail_first`` POSTs with 503."""

    def __init__(self, fail_first: int) -> None:
        self.bodies: list[dict] = []
        self.posts = 0
        self.fail_first = fail_first
        self.lock = threading.Lock()


@contextmanager
def receiver(fail_first: int = 0) -> Iterator[tuple[str, Receiver]]:
    state = Receiver(fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.posts += 1
                failing = state.posts <= state.fail_first
                if not failing:
                    state.bodies.append(json.loads(body))
            self.send_response(503 if failing else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", state
    finally:
        server.shutdown()
        server.server_close()


pytestmark = pytest.mark.mqtt


def test_a_drift_alert_reaches_the_webhook_as_alertmanager_json(
    tmp_path: Path, mosquitto: Mosquitto, signing_key: keys.Ed25519PrivateKey
) -> None:
    with receiver(fail_first=1) as (url, got):
        settings = FleetSettings(
            db_url=f"sqlite:///{tmp_path / 'fleet.db'}",
            broker_url=mosquitto.url,
            storage=str(tmp_path / "store"),
            trust_keys=[tmp_path / "keys" / "signing.pub"],
            controller_interval_s=0,
            ingest_max_wait_s=0.02,
            alert_webhook_url=url,
            alert_webhook_timeout_s=2,
        )
        with TestClient(create_app(settings)) as client:
            ctx = client.app.state.fleet  # type: ignore[attr-defined]
            with ctx.db.session() as s:
                admin = {"Authorization": f"Bearer {auth.create_token(s, 'admin')}"}
            path = make_bundle(tmp_path / "src", signing_key, version="1.0.0", metrics=MEASURED)
            with open(path, "rb") as f:
                assert (
                    client.post("/api/v1/bundles", files={"file": (path.name, f)}, headers=admin).status_code
                    == 201
                )
            r = client.post(
                "/api/v1/devices", json={"device_id": "ward-3", "profile": "x86-server"}, headers=admin
            )
            assert r.status_code == 201, r.text

            device = paho.Client(CallbackAPIVersion.VERSION2, client_id="ward-3")
            device.connect(mosquitto.host, mosquitto.port)
            device.loop_start()
            try:
                sender = Sender("ward-3")
                for psi in (0.05, 0.7, 0.9):
                    name, payload = sender.window(psi=psi)
                    device.publish(name, payload, qos=1).wait_for_publish(5)
                wait_until(lambda: got.bodies, timeout=20, what="the webhook to receive an alert")
                name, payload = sender.window(psi=0.02)
                device.publish(name, payload, qos=1).wait_for_publish(5)
                wait_until(lambda: len(got.bodies) >= 2, timeout=20, what="the resolved alert")
            finally:
                device.disconnect()
                device.loop_stop()
            assert got.posts == 3  # the first POST failed (503) and was sent again
            firing, resolved = got.bodies
            assert (
                firing["version"] == "4"
                and firing["status"] == "firing"
                and firing["receiver"] == "edgefleet"
            )
            (alert,) = firing["alerts"]
            assert alert["status"] == "firing" and alert["endsAt"] == "0001-01-01T00:00:00Z"
            assert alert["labels"] == {
                "alertname": "EdgefleetModelDrift",
                "rule": "drift",
                "device_id": "ward-3",
                "model": "tiny",
                "version": "1.0.0",
                "severity": "warning",
            }
            assert alert["annotations"]["value"] == "0.9" and alert["annotations"]["threshold"] == "0.25"
            assert alert["startsAt"].endswith("Z") and firing["commonLabels"]["device_id"] == "ward-3"
            assert resolved["status"] == "resolved"
            assert resolved["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
            assert resolved["alerts"][0]["fingerprint"] == alert["fingerprint"]
            listed = client.get("/api/v1/alerts", headers=admin).json()
            assert [(a["rule"], a["state"]) for a in listed] == [("drift", "resolved")]
            sent = client.get("/metrics").text
            assert 'edgefleet_alert_webhook_changes_total{outcome="sent"} 2.0' in sent


def test_a_full_queue_drops_changes_without_waiting() -> None:
    metrics = FleetMetrics()
    hook = AlertWebhook(f"http://127.0.0.1:{free_port()}/gone", metrics, max_queue=3)  # never started
    change = Change("drift", "firing", "d0", "tiny", "1", 0.9, 0.25, None, time.time(), time.time())
    hook.notify([change] * 10)  # a put that waited for room would hang here: nothing takes from the queue
    assert 'edgefleet_alert_webhook_changes_total{outcome="dropped"} 7.0' in metrics.render().decode()
