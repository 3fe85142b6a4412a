"""``edge-fleet up`` (embedded amqtt broker, MQTT 3.1.1, SQLite) with a real ``edge-agent serve``."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdk import keys
from sdk.fleet_client import FleetClient
from tests.support.agent_proc import device_agent
from tests.support.bundles import make_bundle
from tests.support.delivery import outbox_waiting
from tests.support.fleet_proc import run_fleet
from tests.support.mosquitto import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.mqtt


def test_up_with_a_real_agent(tmp_path: Path, signing_key: keys.Ed25519PrivateKey) -> None:
    mport = free_port()
    pub = tmp_path / "keys" / "signing.pub"
    args = [
        "up",
        "--mqtt-listen",
        f"127.0.0.1:{mport}",
        "--data-dir",
        str(tmp_path / "fleet"),
        "--trust-key",
        str(pub),
    ]
    with run_fleet(tmp_path / "run", args) as fleet:
        token = fleet.stdout_path.read_text().split()[-1]
        client = FleetClient(fleet.url, token)
        creds = client.register_device("pi-1", profile="x86-server")
        assert creds.broker_url == f"mqtt://127.0.0.1:{mport}"
        agent = device_agent(creds, tmp_path, fleet_url=fleet.url, broker_url=creds.broker_url, trust_key=pub)
        agent.start()
        try:
            wait_until(lambda: client.device("pi-1")["online"], 60, "the agent to come online")
            bundle = client.upload_bundle(make_bundle(tmp_path / "b", signing_key, version="1.0.0"))
            rollout = client.create_rollout(bundle["id"])
            wait_until(lambda: client.rollout(rollout["id"])["state"] == "succeeded", 60, "the rollout")
            assert agent.infer() == [3.0, 3.0, 3.0, 3.0]
            wait_until(lambda: client.device_health("pi-1")["samples"] > 0, 20, "telemetry through amqtt")
            # the fleet's acknowledgements reach the device through amqtt's ACL: its outbox empties
            data_dir = tmp_path / "pi-1" / "data"
            wait_until(lambda: outbox_waiting(data_dir) <= 2, 30, "the fleet to acknowledge what it stored")
        except BaseException:
            print(agent.log.read_text()[-3000:], fleet.log[-3000:])
            raise
        finally:
            agent.stop()
