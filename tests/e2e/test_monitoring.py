"""Model monitoring end to end: both halves together, with real processes.

A real Mosquitto (dynamic security), ``edge-fleet serve`` and one ``edge-agent serve`` per test.
The agent computes drift and quality figures over its own traffic and sends them in telemetry
(docs/monitoring.md); the fleet turns the stored messages into alerts (docs/alerts.md). Nothing
here injects telemetry: every figure the fleet judges is one the agent computed from requests and
labels sent to it over HTTP. Last, a rollout with a shadow phase: the agent mirrors live requests
to the new version, and the fleet promotes or stops it on the agreement the agent measured.

The model is a 4-class "classifier" (scores y = 2x + 1 on a [batch, 4] input) whose bundle carries
a measured accuracy and reference statistics: the input histogram, the predicted class shares and
a reliability table, as the converter writes them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sdk import keys
from sdk.agent_client import AgentClient
from sdk.fleet_client import FleetClient
from sdk.manifest import AccuracyMetric, Metrics, PredictionReference, Reference, TensorStats
from tests.support.agent_proc import Agent, device_agent
from tests.support.bundles import make_bundle
from tests.support.delivery import BROKER_ADMIN, FLEET_ENV, dynsec_serve_args
from tests.support.fleet_proc import FleetProcess, admin_token, run_fleet
from tests.support.mosquitto import DYNSEC_PLUGIN, run_mosquitto
from tests.support.waiting import wait_until

pytestmark = pytest.mark.mqtt

BUNDLE_ACCURACY = 0.91  # the bundle's measured accuracy: the accuracy rule's floor is 0.86
MIN_SAMPLES = 20
# the agent's rolling window: long enough that nothing here ages out of it
AGENT_FLAGS = ["--monitor-window", "120", "--monitor-min-samples", str(MIN_SAMPLES), "--shadow-share", "1.0"]


@dataclass
class Stack:
    root: Path
    key: keys.Ed25519PrivateKey
    broker_url: str
    fleet: FleetProcess
    client: FleetClient
    db_path: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Broker and fleet, shared by the tests: each has its own device, agent and model."""
    if not os.path.exists(DYNSEC_PLUGIN):
        pytest.skip("no Mosquitto dynamic security plugin")
    root = tmp_path_factory.mktemp("monitoring")
    key = keys.generate_key()
    keys.save_keypair(key, root / "keys" / "signing")
    db_path = root / "fleet.db"
    db = f"sqlite:///{db_path}"
    token = admin_token(db)
    with (
        run_mosquitto(root / "mosquitto", dynsec_admin=BROKER_ADMIN) as broker,
        run_fleet(root / "fleet", dynsec_serve_args(root, db, broker.url), env=FLEET_ENV) as fleet,
        FleetClient(fleet.url, token) as client,
    ):
        yield Stack(root, key, broker.url, fleet, client, db_path)


def reference() -> Reference:
    """What the converter records for y = 2x + 1 on standard normal calibration inputs."""
    calib = np.random.default_rng(0).standard_normal((4096, 4))
    fractions, edges = np.histogram(calib, bins=10)
    stats = TensorStats(
        mean=float(calib.mean()),
        std=float(calib.std()),
        min=float(calib.min()),
        max=float(calib.max()),
        hist_edges=edges.tolist(),
        hist_fractions=(fractions / fractions.sum()).tolist(),
    )
    shares = np.bincount(np.argmax(calib, axis=1), minlength=4) / len(calib)
    return Reference(
        samples=len(calib),
        inputs={"x": stats},
        predictions=PredictionReference(
            output="y",
            class_fractions=shares.tolist(),
            # measured on labelled evaluation data: the estimate without labels is the bundle's figure
            calibration_edges=np.linspace(0.0, 1.0, 11).tolist(),
            calibration_accuracy=[0.92] * 10,
            calibration_samples=len(calib),
        ),
    )


