"""Alert rules on real telemetry through the real ingest path: drift, accuracy, bias, latency;
pending -> firing -> resolved; /api/v1/alerts and /metrics."""

from __future__ import annotations

import time

import numpy as np

from fleet.retention import Retention, prune_device_data
from tests.fleet.conftest import Fleet
from tests.fleet.monitoring import MEASURED, Sender, ingest, quality
from tests.fleet.test_rollout_controller import controller, create, report


def alerts(fleet: Fleet, **query: str) -> list[dict]:
    r = fleet.client.get("/api/v1/alerts", params=query, headers=fleet.admin)
    assert r.status_code == 200, r.text
    return r.json()


def metric(fleet: Fleet, line_start: str) -> float | None:
    text = fleet.client.get("/metrics").text
    found = [ln for ln in text.splitlines() if ln.startswith(line_start)]
    return float(found[0].split()[-1]) if found else None


def setup(fleet: Fleet, *devices: str) -> dict[str, Sender]:
    fleet.upload(version="1.0.0", metrics=MEASURED)
    for d in devices:
        fleet.register(d)
    return {d: Sender(d) for d in devices}


def in_distribution(rng: np.random.Generator, sender: Sender) -> tuple[str, bytes]:
    """A window as a healthy ward sends it: small drift, accuracy near the bundle's, small gaps, fast."""
    return sender.window(
        psi=float(rng.uniform(0.0, 0.12)),
        p99=float(rng.uniform(1.0, 4.0)),
        quality=quality(
            labeled=60,
            accuracy=float(rng.uniform(0.88, 0.95)),
            estimated_accuracy=float(rng.uniform(0.88, 0.94)),
            prediction_drift=float(rng.uniform(0.0, 0.1)),
            demographic_parity_difference=float(rng.uniform(0.0, 0.06)),
            equal_opportunity_difference=float(rng.uniform(0.0, 0.06)),
        ),
    )


def test_a_hundred_in_distribution_windows_raise_no_alert(fleet: Fleet) -> None:
    senders = setup(fleet, "d0", "d1")
    rng = np.random.default_rng(9)
    for _ in range(10):  # ingest batches of 10 windows per device
        ingest(fleet, [in_distribution(rng, s) for s in senders.values() for _ in range(10)])
    assert alerts(fleet) == []
    for rule in ("drift", "accuracy", "bias", "latency"):
        assert metric(fleet, f'edgefleet_alerts{{rule="{rule}",state="firing"}}') == 0.0
        assert metric(fleet, f'edgefleet_alerts{{rule="{rule}",state="pending"}}') == 0.0


def test_shifted_inputs_fire_a_drift_alert_within_three_windows_and_resolve(fleet: Fleet) -> None:
    s = setup(fleet, "d0", "d1")
    rng = np.random.default_rng(1)
    ingest(fleet, [in_distribution(rng, x) for x in s.values() for _ in range(5)])
    shifted = s["d0"].window(psi=0.9)
    ingest(fleet, [shifted])
    (pending,) = alerts(fleet)
    assert pending["rule"] == "drift" and pending["state"] == "pending" and pending["device_id"] == "d0"
    ingest(fleet, [shifted])  # the same message again (QoS 1): the same window, not a second one
    assert alerts(fleet)[0]["state"] == "pending" and alerts(fleet)[0]["streak"] == 1
    ingest(fleet, [s["d0"].window(psi=0.8)])
    (firing,) = alerts(fleet)
    assert firing["state"] == "firing" and firing["value"] == 0.8 and firing["threshold"] == 0.25
    assert (firing["model"], firing["version"]) == ("tiny", "1.0.0")
    assert "input x" in firing["detail"]
    assert alerts(fleet, device_id="d1") == []
    assert metric(fleet, 'edgefleet_alerts{rule="drift",state="firing"}') == 1.0
    assert (
        metric(
            fleet,
            'edgefleet_device_model_quality{device_id="d0",model="tiny",rule="drift",state="firing",version="1.0.0"}',
        )
        == 0.8
    )
    ingest(fleet, [in_distribution(rng, s["d0"])])
    (resolved,) = alerts(fleet)
    assert resolved["state"] == "resolved" and resolved["since"] >= firing["since"]
    assert alerts(fleet, state="open") == [] and len(alerts(fleet, state="resolved")) == 1
    # it can fire again: a new row, the resolved one stays for the record
    ingest(fleet, [s["d0"].window(psi=0.7), s["d0"].window(psi=0.7)])
    assert [a["state"] for a in alerts(fleet)] == ["firing", "resolved"]


