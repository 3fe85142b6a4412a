"""Every change is on record at GET /api/v1/audit: who, what, when, from where; filtered and paged."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from fleet.audit import Action
from tests.fleet.conftest import LiveFleet
from tests.support.bundles import make_bundle
from tests.support.fleet_proc import BIN


def test_every_change_is_recorded_with_who_what_when_and_where(live_fleet: LiveFleet) -> None:
    t0 = time.time()
    with live_fleet.http() as admin:
        op = admin.post("/api/v1/tokens", json={"role": "operator", "name": "ops"}).json()
    with live_fleet.http(op["token"], source="127.0.0.3") as c:
        assert (
            c.post(
                "/api/v1/devices",
                json={"device_id": "cam-1", "labels": {"site": "a"}, "profile": "x86-server"},
            ).status_code
            == 201
        )
        assert c.patch("/api/v1/devices/cam-1", json={"labels": {"site": "b"}}).status_code == 200
        # a change that fails changes nothing and records nothing
        assert c.post("/api/v1/devices", json={"device_id": "cam-1"}).status_code == 409
        path = make_bundle(live_fleet.tmp / "src", live_fleet.key)
        with open(path, "rb") as f:
            bundle = c.post("/api/v1/bundles", files={"file": (path.name, f)}).json()
        rollout = c.post("/api/v1/rollouts", json={"bundle_id": bundle["id"]}).json()["id"]
        for step in ("pause", "resume", "rollback"):
            assert c.post(f"/api/v1/rollouts/{rollout}/{step}").status_code == 200
    with live_fleet.http() as admin:
        assert admin.delete(f"/api/v1/tokens/{op['id']}").status_code == 204
        assert admin.delete("/api/v1/devices/cam-1").status_code == 204
        page = admin.get("/api/v1/audit").json()
    entries = list(reversed(page["entries"]))
    assert page["next_before_id"] is None
    assert [(e["action"], e["target"]) for e in entries] == [
        (Action.TOKEN_CREATE, op["id"]),
        (Action.DEVICE_REGISTER, "cam-1"),
        (Action.DEVICE_UPDATE, "cam-1"),
        (Action.BUNDLE_UPLOAD, bundle["id"]),
        (Action.ROLLOUT_CREATE, rollout),
        (Action.ROLLOUT_PAUSE, rollout),
        (Action.ROLLOUT_RESUME, rollout),
        (Action.ROLLOUT_ROLLBACK, rollout),
        (Action.TOKEN_REVOKE, op["id"]),
        (Action.DEVICE_DELETE, "cam-1"),
    ]
    admin_id = live_fleet.admin_token.split("_")[1]
    by_operator = entries[1:8]
    assert {(e["actor_token_id"], e["actor_role"], e["actor_name"], e["address"]) for e in by_operator} == {
        (op["id"], "operator", "ops", "127.0.0.3")
    }
    assert {(e["actor_token_id"], e["actor_role"], e["address"]) for e in entries[8:] + entries[:1]} == {
        (admin_id, "admin", "127.0.0.1")
    }
    assert all(t0 <= e["time"] <= time.time() for e in entries)
    assert entries[0]["detail"] == {"role": "operator", "device_id": None}
    assert entries[2]["detail"] == {"labels": {"site": "b"}}
    assert entries[3]["detail"]["sha256"] == bundle["sha256"]
    assert entries[7]["detail"]["state"] == "rolled_back"


def test_audit_is_admin_only_filtered_and_paged(live_fleet: LiveFleet) -> None:
    for i in range(5):
        live_fleet.register(f"d{i}")
    with live_fleet.http() as admin:
        viewer = admin.post("/api/v1/tokens", json={"role": "viewer"}).json()
        operator = admin.post("/api/v1/tokens", json={"role": "operator"}).json()
        for token in (viewer, operator):
            with live_fleet.http(token["token"]) as other:
                assert other.get("/api/v1/audit").status_code == 403
        first = admin.get("/api/v1/audit", params={"action": "device.register", "limit": 2}).json()
        assert [e["target"] for e in first["entries"]] == ["d4", "d3"]
        second = admin.get(
            "/api/v1/audit",
            params={"action": "device.register", "limit": 2, "before_id": first["next_before_id"]},
        ).json()
        assert [e["target"] for e in second["entries"]] == ["d2", "d1"]
        mine = admin.get("/api/v1/audit", params={"actor": live_fleet.admin_token.split("_")[1]}).json()
        assert len(mine["entries"]) == 7
        assert (
            admin.get("/api/v1/audit", params={"target": "d3"}).json()["entries"][0]["action"]
            == "device.register"
        )
        future = admin.get("/api/v1/audit", params={"since": time.time() + 60}).json()
        assert future == {"entries": [], "next_before_id": None}
        past = admin.get("/api/v1/audit", params={"until": 1.0}).json()
        assert past["entries"] == []
        assert admin.get("/api/v1/audit", params={"limit": 5000}).status_code == 422
        assert admin.get("/api/v1/audit", params={"action": "device.explode"}).status_code == 422


def test_cli_token_changes_are_recorded_as_the_local_user(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    run = [str(BIN), "token", "create", "--role", "admin", "--db", db]
    token = subprocess.run(run, capture_output=True, text=True, timeout=60, check=True).stdout.split()[-1]
    token_id = token.split("_")[1]
    revoke = [str(BIN), "token", "revoke", token_id, "--db", db]
    subprocess.run(revoke, capture_output=True, text=True, timeout=60, check=True)

    from fleet import audit
    from fleet.db.session import Database

    database = Database(db)
    with database.session() as s:
        got = [(e.action, e.target, e.address, e.actor_name) for e in reversed(audit.entries(s))]
    database.dispose()
    assert [g[:3] for g in got] == [("token.create", token_id, "local"), ("token.revoke", token_id, "local")]
    assert got[0][3].startswith("edge-fleet token create (") and got[1][3].startswith(
        "edge-fleet token revoke ("
    )


def test_every_state_changing_route_records_through_the_actor() -> None:
    """A route that changes state and does not take the request's Actor could not write an audit entry."""
    from fastapi.routing import APIRoute

    from fleet.api.deps import get_actor
    from fleet.app import create_app
    from fleet.settings import FleetSettings

    def calls(dependant, target) -> bool:  # type: ignore[no-untyped-def]
        return any(d.call is target or calls(d, target) for d in dependant.dependencies)

    def api_routes(routes) -> list[APIRoute]:  # type: ignore[no-untyped-def]
        # this FastAPI keeps included routers whole (their routes under ``original_router``)
        found: list[APIRoute] = []
        for r in routes:
            if isinstance(r, APIRoute):
                found.append(r)
            elif hasattr(r, "original_router"):
                found += api_routes(r.original_router.routes)
        return found

    routes = api_routes(create_app(FleetSettings()).routes)
    changing = [r for r in routes if r.methods & {"POST", "PUT", "PATCH", "DELETE"}]
    assert len(changing) >= 10, [r.path for r in changing]
    assert [r.path for r in changing if not calls(r.dependant, get_actor)] == []


def test_the_sdk_client_manages_tokens_and_reads_the_audit(live_fleet: LiveFleet) -> None:
    from sdk.errors import AuthError
    from sdk.fleet_client import FleetClient

    with FleetClient(live_fleet.url, live_fleet.admin_token) as api:
        made = api.create_token("viewer", name="kiosk", expires_in=3600)
        assert made["expires_at"] > time.time() and made["token"].startswith("ef_")
        assert "kiosk" in {t["name"] for t in api.tokens()}
        api.revoke_token(made["id"])
        assert made["id"] not in {t["id"] for t in api.tokens(include_revoked=False)}
        page = api.audit(action="token.revoke")
        assert [e["target"] for e in page["entries"]] == [made["id"]]
    with FleetClient(live_fleet.url, made["token"]) as revoked:
        try:
            revoked.devices()
        except AuthError as exc:
            assert "was revoked" in str(exc)
        else:
            raise AssertionError("a revoked token was accepted")
