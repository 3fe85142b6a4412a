"""The batched ingest path: telemetry rows, replay de-duplication, reports, status, events, health."""

from __future__ import annotations

import logging
import time

import pytest

from fleet.db.models import Device
from fleet.ingest import Ingest
from fleet.limits import Accepted, IngestLimits
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


def test_not_a_number_in_telemetry_costs_only_its_own_message(fleet: Fleet) -> None:
    fleet.register("d0")
    now = time.time()
    nan_cpu = b'{"schema": 1, "seq": 1, "time": %f, "interval_s": 10, "cpu_percent": NaN}' % now
    nan_time = b'{"schema": 1, "seq": 2, "time": NaN, "interval_s": 10}'
    feed(fleet, [(topic("telemetry", "d0"), p) for p in (nan_cpu, nan_time, tele(3, now + 1))])
    h = fleet.client.get("/api/v1/devices/d0/health", params={"window_s": 1e6}, headers=fleet.admin).json()
    assert h["samples"] == 1 and h["requests"] == 10
    assert rejected(fleet, "invalid") == 2


def rejected(fleet: Fleet, reason: str) -> float:
    """``edgefleet_ingest_rejected_total{reason}`` as /metrics shows it."""
    for line in fleet.client.get("/metrics").text.splitlines():
        if line.startswith(f'edgefleet_ingest_rejected_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no edgefleet_ingest_rejected_total for {reason}")


def test_one_bad_message_is_dropped_and_the_rest_of_its_batch_is_stored(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 1: a seq of 2**63 failed the whole batch, other devices' telemetry and reports with it."""
    fleet.register("good")
    fleet.register("bad")
    now = time.time()
    huge_seq = b'{"schema": 1, "seq": %d, "time": %f, "interval_s": 1}'
    caplog.set_level(logging.WARNING, logger="fleet.ingest")
    feed(
        fleet,
        [
            (topic("telemetry", "bad"), huge_seq % (2**63, now)),
            (topic("telemetry", "good"), tele(1, now)),
            (topic("telemetry", "bad"), huge_seq % (2**31, now)),  # past PostgreSQL's INTEGER
            (topic("reported", "good"), ReportedState(revision=0, agent_version="a").to_bytes()),
            (
                topic("reported", "bad"),
                b'{"schema": 1, "revision": 4611686018427387904, "agent_version": "a"}',
            ),
            (topic("status", "good"), Status(state="online").to_bytes()),
            (topic("events", "good"), Event(kind="install", reason="ok").to_bytes()),
            (topic("events", "bad"), b'{"schema": 1, "kind": "install", "revision": "many"}'),
            (topic("telemetry", "good"), tele(2, now + 1)),
        ],
    )
    good = fleet.client.get("/api/v1/devices/good", headers=fleet.admin).json()
    assert good["reported_revision"] == 0 and good["online"] is True
    h = fleet.client.get("/api/v1/devices/good/health", params={"window_s": 1e6}, headers=fleet.admin).json()
    assert h["samples"] == 2 and h["recent_events"][0]["reason"] == "ok"
    assert fleet.client.get("/api/v1/devices/bad", headers=fleet.admin).json()["reported_revision"] == -1
    assert rejected(fleet, "invalid") == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # one line per device and minute, naming the device and the reason; the flood is held back
    assert len([w for w in warnings if "device bad (invalid)" in w]) == 1, warnings
    assert "seq" in warnings[0]
    feed(fleet, [(topic("telemetry", "other"), b"[1, 2")])
    assert any("device other (malformed)" in r.getMessage() for r in caplog.records)
    assert rejected(fleet, "malformed") == 1


def test_a_message_the_database_refuses_is_dropped_alone(fleet: Fleet) -> None:
    """Should the schema ever miss a bound, the batch is stored again message by message."""
    fleet.register("good")
    fleet.register("bad")
    now = time.time()
    ingest = Ingest(fleet.ctx.db, None, fleet.ctx.metrics)  # type: ignore[arg-type]
    # model_construct skips validation: the message a schema without bounds would let through
    unchecked = Telemetry.model_construct(seq=2**63, time=now, interval_s=1.0, models=[])
    stored = ingest.store(
        [
            Accepted("good", "telemetry", Telemetry.model_validate_json(tele(1, now)), now),
            Accepted("bad", "telemetry", unchecked, now),
            Accepted("good", "reported", ReportedState(revision=0, agent_version="a"), now),
            Accepted("good", "telemetry", Telemetry.model_validate_json(tele(2, now + 1)), now),
        ]
    )
    assert sorted(stored) == [("good", "reported", None), ("good", "telemetry", 1), ("good", "telemetry", 2)]
    assert fleet.client.get("/api/v1/devices/good", headers=fleet.admin).json()["reported_revision"] == 0
    assert rejected(fleet, "db_error") == 1


def test_telemetry_dated_in_the_future_cannot_blank_a_devices_health(fleet: Fleet) -> None:
    """Finding 8: one sample dated a week ahead stayed the newest, and hid every real one."""
    fleet.register("d0")
    now = time.time()
    future = b'{"schema": 1, "seq": 9, "time": %f, "interval_s": 10}' % (now + 7 * 24 * 3600)
    feed(fleet, [(topic("telemetry", "d0"), tele(1, now - 5)), (topic("telemetry", "d0"), future)])
    feed(fleet, [(topic("telemetry", "d0"), tele(2, now + 30))])  # a little clock skew is fine
    h = fleet.client.get("/api/v1/devices/d0/health", headers=fleet.admin).json()
    assert h["samples"] == 2 and h["temperature_c"] == 61.5
    assert rejected(fleet, "future_time") == 1


def test_oversize_messages_and_long_texts_are_bounded(fleet: Fleet) -> None:
    fleet.register("d0")
    ingest = Ingest(
        fleet.ctx.db, None, fleet.ctx.metrics, limits=IngestLimits(max_message_bytes=4096, max_text=100)
    )  # type: ignore[arg-type]
    big = Event(kind="failure", ok=False, reason="x" * 5000).to_bytes()
    long = Event(kind="failure", ok=False, reason="y" * 1000).to_bytes()
    # revision 0: a device may only report revisions the fleet issued (none yet)
    report = ReportedState(revision=0, agent_version="a", last_error="z" * 1000).to_bytes()
    ingest.process(
        [(topic("events", "d0"), p, time.time()) for p in (big, long)]
        + [(topic("reported", "d0"), report, time.time())]
    )
    h = fleet.client.get("/api/v1/devices/d0/health", headers=fleet.admin).json()
    assert [e["reason"][:3] for e in h["recent_events"]] == ["yyy"]
    assert len(h["recent_events"][0]["reason"]) < 150
    d = fleet.client.get("/api/v1/devices/d0", headers=fleet.admin).json()
    assert d["last_error"].startswith("zzz") and len(d["last_error"]) < 150
    assert rejected(fleet, "oversize") == 1
