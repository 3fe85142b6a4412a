"""Bad input at scale over MQTT: hypothesis feeds the fleet's ingest every kind of broken message.

Malformed JSON, wrong types, out-of-range numbers, huge payloads, on every topic kind the fleet
consumes, mixed into one batch with a good message: every message is either stored or dropped and
counted, the good one is always stored, and ingest never raises.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.db.models import Device, TelemetrySample
from fleet.db.session import Database, migrate
from fleet.ingest import Ingest
from fleet.limits import IngestLimits
from fleet.metrics import FleetMetrics
from sdk.messages import ModelTelemetry, Telemetry
from sdk.topics import topic

KINDS = ("telemetry", "reported", "status", "events")
LIMIT = 16 * 1024

#: a well-formed message of each kind, as a dict to break field by field
VALID: dict[str, dict[str, Any]] = {
    "telemetry": {
        "schema": 1,
        "seq": 1,
        "time": 0.0,  # replaced by now
        "interval_s": 10,
        "cpu_percent": 5.0,
        "models": [{"name": "m", "version": "1", "requests": 3, "errors": 0, "drift": {"x": 0.1}}],
    },
    "reported": {
        "schema": 1,
        "revision": 1,
        "agent_version": "a",
        "models": [{"name": "m", "version": "1", "state": "active"}],
    },
    "status": {"schema": 1, "state": "online"},
    "events": {"schema": 1, "kind": "install", "ok": True, "revision": 1, "reason": "r"},
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**31 - 2, max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def broken_payload(draw: st.DrawFn, kind: str) -> bytes:
    base = dict(VALID[kind])
    if kind == "telemetry":
        base["time"] = time.time()
    how = draw(st.sampled_from(["field", "nested", "drop", "garbage", "json", "huge", "deep"]))
    if how == "field":  # one field of any type or size
        base[draw(st.sampled_from(sorted(base)))] = draw(json_values)
    elif how == "nested" and base.get("models"):
        model = dict(base["models"][0])
        model[draw(st.sampled_from(sorted(model)))] = draw(json_values)
        base["models"] = [model]
    elif how == "drop":
        base.pop(draw(st.sampled_from(sorted(base))))
    elif how == "garbage":
        return draw(st.binary(max_size=200))
    elif how == "json":
        return _dumps(draw(json_values))
    elif how == "huge":
        base["padding"] = "x" * draw(st.integers(LIMIT, 4 * LIMIT))
    elif how == "deep":
        depth = draw(st.integers(50, 5000))
        return b"[" * depth + b"]" * depth
    return _dumps(base)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Database, Ingest, FleetMetrics]]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "fleet.db"
    db = Database(f"sqlite:///{path}")
    migrate(db.engine)
    with db.session() as s:
        s.add_all([Device(id="d0", mqtt_password_hash="-"), Device(id="good", mqtt_password_hash="-")])
    metrics = FleetMetrics()
    yield db, Ingest(db, None, metrics, limits=IngestLimits(max_message_bytes=LIMIT)), metrics  # type: ignore[arg-type]
    db.dispose()


def _count(metrics: FleetMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


def _ingested(metrics: FleetMetrics) -> float:
    return sum(_count(metrics, "edgefleet_mqtt_messages_ingested_total", {"kind": k}) for k in KINDS)


_seq = iter(range(10**9))


@given(
    batch=st.lists(
        st.sampled_from(KINDS).flatmap(lambda k: st.tuples(st.just(k), broken_payload(k))),
        min_size=1,
        max_size=8,
    )
)
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_every_message_is_stored_or_dropped_and_counted(
    setup: tuple[Database, Ingest, FleetMetrics], batch: list[tuple[str, bytes]]
) -> None:
    db, ingest, metrics = setup
    seq = next(_seq)
    good = Telemetry(
        seq=seq, interval_s=1, models=[ModelTelemetry(name="m", version="1", requests=1, errors=0)]
    ).to_bytes()
    items = [(topic(kind, "d0"), payload, time.time()) for kind, payload in batch]
    items.insert(len(items) // 2, (topic("telemetry", "good"), good, time.time()))
    ignored = sum(1 for kind, payload in batch if kind == "status" and not payload)
    before = (_ingested(metrics), _count(metrics, "edgefleet_mqtt_messages_rejected_total"))
    stored = ingest.process(items)
    after = (_ingested(metrics), _count(metrics, "edgefleet_mqtt_messages_rejected_total"))
    assert (after[0] - before[0]) + (after[1] - before[1]) == len(items) - ignored
    assert ("good", "telemetry", seq) in stored
    with db.session() as s:
        assert s.query(TelemetrySample).filter_by(device_id="good", seq=seq).count() == 1
        for row in s.query(TelemetrySample).filter_by(device_id="d0"):
            assert math.isfinite(row.time) and 0 <= row.seq < 2**31
