"""Bad input at scale over MQTT, agent side: hypothesis feeds the desired-state handler broken messages.

Whatever arrives on the device's ``desired`` topic (malformed JSON, wrong types, out-of-range
numbers, unsafe names, huge or deeply nested payloads), the handler never raises on paho's thread,
drops what breaks the contract with a WARNING, and offers the reconciler only desired states
within the contract's bounds; a good message after all of it is still taken.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.sync.download import BundleDownloader
from agent.sync.journal import Journal
from agent.sync.reconcile import Reconciler
from agent.sync.service import SyncConfig, SyncService
from sdk import messages
from sdk.manifest import check_name
from sdk.topics import topic
from tests.agent.sync.support import FakeStore, NoStats

VALID: dict[str, Any] = {
    "schema": 1,
    "revision": 3,
    "models": [
        {
            "name": "tiny",
            "version": "1.0",
            "bundle_url": "http://127.0.0.1:1/api/v1/bundles/b1/download",
            "sha256": "0" * 64,
            "size": 1234,
        }
    ],
    "issued_at": 1_700_000_000.0,
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**31 - 2, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["../../etc", "a/b", "", ".", "x" * 200]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def desired_payload(draw: st.DrawFn) -> bytes:
    base = json.loads(json.dumps(VALID))
    how = draw(st.sampled_from(["field", "model", "drop", "garbage", "json", "huge", "deep"]))
    if how == "field":
        base[draw(st.sampled_from(sorted(base)))] = draw(json_values)
    elif how == "model":
        base["models"][0][draw(st.sampled_from(sorted(base["models"][0])))] = draw(json_values)
    elif how == "drop":
        base.pop(draw(st.sampled_from(sorted(base))))
    elif how == "garbage":
        return draw(st.binary(max_size=200))
    elif how == "json":
        return json.dumps(draw(json_values), allow_nan=True).encode()
    elif how == "huge":
        base["models"] = base["models"] * draw(st.integers(1, 2000))
    elif how == "deep":
        depth = draw(st.integers(50, 5000))
        return b'{"schema": 1, "revision": 1, "x": ' + b"[" * depth + b"]" * depth + b"}"
    return json.dumps(base, allow_nan=True).encode()


class Offered(Reconciler):
    """The real reconciler's checks (parse, bounds, revision floor), recording what it would apply."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(
            FakeStore([]),  # type: ignore[arg-type]
            Journal(tmp / "journal.json"),
            BundleDownloader("http://127.0.0.1:1", "token"),
            tmp / "downloads",
            send_event=lambda _e: None,
            send_reported=lambda _r: None,
            agent_version="test",
            profile=None,
            device_id="dev-1",
        )
        self.states: list[messages.DesiredState] = []

    def offer(self, desired: messages.DesiredState) -> None:
        self.states.append(desired)


@pytest.fixture
def service(tmp_path: Path) -> tuple[SyncService, Offered]:
    config = SyncConfig(
        fleet_url="http://127.0.0.1:1",
        broker_url="mqtt://127.0.0.1:1",
        device_id="dev-1",
        credentials_file=tmp_path / "credentials.json",
        data_dir=tmp_path / "data",
    )
    svc = SyncService(config, FakeStore([]), NoStats())  # type: ignore[arg-type]
    offered = Offered(tmp_path)
    svc._reconciler = offered  # type: ignore[assignment]
    return svc, offered


@given(payload=desired_payload())
@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_the_desired_handler_drops_what_breaks_the_contract(
    service: tuple[SyncService, Offered], payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    svc, offered = service
    before = len(offered.states)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agent.sync"):
        svc._on_desired(topic("desired", "dev-1"), payload)
    if len(offered.states) == before:
        assert not payload or any(r.levelno >= logging.WARNING for r in caplog.records)
        return
    desired = offered.states[-1]
    assert 0 <= desired.revision < 2**31
    for model in desired.models:
        check_name(model.name)
        check_name(model.version)
        assert 0 <= model.size < 2**63


def test_a_good_message_is_still_taken_after_bad_ones(service: tuple[SyncService, Offered]) -> None:
    svc, offered = service
    for bad in (b"{", b"[]", b'{"schema": 1, "revision": 18446744073709551616}', b"\xff" * 100):
        svc._on_desired(topic("desired", "dev-1"), bad)
    assert offered.states == []
    svc._on_desired(topic("desired", "dev-1"), json.dumps(VALID).encode())
    assert [d.revision for d in offered.states] == [3]