@pytest.fixture
def deploy(stack: Stack) -> Iterator[Callable[[str], Agent]]:
    """``deploy(model)``: a new device running a new agent, with ``model`` rolled out to it."""
    agents: list[Agent] = []

    def start(model: str) -> Agent:
        device_id = f"mon-{model}"
        creds = stack.client.register_device(device_id, labels={"dev": device_id}, profile="x86-server")
        agent = device_agent(
            creds,
            stack.root,
            fleet_url=stack.fleet.url,
            broker_url=stack.broker_url,
            trust_key=stack.root / "keys" / "signing.pub",
        )
        agent.args += AGENT_FLAGS
        agent.start()
        agents.append(agent)
        wait_until(lambda: stack.client.device(device_id)["online"], 60, f"{device_id} online")
        metrics = Metrics(accuracy=AccuracyMetric(metric="top1", source=0.92, converted=BUNDLE_ACCURACY))
        bundle = make_bundle(stack.root / "b", stack.key, name=model, metrics=metrics, reference=reference())
        uploaded = stack.client.upload_bundle(bundle)
        rollout = stack.client.create_rollout(uploaded["id"], selector={"labels": {"dev": device_id}})
        wait_until(
            lambda: stack.client.rollout(rollout["id"])["state"] == "succeeded", 60, f"{model} rolled out"
        )
        return agent

    yield start
    # pytest shows this only for a test that failed
    for a in agents:
        a.stop()
        sys.stderr.write(f"--- {a.device_id}\n{a.log.read_text()[-3000:]}\n")
    sys.stderr.write(f"--- fleet\n{stack.fleet.log[-3000:]}\n")


# ------------------------------------------------------------------------------------- reading


def firing(stack: Stack, device_id: str, rule: str) -> dict[str, Any] | None:
    found = [a for a in stack.client.alerts(device_id=device_id, rule=rule) if a["state"] == "firing"]
    return found[0] if found else None


@dataclass
class Window:
    """One telemetry message as the fleet stored it, with this model's entry (None: not in it)."""

    seq: int
    received_at: float
    model: dict[str, Any] | None


def windows(stack: Stack, device_id: str, model: str) -> list[Window]:
    # read straight from the fleet's database: what the alert rules were evaluated on
    conn = sqlite3.connect(stack.db_path, timeout=10)
    try:
        rows = conn.execute(
            "SELECT seq, received_at, models FROM telemetry WHERE device_id = ? ORDER BY seq", (device_id,)
        ).fetchall()
    finally:
        conn.close()
    out = []
    for seq, received_at, models in rows:
        entries = [m for m in json.loads(models) if m.get("name") == model]
        out.append(Window(seq, received_at, entries[0] if entries else None))
    return out


def last_seq(stack: Stack, device_id: str) -> int:
    found = windows(stack, device_id, "")
    return found[-1].seq if found else -1


def with_traffic(stack: Stack, device_id: str, model: str, after: int) -> list[Window]:
    return [
        w
        for w in windows(stack, device_id, model)
        if w.seq > after and w.model is not None and w.model.get("requests", 0) > 0
    ]


# --------------------------------------------------------------------------------------- tests


