"""REST API through the real app (FastAPI TestClient): auth, devices, bundles, Range, OpenAPI."""

from __future__ import annotations

from pathlib import Path

from sdk import keys
from sdk.credentials import DeviceCredentials
from tests.fleet.conftest import Fleet
from tests.support.bundles import make_bundle


def test_every_api_call_needs_a_valid_token(fleet: Fleet) -> None:
    c = fleet.client
    assert c.get("/api/v1/devices").status_code == 401
    r = c.get("/api/v1/devices", headers={"Authorization": "Bearer ef_nope_nope"})
    assert r.status_code == 401 and "invalid" in r.json()["error"]
    assert c.get("/api/v1/devices", headers=fleet.admin).status_code == 200


def test_roles_limit_what_a_token_may_do(fleet: Fleet) -> None:
    viewer = fleet.token("viewer")
    r = fleet.client.post("/api/v1/devices", json={"device_id": "d1"}, headers=viewer)
    assert r.status_code == 403 and "operator" in r.json()["error"]
    assert fleet.client.get("/api/v1/devices", headers=viewer).status_code == 200
    operator = fleet.token("operator")
    assert fleet.client.post("/api/v1/tokens", json={"role": "viewer"}, headers=operator).status_code == 403
    r = fleet.client.post("/api/v1/tokens", json={"role": "viewer"}, headers=fleet.admin)
    assert r.status_code == 201
    assert (
        fleet.client.get(
            "/api/v1/devices", headers={"Authorization": f"Bearer {r.json()['token']}"}
        ).status_code
        == 200
    )


def test_register_returns_credentials_and_lists_with_labels(fleet: Fleet) -> None:
    creds = DeviceCredentials.model_validate(fleet.register("cam-1", site="lab", tier="a"))
    fleet.register("cam-2", site="shop")
    assert creds.device_id == "cam-1" and creds.mqtt_username == "cam-1"
    assert creds.token.startswith("ef_") and len(creds.mqtt_password) > 30
    r = fleet.client.get("/api/v1/devices", params={"label": "site=lab"}, headers=fleet.admin)
    assert [d["id"] for d in r.json()] == ["cam-1"]
    assert r.json()[0]["labels"] == {"site": "lab", "tier": "a"} and r.json()[0]["online"] is False
    # the device's own token reads itself, not others
    own = {"Authorization": f"Bearer {creds.token}"}
    assert fleet.client.get("/api/v1/devices/cam-1", headers=own).status_code == 200
    assert fleet.client.get("/api/v1/devices/cam-2", headers=own).status_code == 403
    assert fleet.client.get("/api/v1/devices", headers=own).status_code == 403
    dup = fleet.client.post("/api/v1/devices", json={"device_id": "cam-1"}, headers=fleet.admin)
    assert dup.status_code == 409 and "already" in dup.json()["error"]
    bad = fleet.client.post("/api/v1/devices", json={"device_id": "a/b"}, headers=fleet.admin)
    assert bad.status_code == 422 and "error" in bad.json()


def test_upload_verifies_against_trusted_keys(fleet: Fleet, tmp_path: Path) -> None:
    b = fleet.upload(version="1.0.0")
    assert b["name"] == "tiny" and b["version"] == "1.0.0" and len(b["sha256"]) == 64
    # signed by a key the fleet does not trust: refused, nothing stored
    stranger = keys.generate_key()
    path = make_bundle(tmp_path / "other", stranger, version="2.0.0")
    with open(path, "rb") as f:
        r = fleet.client.post("/api/v1/bundles", files={"file": (path.name, f)}, headers=fleet.admin)
    assert r.status_code == 422 and "not among the trusted keys" in r.json()["error"]
    # a tampered signature: refused
    good = make_bundle(tmp_path / "tamper", fleet.key, version="3.0.0")
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    r = fleet.client.post("/api/v1/bundles", files={"file": ("x.efb", bytes(data))}, headers=fleet.admin)
    assert 400 <= r.status_code < 500 and r.json()["error"]
    r = fleet.client.post("/api/v1/bundles", files={"file": ("x.efb", b"not a bundle")}, headers=fleet.admin)
    assert r.status_code == 422
    listed = fleet.client.get("/api/v1/bundles", headers=fleet.admin).json()
    assert [x["version"] for x in listed] == ["1.0.0"]
    again = make_bundle(tmp_path / "again", fleet.key, version="1.0.0")
    with open(again, "rb") as f:
        r = fleet.client.post("/api/v1/bundles", files={"file": (again.name, f)}, headers=fleet.admin)
    assert r.status_code == 409


def test_download_with_device_token_and_range_resume(fleet: Fleet) -> None:
    b = fleet.upload()
    creds = fleet.register("cam-1")
    # a device token downloads only what its desired state names: a rollout gives it the bundle
    assert (
        fleet.client.post("/api/v1/rollouts", json={"bundle_id": b["id"]}, headers=fleet.admin).status_code
        == 201
    )
    fleet.ctx.controller.tick()  # type: ignore[union-attr]
    auth = {"Authorization": f"Bearer {creds['token']}"}
    url = f"/api/v1/bundles/{b['id']}/download"
    assert fleet.client.get(url).status_code == 401
    full = fleet.client.get(url, headers=auth)
    assert full.status_code == 200 and len(full.content) == b["size"]
    assert full.headers.get("accept-ranges") == "bytes"
    # a download cut at byte 100 resumes from there
    cut = 100
    part = fleet.client.get(url, headers={**auth, "Range": f"bytes={cut}-"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes {cut}-{b['size'] - 1}/{b['size']}"
    assert full.content[:cut] + part.content == full.content
    import hashlib

    assert hashlib.sha256(full.content[:cut] + part.content).hexdigest() == b["sha256"]
    bad = fleet.client.get(url, headers={**auth, "Range": f"bytes={b['size'] + 10}-"})
    assert bad.status_code == 416


def test_openapi_documents_the_resources(fleet: Fleet) -> None:
    spec = fleet.client.get("/api/v1/openapi.json").json()
    for path in (
        "/api/v1/devices",
        "/api/v1/bundles",
        "/api/v1/rollouts",
        "/api/v1/rollouts/{rollout_id}/rollback",
    ):
        assert path in spec["paths"]
    assert fleet.client.get("/docs").status_code == 200


def test_metrics_expose_fleet_state(fleet: Fleet) -> None:
    fleet.register("cam-1")
    text = fleet.client.get("/metrics").text
    assert 'edgefleet_devices{online="false"} 1.0' in text


def test_oversized_upload_is_refused_while_streaming(fleet: Fleet) -> None:
    fleet.ctx.settings.max_bundle_mb = 0.001  # about 1 KiB
    r = fleet.client.post(
        "/api/v1/bundles", files={"file": ("big.efb", b"\x1f\x8b" + b"0" * 4096)}, headers=fleet.admin
    )
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    assert not list((fleet.tmp / "store" / ".incoming").iterdir())
