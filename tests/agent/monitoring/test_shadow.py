"""Shadow evaluation in a real agent: a version installed beside the active one answers no caller,
gets a sample of live requests off the request path, and telemetry compares the two."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agent.monitoring.outputs import OutputReader, Prediction
from agent.monitoring.shadow import ShadowRunner, ShadowSettings
from agent.service import AgentService
from agent.store import ModelStore
from sdk.agent_client import AgentClient
from sdk.errors import ModelStoreError


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_worse_shadow_answers_no_caller_and_shows_in_telemetry(
    store: ModelStore, make_affine: Callable[..., Path], start_agent: Callable[..., AgentService]
) -> None:
    store.install(make_affine("1", scale=2.0))
    agent = start_agent(monitor_min_samples=10, shadow_share=1.0, shadow_queue=64, poll_interval_s=0.05)
    # version 2 ranks the classes backwards: it would be wrong almost always
    store.install_shadow(make_affine("2", scale=-2.0))
    assert store.active_versions() == {"affine": "1"} and store.shadow_versions() == {"affine": "2"}
    _wait(lambda: agent.repository.shadow("affine") is not None)
    runner = agent.repository.shadow("affine")
    assert runner is not None

    rng = np.random.default_rng(0)
    labels: dict[str, object] = {}
    with AgentClient(agent.url) as client:
        for i in range(30):
            x = rng.standard_normal((1, 4)).astype(np.float32)
            out = client.infer("affine", {"x": x}, request_id=f"r{i}")
            assert out.model_version == "1"
            np.testing.assert_allclose(out.outputs["y"], x * 2.0 + 1.0, rtol=1e-6)
            labels[f"r{i}"] = int(out.outputs["y"].argmax())
        _wait(lambda: runner.mirrored == 30 and runner._queue.empty() and len(runner._runs) == 30)
        assert client.feedback("affine", labels)["accepted"] == 30

    [telemetry] = agent.repository.telemetry_snapshot()
    shadow = telemetry.shadow
    assert shadow is not None and shadow.version == "2" and shadow.samples == 30 and shadow.errors == 0
    assert shadow.agreement is not None and shadow.agreement < 0.5
    assert shadow.active_accuracy == 1.0 and shadow.accuracy is not None and shadow.accuracy < 0.5
    assert shadow.latency_ms_p50 is not None and shadow.active_latency_ms_p50 is not None
    assert telemetry.quality is not None and telemetry.quality.accuracy == 1.0  # the active's own
    exposition = agent.metrics.exposition().decode()
    assert 'edgefleet_agent_shadow_requests_total{model="affine",outcome="mirrored"} 30.0' in exposition

    # promoted by the fleet (a plain desired version): the shadow ends and v2 serves
    store.activate("affine", "2")
    assert store.shadow_versions() == {}
    _wait(lambda: agent.repository.shadow("affine") is None)
    with AgentClient(agent.url) as client:
        assert client.infer("affine", {"x": np.zeros((1, 4), np.float32)}).model_version == "2"


def test_clearing_a_shadow_prunes_it_and_the_active_cannot_shadow_itself(
    store: ModelStore, make_affine: Callable[..., Path]
) -> None:
    with pytest.raises(ModelStoreError, match="no active version"):
        store.install_shadow(make_affine("2", scale=3.0))
    store.install(make_affine("1"))
    with pytest.raises(ModelStoreError, match="cannot be its own shadow"):
        store.install_shadow(make_affine("1"))
    store.install_shadow(make_affine("2", scale=3.0))
    assert store.installed_versions("affine") == ["1", "2"]
    assert store.status()["models"]["affine"]["shadow"] == "2"  # type: ignore[index]
    store.clear_shadow("affine")
    assert store.shadow_versions() == {} and store.installed_versions("affine") == ["1"]
    with pytest.raises(ModelStoreError, match="smoke"):
        store.install_shadow(make_affine("3", wrong_smoke=True))
    assert store.shadow_versions() == {} and store.installed_versions("affine") == ["1"]


class _Gate:
    """A runtime that waits for a gate: the shadow's worker stalls, so its queue fills."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def run(self, inputs: dict[str, np.ndarray], names: list[str] | None) -> dict[str, np.ndarray]:
        self.gate.wait(10)
        return {"y": np.zeros((1, 3), np.float32)}

    def close(self) -> None:
        pass


