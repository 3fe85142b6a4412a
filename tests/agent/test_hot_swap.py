"""Hot swap under load: installs and rollbacks while clients send without pause fail no request."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.service import AgentService
from agent.store import ModelStore

SCALES = {"1": 2.0, "2": 3.0, "3": 5.0}


def _hammer(url: str, stop: threading.Event, seen: Counter[str], failures: list[str]) -> None:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": x.reshape(-1).tolist()}]}
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            try:
                r = client.post("/v2/models/affine/infer", json=body)
            except httpx.HTTPError as exc:
                failures.append(f"transport: {exc!r}")
                continue
            if r.status_code != 200:
                failures.append(f"{r.status_code}: {r.text}")
                continue
            doc = r.json()
            version = doc["model_version"]
            y = np.array(doc["outputs"][0]["data"], dtype=np.float32)
            # The response names the version that computed it.
            if not np.allclose(y, x.reshape(-1) * SCALES[version] + 1.0):
                failures.append(f"version {version} answered {y.tolist()}")
            seen[version] += 1


@pytest.mark.parametrize("batch", [0, 8], ids=["unbatched", "batched"])
def test_install_and_rollback_under_load_fail_nothing(
    store: ModelStore, make_affine: Callable[..., Path], start_agent: Callable[..., AgentService], batch: int
) -> None:
    store.install(make_affine("1", scale=SCALES["1"]))
    agent = start_agent(max_batch_size=batch, max_queue_delay_ms=1.0)
    v2 = make_affine("2", scale=SCALES["2"])
    stop = threading.Event()
    seen: Counter[str] = Counter()
    failures: list[str] = []
    clients = [threading.Thread(target=_hammer, args=(agent.url, stop, seen, failures)) for _ in range(4)]
    for t in clients:
        t.start()
    try:
        time.sleep(0.3)
        assert agent.store.install(v2).version == "2"
        time.sleep(0.3)
        assert agent.store.rollback("affine", allow_downgrade=True).version == "1"
        time.sleep(0.3)
        assert agent.store.activate("affine", "2").version == "2"
        time.sleep(0.3)
    finally:
        stop.set()
        for t in clients:
            t.join()
    assert failures == []
    assert seen["1"] > 20 and seen["2"] > 20, seen
    # after the last switch, only version 2 answers
    r = httpx.post(
        agent.url + "/v2/models/affine/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]},
    )
    assert r.json()["model_version"] == "2"


def test_install_from_another_process_is_picked_up(
    store: ModelStore,
    make_affine: Callable[..., Path],
    start_agent: Callable[..., AgentService],
    data_dir: Path,
    pub_path: Path,
) -> None:
    store.install(make_affine("1", scale=SCALES["1"]))
    agent = start_agent(poll_interval_s=0.2)
    v3 = make_affine("3", scale=SCALES["3"])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "install",
            str(v3),
            "--data-dir",
            str(data_dir),
            "--trust-key",
            str(pub_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    assert "installed affine 3 (previous: 1)" in proc.stdout
    deadline = time.monotonic() + 10
    version = None
    while time.monotonic() < deadline:
        version = httpx.get(agent.url + "/v2/models/affine").json()["versions"][0]
        if version == "3":
            break
        time.sleep(0.1)
    assert version == "3"


@pytest.mark.parametrize("batch", [0, 8], ids=["unbatched", "batched"])
def test_a_request_that_resolved_a_retired_version_runs_on_the_one_serving_now(
    store: ModelStore,
    make_affine: Callable[..., Path],
    start_agent: Callable[..., AgentService],
    monkeypatch: pytest.MonkeyPatch,
    batch: int,
) -> None:
    """A retired version's session is dropped once its drain finds it idle (its memory goes back
    to the OS); a request that resolved that version just before the swap must still be answered."""
    store.install(make_affine("1", scale=SCALES["1"]))
    agent = start_agent(max_batch_size=batch, max_queue_delay_ms=1.0)
    stale = agent.repository.get("affine")
    assert agent.store.install(make_affine("2", scale=SCALES["2"])).version == "2"
    deadline = time.monotonic() + 30
    while getattr(stale.runtime, "session", None) is not None:
        assert time.monotonic() < deadline, "the retired version's session was never dropped"
        time.sleep(0.01)
    # The request resolves the stale version (as one in flight across the swap did), then runs.
    real_get, calls = agent.repository.get, Counter[str]()

    def get(name: str, version: str | None = None):  # type: ignore[no-untyped-def]
        calls["get"] += 1
        return stale if calls["get"] <= 2 else real_get(name, version)

    monkeypatch.setattr(agent.repository, "get", get)
    r = httpx.post(
        agent.url + "/v2/models/affine/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "2"
    assert r.json()["outputs"][0]["data"] == [SCALES["2"] + 1.0] * 4
    assert calls["get"] == 3
