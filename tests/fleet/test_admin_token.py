"""``edge-fleet up`` keeps its first admin token (0600 in the data dir) instead of minting one per start."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx

from fleet import auth
from fleet.db.models import Token
from tests.fleet.conftest import Fleet
from tests.support.fleet_proc import run_fleet
from tests.support.mosquitto import free_port


def up_once(tmp_path: Path, data: Path, run: str) -> tuple[str, list[str]]:
    args = ["up", "--mqtt-listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data)]
    with run_fleet(tmp_path / run, args) as fleet:
        out = fleet.stdout_path.read_text().splitlines()
        token = out[-1]
        r = httpx.get(f"{fleet.url}/api/v1/devices", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
    return token, out


def test_a_restart_prints_the_same_admin_token(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first, out1 = up_once(tmp_path, data, "first")
    second, out2 = up_once(tmp_path, data, "second")
    assert first.startswith("ef_") and second == first
    assert any("(new, mode 0600)" in line for line in out1)
    assert any("kept from an earlier start" in line for line in out2)
    kept = data / "admin-token"
    assert kept.read_text().strip() == first
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600


def test_a_kept_token_the_database_no_longer_accepts_is_replaced(fleet: Fleet, tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    with fleet.ctx.db.session() as s:
        first, created = auth.kept_admin_token(s, path)
    assert created
    with fleet.ctx.db.session() as s:
        assert auth.kept_admin_token(s, path) == (first, False)
        s.get(Token, first.split("_")[1]).revoked = True  # type: ignore[union-attr]
    with fleet.ctx.db.session() as s:
        second, created = auth.kept_admin_token(s, path)
    assert created and second != first and path.read_text().strip() == second
    assert (
        fleet.client.get("/api/v1/devices", headers={"Authorization": f"Bearer {second}"}).status_code == 200
    )
    path.write_text("garbage\n")  # damaged by hand: replaced too, never an error at start
    with fleet.ctx.db.session() as s:
        third, created = auth.kept_admin_token(s, path)
    assert created and third not in (first, second)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
