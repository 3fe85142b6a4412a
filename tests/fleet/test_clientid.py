"""Finding 6: a device that connects with another device's client id must not knock it off the broker.

On Mosquitto (dynamic security pins each device account's client id) and on the embedded amqtt
broker of ``edge-fleet up`` (the login is checked before the session of that client id is touched).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sdk.fleet_client import FleetClient
from sdk.messages import Status
from sdk.topics import topic
from tests.support.fleet_proc import admin_token, run_fleet, serve_args
from tests.support.mosquitto import DYNSEC_PLUGIN, free_port, run_mosquitto
from tests.support.waiting import wait_until

pytestmark = pytest.mark.mqtt
ATTEMPTS = 20


class Victim:
    """A device that stays connected and counts every time the broker drops it."""

    def __init__(self, port: int, device_id: str, password: str) -> None:
        self.drops = 0
        self.connected = threading.Event()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=paho.MQTTv311)
        self.c.username_pw_set(device_id, password)
        self.c.will_set(topic("status", device_id), Status(state="offline").to_bytes(), qos=1, retain=True)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.device_id = device_id
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(10), "the victim could not connect"

    def _on_connect(self, client, _u, _f, reason, _p=None) -> None:  # type: ignore[no-untyped-def]
        if not reason.is_failure:
            client.publish(topic("status", self.device_id), Status(state="online").to_bytes(), 1, retain=True)
            self.connected.set()

    def _on_disconnect(self, *_args) -> None:  # type: ignore[no-untyped-def]
        self.drops += 1
        self.connected.clear()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def attack(port: int, username: str, password: str, client_id: str) -> bool:
    """Connect as ``username`` with ``client_id``; True when the broker accepted the connection."""
    result: dict[str, bool] = {}
    done = threading.Event()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
    c.username_pw_set(username, password)

    def on_connect(_c, _u, _f, reason, _p=None) -> None:  # type: ignore[no-untyped-def]
        result["accepted"] = not reason.is_failure
        done.set()

    def on_disconnect(*_args) -> None:  # type: ignore[no-untyped-def]
        result.setdefault("accepted", False)
        done.set()

    c.on_connect = on_connect
    c.on_disconnect = on_disconnect
    try:
        c.connect("127.0.0.1", port, keepalive=30)
    except OSError:
        return False
    c.loop_start()
    done.wait(5)
    c.disconnect()
    c.loop_stop()
    return result.get("accepted", False)


def assert_victim_holds(port: int, api: FleetClient, victim: Victim, attacker: str, attacker_pw: str) -> None:
    accepted = [attack(port, attacker, attacker_pw, victim.device_id) for _ in range(ATTEMPTS)]
    # the victim's own name with a wrong password must not take its session either
    accepted += [attack(port, victim.device_id, "wrong", victim.device_id) for _ in range(3)]
    time.sleep(1.0)  # a take-over shows as a disconnect callback on the victim
    assert accepted.count(True) == 0, f"{accepted.count(True)} of {len(accepted)} attacks were let in"
    assert victim.drops == 0 and victim.c.is_connected(), f"the victim was dropped {victim.drops} times"
    wait_until(lambda: api.device(victim.device_id)["online"], what="the fleet to see the victim online")
    time.sleep(0.5)
    assert api.device(victim.device_id)["online"]
    # the attacker still connects normally under its own id
    assert attack(port, attacker, attacker_pw, attacker)


@pytest.mark.skipif(not os.path.exists(DYNSEC_PLUGIN), reason="no Mosquitto dynamic security plugin")
def test_mosquitto_refuses_another_devices_client_id(tmp_path: Path, signing_key) -> None:  # type: ignore[no-untyped-def]
    with run_mosquitto(tmp_path / "mq", dynsec_admin=("fleet-admin", "fleet-secret")) as broker:
        db = f"sqlite:///{tmp_path / 'fleet.db'}"
        token = admin_token(db)
        args = serve_args(
            tmp_path, db, broker.url, "--broker-accounts", "dynsec", "--broker-username", "fleet-admin"
        )
        with run_fleet(tmp_path / "fleet", args, env={"EDGEFLEET_BROKER_PASSWORD": "fleet-secret"}) as fleet:
            api = FleetClient(fleet.url, token)
            victim_creds = api.register_device("victim")
            attacker_creds = api.register_device("attacker")
            victim = Victim(broker.port, "victim", victim_creds.mqtt_password)
            try:
                assert_victim_holds(broker.port, api, victim, "attacker", attacker_creds.mqtt_password)
            finally:
                victim.close()


def test_embedded_broker_refuses_another_devices_client_id(tmp_path: Path) -> None:
    mport = free_port()
    args = ["up", "--mqtt-listen", f"127.0.0.1:{mport}", "--data-dir", str(tmp_path / "data")]
    with run_fleet(tmp_path / "run", args) as fleet:
        api = FleetClient(fleet.url, fleet.stdout_path.read_text().split()[-1])
        victim_creds = api.register_device("victim")
        attacker_creds = api.register_device("attacker")
        victim = Victim(mport, "victim", victim_creds.mqtt_password)
        try:
            assert_victim_holds(mport, api, victim, "attacker", attacker_creds.mqtt_password)
        finally:
            victim.close()


def test_password_file_mosquitto_with_username_as_client_id_keeps_the_victim(tmp_path: Path) -> None:
    """Without dynamic security, ``use_username_as_clientid`` is Mosquitto's binding: the attacker's
    client id is replaced by its own username, so it lands in its own session, not the victim's."""
    from sdk.topics import acl_pattern

    users = {"victim": "victim-pw", "attacker": "attacker-pw"}
    with run_mosquitto(tmp_path / "mq", users=users, acl=acl_pattern(), username_as_clientid=True) as broker:
        victim = Victim(broker.port, "victim", users["victim"])
        try:
            for _ in range(ATTEMPTS):
                attack(broker.port, "attacker", users["attacker"], "victim")
            time.sleep(1.0)
            assert victim.drops == 0 and victim.c.is_connected(), (
                f"the victim was dropped {victim.drops} times"
            )
        finally:
            victim.close()