def test_shifted_inputs_raise_a_drift_alert_within_three_windows(
    stack: Stack, deploy: Callable[[str], Agent]
) -> None:
    agent = deploy("drifty")
    device = agent.device_id
    rng = np.random.default_rng(1)
    with AgentClient(f"http://127.0.0.1:{agent.port}") as ac:

        def send(shift: float) -> None:
            ac.infer("drifty", {"x": (rng.standard_normal((64, 4)) + shift).astype(np.float32)})

        # in distribution: four windows of traffic, each judged by the fleet, raise nothing
        start = last_seq(stack, device)
        wait_until(
            lambda: send(0.0) or len(with_traffic(stack, device, "drifty", start)) >= 4,
            30,
            "four windows of in-distribution traffic",
        )
        calm = with_traffic(stack, device, "drifty", start)
        for w in calm:
            assert w.model is not None and w.model["drift"]["input:x"] < 0.25, w.model
        assert any(w.model and (w.model.get("quality") or {}).get("estimated_accuracy") for w in calm)
        assert stack.client.alerts(device_id=device) == []

        # the in-distribution traffic leaves the windows from here on: two messages without it
        quiet = last_seq(stack, device)
        wait_until(lambda: last_seq(stack, device) >= quiet + 2, 15, "two windows without traffic")
        shift_start = last_seq(stack, device)

        # every input moved by 3 standard deviations: the class shares stay, the inputs do not
        wait_until(lambda: send(3.0) or firing(stack, device, "drift"), 30, "a firing drift alert")
    alert = firing(stack, device, "drift")
    assert alert is not None
    assert (alert["model"], alert["version"]) == ("drifty", "1.0.0")
    assert alert["value"] > alert["threshold"] == 0.25
    assert "input" in alert["detail"]
    # the windows that carried shifted traffic (it was sent without pause) up to the alert firing
    shifted = [
        w for w in with_traffic(stack, device, "drifty", shift_start) if w.received_at <= alert["since"]
    ]
    assert 2 <= len(shifted) <= 3, [(w.seq, w.model) for w in shifted]
    # only the inputs moved: no accuracy or bias alert came with it
    assert {a["rule"] for a in stack.client.alerts(device_id=device)} == {"drift"}


def test_wrong_labels_fed_back_raise_an_accuracy_alert(stack: Stack, deploy: Callable[[str], Agent]) -> None:
    agent = deploy("labelled")
    device = agent.device_id
    rng = np.random.default_rng(2)
    with AgentClient(f"http://127.0.0.1:{agent.port}") as ac:

        def labelled_batches(prefix: str, n: int, wrong: bool) -> dict[str, list[int]]:
            labels = {}
            for i in range(n):
                out = ac.infer(
                    "labelled",
                    {"x": rng.standard_normal((64, 4)).astype(np.float32)},
                    request_id=f"{prefix}-{i}",
                )
                predicted = np.argmax(out.outputs["y"], axis=1)
                labels[f"{prefix}-{i}"] = ((predicted + 1) % 4 if wrong else predicted).tolist()
            return labels

        # 64 rows a request: the most the agent keeps per request id for labels
        # right labels first: measured accuracy 1.0 reaches the fleet and raises nothing
        right = labelled_batches("right", 5, wrong=False)
        assert ac.feedback("labelled", right) == {"accepted": 5, "unknown": 0, "expired": 0, "invalid": 0}
        start = last_seq(stack, device)

        def measured() -> list[float]:
            return [
                w.model["quality"]["accuracy"]
                for w in windows(stack, device, "labelled")
                if w.seq > start and w.model and (w.model.get("quality") or {}).get("accuracy") is not None
            ]

        wait_until(lambda: len(measured()) >= 2, 15, "two windows with measured accuracy")
        assert measured()[-1] == 1.0
        assert stack.client.alerts(device_id=device) == []

        # then 960 rows labelled wrong: the window's accuracy falls to 320 / 1280
        wrong = labelled_batches("wrong", 15, wrong=True)
        assert ac.feedback("labelled", wrong)["accepted"] == 15
        wait_until(lambda: firing(stack, device, "accuracy"), 30, "a firing accuracy alert")
    alert = firing(stack, device, "accuracy")
    assert alert is not None and alert["model"] == "labelled"
    assert alert["value"] == pytest.approx(320 / 1280, abs=0.01)
    assert alert["threshold"] == pytest.approx(BUNDLE_ACCURACY - 0.05)
    assert "measured on 1280 labels" in alert["detail"]


