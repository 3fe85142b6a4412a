"""Fleet fixtures: a database per test (SQLite, and PostgreSQL when a server is there), an app, tokens."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from fleet import auth
from fleet.app import create_app
from fleet.context import FleetContext
from fleet.settings import FleetSettings
from sdk import keys
from sdk.messages import DesiredState
from tests.fleet.live_server import serve_in_thread
from tests.support.bundles import make_bundle
from tests.support.mosquitto import free_port
from tests.support.postgres import temporary_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
    else:
        with temporary_database() as url:
            yield url


@dataclass
class Published:
    """Records desired states instead of sending them (the app's ``publisher`` seam)."""

    messages: list[tuple[str, DesiredState]] = field(default_factory=list)

    def __call__(self, device_id: str, message: DesiredState) -> None:
        self.messages.append((device_id, message))

    def last(self, device_id: str) -> DesiredState:
        return [m for d, m in self.messages if d == device_id][-1]


@dataclass
class Fleet:
    client: TestClient
    ctx: FleetContext
    published: Published
    admin: dict[str, str]
    key: keys.Ed25519PrivateKey
    tmp: Path
    #: device id -> the Authorization header of its own token (from registration).
    device_tokens: dict[str, dict[str, str]] = field(default_factory=dict)

    def token(self, role: str) -> dict[str, str]:
        with self.ctx.db.session() as s:
            return {"Authorization": f"Bearer {auth.create_token(s, role)}"}  # type: ignore[arg-type]

    def upload(self, **kwargs: object) -> dict:
        path = make_bundle(self.tmp / "bundles-src", self.key, **kwargs)  # type: ignore[arg-type]
        with open(path, "rb") as f:
            r = self.client.post("/api/v1/bundles", files={"file": (path.name, f)}, headers=self.admin)
        assert r.status_code == 201, r.text
        return r.json()

    def register(self, device_id: str, **labels: str) -> dict:
        r = self.client.post(
            "/api/v1/devices",
            json={"device_id": device_id, "labels": labels, "profile": "x86-server"},
            headers=self.admin,
        )
        assert r.status_code == 201, r.text
        self.device_tokens[device_id] = {"Authorization": f"Bearer {r.json()['token']}"}
        return r.json()

    def fetch_desired(self, device_id: str) -> None:
        """Download, with the device's own token, every bundle its last desired state names (as an agent does)."""
        for model in self.published.last(device_id).models:
            path = model.bundle_url.split("://", 1)[-1].partition("/")[2]
            r = self.client.get(f"/{path}", headers=self.device_tokens[device_id])
            assert r.status_code == 200, r.text


@pytest.fixture
def fleet(db_url: str, tmp_path: Path, signing_key: keys.Ed25519PrivateKey) -> Iterator[Fleet]:
    settings = FleetSettings(
        db_url=db_url,
        storage=str(tmp_path / "store"),
        trust_keys=[tmp_path / "keys" / "signing.pub"],
        controller_interval_s=0,  # tests drive the controller pass by pass
    )
    published = Published()
    app = create_app(settings, publisher=published)
    with TestClient(app) as client:
        ctx: FleetContext = app.state.fleet
        with ctx.db.session() as s:
            admin = {"Authorization": f"Bearer {auth.create_token(s, 'admin')}"}
        yield Fleet(client, ctx, published, admin, signing_key, tmp_path)


@dataclass
class LiveFleet:
    """The fleet app served by uvicorn on loopback (real HTTP), its context and an admin token."""

    url: str
    ctx: FleetContext
    admin_token: str
    key: keys.Ed25519PrivateKey
    tmp: Path

    def http(self, token: str | None = None, *, source: str = "127.0.0.1") -> httpx.Client:
        """A client with ``token`` (default: the admin's), connecting from ``source`` (any 127.x.y.z)."""
        token = self.admin_token if token is None else token
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"} if token else {},
            transport=httpx.HTTPTransport(local_address=source),
            timeout=30,
        )

    def upload(self, **kwargs: object) -> dict:
        path = make_bundle(self.tmp / "bundles-src", self.key, **kwargs)  # type: ignore[arg-type]
        with self.http() as c, open(path, "rb") as f:
            r = c.post("/api/v1/bundles", files={"file": (path.name, f)})
        assert r.status_code == 201, r.text
        return r.json()

    def register(self, device_id: str, **labels: str) -> dict:
        with self.http() as c:
            r = c.post(
                "/api/v1/devices", json={"device_id": device_id, "labels": labels, "profile": "x86-server"}
            )
        assert r.status_code == 201, r.text
        return r.json()

    def give(self, bundle_id: str, *device_ids: str) -> str:
        """A rollout of ``bundle_id`` to ``device_ids`` and one controller pass: their desired state names it."""
        with self.http() as c:
            r = c.post(
                "/api/v1/rollouts",
                json={"bundle_id": bundle_id, "selector": {"device_ids": list(device_ids)}},
            )
        assert r.status_code == 201, r.text
        assert self.ctx.controller is not None
        self.ctx.controller.tick()
        return r.json()["id"]


@pytest.fixture
def live_fleet(db_url: str, tmp_path: Path, signing_key: keys.Ed25519PrivateKey) -> Iterator[LiveFleet]:
    settings = FleetSettings(
        db_url=db_url,
        storage=str(tmp_path / "store"),
        trust_keys=[tmp_path / "keys" / "signing.pub"],
        controller_interval_s=0,  # tests drive the controller pass by pass
    )
    app = create_app(settings, publisher=Published())
    with serve_in_thread(app, free_port()) as url:
        ctx: FleetContext = app.state.fleet
        with ctx.db.session() as s:
            token = auth.create_token(s, "admin", name="test admin")
        yield LiveFleet(url, ctx, token, signing_key, tmp_path)
