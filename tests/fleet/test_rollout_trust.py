"""What a rollout believes (issue 14, findings 3 and 9) and what the fleet signs (finding 2).

Devices report through the real ingest path; downloads go through the real download route with
the device's own token, as in tests/fleet/test_rollout_controller.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleet import auth
from fleet.app import create_app
from fleet.db.models import Device
from fleet.settings import FleetSettings
from sdk import keys
from sdk.desired_auth import verify_desired
from tests.fleet.conftest import Fleet, Published
from tests.fleet.test_rollout_controller import controller, create, report, rollout, states


def test_a_forged_high_revision_is_refused_and_honest_reports_still_count(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    fleet.register("d0")
    b = fleet.upload(version="2.0.0")
    # before the rollout exists the device claims the highest revision the schema admits (2**62 is
    # refused earlier, as out of range) with the target version active
    with caplog.at_level(logging.WARNING, logger="fleet"):
        report(fleet, "d0", 2**31 - 1, "2.0.0", fetch=False)
    assert any(
        r.levelno == logging.WARNING
        and "device d0 (unissued_revision): reports revision 2147483647" in r.getMessage()
        for r in caplog.records
    )
    assert fleet.client.get("/api/v1/devices/d0", headers=fleet.admin).json()["reported_revision"] == -1

    rid = create(fleet, b["id"])
    ctl = controller(fleet)
    for _ in range(3):
        ctl.tick()
    assert states(fleet, rid) == {"d0": "updating"}  # the forged report completed nothing

    report(fleet, "d0", 1, "2.0.0")  # honest: downloads with its token, then reports revision 1
    ctl.tick()
    ctl.tick()
    assert states(fleet, rid) == {"d0": "succeeded"} and rollout(fleet, rid)["state"] == "succeeded"


def test_active_without_a_download_is_not_believed(fleet: Fleet) -> None:
    fleet.register("d0")
    b = fleet.upload(version="2.0.0")
    rid = create(fleet, b["id"])
    ctl = controller(fleet)
    ctl.tick()
    report(fleet, "d0", 1, "2.0.0", fetch=False)  # the right revision, but nothing was fetched
    ctl.tick()
    detail = rollout(fleet, rid)
    # failed, so the health gate rolled the rollout back
    assert detail["state"] == "rolled_back" and detail["devices"][0]["state"] == "rolled_back"
    assert "never downloaded the bundle" in detail["devices"][0]["error"]


def test_a_report_of_another_revision_does_not_count(fleet: Fleet) -> None:
    fleet.register("d0")
    b = fleet.upload(version="2.0.0")
    with fleet.ctx.db.session() as s:
        s.get(Device, "d0").desired_revision = 7  # the fleet had issued revisions before this rollout
    rid = create(fleet, b["id"])
    ctl = controller(fleet)
    ctl.tick()
    report(fleet, "d0", 7, "2.0.0", fetch=False)  # an old revision, below the one the rollout issued
    ctl.tick()
    assert states(fleet, rid) == {"d0": "updating"}
    report(fleet, "d0", 8, "2.0.0")
    ctl.tick()
    ctl.tick()
    assert states(fleet, rid) == {"d0": "succeeded"}


def test_a_device_the_fleet_already_gave_the_bundle_needs_no_download(fleet: Fleet) -> None:
    fleet.register("d0")
    b = fleet.upload(version="2.0.0")
    with fleet.ctx.db.session() as s:
        bundle_entry = {
            "name": "tiny",
            "version": "2.0.0",
            "bundle_url": "x",
            "sha256": b["sha256"],
            "size": 1,
        }
        s.get(Device, "d0").desired_models = [bundle_entry]
    rid = create(fleet, b["id"])
    ctl = controller(fleet)
    ctl.tick()
    report(fleet, "d0", 1, "2.0.0", fetch=False)
    ctl.tick()
    ctl.tick()
    assert states(fleet, rid) == {"d0": "succeeded"}


def register(fleet: Fleet, device_id: str, profile: str | None) -> None:
    body = {"device_id": device_id, **({"profile": profile} if profile else {})}
    assert fleet.client.post("/api/v1/devices", json=body, headers=fleet.admin).status_code == 201


def test_only_devices_of_the_bundles_profile_are_offered_it(fleet: Fleet) -> None:
    register(fleet, "no-profile", None)
    register(fleet, "jetson-1", "jetson")
    register(fleet, "x86-1", "x86-server")
    b = fleet.upload(version="2.0.0", profile="x86-server")
    rid = create(fleet, b["id"])
    devices = {d["device_id"]: d for d in rollout(fleet, rid)["devices"]}
    assert {k: d["state"] for k, d in devices.items()} == {
        "no-profile": "skipped",
        "jetson-1": "skipped",
        "x86-1": "pending",
    }
    assert "profile is unknown" in devices["no-profile"]["error"]
    assert "profile is jetson" in devices["jetson-1"]["error"]
    controller(fleet).tick()
    assert {d for d, _m in fleet.published.messages} == {"x86-1"}


def test_a_selector_naming_the_profile_leaves_other_profiles_out(fleet: Fleet) -> None:
    register(fleet, "no-profile", None)
    register(fleet, "jetson-1", "jetson")
    register(fleet, "x86-1", "x86-server")
    b = fleet.upload(version="2.0.0", profile="x86-server")
    rid = create(fleet, b["id"], selector={"profile": "x86-server"})
    seen = {d["device_id"]: d["state"] for d in rollout(fleet, rid)["devices"]}
    assert seen == {"no-profile": "skipped", "x86-1": "pending"}


def test_a_selector_with_no_device_of_the_profile_is_refused(fleet: Fleet) -> None:
    register(fleet, "no-profile", None)
    b = fleet.upload(version="2.0.0", profile="x86-server")
    r = fleet.client.post(
        "/api/v1/rollouts",
        json={"bundle_id": b["id"], "selector": {"device_ids": ["no-profile"]}},
        headers=fleet.admin,
    )
    assert r.status_code == 400 and "profile is unknown" in r.json()["error"]
    r = fleet.client.post(
        "/api/v1/rollouts",
        json={"bundle_id": b["id"], "selector": {"profile": "jetson"}},
        headers=fleet.admin,
    )
    assert r.status_code == 400 and "bundle is for x86-server" in r.json()["error"]


# ------------------------------------------------------------------------------ signed desired


def test_the_fleet_signs_what_devices_verify_with_the_key_pinned_at_registration(
    tmp_path: Path, signing_key
) -> None:  # type: ignore[no-untyped-def]
    settings = FleetSettings(
        db_url=f"sqlite:///{tmp_path / 'fleet.db'}",
        storage=str(tmp_path / "store"),
        trust_keys=[tmp_path / "keys" / "signing.pub"],
        controller_interval_s=0,
        fleet_key_file=tmp_path / "fleet-key",
        desired_validity_s=3600,
    )
    published = Published()
    with TestClient(create_app(settings, publisher=published)) as client:
        ctx = client.app.state.fleet  # type: ignore[attr-defined]
        assert (tmp_path / "fleet-key").stat().st_mode & 0o777 == 0o600
        with ctx.db.session() as s:
            admin = {"Authorization": f"Bearer {auth.create_token(s, 'admin')}"}
        f = Fleet(client, ctx, published, admin, signing_key, tmp_path)
        creds = f.register("d0")
        pinned = keys.public_key_from_b64(creds["fleet_key"])
        assert creds["profile"] == "x86-server"
        b = f.upload(version="2.0.0")
        rid = create(f, b["id"], gates={"update_timeout_s": 0.001})
        ctx.controller.tick()
        first = published.last("d0")
        got = verify_desired(first.to_bytes(), pinned, device_id="d0")
        assert got.revision == 1 and got.models[0].allow_downgrade is False
        assert got.expires is not None and abs(got.expires - got.issued_at - 3600) < 60

        # the update times out: the fleet restores the previous state, signed as an authorized downgrade
        ctx.controller.tick()
        assert states(f, rid) == {"d0": "rolled_back"}  # timed out, so the gate rolled back
        restored = verify_desired(published.last("d0").to_bytes(), pinned, device_id="d0")
        assert restored.revision == 2 and restored.models == []

        # republishing (the refresh before expiry) re-signs the same revision with a later expiry
        ctx.controller.republish_all()
        again = verify_desired(published.last("d0").to_bytes(), pinned, device_id="d0")
        assert again.revision == 2 and again.expires > restored.expires  # type: ignore[operator]


def test_a_rollback_restores_older_versions_marked_as_authorized(fleet: Fleet) -> None:
    fleet.register("d0")
    v1 = fleet.upload(version="1.0.0")
    v2 = fleet.upload(version="2.0.0")
    ctl = controller(fleet)
    r1 = create(fleet, v1["id"])
    ctl.tick()
    report(fleet, "d0", 1, "1.0.0")
    ctl.tick()
    ctl.tick()
    assert rollout(fleet, r1)["state"] == "succeeded"
    r2 = create(fleet, v2["id"])
    ctl.tick()
    r = fleet.client.post(f"/api/v1/rollouts/{r2}/rollback", json={}, headers=fleet.admin)
    assert r.status_code == 200, r.text
    back = fleet.published.last("d0")
    assert [(m.version, m.allow_downgrade) for m in back.models] == [("1.0.0", True)]
