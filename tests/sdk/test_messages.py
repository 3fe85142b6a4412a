"""MQTT topics and message schemas."""

from __future__ import annotations

import json

import pytest

from sdk.errors import ProtocolError
from sdk.messages import (
    DesiredModel,
    DesiredState,
    Event,
    ModelTelemetry,
    ReportedModel,
    ReportedState,
    Status,
    Telemetry,
    offline_status,
    parse_message,
)
from sdk.topics import KINDS, acl_pattern, parse_topic, topic


def test_topics_per_design():
    assert topic("desired", "dev-1") == "edgefleet/v1/devices/dev-1/desired"
    assert topic("telemetry") == "edgefleet/v1/devices/+/telemetry"
    assert topic("telemetry", share_group="fleet") == "$share/fleet/edgefleet/v1/devices/+/telemetry"
    assert set(KINDS) == {"desired", "reported", "status", "telemetry", "events", "ack"}
    for kind in KINDS:
        assert parse_topic(topic(kind, "pi-7")) == ("pi-7", kind)
    assert acl_pattern().splitlines() == [
        "pattern read edgefleet/v1/devices/%u/desired",
        "pattern read edgefleet/v1/devices/%u/ack",
        "pattern write edgefleet/v1/devices/%u/reported",
        "pattern write edgefleet/v1/devices/%u/status",
        "pattern write edgefleet/v1/devices/%u/telemetry",
        "pattern write edgefleet/v1/devices/%u/events",
    ]


@pytest.mark.parametrize("bad", ["", "a/b", "#", "a+", "$SYS", "dev 1", "-x", "x" * 200])
def test_device_ids_cannot_escape_their_level(bad):
    with pytest.raises(ProtocolError):
        topic("desired", bad)


def test_bad_topics():
    with pytest.raises(ProtocolError):
        topic("commands", "d")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        topic("desired", "d", share_group="g")
    for bad in ("edgefleet/v1/devices/d", "other/v1/devices/d/desired", "edgefleet/v1/devices/d/x"):
        with pytest.raises(ProtocolError):
            parse_topic(bad)


def test_messages_round_trip_with_schema_version():
    msgs = [
        DesiredState(
            revision=3,
            models=[
                DesiredModel(
                    name="net", version="2", bundle_url="/api/v1/bundles/1/download", sha256="a" * 64, size=10
                )
            ],
        ),
        ReportedState(
            revision=3, models=[ReportedModel(name="net", version="2", state="active")], agent_version="0.1.0"
        ),
        Status(state="online", time=1.0),
        Telemetry(seq=0, interval_s=10, models=[ModelTelemetry(name="n", version="1", requests=5, errors=0)]),
        Event(kind="rollback", ok=False, reason="smoke test failed"),
    ]
    for msg in msgs:
        raw = msg.to_bytes()
        assert json.loads(raw)["schema"] == 1
        assert parse_message(type(msg), raw) == msg


def test_unknown_fields_are_kept_and_newer_schema_refused():
    raw = json.dumps({"schema": 1, "state": "online", "future": True})
    assert parse_message(Status, raw).model_extra == {"future": True}
    with pytest.raises(ProtocolError, match="schema"):
        parse_message(Status, json.dumps({"schema": 2, "state": "online"}))


def test_bad_messages_are_one_protocol_error():
    with pytest.raises(ProtocolError, match="DesiredState"):
        parse_message(DesiredState, b"not json")
    with pytest.raises(ProtocolError, match="models.0.name"):
        parse_message(
            DesiredState,
            json.dumps(
                {
                    "schema": 1,
                    "revision": 1,
                    "models": [{"name": "../x", "version": "1", "bundle_url": "u", "sha256": "a", "size": 1}],
                }
            ),
        )
    with pytest.raises(ProtocolError):
        parse_message(Status, json.dumps({"schema": 1, "state": "sleeping"}))


def test_last_will_is_fixed():
    assert json.loads(offline_status().to_bytes()) == {"schema": 1, "state": "offline"}
