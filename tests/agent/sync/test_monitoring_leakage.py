"""Leakage (issue 9): a real `edge-agent serve` with a real Mosquitto gets distinctive inputs, request
ids and labels; not one of them, nor any output, appears in anything that leaves the device: every
MQTT payload and every /metrics line. Only aggregates over at least k samples do."""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

import httpx
import numpy as np
import pytest

from agent.store import ModelStore
from sdk.agent_client import AgentClient
from tests.agent.models import affine_bundle, regression_bundle
from tests.agent.sync.support import reaped
from tests.support.mosquitto import free_port

pytestmark = pytest.mark.mqtt

K = 20
#: float32-exact values whose decimal forms cannot turn up by chance in a timestamp or a counter
BASES = np.array([31337.0625, 27182.8125, 16180.3125, 14142.1875], dtype=np.float32)


def _secrets(arrays: list[np.ndarray]) -> set[bytes]:
    found: set[bytes] = set()
    for array in arrays:
        found.add(np.ascontiguousarray(array, dtype="<f4").tobytes())
        for v in np.asarray(array, dtype=np.float64).reshape(-1).tolist():
            found.add(repr(v).encode())
            found.add(f"{v:.4f}".encode())
    return found


def _model(telemetry: dict[str, Any], name: str) -> dict[str, Any]:
    return next((m for m in telemetry["models"] if m["name"] == name), {})


def _labeled(telemetry: dict[str, Any], name: str) -> int | None:
    return (_model(telemetry, name).get("quality") or {}).get("labeled")


def _last_quality(probe: Any, name: str) -> dict[str, Any]:
    found = [q for m in probe.on("telemetry", "dev-1") if (q := _model(m.json(), name).get("quality"))]
    return found[-1]


def test_nothing_but_aggregates_over_k_samples_leaves_the_device(world) -> None:
    store = ModelStore(world.tmp / "agent", [world.key.public_key()])
    store.install(affine_bundle(world.tmp / "src", world.key))
    store.install(regression_bundle(world.tmp / "src", world.key))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = world.serve_command("dev-1", port, "--monitor-min-samples", str(K))
    sent: list[np.ndarray] = []
    answered: list[np.ndarray] = []
    ids: list[str] = []
    labels: list[float] = []
    with (
        open(world.tmp / "agent.log", "wb") as log,
        reaped(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)) as proc,
    ):
        world.probe.wait_for("status", "dev-1", lambda s: s["state"] == "online", timeout=30)
        with AgentClient(url) as client:
            affine: dict[str, object] = {}
            for i in range(60):  # 50 from a site with many requests, 10 from one with few
                x = (BASES + i).reshape(1, 4)
                rid = f"patient-{uuid.uuid4().hex}"
                group = "site-north" if i < 50 else "site-south"
                out = client.infer("affine", {"x": x}, request_id=rid, parameters={"group": group})
                sent.append(x)
                answered.append(out.outputs["y"])  # z, the class index, is as common as any small integer
                ids.append(rid)
                affine[rid] = int(out.outputs["y"].argmax())
            assert client.feedback("affine", affine)["accepted"] == 60
            total: dict[str, object] = {}
            for i in range(40):
                x = (BASES * 0.5 + i).reshape(1, 4)
                rid = f"scan-{uuid.uuid4().hex}"
                out = client.infer("total", {"x": x}, request_id=rid)
                sent.append(x)
                answered.append(out.outputs["y"])
                ids.append(rid)
                total[rid] = labels_value = 4242.4375 + i
                labels.append(labels_value)
            assert client.feedback("total", total)["accepted"] == 40

        # a version's figures are sent in the interval after something changed in its window
        world.probe.wait_for("telemetry", "dev-1", lambda t: _labeled(t, "affine") == 60, timeout=30)
        world.probe.wait_for("telemetry", "dev-1", lambda t: _labeled(t, "total") == 40, timeout=30)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        proc.terminate()
        proc.wait(timeout=30)

    # what left is useful: accuracy, MAE, the bias groups, with the small group suppressed
    a, r = (_last_quality(world.probe, name) for name in ("affine", "total"))
    assert a["accuracy"] == 1.0 and a["min_samples"] == K
    assert r["mae"] is not None and r["mae"] > 1000  # the labels were nowhere near the sums
    groups = {g["group"]: g for g in a["groups"]}
    assert groups["site-north"]["samples"] == 50 and groups["site-north"]["selection_rate"] is not None
    assert groups["site-south"] == {"group": "site-south", "samples": 10, "suppressed": True}
    # data quality is per telemetry interval (only intervals with >= k input values carry it), and
    # later messages repeat the window's other figures: every share reported says all inputs were
    # far outside the reference range
    shares = [
        q["out_of_range_share"]
        for m in world.probe.on("telemetry", "dev-1")
        if "out_of_range_share" in (q := _model(m.json(), "affine").get("quality") or {})
    ]
    assert shares and all(share == 1.0 for share in shares), shares

    # and nothing else: no input, output, label or request id in any payload or metrics line
    payloads = [m.payload for m in world.probe.messages] + metrics.encode().splitlines()
    assert len(payloads) > 20
    secrets = _secrets(sent) | _secrets(answered) | _secrets([np.asarray(labels, np.float32)])
    secrets |= {i.encode() for i in ids} | {i.split("-", 1)[1].encode() for i in ids}
    leaks = [(s, p[:200]) for p in payloads for s in secrets if s in p]
    assert not leaks, leaks[:5]
    # every figure that left was computed over at least K samples
    for message in world.probe.on("telemetry", "dev-1"):
        for model in message.json()["models"]:
            quality = model.get("quality")
            if not quality:
                continue
            if quality["samples"] < K:
                assert "estimated_accuracy" not in quality and "prediction_drift" not in quality
            if quality["labeled"] < K:
                assert not {"accuracy", "mae", "rmse", "confusion"} & set(quality)
            for g in quality.get("groups", []):
                assert g["samples"] >= K or set(g) == {"group", "samples", "suppressed"}
