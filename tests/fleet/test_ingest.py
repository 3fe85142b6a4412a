"""The batched ingest path: telemetry rows, replay de-duplication, reports, status, events, health."""

from __future__ import annotations

import time

from fleet.db.models import Device
from fleet.ingest import Ingest
from sdk.messages import Event, ModelTelemetry, ReportedState, Status, Telemetry
from sdk.topics import topic
from tests.fleet.conftest import Fleet


def feed(fleet: Fleet, items: list[tuple[str, bytes]]) -> None:
    Ingest(fleet.ctx.db, None, fleet.ctx.metrics).process([(t, p, time.time()) for t, p in items])  # type: ignore[arg-type]


def tele(seq: int, t: float, requests: int = 10, errors: int = 1) -> bytes:
    return Telemetry(
        seq=seq,
        time=t,
        interval_s=10,
        cpu_percent=40.0,
        temperature_c=61.5,
        memory_percent=30.0,
        models=[ModelTelemetry(name="m", version="1", requests=requests, errors=errors, latency_ms_p95=12.5)],
    ).to_bytes()


def test_telemetry_batches_are_stored_once_and_feed_health(fleet: Fleet) -> None:
    fleet.register("d0")
    now = time.time()
    batch = [(topic("telemetry", "d0"), tele(i, now - 30 + i)) for i in range(20)]
    feed(fleet, batch)
    feed(fleet, batch[5:])  # the agent replays its disk buffer after an outage: nothing is doubled
    feed(fleet, [(topic("telemetry", "d0"), tele(0, now + 1))])  # a restarted agent counts from 0 again
    h = fleet.client.get("/api/v1/devices/d0/health", headers=fleet.admin).json()
    assert h["samples"] == 21 and h["requests"] == 210 and h["errors"] == 21
    assert abs(h["error_rate"] - 0.1) < 1e-9
    assert h["temperature_c"] == 61.5 and h["latency_ms_p95"] == 12.5
    metrics = fleet.client.get("/metrics").text
    assert "edgefleet_telemetry_samples_stored_total 21.0" in metrics


def test_bad_and_unknown_messages_are_counted_not_fatal(fleet: Fleet) -> None:
    fleet.register("d0")
    feed(
        fleet,
        [
            (topic("telemetry", "d0"), b"{not json"),
            (topic("telemetry", "ghost"), tele(1, time.time())),
            ("some/other/topic", b"{}"),
            (topic("status", "d0"), Status(state="online").to_bytes()),
        ],
    )
    assert fleet.client.get("/api/v1/devices/d0", headers=fleet.admin).json()["online"] is True
    assert "edgefleet_mqtt_messages_rejected_total 3.0" in fleet.client.get("/metrics").text


def test_reports_never_go_back_to_an_older_revision(fleet: Fleet) -> None:
    fleet.register("d0")
    with fleet.ctx.db.session() as session:  # the fleet issued revision 5 (a device can't report more)
        session.get(Device, "d0").desired_revision = 5
    feed(
        fleet,
        [
            (topic("reported", "d0"), ReportedState(revision=5, agent_version="a5").to_bytes()),
            (topic("reported", "d0"), ReportedState(revision=4, agent_version="a4").to_bytes()),
            (topic("events", "d0"), Event(kind="failure", ok=False, reason="smoke test failed").to_bytes()),
            (topic("status", "d0"), b""),  # a cleared retained status is ignored
        ],
    )
    d = fleet.client.get("/api/v1/devices/d0", headers=fleet.admin).json()
    assert d["reported_revision"] == 5 and d["agent_version"] == "a5"
    h = fleet.client.get("/api/v1/devices/d0/health", headers=fleet.admin).json()
    assert h["recent_events"][0]["reason"] == "smoke test failed"


def test_old_telemetry_is_pruned(fleet: Fleet) -> None:
    from fleet import telemetry

    fleet.register("d0")
    Ingest(fleet.ctx.db, None, fleet.ctx.metrics).process(
        [  # type: ignore[arg-type]
            (topic("telemetry", "d0"), tele(1, 1000.0), 1000.0),
            (topic("telemetry", "d0"), tele(2, time.time()), time.time()),
        ]
    )
    with fleet.ctx.db.session() as s:
        assert telemetry.prune(s, time.time() - 3600) == 1
    h = fleet.client.get("/api/v1/devices/d0/health", params={"window_s": 1e10}, headers=fleet.admin).json()
    assert h["samples"] == 1


def test_telemetry_is_idempotent_by_device_and_seq_in_any_order(fleet: Fleet) -> None:
    """Late, reordered and repeated copies (two replicas at once) store each message exactly once."""
    import threading

    fleet.register("d0")
    fleet.register("d1")
    now = time.time()
    msgs = {d: [(topic("telemetry", d), tele(i, now - 100 + i)) for i in range(40)] for d in ("d0", "d1")}
    # the newest half arrives first; the older half (the agent's buffer) arrives after it
    feed(fleet, msgs["d0"][20:] + msgs["d1"][20:])
    feed(fleet, msgs["d0"][:20] + msgs["d1"][:20])
    # a copy of everything, twice within one batch, from two replicas at the same time
    everything = msgs["d0"] + msgs["d1"]
    replicas = [threading.Thread(target=feed, args=(fleet, everything + everything)) for _ in range(2)]
    for r in replicas:
        r.start()
    for r in replicas:
        r.join()
    for d in ("d0", "d1"):
        h = fleet.client.get(
            f"/api/v1/devices/{d}/health", params={"window_s": 1e6}, headers=fleet.admin
        ).json()
        assert h["samples"] == 40 and h["requests"] == 400
    assert "edgefleet_telemetry_samples_stored_total 80.0" in fleet.client.get("/metrics").text


def test_not_a_number_in_telemetry_never_costs_the_batch(fleet: Fleet) -> None:
    fleet.register("d0")
    now = time.time()
    nan_cpu = b'{"schema": 1, "seq": 1, "time": %f, "interval_s": 10, "cpu_percent": NaN}' % now
    nan_time = b'{"schema": 1, "seq": 2, "time": NaN, "interval_s": 10}'
    feed(fleet, [(topic("telemetry", "d0"), p) for p in (nan_cpu, nan_time, tele(3, now + 1))])
    h = fleet.client.get("/api/v1/devices/d0/health", params={"window_s": 1e6}, headers=fleet.admin).json()
    assert h["samples"] == 2 and h["requests"] == 10
