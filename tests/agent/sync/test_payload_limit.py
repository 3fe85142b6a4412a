"""The agent drops an oversized MQTT message before anything parses it."""

from __future__ import annotations

import queue
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.sync.mqtt import MqttLink
from sdk.topics import MAX_PACKET_BYTES, MAX_PAYLOAD_BYTES, topic
from tests.support.mosquitto import run_mosquitto

pytestmark = pytest.mark.mqtt


def test_link_drops_an_oversized_desired_state(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # a broker with a looser limit than edgefleet's: the agent's own check is the last line
    with run_mosquitto(tmp_path / "mq", extra_config=f"max_packet_size {4 * MAX_PACKET_BYTES}\n") as broker:
        got: queue.Queue[bytes] = queue.Queue()
        link = MqttLink(broker.url, "dev-1", username=None, password=None, reconnect_min_s=0.2)
        link.subscribe(topic("desired", "dev-1"), lambda _t, payload: got.put(payload))
        link.start()
        fleet = paho.Client(CallbackAPIVersion.VERSION2, client_id="fleet")
        try:
            assert link.wait_connected(10)
            fleet.connect(broker.host, broker.port)
            fleet.loop_start()
            name = topic("desired", "dev-1")
            fleet.publish(name, b"[" * (MAX_PAYLOAD_BYTES + 1), qos=1).wait_for_publish(10)
            fleet.publish(name, b"{}", qos=1).wait_for_publish(10)
            assert got.get(timeout=10) == b"{}"
            assert got.empty()
            assert any("dropped a" in r.getMessage() for r in caplog.records)
        finally:
            fleet.disconnect()
            fleet.loop_stop()
            link.stop()
