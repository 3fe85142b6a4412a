"""GET /api/v1/devices/{id}/telemetry (the dashboard's charts), rollout actions and reasons in words."""

from __future__ import annotations

import time

from fleet.rollout.service import describe_done
from fleet.rollout.states import RolloutState, operator_actions
from sdk.messages import ModelTelemetry, Telemetry
from sdk.topics import topic
from tests.fleet.conftest import Fleet
from tests.fleet.test_rollout_controller import ingest


def _sample(seq: int, t: float, *models: ModelTelemetry) -> tuple[str, bytes]:
    msg = Telemetry(time=t, seq=seq, interval_s=10, cpu_percent=seq, memory_percent=50, models=list(models))
    return topic("telemetry", "d1"), msg.to_bytes()


def _model(name: str, p50: float, p99: float, drift: dict[str, float]) -> ModelTelemetry:
    return ModelTelemetry(
        name=name, version="1", requests=10, errors=1, latency_ms_p50=p50, latency_ms_p99=p99, drift=drift
    )


def test_history_is_oldest_first_bounded_and_folds_models_into_the_worst(fleet: Fleet) -> None:
    fleet.register("d1")
    now = time.time()
    ingest(fleet, [_sample(i, now - 100 + i) for i in range(5)])
    ingest(fleet, [_sample(5, now - 7200)])  # outside the default hour
    ingest(
        fleet,
        [
            _sample(
                6, now - 1, _model("a", 2.0, 9.0, {"x": 0.1}), _model("b", 3.0, 4.0, {"x": 0.05, "y": 0.4})
            )
        ],
    )
    get = fleet.client.get
    points = get("/api/v1/devices/d1/telemetry", headers=fleet.token("viewer")).json()
    assert [p["cpu_percent"] for p in points] == [0, 1, 2, 3, 4, 6]
    last = points[-1]
    assert (last["latency_ms_p50"], last["latency_ms_p99"], last["drift"]) == (3.0, 9.0, 0.4)
    assert (last["requests"], last["errors"]) == (20, 2)
    assert points[0]["latency_ms_p50"] is None and points[0]["drift"] is None
    newest = get("/api/v1/devices/d1/telemetry?limit=2", headers=fleet.admin).json()
    assert [p["cpu_percent"] for p in newest] == [4, 6]
    day = get("/api/v1/devices/d1/telemetry?window_s=86400", headers=fleet.admin).json()
    assert len(day) == 7
    assert get("/api/v1/devices/d1/telemetry?limit=100000", headers=fleet.admin).status_code == 422
    assert get("/api/v1/devices/d1/telemetry?window_s=0", headers=fleet.admin).status_code == 422
    assert get("/api/v1/devices/nope/telemetry", headers=fleet.admin).status_code == 404
    assert get("/api/v1/devices/d1/telemetry").status_code == 401


def test_rollouts_offer_only_the_actions_their_state_allows() -> None:
    assert operator_actions(RolloutState.RUNNING) == ["pause", "rollback"]
    assert operator_actions("paused") == ["resume", "rollback"]
    assert operator_actions("succeeded") == ["rollback"]
    assert operator_actions("rolled_back") == []


def test_a_finished_rollout_says_what_happened_in_words() -> None:
    assert describe_done({"skipped": 1, "succeeded": 2, "failed": 0}) == "done: 2 succeeded, 1 skipped"
    assert describe_done({"rolled_back": 1}) == "done: 1 rolled back"
    assert describe_done({}) == "done: no devices matched"


def test_the_api_lists_actions_and_bundle_metrics(fleet: Fleet) -> None:
    from tests.fleet.dashboard_fixtures import METRICS

    fleet.register("d1")
    bundle = fleet.upload(metrics=METRICS)
    assert bundle["metrics"]["size_bytes"] == {"source": 2_400_000, "converted": 610_000}
    listed = fleet.client.get("/api/v1/bundles", headers=fleet.admin).json()
    assert listed[0]["metrics"]["fidelity"]["argmax_agreement"] == 0.995
    r = fleet.client.post("/api/v1/rollouts", json={"bundle_id": bundle["id"]}, headers=fleet.admin).json()
    assert r["actions"] == ["pause", "rollback"]
    paused = fleet.client.post(f"/api/v1/rollouts/{r['id']}/pause", headers=fleet.admin).json()
    assert paused["actions"] == ["resume", "rollback"]
    assert fleet.client.get("/api/v1/rollouts", headers=fleet.admin).json()[0]["actions"] == [
        "resume",
        "rollback",
    ]
