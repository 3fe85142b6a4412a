"""A rollout's shadow phase, pass by pass, with real telemetry through the real ingest path: each
device runs the new version as a shadow beside the active one and is promoted only when its own
shadow figures pass; a worse version is stopped before it serves anyone."""

from __future__ import annotations

import pytest

from sdk.messages import ReportedModel, ReportedState, ShadowQuality
from sdk.topics import topic
from tests.fleet.conftest import Fleet
from tests.fleet.monitoring import MEASURED, Sender, ingest
from tests.fleet.test_rollout_controller import controller, create, report, rollout, states

SHADOW = {"min_samples": 100, "min_agreement": 0.95, "max_latency_factor": 1.5, "max_accuracy_drop": 0.02}


def shadowing(fleet: Fleet) -> tuple[str, object, str, str]:
    """d0 and d1 run 1.0.0; a rollout of 2.0.0 with a shadow phase has started its canary."""
    for d in ("d0", "d1"):
        fleet.register(d)
    v1 = fleet.upload(version="1.0.0", metrics=MEASURED)
    create(fleet, v1["id"])
    ctl = controller(fleet)
    ctl.tick()
    for d in ("d0", "d1"):
        report(fleet, d, 1, "1.0.0")
    ctl.tick()
    v2 = fleet.upload(version="2.0.0", metrics=MEASURED)
    rid = create(fleet, v2["id"], strategy={"canary_count": 1}, gates={"shadow": SHADOW})
    ctl.tick()
    s = states(fleet, rid)
    canary = next(d for d, st in s.items() if st == "shadowing")
    other = next(d for d in s if d != canary)
    assert s[other] == "pending"
    return rid, ctl, canary, other


def shadow(
    agreement: float = 0.99,
    p99: float = 2.2,
    accuracy: float | None = 0.9,
    errors: int = 0,
    samples: int = 120,
) -> ShadowQuality:
    """The agent's shadow figures over its rolling window (every message repeats the window)."""
    return ShadowQuality(
        version="2.0.0",
        samples=samples,
        agreement=agreement,
        latency_ms_p50=p99 / 2,
        latency_ms_p99=p99,
        active_latency_ms_p50=1.0,
        active_latency_ms_p99=2.0,
        accuracy=accuracy,
        active_accuracy=0.9 if accuracy is not None else None,
        errors=errors,
    )


def served_versions(fleet: Fleet) -> set[str]:
    """Every version any published desired state ever asked a device to serve (not as a shadow)."""
    return {m.version for _, msg in fleet.published.messages for m in msg.models if not m.shadow}


def test_the_desired_state_carries_the_shadow_beside_the_active_version(fleet: Fleet) -> None:
    rid, _, canary, _ = shadowing(fleet)
    models = {(m.version, m.shadow) for m in fleet.published.last(canary).models}
    assert models == {("1.0.0", False), ("2.0.0", True)}
    assert fleet.published.last(canary).rollout_id == rid


def test_a_good_shadow_is_promoted_and_the_rollout_goes_on(fleet: Fleet) -> None:
    rid, ctl, canary, other = shadowing(fleet)
    s = Sender(canary)
    ingest(fleet, [s.window(shadow=shadow()), s.window(shadow=shadow())])
    ctl.tick()
    # figures about a bundle the device never fetched are not believed
    assert states(fleet, rid)[canary] == "shadowing"
    fleet.fetch_desired(canary)
    ctl.tick()
    assert states(fleet, rid)[canary] == "updating"
    promoted = fleet.published.last(canary)
    assert [(m.version, m.shadow) for m in promoted.models] == [("2.0.0", False)]
    report(fleet, canary, promoted.revision, "2.0.0")
    ctl.tick()
    ctl.tick()
    assert states(fleet, rid) == {canary: "succeeded", other: "shadowing"}