def test_prediction_drift_alone_fires_too(fleet: Fleet) -> None:
    s = setup(fleet, "d0")["d0"]
    ingest(fleet, [s.window(psi=None, quality=quality(prediction_drift=0.6)) for _ in range(2)])
    (a,) = alerts(fleet)
    assert a["rule"] == "drift" and a["state"] == "firing" and "predictions" in a["detail"]


def test_wrong_labels_fire_an_accuracy_alert_against_the_bundles_accuracy(fleet: Fleet) -> None:
    s = setup(fleet, "d0", "d1")
    # d0's labels fed back say 0.6; d1 has no labels, and its confidence estimates 0.7
    ingest(
        fleet,
        [s["d0"].window(quality=quality(labeled=80, accuracy=0.6, estimated_accuracy=0.9)) for _ in range(2)],
    )
    ingest(fleet, [s["d1"].window(quality=quality(estimated_accuracy=0.7)) for _ in range(2)])
    by_device = {a["device_id"]: a for a in alerts(fleet, rule="accuracy")}
    assert by_device["d0"]["state"] == "firing" and by_device["d0"]["value"] == 0.6
    assert abs(by_device["d0"]["threshold"] - (0.91 - 0.05)) < 1e-9
    assert "measured on 80 labels" in by_device["d0"]["detail"]
    assert by_device["d1"]["state"] == "firing" and "estimated" in by_device["d1"]["detail"]
    # within 5 points of the bundle's 0.91: resolved
    ingest(fleet, [s["d0"].window(quality=quality(labeled=80, accuracy=0.87))])
    assert alerts(fleet, device_id="d0")[0]["state"] == "resolved"


def test_a_group_gap_fires_a_bias_alert(fleet: Fleet) -> None:
    s = setup(fleet, "d0")["d0"]
    gap = quality(
        labeled=100, accuracy=0.9, demographic_parity_difference=0.04, equal_opportunity_difference=0.3
    )
    ingest(fleet, [s.window(quality=gap) for _ in range(2)])
    (a,) = alerts(fleet)
    assert a["rule"] == "bias" and a["state"] == "firing" and a["value"] == 0.3
    assert a["detail"] == "equal opportunity difference"


def test_slow_p99_fires_a_latency_alert_against_the_bundles_latency(fleet: Fleet) -> None:
    s = setup(fleet, "d0")["d0"]
    ingest(fleet, [s.window(p99=7.0), s.window(p99=9.0)])  # 7.0 is within 5 x 1.5 ms
    (a,) = alerts(fleet)
    assert a["rule"] == "latency" and a["state"] == "pending" and a["threshold"] == 7.5
    ingest(fleet, [s.window(p99=12.0)])
    assert alerts(fleet)[0]["state"] == "firing"


def test_a_rollouts_thresholds_apply_to_its_devices_on_its_version(fleet: Fleet) -> None:
    s = setup(fleet, "d0", "d1")
    b = fleet.upload(version="2.0.0", metrics=MEASURED)
    rid = create(fleet, b["id"], selector={"device_ids": ["d0"]}, alerts={"drift_psi": 1.0, "windows": 1})
    controller(fleet).tick()
    report(fleet, "d0", 1, "2.0.0")
    ingest(fleet, [s["d0"].window(version="2.0.0", psi=0.9), s["d1"].window(psi=0.9)])
    assert [a["device_id"] for a in alerts(fleet)] == ["d1"]  # d1: the defaults, pending
    ingest(fleet, [s["d0"].window(version="2.0.0", psi=1.2)])
    (a,) = alerts(fleet, device_id="d0")
    assert a["state"] == "firing" and a["threshold"] == 1.0  # one window is enough for this rollout
    detail = fleet.client.get(f"/api/v1/rollouts/{rid}", headers=fleet.admin).json()
    assert detail["alert_thresholds"] == {"drift_psi": 1.0, "windows": 1}


