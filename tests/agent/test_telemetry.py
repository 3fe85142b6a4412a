"""telemetry_snapshot and drift: per version counters, latency percentiles, PSI against the reference."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from agent.drift import DriftTracker, psi
from agent.service import AgentService
from agent.store import ModelStore
from sdk.manifest import Reference, TensorStats
from tests.support.waiting import wait_until


def test_psi_is_zero_for_same_distribution_and_grows_with_shift() -> None:
    ref = np.array([0.1, 0.2, 0.4, 0.2, 0.1])
    assert psi(ref, ref * 1000) < 1e-9
    assert psi(ref, np.array([0.1, 0.1, 0.2, 0.3, 0.3])) > 0.25


def test_drift_tracker_bins_out_of_range_values_into_end_bins() -> None:
    edges = [0.0, 1.0, 2.0, 3.0]
    ref = Reference(
        samples=3,
        inputs={
            "x": TensorStats(mean=1.5, std=1, min=0, max=3, hist_edges=edges, hist_fractions=[1 / 3] * 3)
        },
    )
    tracker = DriftTracker(ref, min_interval_s=0)
    tracker.observe({"x": np.array([0.5, 1.5, 2.5], np.float32)}, {})
    assert tracker.take()["input:x"] < 1e-9
    tracker.observe({"x": np.array([-100.0, 100.0, 100.0], np.float32)}, {})
    assert tracker.take()["input:x"] > 1.0
    assert tracker.take() == {}  # nothing seen since the last call


def _infer(url: str, x: np.ndarray) -> httpx.Response:
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}]
    }
    return httpx.post(url + "/v2/models/affine/infer", json=body)


def test_snapshot_counts_per_version_and_reports_drift(
    store: ModelStore, make_affine: Callable[..., Path], start_agent: Callable[..., AgentService]
) -> None:
    store.install(make_affine("1"))
    agent = start_agent()
    rng = np.random.default_rng(3)
    for _ in range(20):  # like the calibration data (standard normal)
        assert _infer(agent.url, rng.standard_normal((64, 4)).astype(np.float32)).status_code == 200
    assert httpx.post(agent.url + "/v2/models/affine/infer", json={"inputs": []}).status_code == 400
    [first] = agent.repository.telemetry_snapshot()
    assert (first.name, first.version, first.requests, first.errors) == ("affine", "1", 21, 1)
    assert first.latency_ms_p50 is not None and 0 < first.latency_ms_p50 <= first.latency_ms_p99  # type: ignore[operator]
    assert first.drift["input:x"] < 0.1

    for _ in range(20):  # shifted far from the reference
        assert _infer(agent.url, rng.standard_normal((64, 4)).astype(np.float32) + 3).status_code == 200
    agent.store.install(make_affine("2", scale=3.0))
    assert _infer(agent.url, np.zeros((1, 4), np.float32)).status_code == 200
    # Monitoring runs after the response is sent: on a loaded machine the caller can read the
    # answer (and take both snapshots) before the server's thread has recorded the prediction.
    window = agent.repository.get("affine").window
    assert window is not None
    wait_until(lambda: len(window._rows.since(0.0)[0]) == 1, what="monitoring of the request to version 2")
    snapshot = {t.version: t for t in agent.repository.telemetry_snapshot()}
    assert snapshot["1"].requests == 20 and snapshot["1"].drift["input:x"] > 0.25
    assert snapshot["2"].requests == 1
    # counters are per interval; the serving version's monitoring window is repeated, a retired one's not
    [idle] = agent.repository.telemetry_snapshot()
    assert (idle.version, idle.requests, idle.drift) == ("2", 0, {}) and idle.quality is not None