def test_too_few_shadow_samples_wait(fleet: Fleet) -> None:
    rid, ctl, canary, _ = shadowing(fleet)
    fleet.fetch_desired(canary)
    s = Sender(canary)
    # 60 samples in the window, repeated by the next message (no more samples); then a window
    # without figures (below the agent's k) must not count either
    ingest(
        fleet,
        [
            s.window(shadow=shadow(agreement=0.5, samples=60)),
            s.window(shadow=shadow(agreement=0.5, samples=60)),
            s.window(shadow=ShadowQuality(version="2.0.0", samples=150)),
        ],
    )
    ctl.tick()
    assert states(fleet, rid)[canary] == "shadowing" and rollout(fleet, rid)["state"] == "running"


@pytest.mark.parametrize(
    ("figures", "why"),
    [
        ({"agreement": 0.8}, "shadow agreement 0.800 over 120 samples < 0.95"),
        ({"p99": 4.0}, "shadow p99 4.00 ms > 1.5 x active 2.00 ms"),
        ({"accuracy": 0.85}, "shadow accuracy 0.850 < active 0.900"),
        ({"errors": 3}, "shadow failed 3 of 123 mirrored requests"),
    ],
    ids=["agreement", "latency", "accuracy", "errors"],
)
def test_a_worse_shadow_stops_the_rollout_before_the_version_serves_anyone(
    fleet: Fleet, figures: dict, why: str
) -> None:
    rid, ctl, canary, other = shadowing(fleet)
    fleet.fetch_desired(canary)
    s = Sender(canary)
    ingest(fleet, [s.window(shadow=shadow(**figures)), s.window(shadow=shadow(**figures))])
    ctl.tick()
    r = rollout(fleet, rid)
    assert r["state"] == "rolled_back", r
    assert why in next(d for d in r["devices"] if d["device_id"] == canary)["error"]
    assert states(fleet, rid) == {canary: "rolled_back", other: "skipped"}
    assert served_versions(fleet) == {"1.0.0"}  # 2.0.0 only ever went out as a shadow
    restored = fleet.published.last(canary)
    assert [(m.version, m.shadow) for m in restored.models] == [("1.0.0", False)]


def test_a_device_without_an_active_version_has_nothing_to_shadow_and_updates(fleet: Fleet) -> None:
    fleet.register("fresh")
    b = fleet.upload(version="2.0.0", metrics=MEASURED)
    rid = create(fleet, b["id"], gates={"shadow": SHADOW})
    controller(fleet).tick()
    assert states(fleet, rid) == {"fresh": "updating"}
    assert [(m.version, m.shadow) for m in fleet.published.last("fresh").models] == [("2.0.0", False)]


def test_a_device_that_serves_the_shadow_version_fails_at_once(fleet: Fleet) -> None:
    rid, ctl, canary, _ = shadowing(fleet)
    # an agent that ignores DesiredModel.shadow installs and activates the entry like any other
    report(fleet, canary, fleet.published.last(canary).revision, "2.0.0")
    ctl.tick()
    r = rollout(fleet, rid)
    assert r["state"] == "rolled_back" and "given only as a shadow" in r["reason"]
    assert [(m.version, m.shadow) for m in fleet.published.last(canary).models] == [("1.0.0", False)]


def test_a_shadow_the_device_cannot_install_fails_it(fleet: Fleet) -> None:
    rid, ctl, canary, _ = shadowing(fleet)
    revision = fleet.published.last(canary).revision
    msg = ReportedState(
        revision=revision,
        agent_version="test",
        models=[
            ReportedModel(name="tiny", version="1.0.0", state="active", active_version="1.0.0"),
            ReportedModel(
                name="tiny", version="2.0.0", state="failed", active_version="1.0.0", error="hash mismatch"
            ),
        ],
    )
    ingest(fleet, [(topic("reported", canary), msg.to_bytes())])
    ctl.tick()
    r = rollout(fleet, rid)
    assert r["state"] == "rolled_back" and "shadow: hash mismatch" in r["reason"]