def _runner(shadow: _Gate, active: _Gate, settings: ShadowSettings) -> ShadowRunner:
    """Version 2 of a 3-class model ``m`` shadowing version 1, on stand-in runtimes."""
    return ShadowRunner(
        "m",
        "2",
        shadow,  # type: ignore[arg-type]
        OutputReader("classifier", "y", 3),
        active,  # type: ignore[arg-type]
        "1",
        settings,
    )


def test_a_full_shadow_queue_drops_and_counts_instead_of_waiting() -> None:
    shadow, active = _Gate(), _Gate()
    runner = _runner(shadow, active, ShadowSettings(share=1.0, queue=2))
    prediction = Prediction((0,), (0.9,))
    started = time.perf_counter()
    for _ in range(10):
        runner.offer({"x": np.zeros((1, 4), np.float32)}, prediction, None)
    assert time.perf_counter() - started < 5  # never blocked on the stalled worker
    # one taken by the worker, two waiting, the rest dropped
    assert runner.mirrored + runner.dropped == 10 and runner.dropped >= 7
    quality = runner.quality()
    assert quality is not None and quality.dropped == runner.dropped and quality.samples == 0
    shadow.gate.set()
    active.gate.set()
    runner.close()


def test_a_shadow_installed_before_a_restart_runs_again_after_it(
    store: ModelStore, make_affine: Callable[..., Path], start_agent: Callable[..., AgentService]
) -> None:
    store.install(make_affine("1", scale=2.0))
    store.install_shadow(make_affine("2", scale=2.0))  # the same function: it agrees with the active
    agent = start_agent(monitor_min_samples=5, shadow_share=1.0)
    _wait(lambda: agent.repository.shadow("affine") is not None)
    with AgentClient(agent.url) as client:
        for _ in range(8):
            assert client.infer("affine", {"x": np.ones((1, 4), np.float32)}).model_version == "1"
    runner = agent.repository.shadow("affine")
    assert runner is not None
    _wait(lambda: len(runner._runs) == 8)
    [telemetry] = agent.repository.telemetry_snapshot()
    assert telemetry.shadow is not None and telemetry.shadow.agreement == 1.0


class _Timed(_Gate):
    """A runtime that takes 10 ms a run and records when each ran."""

    def __init__(self) -> None:
        super().__init__()
        self.gate.set()
        self.spans: list[tuple[float, float]] = []

    def run(self, inputs: dict[str, np.ndarray], names: list[str] | None) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        time.sleep(0.01)
        self.spans.append((started, time.perf_counter()))
        return {"y": np.zeros((1, 3), np.float32)}


def test_the_shadow_worker_rests_between_runs_so_it_is_busy_at_most_its_share() -> None:
    """Busy at most ``max_busy`` of the time: after a run, the worker rests (1 - max_busy) / max_busy
    times as long as the run took, whatever is queued, so most callers' requests meet no shadow run."""
    shadow, active = _Timed(), _Timed()
    runner = _runner(shadow, active, ShadowSettings(share=1.0, queue=8, max_busy=0.25))
    for _ in range(3):  # queued at once; the first three runs are the shadow's alone (TIMED_EVERY)
        runner.offer({"x": np.zeros((1, 4), np.float32)}, Prediction((0,), (0.9,)), None)
    _wait(lambda: len(runner._runs) == 3)
    runner.close()
    for (start, end), (next_start, _) in zip(shadow.spans, shadow.spans[1:]):
        assert next_start - end >= 3 * (end - start)  # rest >= (1 - 0.25) / 0.25 x the run
