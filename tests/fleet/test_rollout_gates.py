"""Rollout gates on each device's own monitoring figures, pass by pass, with real telemetry through
the real ingest path: a wave waits for N requests on the new version, then passes or fails on
error rate, p99, drift and accuracy; one device's figures decide only its own gate."""

from __future__ import annotations

import pytest

from tests.fleet.conftest import Fleet
from tests.fleet.monitoring import MEASURED, Sender, ingest, quality
from tests.fleet.test_rollout_controller import controller, create, report, rollout, states

GATES = {
    "min_served_requests": 500,
    "max_error_rate": 0.05,
    "max_latency_factor": 3.0,  # 3 x the bundle's 1.5 ms
    "max_drift": 0.3,
    "max_accuracy_drop": 0.05,  # the bundle measured 0.91
}
HEALTHY = {"p99": 2.0, "psi": 0.05}


def baking_canary(fleet: Fleet, devices: int, canaries: int = 1, **gates: object) -> tuple[str, object]:
    for i in range(devices):
        fleet.register(f"d{i}")
    b = fleet.upload(version="2.0.0", metrics=MEASURED)
    rid = create(fleet, b["id"], strategy={"canary_count": canaries}, gates={**GATES, **gates})
    ctl = controller(fleet)
    ctl.tick()
    for d in [d for d, st in states(fleet, rid).items() if st == "updating"]:
        report(fleet, d, 1, "2.0.0")
    ctl.tick()
    assert list(states(fleet, rid).values()).count("baking") == canaries
    return rid, ctl


def test_a_wave_waits_for_n_requests_on_the_new_version_then_passes(fleet: Fleet) -> None:
    rid, ctl = baking_canary(fleet, 2)
    canary = next(d for d, st in states(fleet, rid).items() if st == "baking")
    other = next(d for d in ("d0", "d1") if d != canary)
    s = Sender(canary)
    good = quality(labeled=100, accuracy=0.9)
    # requests on another version (the old one, still warm) do not count towards the new one
    ingest(
        fleet, [s.window(version="1.0.0", requests=5000), s.window(version="2.0.0", quality=good, **HEALTHY)]
    )
    ingest(fleet, [s.window(version="2.0.0", quality=good, **HEALTHY)])
    ctl.tick()
    assert states(fleet, rid) == {canary: "baking", other: "pending"}  # 400 of 500: the wave waits
    ingest(fleet, [s.window(version="2.0.0", quality=good, **HEALTHY)])
    ctl.tick()
    assert states(fleet, rid)[canary] == "succeeded"
    ctl.tick()
    assert states(fleet, rid)[other] == "updating"  # the next wave starts


@pytest.mark.parametrize(
    ("window", "why"),
    [
        ({"errors": 30}, "error rate 0.150 over 600 requests"),
        ({"p99": 9.0}, "latency p99 9.00 ms > 4.50 ms"),
        ({"psi": 0.6}, "drift 0.600 > 0.3"),
        ({"quality": quality(labeled=100, accuracy=0.7)}, "accuracy 0.700 over 100 labels < 0.860"),
    ],
    ids=["errors", "latency", "drift", "accuracy"],
)
def test_a_failed_gate_rolls_back_before_the_next_wave(fleet: Fleet, window: dict, why: str) -> None:
    rid, ctl = baking_canary(fleet, 2)
    canary = next(d for d, st in states(fleet, rid).items() if st == "baking")
    s = Sender(canary)
    figures = {**HEALTHY, "quality": quality(labeled=100, accuracy=0.9), **window}
    ingest(fleet, [s.window(version="2.0.0", **figures) for _ in range(3)])
    ctl.tick()
    r = rollout(fleet, rid)
    assert r["state"] == "rolled_back", r
    failed = next(d for d in r["devices"] if d["device_id"] == canary)
    assert why in failed["error"]
    assert "pending" not in {d["state"] for d in r["devices"]}  # the next wave never started
    assert fleet.published.last(canary).models == []  # its previous desired state (none) is back


def test_without_auto_rollback_a_failed_gate_pauses(fleet: Fleet) -> None:
    rid, ctl = baking_canary(fleet, 2, auto_rollback=False)
    canary = next(d for d, st in states(fleet, rid).items() if st == "baking")
    ingest(fleet, [Sender(canary).window(version="2.0.0", p99=2.0, psi=0.9, requests=600)])
    ctl.tick()
    assert rollout(fleet, rid)["state"] == "paused"


def test_a_device_with_absurd_figures_passes_only_itself(fleet: Fleet) -> None:
    # wave 0: d0 and d1; wave 1: d2
    rid, ctl = baking_canary(fleet, 3, canaries=2)
    wave0 = sorted(d for d, st in states(fleet, rid).items() if st == "baking")
    braggart, honest = wave0
    perfect = quality(labeled=2_000_000_000, accuracy=1.0)
    ingest(
        fleet,
        [
            Sender(braggart).window(
                version="2.0.0", requests=2_000_000_000, p99=0.0, psi=0.0, quality=perfect
            ),
            Sender(honest).window(version="2.0.0", requests=100, **HEALTHY),
        ],
    )
    ctl.tick()
    ctl.tick()
    s = states(fleet, rid)
    assert s[braggart] == "succeeded" and s[honest] == "baking"  # its own 100 of 500 requests
    assert "pending" in s.values()  # the last wave still waits for the honest device
    ingest(fleet, [Sender(honest).window(version="2.0.0", requests=600, p99=2.0, psi=0.7)])
    ctl.tick()
    r = rollout(fleet, rid)
    assert r["state"] == "rolled_back" and "drift 0.607" in r["reason"]  # its requests weigh its windows


def test_gates_relative_to_a_figure_the_bundle_lacks_are_refused(fleet: Fleet) -> None:
    fleet.register("d0")
    b = fleet.upload(version="2.0.0")  # no measured accuracy or latency in its manifest
    for gates, field in (
        ({"max_accuracy_drop": 0.05}, "max_accuracy_drop"),
        ({"max_latency_factor": 2}, "max_latency_factor"),
    ):
        r = fleet.client.post(
            "/api/v1/rollouts", json={"bundle_id": b["id"], "gates": gates}, headers=fleet.admin
        )
        assert r.status_code == 400 and field in r.json()["error"], r.text