def test_alert_filters_and_viewer_access(fleet: Fleet) -> None:
    s = setup(fleet, "d0")["d0"]
    ingest(fleet, [s.window(psi=0.9, p99=50.0) for _ in range(2)])
    viewer = fleet.token("viewer")
    r = fleet.client.get("/api/v1/alerts", params={"state": "firing", "rule": "latency"}, headers=viewer)
    assert r.status_code == 200 and [a["rule"] for a in r.json()] == ["latency"]
    assert fleet.client.get("/api/v1/alerts").status_code == 401
    assert fleet.client.get("/api/v1/alerts", params={"state": "bogus"}, headers=viewer).status_code == 422


def test_resolved_alerts_are_pruned_by_count_and_age_and_open_ones_stay(fleet: Fleet) -> None:
    s = setup(fleet, "d0")["d0"]
    for _ in range(5):  # a flapping drift alert: fires, resolves, fires again
        ingest(fleet, [s.window(psi=0.9), s.window(psi=0.9), s.window(psi=0.01)])
    ingest(fleet, [s.window(psi=0.9), s.window(psi=0.9)])
    assert [a["state"] for a in alerts(fleet)].count("resolved") == 5
    with fleet.ctx.db.session() as session:
        assert prune_device_data(session, Retention(alerts_per_device=2), time.time()).alerts == 3
    assert [a["state"] for a in alerts(fleet)] == ["firing", "resolved", "resolved"]
    with fleet.ctx.db.session() as session:
        assert prune_device_data(session, Retention(alerts_s=60), time.time() + 3600).alerts == 2
    assert [a["state"] for a in alerts(fleet)] == ["firing"]


def test_a_selector_policy_sets_thresholds_for_the_devices_it_matches(fleet: Fleet) -> None:
    fleet.upload(version="1.0.0", metrics=MEASURED)
    fleet.register("icu-1", site="icu")
    fleet.register("ward-1", site="ward")
    body = {
        "selector": {"labels": {"site": "icu"}, "model": "tiny"},
        "thresholds": {"drift_psi": 0.5, "windows": 1},
    }
    assert (
        fleet.client.put("/api/v1/alerts/policies/icu", json=body, headers=fleet.token("viewer")).status_code
        == 403
    )
    r = fleet.client.put("/api/v1/alerts/policies/icu", json=body, headers=fleet.admin)
    assert r.status_code == 200 and r.json()["thresholds"] == {"drift_psi": 0.5, "windows": 1}
    icu, ward = Sender("icu-1"), Sender("ward-1")
    ingest(fleet, [icu.window(psi=0.4), ward.window(psi=0.4)])
    assert [(a["device_id"], a["state"]) for a in alerts(fleet)] == [("ward-1", "pending")]
    ingest(fleet, [icu.window(psi=0.6)])
    (a,) = alerts(fleet, device_id="icu-1")
    assert a["state"] == "firing" and a["threshold"] == 0.5  # one window is enough there
    bad = {"selector": {}, "thresholds": {"drift_psi": -1}}
    assert fleet.client.put("/api/v1/alerts/policies/x", json=bad, headers=fleet.admin).status_code == 422
    assert [p["name"] for p in fleet.client.get("/api/v1/alerts/policies", headers=fleet.admin).json()] == [
        "icu"
    ]
    assert fleet.client.delete("/api/v1/alerts/policies/icu", headers=fleet.admin).status_code == 204
    assert fleet.client.delete("/api/v1/alerts/policies/icu", headers=fleet.admin).status_code == 404
    actions = [e["action"] for e in fleet.client.get("/api/v1/audit", headers=fleet.admin).json()["entries"]]
    assert actions[:2] == ["alert_policy.delete", "alert_policy.set"]


def test_an_update_resolves_the_alerts_of_the_version_it_replaced(fleet: Fleet) -> None:
    s = setup(fleet, "d0")["d0"]
    ingest(fleet, [s.window(psi=0.9), s.window(psi=0.9)])
    assert alerts(fleet)[0]["state"] == "firing"
    ingest(fleet, [s.window(version="2.0.0", psi=0.01)])  # 1.0.0 no longer serves on d0
    (a,) = alerts(fleet)
    assert a["version"] == "1.0.0" and a["state"] == "resolved" and "no longer reported" in a["detail"]
