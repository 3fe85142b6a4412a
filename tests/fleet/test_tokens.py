"""Tokens are managed: listed without secrets, revoked, expired; over real HTTP on loopback and the CLI."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from fleet import auth
from fleet.db.models import Token
from fleet.db.session import MIGRATIONS, Database, migrate
from tests.fleet.conftest import LiveFleet
from tests.support.fleet_proc import BIN


def edge_fleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=60)


def test_tokens_are_listed_without_secrets(live_fleet: LiveFleet) -> None:
    live_fleet.register("cam-1")
    with live_fleet.http() as admin:
        made = admin.post("/api/v1/tokens", json={"role": "viewer", "name": "alice"}).json()
        r = admin.get("/api/v1/tokens")
        assert r.status_code == 200
        listed = {t["id"]: t for t in r.json()}
        assert made["id"] in listed and listed[made["id"]]["name"] == "alice"
        assert {t["role"] for t in listed.values()} == {"admin", "viewer", "device"}
        assert [t["device_id"] for t in listed.values() if t["role"] == "device"] == ["cam-1"]
        secret = made["token"].split("_", 2)[2]
        assert secret not in r.text and "sha256" not in r.text
        only = admin.get("/api/v1/tokens", params={"device_id": "cam-1"}).json()
        assert [t["role"] for t in only] == ["device"]
    with live_fleet.http(made["token"]) as viewer:
        assert viewer.get("/api/v1/tokens").status_code == 403


def test_paging_numbers_past_the_database_s_integers_are_a_4xx(live_fleet: LiveFleet) -> None:
    """Schemathesis found GET /api/v1/tokens?offset=<huge> answering 500 (SQLite's 64-bit binding)."""
    with live_fleet.http() as admin:
        assert admin.get("/api/v1/tokens", params={"offset": 2**70}).status_code == 422
        assert admin.get("/api/v1/audit", params={"before_id": 2**70}).status_code == 422
        assert admin.get("/api/v1/tokens", params={"offset": 2**31 - 1}).json() == []


def test_a_revoked_token_is_refused_everywhere(live_fleet: LiveFleet) -> None:
    with live_fleet.http() as admin:
        made = admin.post("/api/v1/tokens", json={"role": "operator"}).json()
        with live_fleet.http(made["token"]) as operator:
            assert operator.get("/api/v1/devices").status_code == 200
            assert admin.delete(f"/api/v1/tokens/{made['id']}").status_code == 204
            r = operator.get("/api/v1/devices")
            assert r.status_code == 401 and r.json()["error"] == f"token {made['id']} was revoked"
            assert operator.post("/api/v1/devices", json={"device_id": "x"}).status_code == 401
        listed = {t["id"]: t for t in admin.get("/api/v1/tokens").json()}
        assert listed[made["id"]]["revoked"] is True and listed[made["id"]]["revoked_at"] > 0
        assert admin.delete("/api/v1/tokens/nosuchtoken").status_code == 404
        active = admin.get("/api/v1/tokens", params={"include_revoked": "false"}).json()
        assert made["id"] not in {t["id"] for t in active}


def test_an_expired_token_gets_401_saying_so(live_fleet: LiveFleet) -> None:
    with live_fleet.http() as admin:
        t0 = time.time()
        r = admin.post("/api/v1/tokens", json={"role": "viewer", "expires_in": 3})
        assert r.status_code == 201
        made = r.json()
        assert t0 + 3 <= made["expires_at"] <= time.time() + 3
        later = time.time() + 3600
        kept = admin.post("/api/v1/tokens", json={"role": "viewer", "expires_at": later}).json()
        assert kept["expires_at"] == later
        assert (
            admin.post("/api/v1/tokens", json={"role": "viewer", "expires_at": time.time() - 1}).status_code
            == 400
        )
        both = admin.post("/api/v1/tokens", json={"role": "viewer", "expires_in": 5, "expires_at": later})
        assert both.status_code == 422 and "not both" in both.json()["error"]
    with live_fleet.http(made["token"]) as viewer, live_fleet.http(kept["token"]) as other:
        assert viewer.get("/api/v1/devices").status_code == 200
        while time.time() < made["expires_at"]:
            time.sleep(0.1)
        r = viewer.get("/api/v1/devices")
        assert r.status_code == 401 and r.json()["error"].startswith(f"token {made['id']} expired at 20")
        assert other.get("/api/v1/devices").status_code == 200


def test_device_tokens_name_a_registered_device(live_fleet: LiveFleet) -> None:
    live_fleet.register("cam-1")
    with live_fleet.http() as admin:
        r = admin.post("/api/v1/tokens", json={"role": "device", "device_id": "ghost"})
        assert (
            r.status_code == 404 and r.json()["error"] == "no device ghost is registered; register it first"
        )
        assert admin.post("/api/v1/tokens", json={"role": "device"}).status_code == 400
        assert admin.post("/api/v1/tokens", json={"role": "viewer", "device_id": "cam-1"}).status_code == 400
        spare = admin.post("/api/v1/tokens", json={"role": "device", "device_id": "cam-1"}).json()
    with live_fleet.http(spare["token"]) as device:
        assert device.get("/api/v1/devices/cam-1").status_code == 200
        assert device.get("/api/v1/devices").status_code == 403


def test_cli_refuses_a_device_token_for_an_unknown_device_and_lists_and_revokes(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    r = edge_fleet("token", "create", "--role", "device", "--device-id", "ghost", "--db", db)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == "edge-fleet: error: no device ghost is registered; register it first"
    r = edge_fleet("token", "create", "--role", "viewer", "--name", "bob", "--expires-in", "2h", "--db", db)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip().splitlines()[-1]
    token_id = token.split("_")[1]
    listed = edge_fleet("token", "list", "--db", db)
    assert listed.returncode == 0 and token.split("_", 2)[2] not in listed.stdout
    row = next(line for line in listed.stdout.splitlines() if line.startswith(token_id))
    assert row.split()[1:4] == ["viewer", "-", "bob"] and row.split()[-1] == "active"
    assert edge_fleet("token", "revoke", token_id, "--db", db).returncode == 0
    row = next(
        line
        for line in edge_fleet("token", "list", "--db", db).stdout.splitlines()
        if line.startswith(token_id)
    )
    assert row.split()[-1] == "revoked"
    assert token_id not in edge_fleet("token", "list", "--active", "--db", db).stdout
    missing = edge_fleet("token", "revoke", "nosuch", "--db", db)
    assert missing.returncode == 1 and missing.stderr.strip() == "edge-fleet: error: no token nosuch"
    database = Database(db)
    with database.session() as s:
        assert s.get(Token, token_id).revoked  # type: ignore[union-attr]
    database.dispose()


def test_upgrade_revokes_tokens_of_devices_deleted_before_it(db_url: str) -> None:
    """Before 0003, deleting a device left its token valid; the upgrade revokes such tokens."""
    db = Database(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO devices (id, labels, mqtt_password_hash, created_at, online, desired_revision, "
                "desired_models, reported_revision, reported_models, telemetry_seq) "
                "VALUES ('kept', '{}', 'x', 0, false, 0, '[]', -1, '[]', -1)"
            )
        )
        for token_id, device in (("orphan", "'gone'"), ("live", "'kept'")):
            conn.execute(
                text(
                    "INSERT INTO tokens (id, role, secret_sha256, device_id, created_at, revoked) "
                    f"VALUES ('{token_id}', 'device', :sha, {device}, 0, false)"
                ),
                {"sha": auth.sha256_hex("s")},
            )
    migrate(db.engine)
    with db.session() as s:
        assert s.get(Token, "orphan").revoked  # type: ignore[union-attr]
        assert not s.get(Token, "live").revoked  # type: ignore[union-attr]
        assert auth.check_token(s, "ef_live_s").device_id == "kept"
    db.dispose()
