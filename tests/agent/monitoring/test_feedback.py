"""``POST /v2/models/{name}/feedback`` on a real agent: labels join earlier requests by their id,
and the version's telemetry carries what they show."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.service import AgentService
from agent.store import ModelStore
from sdk.agent_client import AgentClient
from sdk.errors import InvalidInputError, ModelNotFoundError


@pytest.fixture
def agent(
    store: ModelStore, make_affine: Callable[..., Path], start_agent: Callable[..., AgentService]
) -> AgentService:
    store.install(make_affine())
    return start_agent(monitor_min_samples=10)


def test_labels_fed_back_late_and_batched_become_accuracy_per_group(agent: AgentService) -> None:
    rng = np.random.default_rng(0)
    labels: dict[str, object] = {}
    with AgentClient(agent.url) as client:
        for i in range(40):
            x = rng.standard_normal((1, 4)).astype(np.float32)
            out = client.infer(
                "affine",
                {"x": x},
                request_id=f"req-{i}",
                parameters={"group": "ward-a" if i < 20 else "ward-b"},
            )
            predicted = int(out.outputs["y"].argmax())
            # ward-b gets every label wrong
            labels[f"req-{i}"] = predicted if i < 20 else (predicted + 1) % 4
        # a batched request: one label per row
        client.infer("affine", {"x": rng.standard_normal((2, 4)).astype(np.float32)}, request_id="batch")
        answer = client.feedback("affine", {**labels, "batch": [0, 1], "never-seen": 2})
        assert answer == {"accepted": 41, "unknown": 1, "expired": 0, "invalid": 0}
        # a label that does not fit (three rows for a one-row request, a class the model lacks)
        client.infer("affine", {"x": np.zeros((1, 4), np.float32)}, request_id="late")
        assert client.feedback("affine", [("late", [0, 1, 2])]) == {
            "accepted": 0,
            "unknown": 0,
            "expired": 0,
            "invalid": 1,
        }

    [telemetry] = agent.repository.telemetry_snapshot()
    q = telemetry.quality
    assert q is not None and q.samples == 43 and q.labeled == 42 and q.min_samples == 10
    assert q.accuracy == pytest.approx(22 / 42, abs=0.03)
    by_group = {g.group: g for g in q.groups}
    assert by_group["ward-a"].accuracy == 1.0 and by_group["ward-b"].accuracy == 0.0
    assert q.estimated_accuracy is not None and q.nan_share == 0.0


def test_bad_feedback_is_a_4xx_and_the_agent_keeps_serving(agent: AgentService) -> None:
    url = f"{agent.url}/v2/models/affine/feedback"
    assert httpx.post(url, content=b"{not json").status_code == 400
    assert httpx.post(url, json={"labels": []}).status_code == 400
    assert httpx.post(url, json={"feedback": [{"id": "x", "label": 1}] * 10_001}).status_code == 400
    big = httpx.post(url, content=b"[" + b" " * (5 * 1024 * 1024) + b"]")
    assert big.status_code == 413
    assert httpx.get(url).status_code == 405
    assert httpx.post(f"{agent.url}/v2/models/nope/feedback", json={"feedback": []}).status_code == 404
    with AgentClient(agent.url) as client:
        with pytest.raises(ModelNotFoundError):
            client.feedback("nope", {})
        with pytest.raises(InvalidInputError):  # a group is a site or band, not a record
            client.infer("affine", {"x": np.zeros((1, 4), np.float32)}, parameters={"group": "g" * 65})
        assert client.infer("affine", {"x": np.zeros((1, 4), np.float32)}).model_version == "1"


def test_monitoring_off_answers_feedback_with_404(
    store: ModelStore, make_affine: Callable[..., Path], start_agent: Callable[..., AgentService]
) -> None:
    store.install(make_affine())
    agent = start_agent(monitoring=False)
    with AgentClient(agent.url) as client:
        client.infer("affine", {"x": np.zeros((1, 4), np.float32)}, request_id="a")
        with pytest.raises(ModelNotFoundError, match="not monitored"):
            client.feedback("affine", {"a": 1})
    [telemetry] = agent.repository.telemetry_snapshot()
    assert telemetry.quality is None and telemetry.requests == 1


def test_labels_join_predictions_made_before_a_restart(
    store: ModelStore, make_affine: Callable[..., Path], start_agent: Callable[..., AgentService]
) -> None:
    store.install(make_affine())
    first = start_agent(monitor_min_samples=5)
    labels: dict[str, object] = {}
    with AgentClient(first.url) as client:
        for i in range(6):
            out = client.infer("affine", {"x": np.full((1, 4), i, np.float32)}, request_id=f"before-{i}")
            labels[f"before-{i}"] = int(out.outputs["y"].argmax())
    first.stop()
    saved = (first.settings.data_dir / "monitoring" / "affine.ledger.jsonl").read_text()
    assert saved.count("\n") == 6 and "before-0" in saved

    second = start_agent(monitor_min_samples=5)
    with AgentClient(second.url) as client:
        assert client.feedback("affine", labels) == {"accepted": 6, "unknown": 0, "expired": 0, "invalid": 0}
    [telemetry] = second.repository.telemetry_snapshot()
    assert telemetry.quality is not None and telemetry.quality.accuracy == 1.0
