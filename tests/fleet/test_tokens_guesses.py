"""Wrong-token guesses: past the limit one address gets 429 with Retry-After and a WARNING names it."""

from __future__ import annotations

from pathlib import Path

import httpx

from fleet.api.failures import AuthFailures
from fleet.settings import FleetSettings
from tests.fleet.conftest import LiveFleet
from tests.support.fleet_proc import admin_token, run_fleet, serve_args

GUESSES = 300


def client(url: str, token: str, source: str) -> httpx.Client:
    return httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {token}"},
        transport=httpx.HTTPTransport(local_address=source),
        timeout=30,
    )


def test_300_wrong_guesses_get_429_and_a_warning_while_others_go_on(
    tmp_path: Path, signing_key: object
) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    token = admin_token(db)
    token_id = token.split("_")[1]
    with run_fleet(tmp_path / "fleet", serve_args(tmp_path, db, "")) as fleet:
        statuses: list[int] = []
        retry_after: set[str] = set()
        with client(fleet.url, "", "127.0.0.1") as guesser:
            for i in range(GUESSES):
                # wrong secrets of a real token id, unknown ids and malformed tokens all count
                guess = [f"ef_{token_id}_wrong{i}", f"ef_{i:016x}_x", "nonsense"][i % 3]
                r = guesser.get("/api/v1/devices", headers={"Authorization": f"Bearer {guess}"})
                statuses.append(r.status_code)
                if r.status_code == 429:
                    retry_after.add(r.headers["retry-after"])
                    assert "too many wrong tokens from 127.0.0.1" in r.json()["error"]
            # while refused, even the right token from that address waits: nothing is checked
            assert (
                guesser.get("/api/v1/devices", headers={"Authorization": f"Bearer {token}"}).status_code
                == 429
            )
        assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}
        assert retry_after and all(0 < int(s) <= 60 for s in retry_after)
        # the right token from another address is served as before
        with client(fleet.url, token, "127.0.0.2") as other:
            assert other.get("/api/v1/devices").status_code == 200
        warnings = [line for line in fleet.log.splitlines() if "WARNING" in line and "127.0.0.1" in line]
        assert len(warnings) == 1 and "wrong tokens from 127.0.0.1" in warnings[0], fleet.log[-2000:]


def test_the_table_is_bounded_and_a_refusal_ends() -> None:
    now = [0.0]
    failures = AuthFailures(3, 10.0, max_addresses=100, clock=lambda: now[0])
    for i in range(10_000):
        failures.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(failures) == 100
    for _ in range(2):
        failures.failed("192.0.2.1")
    assert failures.retry_after("192.0.2.1") is None
    failures.failed("192.0.2.1")
    assert failures.retry_after("192.0.2.1") == 10
    now[0] = 9.5
    assert failures.retry_after("192.0.2.1") == 1
    now[0] = 10.0
    assert failures.retry_after("192.0.2.1") is None
    # a new window: two more failures are not yet a refusal
    failures.failed("192.0.2.1")
    failures.failed("192.0.2.1")
    assert failures.retry_after("192.0.2.1") is None
    # failures spread over windows never add up to a refusal
    now[0] = 100.0
    for step in range(10):
        now[0] += 6.0
        failures.failed("192.0.2.9")
        assert failures.retry_after("192.0.2.9") is None, step


def test_a_revoked_token_is_a_stale_credential_not_a_guess(live_fleet: LiveFleet) -> None:
    """A decommissioned device still calling in must not get its site's address refused."""
    with live_fleet.http() as admin:
        made = admin.post("/api/v1/tokens", json={"role": "viewer"}).json()
        assert admin.delete(f"/api/v1/tokens/{made['id']}").status_code == 204
    with live_fleet.http(made["token"]) as stale:
        assert {stale.get("/api/v1/devices").status_code for _ in range(50)} == {401}
    with live_fleet.http() as admin:
        assert admin.get("/api/v1/devices").status_code == 200


def test_a_forged_x_forwarded_for_does_not_dodge_the_limit(tmp_path: Path, signing_key: object) -> None:
    """uvicorn believes X-Forwarded-For from 127.0.0.1 by default: a guesser on loopback could give
    each guess another address. The fleet believes it only from EDGEFLEET_TRUSTED_PROXIES."""
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    admin_token(db)
    with run_fleet(tmp_path / "fleet", serve_args(tmp_path, db, "")) as fleet:
        with client(fleet.url, "", "127.0.0.1") as guesser:
            statuses = [
                guesser.get(
                    "/api/v1/devices",
                    headers={"Authorization": f"Bearer ef_{i:016x}_x", "X-Forwarded-For": f"10.9.{i}.1"},
                ).status_code
                for i in range(FleetSettings().auth_failures_max + 5)
            ]
        assert 429 in statuses, statuses
        assert "10.9." not in fleet.log
