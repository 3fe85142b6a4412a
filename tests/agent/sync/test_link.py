"""Presence, credentials, ACL and TLS against a real Mosquitto."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.sync import SyncConfig, SyncService
from agent.sync.mqtt import BrokerAddress, MqttLink, Outgoing
from sdk import keys, messages
from sdk.errors import ConfigError
from sdk.topics import topic
from tests.agent.sync.conftest import FAST, PASSWORDS, TOKEN
from tests.agent.sync.support import (
    BundleServer,
    FakeStore,
    NoStats,
    Probe,
    acl_text,
    desired_model,
    kill_9_and_expect_offline,
    reaped,
    running,
    start_device_process,
    write_credentials,
)
from tests.support.bundles import make_bundle
from tests.support.mosquitto import run_mosquitto

pytestmark = pytest.mark.mqtt


def test_status_online_then_last_will_offline_on_kill_9(world) -> None:
    keys.save_keypair(world.key, world.tmp / "signing")
    with reaped(start_device_process(world.config("dev-1"), world.tmp / "signing.pub", world.tmp)) as proc:
        online = world.probe.wait_for("status", "dev-1", lambda s: s["state"] == "online")
        assert online["time"] > 0
        kill_9_and_expect_offline(proc, world.probe, "dev-1")

    # the offline status is retained: a fleet that connects later still sees it
    with Probe(world.broker.host, world.broker.port, username="fleet", password=PASSWORDS["fleet"]) as late:
        assert late.wait_for("status", "dev-1", lambda s: True)["state"] == "offline"
        assert late.on("status", "dev-1")[-1].retain


def test_acl_confines_a_device_to_its_own_topics(world) -> None:
    """dev-2 can neither read dev-1's desired state, nor write dev-1's reported state, nor forge its own
    desired state (a device only reads ``desired``)."""
    b = make_bundle(world.bundles, world.key, name="net", version="1.0")
    world.probe.publish_desired(
        "dev-1", messages.DesiredState(revision=1, models=[desired_model(b, "net", "1.0")])
    )
    seen: list[str] = []
    connected = threading.Event()
    intruder = paho.Client(CallbackAPIVersion.VERSION2, client_id="dev-2")
    intruder.username_pw_set("dev-2", PASSWORDS["dev-2"])
    intruder.on_connect = lambda c, u, f, r, p: connected.set()
    intruder.on_message = lambda c, u, m: seen.append(m.topic)
    intruder.connect(world.broker.host, world.broker.port)
    intruder.loop_start()
    try:
        assert connected.wait(5)
        intruder.subscribe(topic("desired", "dev-1"), qos=1)
        intruder.subscribe(topic("desired", "dev-2"), qos=1)
        intruder.publish(topic("reported", "dev-1"), b'{"forged": true}', qos=1).wait_for_publish(5)
        intruder.publish(topic("desired", "dev-2"), b"mine", qos=1, retain=True).wait_for_publish(5)
        time.sleep(0.5)
    finally:
        intruder.disconnect()
        intruder.loop_stop()
    assert seen == []
    assert world.probe.on("reported", "dev-1") == []


def test_wrong_password_never_connects_and_does_not_block(world) -> None:
    link = MqttLink(world.broker.url, "dev-1", username="dev-1", password="wrong", reconnect_min_s=0.2)
    started = time.monotonic()
    link.start()
    assert time.monotonic() - started < 0.5
    assert not link.wait_connected(1.0)
    link.stop()


def test_tls_broker(tmp_path: Path, signing_key) -> None:

    (tmp_path / "bundles").mkdir()
    b = make_bundle(tmp_path / "bundles", signing_key, name="net", version="1.0")
    with (
        run_mosquitto(tmp_path / "mq", users=PASSWORDS, acl=acl_text(), tls=True) as broker,
        BundleServer(tmp_path / "bundles", TOKEN) as server,
    ):
        assert broker.url.startswith("mqtts://") and broker.ca_file is not None
        fleet = paho.Client(CallbackAPIVersion.VERSION2, client_id="fleet")
        fleet.username_pw_set("fleet", PASSWORDS["fleet"])
        fleet.tls_set(ca_certs=str(broker.ca_file))
        fleet.connect(broker.host, broker.port)
        fleet.loop_start()
        desired = messages.DesiredState(revision=1, models=[desired_model(b, "net", "1.0")])
        fleet.publish(topic("desired", "dev-1"), desired.to_bytes(), qos=1, retain=True).wait_for_publish(5)
        store = FakeStore(trusted=[signing_key.public_key()])
        creds = write_credentials(tmp_path / "c.json", "dev-1", PASSWORDS["dev-1"], TOKEN, broker.ca_file)
        config = SyncConfig(server.url, broker.url, "dev-1", creds, tmp_path / "data", telemetry_interval_s=5)
        with running(SyncService(config, store, NoStats(), FAST)):
            deadline = time.monotonic() + 15
            while store.active != {"net": "1.0"} and time.monotonic() < deadline:
                time.sleep(0.05)
        fleet.disconnect()
        fleet.loop_stop()
    assert store.active == {"net": "1.0"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://h", BrokerAddress("h", 1883, False)),
        ("mqtts://h", BrokerAddress("h", 8883, True)),
        ("mqtt://127.0.0.1:1999", BrokerAddress("127.0.0.1", 1999, False)),
    ],
)
def test_broker_url(url: str, expected: BrokerAddress) -> None:
    assert BrokerAddress.parse(url) == expected


@pytest.mark.parametrize("url", ["http://h:1883", "mqtt://", "h:1883", "mqtt://h:99999"])
def test_bad_broker_url(url: str) -> None:
    with pytest.raises(ConfigError):
        BrokerAddress.parse(url)


def test_mqtt_v5_link_gets_its_retained_desired_and_announces_itself(world) -> None:
    b = make_bundle(world.bundles, world.key, name="net", version="1.0")
    world.probe.publish_desired(
        "dev-1", messages.DesiredState(revision=3, models=[desired_model(b, "net", "1.0")])
    )
    got: list[bytes] = []
    status = topic("status", "dev-1")
    link = MqttLink(
        world.broker.url,
        "dev-1",
        username="dev-1",
        password=PASSWORDS["dev-1"],
        protocol="5",
        birth=lambda: Outgoing(status, messages.Status(state="online").to_bytes()),
    )
    link.subscribe(topic("desired", "dev-1"), lambda t, p: got.append(p))
    link.start()
    try:
        assert link.wait_connected(5)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        link.stop()
    assert messages.parse_message(messages.DesiredState, got[0]).revision == 3
    assert world.probe.wait_for("status", "dev-1", lambda s: True)["state"] == "online"
