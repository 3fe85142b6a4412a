"""The agent drops an oversized MQTT message before anything parses it."""

from __future__ import annotations

import contextlib
import queue
import time
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
            # The link counts as connected once it has sent SUBSCRIBE, not once the broker acted on
            # it: under load a message published at once could reach the broker first and be lost.
            # Publish a marker until one gets through, so the subscription is live.
            deadline = time.monotonic() + 10
            while True:
                fleet.publish(name, b"ready", qos=1).wait_for_publish(10)
                with contextlib.suppress(queue.Empty):
                    if got.get(timeout=0.5) == b"ready":
                        break
                assert time.monotonic() < deadline, "the link's subscription never went live"
            fleet.publish(name, b"[" * (MAX_PAYLOAD_BYTES + 1), qos=1).wait_for_publish(10)
            fleet.publish(name, b"{}", qos=1).wait_for_publish(10)
            while (payload := got.get(timeout=10)) == b"ready":
                pass  # a late copy of a marker
            assert payload == b"{}"
            assert got.empty()
            assert any("dropped a" in r.getMessage() for r in caplog.records)
        finally:
            fleet.disconnect()
            fleet.loop_stop()
            link.stop()
