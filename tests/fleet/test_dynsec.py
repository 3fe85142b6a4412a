"""Device broker accounts on Mosquitto's dynamic security plugin: each device only under its own topics."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sdk.fleet_client import FleetClient
from sdk.messages import DesiredState, ReportedModel, ReportedState, parse_message
from sdk.topics import topic
from tests.support.bundles import make_bundle
from tests.support.fleet_proc import admin_token, run_fleet, serve_args
from tests.support.mosquitto import DYNSEC_PLUGIN, run_mosquitto

pytestmark = pytest.mark.mqtt


def connect(port: int, user: str, password: str) -> tuple[paho.Client, dict]:
    seen: dict = {"rc": None, "msgs": []}
    # a device account's client id is pinned to its username (see tests/fleet/test_clientid.py)
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=paho.MQTTv5)
    c.username_pw_set(user, password)
    c.on_connect = lambda _c, _u, _f, rc, _p=None: seen.__setitem__("rc", rc)
    c.on_message = lambda _c, _u, m: seen["msgs"].append((m.topic, m.payload))
    c.connect("127.0.0.1", port)
    c.loop_start()
    deadline = time.monotonic() + 5
    while seen["rc"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return c, seen


@pytest.mark.skipif(not os.path.exists(DYNSEC_PLUGIN), reason="no Mosquitto dynamic security plugin")
def test_registration_creates_a_confined_broker_account(tmp_path: Path, signing_key) -> None:  # type: ignore[no-untyped-def]
    with run_mosquitto(tmp_path / "mq", dynsec_admin=("fleet-admin", "fleet-secret")) as broker:
        db = f"sqlite:///{tmp_path / 'fleet.db'}"
        token = admin_token(db)
        args = serve_args(
            tmp_path, db, broker.url, "--broker-accounts", "dynsec", "--broker-username", "fleet-admin"
        )
        with run_fleet(tmp_path / "fleet", args, env={"EDGEFLEET_BROKER_PASSWORD": "fleet-secret"}) as fleet:
            api = FleetClient(fleet.url, token)
            a = api.register_device("dev-a", profile="x86-server")
            b = api.register_device("dev-b")
            bad, seen_bad = connect(broker.port, "dev-a", "wrong")
            assert seen_bad["rc"] is not None and seen_bad["rc"].is_failure
            bad.loop_stop()

            ca, seen_a = connect(broker.port, "dev-a", a.mqtt_password)
            cb, seen_b = connect(broker.port, "dev-b", b.mqtt_password)
            assert not seen_a["rc"].is_failure and not seen_b["rc"].is_failure
            ca.subscribe(topic("desired", "dev-a"), 1)
            cb.subscribe(topic("desired", "dev-a"), 1)  # not dev-b's topic: denied
            cb.subscribe("edgefleet/v1/devices/#", 1)  # denied
            time.sleep(0.5)
            bundle = api.upload_bundle(make_bundle(tmp_path / "b", signing_key))
            rollout = api.create_rollout(bundle["id"], selector={"device_ids": ["dev-a"]})
            deadline = time.monotonic() + 10
            while not seen_a["msgs"] and time.monotonic() < deadline:
                time.sleep(0.05)
            desired = parse_message(DesiredState, seen_a["msgs"][0][1])
            # dev-b forges a report for dev-a: the broker drops it
            forged = ReportedState(
                revision=desired.revision,
                agent_version="forged",
                models=[ReportedModel(name="tiny", version="1.0.0", state="failed")],
            )
            cb.publish(topic("reported", "dev-a"), forged.to_bytes(), qos=1)
            time.sleep(1.0)
            assert api.rollout(rollout["id"])["state"] == "running"
            # dev-a fetches its bundle with its own token, then reports it active
            fetched = httpx.get(desired.models[0].bundle_url, headers={"Authorization": f"Bearer {a.token}"})
            assert fetched.status_code == 200
            real = ReportedState(
                revision=desired.revision,
                agent_version="real",
                models=[ReportedModel(name="tiny", version="1.0.0", state="active")],
            )
            ca.publish(topic("reported", "dev-a"), real.to_bytes(), qos=1, retain=True)
            deadline = time.monotonic() + 10
            while api.rollout(rollout["id"])["state"] != "succeeded" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert api.rollout(rollout["id"])["state"] == "succeeded"
            # a device cannot write its own desired state (only the fleet can)
            ca.publish(
                topic("desired", "dev-a"), b'{"schema":1,"revision":99,"models":[]}', qos=1, retain=True
            )
            time.sleep(0.5)
            assert all(parse_message(DesiredState, p).revision == desired.revision for _, p in seen_a["msgs"])
            assert api.device("dev-a")["agent_version"] == "real"
            assert seen_b["msgs"] == []
            for c in (ca, cb):
                c.disconnect()
                c.loop_stop()
