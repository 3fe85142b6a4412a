"""The rollout controller pass by pass: devices report through the real ingest path (no broker)."""

from __future__ import annotations

import time

from fleet.ingest import Ingest
from fleet.rollout.controller import RolloutController
from fleet.rollout.service import plan_waves
from fleet.schemas import Strategy
from sdk.messages import Event, ModelTelemetry, ReportedModel, ReportedState, Telemetry
from sdk.topics import topic
from tests.fleet.conftest import Fleet


def report(
    fleet: Fleet,
    device_id: str,
    revision: int,
    version: str | None,
    state: str = "active",
    error: str | None = None,
    *,
    fetch: bool = True,
) -> None:
    """``device_id`` reports; an honest device that reports a version active downloaded it first."""
    if fetch and state == "active" and version is not None and revision > 0:
        fleet.fetch_desired(device_id)
    msg = ReportedState(
        revision=revision,
        models=[ReportedModel(name="tiny", version=version, state=state, error=error)] if version else [],
        agent_version="test",
        last_error=error,
    )
    ingest(fleet, [(topic("reported", device_id), msg.to_bytes())])


def ingest(fleet: Fleet, items: list[tuple[str, bytes]]) -> None:
    Ingest(fleet.ctx.db, None, fleet.ctx.metrics).process([(t, p, time.time()) for t, p in items])  # type: ignore[arg-type]


def controller(fleet: Fleet) -> RolloutController:
    return RolloutController(fleet.ctx.db, fleet.published, "http://fleet.test")


def rollout(fleet: Fleet, rollout_id: str) -> dict:
    return fleet.client.get(f"/api/v1/rollouts/{rollout_id}", headers=fleet.admin).json()


def states(fleet: Fleet, rollout_id: str) -> dict[str, str]:
    return {d["device_id"]: d["state"] for d in rollout(fleet, rollout_id)["devices"]}


def create(fleet: Fleet, bundle_id: str, **body: object) -> str:
    r = fleet.client.post("/api/v1/rollouts", json={"bundle_id": bundle_id, **body}, headers=fleet.admin)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def started(fleet: Fleet, devices: int, **body: object) -> tuple[str, RolloutController]:
    """Devices d0, d1, ... and a rollout of bundle 2.0.0 to all of them, after the controller's first pass."""
    for i in range(devices):
        fleet.register(f"d{i}")
    b = fleet.upload(version="2.0.0")
    rid = create(fleet, b["id"], **body)
    ctl = controller(fleet)
    ctl.tick()
    return rid, ctl


def paused_by_a_failed_canary(fleet: Fleet, devices: int, error: str) -> tuple[str, RolloutController]:
    """A one-canary rollout without auto roll back whose canary failed: the gate has paused it."""
    rid, ctl = started(fleet, devices, strategy={"canary_count": 1}, gates={"auto_rollback": False})
    canary = next(d for d, s in states(fleet, rid).items() if s == "updating")
    report(fleet, canary, 1, "2.0.0", state="failed", error=error)
    ctl.tick()
    assert rollout(fleet, rid)["state"] == "paused"
    return rid, ctl


