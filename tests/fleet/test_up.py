"""``edge-fleet up`` as a user runs it: embedded amqtt broker with per-device logins and topic ACL."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sdk import keys
from sdk.messages import DesiredState, ReportedModel, ReportedState, Status, parse_message
from sdk.topics import topic
from tests.support.bundles import make_bundle
from tests.support.fleet_proc import BIN, run_fleet
from tests.support.mosquitto import free_port
from tests.support.waiting import wait_until as wait


class Device:
    """A minimal device on the broker: its login, its desired state, its reports."""

    def __init__(self, port: int, username: str, password: str, client_id: str | None = None) -> None:
        self.desired: list[DesiredState] = []
        self.other: list[str] = []
        self.refused: int | None = None
        self.c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or username, protocol=paho.MQTTv311
        )
        self.c.username_pw_set(username, password)
        self.c.will_set(topic("status", username), Status(state="offline").to_bytes(), qos=1, retain=True)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.username = username
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_connect(self, client, _u, _f, reason, _p=None) -> None:  # type: ignore[no-untyped-def]
        if reason.is_failure:
            self.refused = reason.value
            return
        client.subscribe(topic("desired", self.username), 1)

    def _on_message(self, _c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        if msg.topic == topic("desired", self.username):
            self.desired.append(parse_message(DesiredState, msg.payload))
        else:
            self.other.append(msg.topic)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.mqtt
def test_up_serves_api_broker_and_per_device_acl(tmp_path: Path, signing_key) -> None:  # type: ignore[no-untyped-def]
    mport = free_port()
    args = [
        "up",
        "--mqtt-listen",
        f"127.0.0.1:{mport}",
        "--data-dir",
        str(tmp_path / "data"),
        "--trust-key",
        str(tmp_path / "keys" / "signing.pub"),
    ]
    with run_fleet(tmp_path / "run", args) as fleet:
        out = fleet.stdout_path.read_text().splitlines()
        assert any(f"{fleet.url}/" in line for line in out) and any(f":{mport}" in line for line in out)
        token = out[-1]
        assert token.startswith("ef_")
        h = {"Authorization": f"Bearer {token}"}
        api = httpx.Client(base_url=fleet.url, headers=h, timeout=10)
        creds = [
            api.post("/api/v1/devices", json={"device_id": f"d{i}", "profile": "x86-server"}).json()
            for i in range(3)
        ]
        # the fleet key `up` created on first start is pinned in every device's credentials
        assert creds[0]["fleet_key"] and creds[0]["fleet_key"] == creds[1]["fleet_key"]
        bundle = make_bundle(tmp_path / "b", signing_key, version="1.0.0")
        with open(bundle, "rb") as f:
            b = api.post("/api/v1/bundles", files={"file": (bundle.name, f)}).json()

        bad = Device(mport, "d0", "wrong-password", client_id="bad")
        wait(lambda: bad.refused is not None)
        bad.close()

        d0 = Device(mport, "d0", creds[0]["mqtt_password"])
        d1 = Device(mport, "d1", creds[1]["mqtt_password"])
        # d1 tries to read d0's desired state and to report for d0: the broker refuses both
        d1.c.subscribe(topic("desired", "d0"), 1)
        d1.c.publish(
            topic("reported", "d0"), ReportedState(revision=99, agent_version="evil").to_bytes(), qos=1
        )
        d0.c.publish(topic("status", "d0"), Status(state="online").to_bytes(), qos=1, retain=True)
        wait(lambda: api.get("/api/v1/devices/d0").json()["online"])

        r = api.post("/api/v1/rollouts", json={"bundle_id": b["id"], "selector": {"device_ids": ["d0"]}})
        assert r.status_code == 201, r.text
        wait(lambda: len(d0.desired) == 1)
        assert d0.desired[0].models[0].version == "1.0.0"
        pinned = keys.public_key_from_b64(creds[0]["fleet_key"])
        assert d0.desired[0].key_id == keys.key_id(pinned) and d0.desired[0].device_id == "d0"
        # the device downloads its bundle with its own token (the fleet believes "active" only then)
        dl = httpx.get(
            d0.desired[0].models[0].bundle_url, headers={"Authorization": f"Bearer {creds[0]['token']}"}
        )
        assert dl.status_code == 200 and len(dl.content) == b["size"]
        d0.c.publish(
            topic("reported", "d0"),
            ReportedState(
                revision=d0.desired[0].revision,
                agent_version="t",
                models=[ReportedModel(name="tiny", version="1.0.0", state="active")],
            ).to_bytes(),
            qos=1,
            retain=True,
        )
        wait(lambda: api.get(f"/api/v1/rollouts/{r.json()['id']}").json()["state"] == "succeeded")
        # a device cannot write its own desired state (only the fleet can)
        d0.c.publish(topic("desired", "d0"), b'{"schema":1,"revision":99,"models":[]}', qos=1, retain=True)
        # a device connecting now, when d0 has a retained desired state and status, gets none of them
        late = Device(mport, "d2", creds[2]["mqtt_password"])
        time.sleep(0.5)
        assert d1.other == [] and d1.desired == []
        assert [m.revision for m in d0.desired] == [1]
        assert late.other == [] and late.desired == []
        late.close()
        assert api.get("/api/v1/devices/d0").json()["reported_revision"] == 1
        # the last will marks a vanished device offline
        d0.c.socket().close()
        wait(lambda: not api.get("/api/v1/devices/d0").json()["online"], timeout=20)
        d1.close()


def test_up_names_a_taken_port_and_its_flag(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [
                str(BIN),
                "up",
                "--listen",
                f"127.0.0.1:{port}",
                "--mqtt-listen",
                f"127.0.0.1:{free_port()}",
                "--data-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert (
        lines[-1]
        == f"edge-fleet: error: port 127.0.0.1:{port} is already in use; pick another with --listen HOST:PORT"
    )
    assert len(lines) == 1, r.stderr
