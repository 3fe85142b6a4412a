"""The whole agent as users run it: `edge-agent serve` with the sync flags, a real broker and store."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest

from sdk import messages
from tests.agent.sync.support import desired_model, kill_9_and_expect_offline, reaped
from tests.support.bundles import make_bundle
from tests.support.mosquitto import free_port

pytestmark = pytest.mark.mqtt


def _infer(url: str) -> list[float]:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 1, 2, 3]}]}
    response = httpx.post(f"{url}/v2/models/net/infer", json=body, timeout=10)
    response.raise_for_status()
    return response.json()["outputs"][0]["data"]


def test_edge_agent_serve_converges_serves_through_an_outage_and_dies_offline(world) -> None:
    bundle = make_bundle(world.bundles, world.key, name="net", version="1.0")
    port = free_port()
    agent_url = f"http://127.0.0.1:{port}"
    command = world.serve_command("dev-1", port)
    with (
        open(world.tmp / "agent.log", "wb") as log,
        reaped(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)) as proc,
    ):
        world.probe.wait_for("status", "dev-1", lambda s: s["state"] == "online", timeout=30)
        world.probe.publish_desired(
            "dev-1", messages.DesiredState(revision=1, models=[desired_model(bundle, "net", "1.0")])
        )
        reported = world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == 1, timeout=30)
        assert reported["models"][0]["state"] == "active"
        assert _infer(agent_url) == [1.0, 3.0, 5.0, 7.0]

        # the broker goes away: inference goes on, telemetry waits on disk
        world.broker.stop()
        for _ in range(5):
            assert _infer(agent_url) == [1.0, 3.0, 5.0, 7.0]
        time.sleep(1.0)
        before = max((m.json()["seq"] for m in world.probe.on("telemetry", "dev-1")), default=-1)
        world.broker.start()
        deadline = time.monotonic() + 20
        seqs: list[int] = []
        while time.monotonic() < deadline:
            seqs = [m.json()["seq"] for m in world.probe.on("telemetry", "dev-1")]
            if max(seqs, default=-1) > before + 6:
                break
            time.sleep(0.1)
        assert seqs, "no telemetry arrived within 20 s of the broker coming back"
        assert list(dict.fromkeys(seqs)) == list(range(max(seqs) + 1)), seqs  # nothing lost, in order
        # QoS 1 is at-least-once: a message in flight when the broker died may arrive twice, so a
        # receiver keeps one message per seq, as the protocol says.
        by_seq = {m.json()["seq"]: m.json() for m in world.probe.on("telemetry", "dev-1")}
        served = [
            model["requests"] for t in by_seq.values() for model in t["models"] if model["name"] == "net"
        ]
        assert sum(served) == 6  # every inference above is counted once

        kill_9_and_expect_offline(proc, world.probe, "dev-1")
