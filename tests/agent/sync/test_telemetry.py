"""Telemetry: what a sample holds, and buffering on disk through a real broker outage."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.sync.service import Tuning
from agent.sync.telemetry import TelemetrySampler, read_temperature_c
from tests.agent.sync.conftest import FAST
from tests.agent.sync.support import NoStats, running


def test_sample_has_device_and_model_figures(tmp_path: Path) -> None:
    sample = TelemetrySampler(tmp_path, NoStats(), 10.0).sample(seq=7)
    assert sample.seq == 7 and sample.interval_s == 10.0
    assert sample.cpu_percent is not None and 0 <= sample.cpu_percent <= 100 * 64
    assert sample.memory_bytes and 0 < sample.memory_percent <= 100
    assert sample.disk_free_bytes and 0 < sample.disk_used_percent <= 100
    assert [(m.name, m.requests, m.latency_ms_p50) for m in sample.models] == [("m", 3, 1.5)]


def test_temperature_from_thermal_zones_or_none(tmp_path: Path) -> None:
    for i, milli in enumerate(["41500", "55250", "garbage"]):
        zone = tmp_path / f"thermal_zone{i}"
        zone.mkdir()
        (zone / "temp").write_text(milli + "\n")
    assert read_temperature_c(str(tmp_path / "thermal_zone*/temp")) == 55.25


def test_broken_stats_do_not_stop_device_telemetry(tmp_path: Path) -> None:
    class Broken:
        def telemetry_snapshot(self):
            raise RuntimeError("boom")

    assert TelemetrySampler(tmp_path, Broken(), 1.0).sample(0).models == []


def _seqs(world) -> list[int]:
    return [m.json()["seq"] for m in world.probe.on("telemetry", "dev-1")]


@pytest.mark.mqtt
def test_buffered_during_broker_outage_and_delivered_in_order(world) -> None:
    with running(world.service(world.store(), interval=0.1)):
        deadline = time.monotonic() + 10
        while len(_seqs(world)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _seqs(world)[:3] == [0, 1, 2]

        world.broker.stop()
        time.sleep(1.5)  # ~15 samples go to disk, the device keeps going
        world.broker.start()
        world.probe.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]

        time.sleep(1.5)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            seqs = _seqs(world)
            if seqs and seqs[-1] > 25:
                break
            time.sleep(0.1)

    seqs = _seqs(world)
    firsts = list(dict.fromkeys(seqs))
    # every sample arrived, in order; a message the broker got just before it died may come twice
    assert firsts == list(range(len(firsts))), seqs
    assert len(seqs) - len(firsts) <= 64
    assert max(seqs) > 25


@pytest.mark.mqtt
def test_buffer_is_bounded_during_an_outage(world) -> None:
    tuning = Tuning(**{**vars(FAST), "outbox_max_messages": 5})
    world.broker.stop()
    service = world.service(world.store(), tuning=tuning, interval=0.05)
    with running(service):
        time.sleep(1.2)  # ~24 samples, only the newest 5 kept
        world.broker.start()
        world.probe.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        deadline = time.monotonic() + 15
        while not _seqs(world) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    seqs = _seqs(world)
    assert seqs, "nothing delivered after the outage"
    assert seqs[0] >= 10, seqs  # the oldest were dropped, not the newest
    assert seqs == sorted(set(seqs))


def test_monitoring_details_give_way_so_a_sample_fits_one_message(tmp_path: Path) -> None:
    from sdk.messages import ClassQuality, GroupQuality, ModelQuality, ModelTelemetry
    from sdk.topics import MAX_PAYLOAD_BYTES

    def heavy(i: int) -> ModelTelemetry:
        quality = ModelQuality(
            window_s=3600,
            samples=10_000,
            labeled=5_000,
            min_samples=20,
            accuracy=0.9,
            classes=[
                ClassQuality(label=str(c), support=100, precision=0.9, recall=0.8, f1=0.85) for c in range(64)
            ],
            confusion=[[123456] * 64 for _ in range(64)],
            groups=[GroupQuality(group=f"site-{g:02d}", samples=300, selection_rate=0.5) for g in range(32)],
        )
        return ModelTelemetry(name=f"m{i}", version="1", requests=10, errors=0, quality=quality)

    class Heavy:
        def __init__(self, models: int) -> None:
            self.models = models

        def telemetry_snapshot(self) -> list[ModelTelemetry]:
            return [heavy(i) for i in range(self.models)]

    few = TelemetrySampler(tmp_path, Heavy(2), 1.0).sample(0)
    assert few.models[0].quality is not None and few.models[0].quality.confusion is not None
    many = TelemetrySampler(tmp_path, Heavy(20), 1.0).sample(0)
    assert len(many.to_bytes()) <= MAX_PAYLOAD_BYTES
    assert [m.requests for m in many.models] == [10] * 20  # serving figures always stay
    quality = many.models[0].quality
    assert (
        quality is not None
        and quality.accuracy == 0.9
        and quality.confusion is None
        and quality.classes == []
    )
