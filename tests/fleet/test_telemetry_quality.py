"""Monitoring figures in telemetry are stored as the schema declares them, at every depth: a
device's extra fields (allowed in the message, for newer agents) never reach the database."""

from __future__ import annotations

import json
import time

from fleet.db.models import TelemetrySample
from sdk.topics import topic
from tests.fleet.conftest import Fleet
from tests.fleet.monitoring import ingest


def test_extra_fields_are_dropped_at_every_depth(fleet: Fleet) -> None:
    fleet.register("d0")
    model = {
        "name": "tiny",
        "version": "1.0.0",
        "requests": 50,
        "errors": 0,
        "smuggled": "x" * 1000,
        "quality": {
            "window_s": 60,
            "samples": 50,
            "labeled": 30,
            "min_samples": 20,
            "accuracy": 0.9,
            "smuggled": [1, 2, 3],
            "groups": [{"group": "site-a", "samples": 25, "selection_rate": 0.4, "smuggled": {"a": 1}}],
        },
        "shadow": {"version": "2.0.0", "samples": 20, "agreement": 0.97, "smuggled": True},
    }
    payload = json.dumps(
        {"schema": 1, "seq": 1, "time": time.time() - 60, "interval_s": 60, "models": [model]}
    ).encode()
    ingest(fleet, [(topic("telemetry", "d0"), payload)])
    with fleet.ctx.db.session() as s:
        (stored,) = s.query(TelemetrySample).filter_by(device_id="d0").one().models
    assert "smuggled" not in json.dumps(stored)
    assert stored["quality"]["accuracy"] == 0.9 and stored["quality"]["groups"][0]["selection_rate"] == 0.4
    assert stored["shadow"] == {
        "version": "2.0.0",
        "samples": 20,
        "agreement": 0.97,
        "errors": 0,
        "dropped": 0,
    }