def test_a_group_with_worse_recall_raises_a_bias_alert(stack: Stack, deploy: Callable[[str], Agent]) -> None:
    agent = deploy("fair")
    device = agent.device_id
    rng = np.random.default_rng(3)
    labels: dict[str, list[int]] = {}
    with AgentClient(f"http://127.0.0.1:{agent.port}") as ac:
        for group, n, truth in (("ward-a", 8, "right"), ("ward-b", 4, "positive")):
            for i in range(n):
                rid = f"{group}-{i}"
                out = ac.infer(
                    "fair",
                    {"x": rng.standard_normal((20, 4)).astype(np.float32)},
                    request_id=rid,
                    parameters={"group": group},
                )
                predicted = np.argmax(out.outputs["y"], axis=1)
                # ward-b: every row truly is class 1, and the model finds only about a quarter of them
                labels[rid] = predicted.tolist() if truth == "right" else [1] * len(predicted)
        assert ac.feedback("fair", labels)["accepted"] == 12
        wait_until(lambda: firing(stack, device, "bias"), 30, "a firing bias alert")
    alert = firing(stack, device, "bias")
    assert alert is not None and alert["model"] == "fair"
    # ward-a's recall is 1, ward-b's about 0.25: the equal opportunity difference is about 0.75
    assert 0.5 < alert["value"] <= 1.0 and alert["threshold"] == 0.1
    last = [w for w in windows(stack, device, "fair") if w.model and w.model.get("quality")][-1]
    groups = {g["group"]: g for g in last.model["quality"]["groups"]}  # type: ignore[index]
    assert groups["ward-a"]["recall"] == 1.0 and groups["ward-b"]["recall"] < 0.5


def test_a_shadow_phase_stops_a_subtly_worse_version_and_promotes_a_good_one(
    stack: Stack, deploy: Callable[[str], Agent]
) -> None:
    agent = deploy("shadowed")  # 1.0.0: y = 2x + 1
    device = agent.device_id
    rng = np.random.default_rng(4)
    # latency is left out of the gate: this machine's timings decide nothing here
    gates = {"shadow": {"min_samples": 40, "min_agreement": 0.95, "max_latency_factor": None}}
    with AgentClient(f"http://127.0.0.1:{agent.port}") as ac:

        def answer() -> str:
            return ac.infer("shadowed", {"x": rng.standard_normal((1, 4)).astype(np.float32)}).model_version

        def shadow_phase(version: str, **model: Any) -> tuple[dict[str, Any], set[str]]:
            """Roll ``version`` out with a shadow phase under live traffic: the rollout's end, and
            which versions answered callers meanwhile."""
            bundle = make_bundle(
                stack.root / "b", stack.key, name="shadowed", version=version, reference=reference(), **model
            )
            uploaded = stack.client.upload_bundle(bundle)
            rollout = stack.client.create_rollout(
                uploaded["id"], selector={"labels": {"dev": device}}, gates=gates
            )
            answered: set[str] = set()

            def ended() -> bool:
                answered.add(answer())
                return stack.client.rollout(rollout["id"])["state"] != "running"

            wait_until(ended, 60, f"the shadow phase of {version} to end")
            return stack.client.rollout(rollout["id"]), answered

        # subtly worse: column 0 gets 0.5 more, which changes about one answer in seven
        worse, answered = shadow_phase("1.1.0", bias=[2.0, 1.0, 1.0, 1.0])
        assert worse["state"] == "rolled_back", worse
        assert answered == {"1.0.0"}  # it never answered a caller
        agreement = [
            w.model["shadow"]["agreement"]
            for w in windows(stack, device, "shadowed")
            if w.model
            and (w.model.get("shadow") or {}).get("version") == "1.1.0"
            and w.model["shadow"].get("agreement") is not None
        ]
        assert agreement and 0.6 < agreement[-1] < 0.95, agreement

        # as good (the same answers, other scores): promoted after its shadow phase, then it serves
        good, answered = shadow_phase("1.2.0", scale=3.0)
        assert good["state"] == "succeeded", good
        assert "1.1.0" not in answered
        wait_until(lambda: answer() == "1.2.0", 30, "1.2.0 to answer callers")
