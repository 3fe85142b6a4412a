"""Finding 1 reproduced end to end: ``edge-fleet serve`` on a real Mosquitto, devices on paho.

One device publishes a telemetry ``seq`` no database column holds every 250 ms; before the fix
each of its messages failed the whole ingest batch, and another device's telemetry was stored
0 times out of 40, its reports and status lost with it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sdk.messages import ModelTelemetry, ReportedState, Status, Telemetry
from sdk.topics import topic
from tests.support.fleet_proc import admin_token, run_fleet, serve_args
from tests.support.mosquitto import Mosquitto
from tests.support.postgres import temporary_database

pytestmark = pytest.mark.mqtt


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fleet_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
    else:
        with temporary_database() as url:
            yield url


@contextmanager
def device_connection(broker: Mosquitto) -> Iterator[paho.Client]:
    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        yield c
    finally:
        c.disconnect()
        c.loop_stop()


def rejected(metrics: str, reason: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f'edgefleet_ingest_rejected_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_device_sending_an_impossible_seq_never_stops_the_others(
    fleet_db: str, tmp_path: Path, mosquitto: Mosquitto, signing_key: object
) -> None:
    token = admin_token(fleet_db)
    with run_fleet(tmp_path / "fleet", serve_args(tmp_path, fleet_db, mosquitto.url)) as fleet:
        api = httpx.Client(base_url=fleet.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        for device_id in ("good", "bad"):
            r = api.post("/api/v1/devices", json={"device_id": device_id, "profile": "x86-server"})
            assert r.status_code == 201, r.text
        stop = threading.Event()
        bad_sent = 0

        with device_connection(mosquitto) as c:

            def flood() -> None:
                nonlocal bad_sent
                for seq in (2**63, 2**31) * 1000:  # past SQLite's INTEGER, past PostgreSQL's
                    if stop.is_set():
                        return
                    payload = b'{"schema": 1, "seq": %d, "time": %f, "interval_s": 1}' % (seq, time.time())
                    c.publish(topic("telemetry", "bad"), payload, qos=1)
                    bad_sent += 1
                    stop.wait(0.25)

            flooder = threading.Thread(target=flood, daemon=True)
            flooder.start()
            try:
                time.sleep(0.5)
                c.publish(topic("status", "good"), Status(state="online").to_bytes(), qos=1, retain=True)
                for seq in range(40):
                    sample = Telemetry(
                        seq=seq,
                        interval_s=1,
                        models=[ModelTelemetry(name="m", version="1", requests=5, errors=0)],
                    )
                    c.publish(topic("telemetry", "good"), sample.to_bytes(), qos=1)
                    if seq % 10 == 9:
                        report = ReportedState(revision=0, agent_version=f"good-{seq}")
                        c.publish(topic("reported", "good"), report.to_bytes(), qos=1, retain=True)
                    time.sleep(0.05)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    health = api.get("/api/v1/devices/good/health", params={"window_s": 1e6}).json()
                    if health["samples"] == 40:
                        break
                    time.sleep(0.2)
            finally:
                stop.set()
                flooder.join(5)

        assert health["samples"] == 40 and health["requests"] == 200, health
        good = api.get("/api/v1/devices/good").json()
        assert good["online"] is True and good["agent_version"] == "good-39"
        assert bad_sent >= 4
        deadline = time.monotonic() + 10
        while rejected(api.get("/metrics").text, "invalid") < bad_sent and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rejected(api.get("/metrics").text, "invalid") == bad_sent
        # named, with its reason, at WARNING; once a minute however fast it floods
        lines = [line for line in fleet.log.splitlines() if "from device bad (invalid)" in line]
        assert len(lines) == 1 and "WARNING" in lines[0] and "seq" in lines[0], fleet.log[-3000:]


def _db_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def test_a_device_flooding_large_events_cannot_grow_the_database(
    tmp_path: Path, mosquitto: Mosquitto, signing_key: object
) -> None:
    """Finding 8: 100 events of 1 MiB from one device grew the database by 159 MiB in 6 s."""
    db_path = tmp_path / "fleet.db"
    db = f"sqlite:///{db_path}"
    token = admin_token(db)
    # The broker refuses anything over 256 KiB itself (tests/fleet/test_mqtt_limits.py): this fleet's
    # own limit is set lower, so that its check is what the 220 KiB events meet.
    env = {"EDGEFLEET_MQTT_MAX_MESSAGE_KB": "200"}
    with run_fleet(tmp_path / "fleet", serve_args(tmp_path, db, mosquitto.url), env=env) as fleet:
        api = httpx.Client(base_url=fleet.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert (
            api.post("/api/v1/devices", json={"device_id": "loud", "profile": "x86-server"}).status_code
            == 201
        )
        before = _db_bytes(db_path)
        with device_connection(mosquitto) as c:
            for i in range(100):
                big = b'{"schema": 1, "kind": "failure", "ok": false, "reason": "%s"}' % (b"x" * 220 * 1024)
                c.publish(topic("events", "loud"), big, qos=1)
                long = b'{"schema": 1, "kind": "failure", "ok": false, "reason": "%d%s"}' % (
                    i,
                    b"y" * 100_000,
                )
                c.publish(topic("events", "loud"), long, qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            metrics = api.get("/metrics").text
            stored = sum(
                float(line.split()[-1])
                for line in metrics.splitlines()
                if line.startswith('edgefleet_mqtt_messages_ingested_total{kind="events"}')
            )
            if rejected(metrics, "oversize") == 100 and stored == 100:
                break
            time.sleep(0.2)
        assert rejected(metrics, "oversize") == 100 and stored == 100, metrics
        health = api.get("/api/v1/devices/loud/health").json()
        newest = health["recent_events"][0]["reason"]
        assert newest.startswith("99yyy") and len(newest) < 2100
        grown = _db_bytes(db_path) - before
        assert grown < 5 * 1024 * 1024, f"the database grew by {grown} bytes"
