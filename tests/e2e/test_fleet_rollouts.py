"""End to end with real processes: Mosquitto, ``edge-fleet serve`` and three ``edge-agent serve``.

Mosquitto runs the dynamic security plugin, so each agent logs in with the broker account the
fleet created when it registered, confined to its own topics.

A rollout reaches all three; a canary whose bundle fails its smoke test stops the rollout and
leaves the others on the old version; a killed agent shows offline, restarts and converges.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdk.fleet_client import FleetClient
from tests.support.agent_proc import Agent, device_agent
from tests.support.bundles import make_bundle
from tests.support.fleet_proc import admin_token, run_fleet, serve_args
from tests.support.mosquitto import DYNSEC_PLUGIN, Mosquitto, run_mosquitto
from tests.support.waiting import wait_until as wait

pytestmark = pytest.mark.mqtt


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """Mosquitto with the dynamic security plugin: devices log in with the accounts the fleet creates."""
    if not os.path.exists(DYNSEC_PLUGIN):
        pytest.skip("no Mosquitto dynamic security plugin")
    with run_mosquitto(tmp_path / "mosquitto", dynsec_admin=("edge-fleet", "fleet-secret")) as b:
        yield b


@pytest.fixture
def stack(tmp_path: Path, broker: Mosquitto, signing_key) -> Iterator[tuple[FleetClient, list[Agent], Path]]:  # type: ignore[no-untyped-def]
    pub = tmp_path / "keys" / "signing.pub"
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    token = admin_token(db)
    args = serve_args(
        tmp_path,
        db,
        broker.url,
        "--broker-accounts",
        "dynsec",
        "--broker-username",
        "edge-fleet",
        "--mqtt-protocol",
        "5",
    )
    with run_fleet(tmp_path / "fleet", args, env={"EDGEFLEET_BROKER_PASSWORD": "fleet-secret"}) as fleet:
        client = FleetClient(fleet.url, token)
        agents = []
        for i in range(3):
            device_id = f"edge-{i}"
            creds = client.register_device(device_id, labels={"site": "e2e"}, profile="x86-server")
            agent = device_agent(creds, tmp_path, fleet_url=fleet.url, broker_url=broker.url, trust_key=pub)
            agent.start()
            agents.append(agent)
        try:
            wait(lambda: all(d["online"] for d in client.devices()), 60, "three agents online")
            yield client, agents, tmp_path
        finally:
            for a in agents:
                a.stop()
            client.close()
            # shown only when the test fails (pytest does not throw a test's error into a fixture)
            for a in agents:
                sys.stderr.write(f"--- {a.device_id}\n{a.log.read_text()[-3000:]}\n")
            sys.stderr.write(f"--- fleet\n{fleet.log[-5000:]}\n")


def versions(client: FleetClient) -> dict[str, str | None]:
    out = {}
    for d in client.devices():
        active = [m for m in d["reported_models"] if m.get("name") == "tiny"]
        out[d["id"]] = active[0].get("active_version", active[0].get("version")) if active else None
    return out


def test_rollouts_canary_failure_and_offline_device(stack) -> None:  # type: ignore[no-untyped-def]
    client, agents, tmp = stack
    key_dir = tmp / "keys"
    from sdk import keys

    key = keys.load_private_key(key_dir / "signing")

    # 1. a rollout reaches all three
    v1 = client.upload_bundle(make_bundle(tmp / "b", key, version="1.0.0"))
    r1 = client.create_rollout(v1["id"], selector={"labels": {"site": "e2e"}}, strategy={"canary_count": 1})
    wait(lambda: client.rollout(r1["id"])["state"] == "succeeded", 90, "rollout 1 to succeed")
    assert all(a.infer() == [3.0, 3.0, 3.0, 3.0] for a in agents)
    assert set(versions(client).values()) == {"1.0.0"}

    # 2. a canary whose bundle fails its smoke test stops the rollout; the others stay on 1.0.0
    v2 = client.upload_bundle(make_bundle(tmp / "b", key, version="2.0.0", broken=True))
    r2 = client.create_rollout(v2["id"], strategy={"canary_count": 1})
    wait(lambda: client.rollout(r2["id"])["state"] == "rolled_back", 90, "the broken rollout to roll back")
    detail = client.rollout(r2["id"])
    states = sorted(d["state"] for d in detail["devices"])
    assert states == ["rolled_back", "skipped", "skipped"], detail
    assert "failed" in detail["reason"]
    time.sleep(1.0)
    assert set(versions(client).values()) == {"1.0.0"}
    assert all(a.infer() == [3.0, 3.0, 3.0, 3.0] for a in agents)

    # 3. a killed agent shows offline; a rollout waits for it; restarted, it converges
    victim = agents[2]
    victim.kill()
    wait(lambda: not client.device(victim.device_id)["online"], 30, "the killed agent to show offline")
    v3 = client.upload_bundle(make_bundle(tmp / "b", key, version="3.0.0", scale=3.0))
    r3 = client.create_rollout(v3["id"])
    wait(
        lambda: client.rollout(r3["id"])["counts"].get("succeeded") == 2, 90, "the two live agents to update"
    )
    assert client.rollout(r3["id"])["state"] == "running"
    victim.start()
    wait(lambda: client.rollout(r3["id"])["state"] == "succeeded", 90, "the restarted agent to converge")
    assert client.device(victim.device_id)["online"]
    assert set(versions(client).values()) == {"3.0.0"}
    assert all(a.infer() == [4.0, 4.0, 4.0, 4.0] for a in agents)
    health = client.device_health(agents[0].device_id, window_s=600)
    assert health["samples"] > 0
