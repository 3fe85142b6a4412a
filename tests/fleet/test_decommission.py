"""Decommission revokes a device's tokens and broker account; a device token downloads only its own bundles."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

from fleet.db.models import BundleDownload
from fleet.mqtt.broker import RECHECK_S
from sdk.fleet_client import FleetClient
from sdk.messages import DesiredState, parse_message
from sdk.topics import topic
from tests.fleet.conftest import LiveFleet
from tests.support.bundles import make_bundle
from tests.support.fleet_proc import admin_token, run_fleet, serve_args
from tests.support.mosquitto import DYNSEC_PLUGIN, free_port, run_mosquitto
from tests.support.waiting import wait_until


def download(live: LiveFleet, token: str, bundle_id: str) -> httpx.Response:
    with live.http(token) as c:
        return c.get(f"/api/v1/bundles/{bundle_id}/download")


def test_a_decommissioned_device_token_is_dead_and_not_inherited(live_fleet: LiveFleet) -> None:
    b = live_fleet.upload()
    old = live_fleet.register("cam-1")
    live_fleet.give(b["id"], "cam-1")
    assert download(live_fleet, old["token"], b["id"]).status_code == 200
    with live_fleet.http() as admin:
        # the device is in a rollout: its progress there goes with it
        assert admin.delete("/api/v1/devices/cam-1").status_code == 204
        assert admin.get("/api/v1/devices/cam-1").status_code == 404
    r = download(live_fleet, old["token"], b["id"])
    assert r.status_code == 401 and "revoked" in r.json()["error"]
    # the fleet's evidence of what the old device fetched goes too: a successor must fetch for itself
    with live_fleet.ctx.db.session() as s:
        assert s.scalars(select(BundleDownload).where(BundleDownload.device_id == "cam-1")).all() == []
    # registered again under the same id: new credentials, and the old token stays dead
    new = live_fleet.register("cam-1")
    assert new["token"] != old["token"] and new["mqtt_password"] != old["mqtt_password"]
    live_fleet.give(b["id"], "cam-1")
    assert download(live_fleet, new["token"], b["id"]).status_code == 200
    assert download(live_fleet, old["token"], b["id"]).status_code == 401
    with live_fleet.http(old["token"]) as gone:
        assert gone.get("/api/v1/devices/cam-1").status_code == 401
    with live_fleet.http() as admin:
        tokens = admin.get("/api/v1/tokens", params={"device_id": "cam-1"}).json()
        assert [(t["id"], t["revoked"]) for t in tokens] == [
            (old["token"].split("_")[1], True),
            (new["token"].split("_")[1], False),
        ]
        entry = admin.get("/api/v1/audit", params={"action": "device.delete"}).json()["entries"][0]
        assert entry["target"] == "cam-1" and entry["detail"]["revoked_tokens"] == [tokens[0]["id"]]


def test_a_device_token_downloads_only_what_its_desired_state_names(live_fleet: LiveFleet) -> None:
    b1 = live_fleet.upload(version="1.0.0")
    b2 = live_fleet.upload(version="2.0.0")
    cam1 = live_fleet.register("cam-1")["token"]
    cam2 = live_fleet.register("cam-2")["token"]
    rollout = live_fleet.give(b1["id"], "cam-1")
    assert download(live_fleet, cam1, b1["id"]).status_code == 200
    refused = download(live_fleet, cam1, b2["id"])
    assert (
        refused.status_code == 403 and "not in the desired state of device cam-1" in refused.json()["error"]
    )
    assert download(live_fleet, cam2, b1["id"]).status_code == 403
    assert download(live_fleet, live_fleet.admin_token, b2["id"]).status_code == 200
    # rolled back: the device's desired state no longer names the bundle
    with live_fleet.http() as admin:
        assert admin.post(f"/api/v1/rollouts/{rollout}/rollback").status_code == 200
    assert download(live_fleet, cam1, b1["id"]).status_code == 403


class Session:
    """One MQTT login that subscribes to its own desired state and keeps what arrives."""

    def __init__(self, port: int, username: str, password: str, protocol: int = paho.MQTTv311) -> None:
        self.desired: list[DesiredState] = []
        self.connects: list[bool] = []
        self.disconnects = 0
        self.username = username
        # A device's client id is its username: both brokers refuse any other (finding 6).
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=username, protocol=protocol)
        self.c.username_pw_set(username, password)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *_a: setattr(self, "disconnects", self.disconnects + 1)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        wait_until(lambda: self.connects, what=f"a CONNACK for {username}")

    def _on_connect(self, client, _u, _f, reason, _p=None) -> None:  # type: ignore[no-untyped-def]
        self.connects.append(not reason.is_failure)
        if not reason.is_failure:
            client.subscribe(topic("desired", self.username), 1)

    def _on_message(self, _c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        if msg.payload:  # empty: the retained desired state was cleared (as the agent reads it)
            self.desired.append(parse_message(DesiredState, msg.payload))

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.mqtt
def test_embedded_broker_refuses_a_decommissioned_session(tmp_path: Path, signing_key: object) -> None:
    mport = free_port()
    args = ["up", "--mqtt-listen", f"127.0.0.1:{mport}", "--data-dir", str(tmp_path / "data")]
    args += ["--trust-key", str(tmp_path / "keys" / "signing.pub")]
    with run_fleet(tmp_path / "run", args) as fleet:
        api = FleetClient(fleet.url, fleet.stdout_path.read_text().splitlines()[-1])
        bundle = api.upload_bundle(make_bundle(tmp_path / "b", signing_key))  # type: ignore[arg-type]
        old = api.register_device("d0", profile="x86-server")
        stale = Session(mport, "d0", old.mqtt_password)
        assert stale.connects == [True]
        # the old d0 had desired revisions 1 (a rollout) and 2 (its roll back)
        first = api.create_rollout(bundle["id"], selector={"device_ids": ["d0"]})
        wait_until(
            lambda: [d.revision for d in stale.desired] == [1], what="the old d0's first desired state"
        )
        api.rollback(first["id"])
        wait_until(lambda: [d.revision for d in stale.desired] == [1, 2], what="the old d0's roll back")
        api.delete_device("d0")
        new = api.register_device("d0", profile="x86-server")
        time.sleep(RECHECK_S + 0.5)  # the broker trusts a live login this long before asking again
        refused = Session(mport, "d0", old.mqtt_password)
        refused.close()
        assert refused.connects[0] is False
        fresh = Session(mport, "d0", new.mqtt_password)
        time.sleep(0.5)
        assert fresh.desired == []  # no retained desired state of the device that was deleted
        api.create_rollout(bundle["id"], selector={"device_ids": ["d0"]})
        # revision 1 again: a new device, and the fleet does not hold it back as older than 2
        wait_until(lambda: [d.revision for d in fresh.desired] == [1], what="the new d0's desired state")
        time.sleep(0.5)
        # the session of the device that was deleted gets nothing meant for its successor
        assert [d.revision for d in stale.desired] == [1, 2]
        for s in (stale, fresh):
            s.close()
        api.close()


@pytest.mark.mqtt
@pytest.mark.skipif(not os.path.exists(DYNSEC_PLUGIN), reason="no Mosquitto dynamic security plugin")
def test_decommission_removes_the_mosquitto_account(tmp_path: Path, signing_key: object) -> None:
    with run_mosquitto(tmp_path / "mq", dynsec_admin=("fleet-admin", "fleet-secret")) as broker:
        db = f"sqlite:///{tmp_path / 'fleet.db'}"
        args = serve_args(
            tmp_path, db, broker.url, "--broker-accounts", "dynsec", "--broker-username", "fleet-admin"
        )
        token = admin_token(db)
        with run_fleet(tmp_path / "fleet", args, env={"EDGEFLEET_BROKER_PASSWORD": "fleet-secret"}) as fleet:
            api = FleetClient(fleet.url, token)
            creds = api.register_device("dev-a")
            live = Session(broker.port, "dev-a", creds.mqtt_password, paho.MQTTv5)
            assert live.connects == [True]
            api.delete_device("dev-a")
            # the broker drops the live session and refuses the old password from then on
            wait_until(lambda: live.disconnects > 0, what="the broker dropping dev-a")
            live.close()
            refused = Session(broker.port, "dev-a", creds.mqtt_password, paho.MQTTv5)
            refused.close()
            assert refused.connects[0] is False
            again = Session(broker.port, "dev-a", api.register_device("dev-a").mqtt_password, paho.MQTTv5)
            again.close()
            assert again.connects == [True]
            api.close()