def test_plan_waves() -> None:
    assert plan_waves(10, Strategy(canary_count=1, waves=3)) == [0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert plan_waves(4, Strategy(canary_share=0.5)) == [0, 0, 1, 1]
    assert plan_waves(3, Strategy()) == [0, 0, 0]
    assert plan_waves(2, Strategy(canary_count=5)) == [0, 0]


def test_canary_then_waves_reach_every_device(fleet: Fleet) -> None:
    for i in range(5):
        fleet.register(f"d{i}", site="lab")
    fleet.register("other", site="elsewhere")
    b = fleet.upload(version="2.0.0")
    rid = create(
        fleet, b["id"], selector={"labels": {"site": "lab"}}, strategy={"canary_count": 1, "waves": 2}
    )
    ctl = controller(fleet)
    ctl.tick()
    assert list(states(fleet, rid).values()).count("updating") == 1  # only the canary
    canary = next(d for d, s in states(fleet, rid).items() if s == "updating")
    desired = fleet.published.last(canary)
    assert desired.revision == 1 and desired.models[0].version == "2.0.0" and desired.rollout_id == rid
    assert desired.models[0].bundle_url.endswith(f"/api/v1/bundles/{b['id']}/download")
    ctl.tick()
    assert list(states(fleet, rid).values()).count("updating") == 1  # waits for the canary
    report(fleet, canary, 1, "2.0.0")
    ctl.tick()  # canary active -> baking -> succeeded (no bake time), next wave starts next pass
    ctl.tick()
    s = states(fleet, rid)
    assert s[canary] == "succeeded" and list(s.values()).count("updating") == 2
    for device_id in [d for d, st in s.items() if st == "updating"]:
        report(fleet, device_id, 1, "2.0.0")
    ctl.tick()
    ctl.tick()
    for device_id in [d for d, st in states(fleet, rid).items() if st == "updating"]:
        report(fleet, device_id, 1, "2.0.0")
    ctl.tick()
    r = rollout(fleet, rid)
    assert r["state"] == "succeeded", r
    assert r["counts"] == {"succeeded": 5}
    assert "other" not in states(fleet, rid)
    assert not [d for d, _ in fleet.published.messages if d == "other"]


def test_failing_canary_rolls_back_and_never_touches_the_others(fleet: Fleet) -> None:
    for i in range(3):
        fleet.register(f"d{i}")
    v1 = fleet.upload(version="1.0.0")
    first = create(fleet, v1["id"])
    ctl = controller(fleet)
    ctl.tick()
    for i in range(3):
        report(fleet, f"d{i}", 1, "1.0.0")
    ctl.tick()
    assert rollout(fleet, first)["state"] == "succeeded"

    v2 = fleet.upload(version="2.0.0", broken=True)
    rid = create(fleet, v2["id"], strategy={"canary_count": 1})
    ctl.tick()
    canary = next(d for d, s in states(fleet, rid).items() if s == "updating")
    others = [d for d in ("d0", "d1", "d2") if d != canary]
    # the agent's smoke test fails; it keeps 1.0.0 and says so
    ingest(
        fleet,
        [
            (
                topic("events", canary),
                Event(
                    kind="failure",
                    ok=False,
                    model="tiny",
                    version="2.0.0",
                    revision=2,
                    reason="smoke test failed",
                ).to_bytes(),
            )
        ],
    )
    report(fleet, canary, 2, "1.0.0", error="smoke test failed: output y differs")
    ctl.tick()
    r = rollout(fleet, rid)
    assert r["state"] == "rolled_back" and "1 of 1 started devices failed" in r["reason"]
    s = states(fleet, rid)
    assert s[canary] == "rolled_back" and all(s[d] == "skipped" for d in others)
    restored = fleet.published.last(canary)
    assert restored.revision == 3 and restored.models[0].version == "1.0.0"
    for d in others:
        assert fleet.published.last(d).models[0].version == "1.0.0" and fleet.published.last(d).revision == 1


def test_error_rate_gate_during_bake_rolls_back_the_baked_devices(fleet: Fleet) -> None:
    rid, ctl = started(fleet, 2, gates={"max_error_rate": 0.1, "min_requests": 10, "bake_s": 3600})
    report(fleet, "d0", 1, "2.0.0")
    report(fleet, "d1", 1, "2.0.0")
    ctl.tick()
    assert set(states(fleet, rid).values()) == {"baking"}
    # d0's other model fails a lot: that is not this rollout's business
    other = ModelTelemetry(name="camera-filter", version="7", requests=100, errors=90)
    ok = ModelTelemetry(name="tiny", version="2.0.0", requests=100, errors=1)
    bad = ModelTelemetry(name="tiny", version="2.0.0", requests=100, errors=40)
    ingest(
        fleet,
        [
            (topic("telemetry", "d0"), Telemetry(seq=1, interval_s=10, models=[ok, other]).to_bytes()),
            (topic("telemetry", "d1"), Telemetry(seq=1, interval_s=10, models=[bad]).to_bytes()),
        ],
    )
    ctl.tick()
    r = rollout(fleet, rid)
    assert r["state"] == "rolled_back"
    assert {d["device_id"]: d["state"] for d in r["devices"]} == {"d0": "rolled_back", "d1": "rolled_back"}
    d1 = next(d for d in r["devices"] if d["device_id"] == "d1")
    assert "error rate 0.400" in d1["error"]
    d0 = next(d for d in r["devices"] if d["device_id"] == "d0")
    assert d0["error"] is None  # rolled back with the rollout, not failed on its own
    assert fleet.published.last("d0").models == [] and fleet.published.last("d0").revision == 2


def test_failure_share_gate_tolerates_one_of_four(fleet: Fleet) -> None:
    rid, ctl = started(fleet, 4, gates={"max_failure_share": 0.25})
    report(fleet, "d0", 1, None, state="failed", error="disk full")
    for i in (1, 2, 3):
        report(fleet, f"d{i}", 1, "2.0.0")
    ctl.tick()
    r = rollout(fleet, rid)
    assert r["state"] == "succeeded" and r["counts"] == {"failed": 1, "succeeded": 3}
    assert fleet.published.last("d0").revision == 2 and fleet.published.last("d0").models == []


def test_gate_pauses_without_auto_rollback_and_manual_resume_rollback(fleet: Fleet) -> None:
    rid, ctl = paused_by_a_failed_canary(fleet, 2, "activate failed")
    h = fleet.admin
    assert fleet.client.post(f"/api/v1/rollouts/{rid}/pause", headers=h).status_code == 409
    ctl.tick()
    assert rollout(fleet, rid)["state"] == "paused"
    r = fleet.client.post(f"/api/v1/rollouts/{rid}/rollback", headers=h)
    assert r.status_code == 200 and r.json()["state"] == "rolled_back"
    assert fleet.client.post(f"/api/v1/rollouts/{rid}/resume", headers=h).status_code == 409


def test_manual_pause_stops_new_starts_and_resume_continues(fleet: Fleet) -> None:
    rid, ctl = started(fleet, 3, strategy={"max_in_flight": 1})
    assert list(states(fleet, rid).values()).count("updating") == 1
    assert fleet.client.post(f"/api/v1/rollouts/{rid}/pause", headers=fleet.admin).json()["state"] == "paused"
    first = next(d for d, s in states(fleet, rid).items() if s == "updating")
    report(fleet, first, 1, "2.0.0")
    ctl.tick()
    assert list(states(fleet, rid).values()).count("pending") == 2
    fleet.client.post(f"/api/v1/rollouts/{rid}/resume", headers=fleet.admin)
    ctl.tick()
    ctl.tick()
    assert list(states(fleet, rid).values()).count("updating") == 1
    # a device in a running rollout cannot join another one
    bundle_id = rollout(fleet, rid)["bundle_id"]
    again = fleet.client.post("/api/v1/rollouts", json={"bundle_id": bundle_id}, headers=fleet.admin)
    assert again.status_code == 409


def test_rollout_state_survives_a_restart(fleet: Fleet) -> None:
    fleet.register("d0")
    b = fleet.upload(version="2.0.0")
    rid = create(fleet, b["id"])
    controller(fleet).tick()
    # a new controller (a restarted fleet) picks up from the database alone
    report(fleet, "d0", 1, "2.0.0")
    fresh = RolloutController(fleet.ctx.db, fleet.published, "http://fleet.test")
    fresh.tick()
    assert rollout(fleet, rid)["state"] == "succeeded"


def test_offline_device_converges_when_it_returns(fleet: Fleet) -> None:
    fleet.register("d0")
    b = fleet.upload(version="2.0.0")
    rid = create(fleet, b["id"])
    ctl = controller(fleet)
    for _ in range(3):
        ctl.tick()  # no report: the device is offline; without a timeout the rollout waits
    assert states(fleet, rid) == {"d0": "updating"}
    report(fleet, "d0", 1, "2.0.0")
    ctl.tick()
    assert rollout(fleet, rid)["state"] == "succeeded"


def test_update_timeout_fails_a_silent_device(fleet: Fleet) -> None:
    rid, ctl = started(fleet, 1, gates={"update_timeout_s": 5, "max_failure_share": 1.0})
    ctl.tick(now=time.time() + 10)
    r = rollout(fleet, rid)
    assert r["devices"][0]["state"] == "failed" and "no report" in r["devices"][0]["error"]


def test_resume_after_a_gate_pause_accepts_the_failures_so_far(fleet: Fleet) -> None:
    rid, ctl = paused_by_a_failed_canary(fleet, 3, "flaky sensor")
    fleet.client.post(f"/api/v1/rollouts/{rid}/resume", headers=fleet.admin)
    ctl.tick()
    assert rollout(fleet, rid)["state"] == "running"
    others = [d for d, s in states(fleet, rid).items() if s == "updating"]
    assert len(others) == 2
    report(fleet, others[0], 1, "2.0.0", state="failed", error="another failure")
    ctl.tick()
    r = rollout(fleet, rid)
    assert r["state"] == "paused" and "another failure" in r["reason"]
