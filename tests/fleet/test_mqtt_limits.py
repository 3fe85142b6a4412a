"""Payload size limits: brokers refuse oversized publishes, the fleet drops them before parsing."""

from __future__ import annotations

import queue
import re
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleet.mqtt.client import FleetMqtt
from sdk.fleet_client import FleetClient
from sdk.topics import MAX_PACKET_BYTES, MAX_PAYLOAD_BYTES, topic
from tests.support.fleet_proc import run_fleet
from tests.support.mosquitto import free_port, run_mosquitto
from tests.support.waiting import wait_until

pytestmark = pytest.mark.mqtt
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "mosquitto.yaml"


class Client:
    def __init__(
        self, port: int, client_id: str, username: str | None = None, password: str | None = None
    ) -> None:
        self.got: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected = threading.Event()
        self.drops = 0
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
        if username:
            self.c.username_pw_set(username, password)
        self.c.on_connect = lambda *_a: self.connected.set()
        self.c.on_disconnect = self._dropped
        self.c.on_message = lambda _c, _u, m: self.got.put((m.topic, m.payload))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.connected.wait(10)

    def _dropped(self, *_a: object) -> None:
        self.drops += 1
        self.connected.clear()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_deploy_config_uses_the_packet_limit() -> None:
    found = re.search(r"^\s*max_packet_size (\d+)$", DEPLOY.read_text(), re.M)
    assert found and int(found.group(1)) == MAX_PACKET_BYTES


def test_mosquitto_refuses_an_oversized_publish(tmp_path: Path) -> None:
    with run_mosquitto(tmp_path / "mq") as broker:
        sub = Client(broker.port, "sub")
        pub = Client(broker.port, "pub")
        try:
            sub.c.subscribe("t/#", 1)
            time.sleep(0.3)
            pub.c.publish(
                "t/big", b"x" * (2 * MAX_PAYLOAD_BYTES), qos=0
            )  # QoS 0: paho would resend a QoS 1 one forever
            wait_until(lambda: pub.drops > 0, what="the broker to disconnect the oversized publisher")
            with pytest.raises(queue.Empty):
                sub.got.get(timeout=1)
            pub.connected.wait(10)  # paho reconnects by itself
            pub.c.publish("t/ok", b"y" * MAX_PAYLOAD_BYTES, qos=1)
            assert sub.got.get(timeout=10) == ("t/ok", b"y" * MAX_PAYLOAD_BYTES)
        finally:
            sub.close()
            pub.close()


def test_embedded_broker_closes_an_oversized_publish(tmp_path: Path) -> None:
    mport = free_port()
    args = ["up", "--mqtt-listen", f"127.0.0.1:{mport}", "--data-dir", str(tmp_path / "data")]
    with run_fleet(tmp_path / "run", args) as fleet:
        api = FleetClient(fleet.url, fleet.stdout_path.read_text().split()[-1])
        creds = api.register_device("d1")
        dev = Client(mport, "d1", "d1", creds.mqtt_password)
        try:
            dev.c.publish(topic("events", "d1"), b"[" * (4 * MAX_PAYLOAD_BYTES), qos=0)
            wait_until(lambda: dev.drops > 0, what="the embedded broker to close the oversized publisher")
            assert "passes the" in fleet.log
            # the broker and the fleet carry on: the device reconnects and is seen online
            assert dev.connected.wait(15)
            dev.c.publish(topic("status", "d1"), b'{"state":"online","time":1}', qos=1, retain=True)
            wait_until(lambda: api.device("d1")["online"], what="the device's status to reach the fleet")
        finally:
            dev.close()


def test_fleet_client_drops_an_oversized_message_before_parsing(tmp_path: Path) -> None:
    # a broker with a looser limit: the fleet's own check is the last line
    with run_mosquitto(tmp_path / "mq", extra_config=f"max_packet_size {4 * MAX_PACKET_BYTES}\n") as broker:
        drops: list[str] = []
        mqtt = FleetMqtt(broker.url, on_drop=drops.append)
        mqtt.start()
        pub = Client(broker.port, "d1")
        try:
            assert mqtt.wait_subscribed(10)
            pub.c.publish(topic("telemetry", "d1"), b"{" * (MAX_PAYLOAD_BYTES + 1), qos=1)
            pub.c.publish(topic("telemetry", "d1"), b"{}", qos=1)
            name, payload, _ = mqtt.inbox.get(timeout=10)
            assert (name, payload) == (topic("telemetry", "d1"), b"{}")
            assert mqtt.oversized == 1 and mqtt.inbox.empty()
            assert drops == ["oversize"]  # the fleet counts it in edgefleet_ingest_rejected_total
        finally:
            pub.close()
            mqtt.stop()
