"""A small fleet for the dashboard's browser test: devices that report, a finished and a paused rollout.

Devices speak through the real ingest path (the messages an agent sends), the controller runs pass
by pass, and every HTTP call goes to the live server, as the dashboard's own calls do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx

from fleet.context import FleetContext
from fleet.ingest import Ingest
from sdk.manifest import AccuracyMetric, FidelityMetric, LatencyMetric, Metrics, SizeMetric
from sdk.messages import (
    DesiredState,
    Event,
    ModelTelemetry,
    ReportedModel,
    ReportedState,
    Status,
    Telemetry,
)
from sdk.topics import topic
from tests.fleet.conftest import LiveFleet, Published
from tests.support.bundles import make_bundle

METRICS = Metrics(
    size_bytes=SizeMetric(source=2_400_000, converted=610_000),
    latency_ms=LatencyMetric(source=0.31, converted=0.12),
    fidelity=FidelityMetric(argmax_agreement=0.995, max_abs_error=0.04),
    accuracy=AccuracyMetric(metric="top1", source=0.955, converted=0.957),
)


@dataclass
class DashboardFleet:
    live: LiveFleet
    published: Published
    #: device id -> its own token (registration answer)
    device_tokens: dict[str, str]
    succeeded: str = ""
    paused: str = ""
    #: device id -> the last revision it reported (a device reports each revision once)
    reported: dict[str, int] = field(default_factory=dict)

    @property
    def ctx(self) -> FleetContext:
        return self.live.ctx

    def ingest(self, items: list[tuple[str, bytes]], at: float | None = None) -> None:
        now = time.time() if at is None else at
        Ingest(self.ctx.db, None, self.ctx.metrics).process([(t, p, now) for t, p in items])  # type: ignore[arg-type]

    def register(self, device_id: str, profile: str, **labels: str) -> None:
        with self.live.http() as c:
            r = c.post("/api/v1/devices", json={"device_id": device_id, "labels": labels, "profile": profile})
        assert r.status_code == 201, r.text
        self.device_tokens[device_id] = r.json()["token"]
        self.ingest([(topic("status", device_id), Status(state="online").to_bytes())])

    def upload(self, version: str, metrics: Metrics | None = None) -> str:
        path = make_bundle(self.live.tmp / "src", self.live.key, version=version, metrics=metrics)
        with self.live.http() as c, open(path, "rb") as f:
            r = c.post("/api/v1/bundles", files={"file": (path.name, f)})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def rollout(self, bundle_id: str, **body: object) -> str:
        with self.live.http() as c:
            r = c.post("/api/v1/rollouts", json={"bundle_id": bundle_id, **body})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def state(self, rollout_id: str) -> dict:
        with self.live.http() as c:
            return c.get(f"/api/v1/rollouts/{rollout_id}").json()

    def act_as_agents(self) -> None:
        """Every device whose desired state changed downloads its bundles and reports them active."""
        for device_id, token in self.device_tokens.items():
            desired = [m for d, m in self.published.messages if d == device_id]
            if not desired:
                continue
            last: DesiredState = desired[-1]
            if self.reported.get(device_id) == last.revision:
                continue
            self.reported[device_id] = last.revision
            for model in last.models:
                path = model.bundle_url.split("://", 1)[-1].partition("/")[2]
                r = httpx.get(f"{self.live.url}/{path}", headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200, r.text
            reported = ReportedState(
                revision=last.revision,
                agent_version="0.1.0",
                models=[ReportedModel(name=m.name, version=m.version, state="active") for m in last.models],
            )
            events = [
                Event(kind=kind, model=m.name, version=m.version, revision=last.revision, reason=reason)
                for m in last.models
                for kind, reason in (("download", "fetched"), ("activate", "smoke test passed"))
            ]
            self.ingest(
                [(topic("reported", device_id), reported.to_bytes())]
                + [(topic("events", device_id), e.to_bytes()) for e in events]
            )

    def telemetry(self, device_id: str, samples: int) -> None:
        """``samples`` messages, one every 10 s up to now, with numbers that move."""
        now = time.time()
        for i in range(samples):
            t = now - (samples - i) * 10
            msg = Telemetry(
                time=t,
                seq=i,
                interval_s=10,
                cpu_percent=20 + 5 * (i % 4),
                memory_percent=40 + i,
                temperature_c=50 + (i % 3),
                disk_used_percent=30,
                models=[
                    ModelTelemetry(
                        name="tiny",
                        version="1.0.0",
                        requests=100 + 10 * i,
                        errors=i % 2,
                        latency_ms_p50=1.0 + 0.1 * i,
                        latency_ms_p95=2.0,
                        latency_ms_p99=3.0 + 0.2 * i,
                        drift={"x": 0.01 * i},
                    )
                ],
            )
            self.ingest([(topic("telemetry", device_id), msg.to_bytes())], at=t)


def build(live: LiveFleet, published: Published) -> DashboardFleet:
    """cam-1 and cam-2 (x86-server, site=lab) get 1.0.0 in a canary + one wave (succeeds);
    a 2.0.0 rollout to cam-1 is then started and paused; pi-1 (raspberry-pi) stays out of both."""
    fleet = DashboardFleet(live, published, {})
    fleet.register("cam-1", "x86-server", site="lab")
    fleet.register("cam-2", "x86-server", site="lab")
    fleet.register("pi-1", "raspberry-pi", site="lab")
    assert live.ctx.controller is not None
    fleet.succeeded = fleet.rollout(
        fleet.upload("1.0.0", METRICS),
        # no profile in the selector: pi-1 (another profile) is listed as skipped, with the reason
        selector={"labels": {"site": "lab"}},
        strategy={"canary_count": 1, "waves": 1},
    )
    for _ in range(6):
        live.ctx.controller.tick()
        fleet.act_as_agents()
        if fleet.state(fleet.succeeded)["state"] == "succeeded":
            break
    assert fleet.state(fleet.succeeded)["state"] == "succeeded", fleet.state(fleet.succeeded)
    fleet.telemetry("cam-1", 30)
    fleet.paused = fleet.rollout(fleet.upload("2.0.0"), selector={"device_ids": ["cam-1"]})
    with live.http() as c:
        assert c.post(f"/api/v1/rollouts/{fleet.paused}/pause").status_code == 200
    return fleet
