"""/metrics: Prometheus text that promtool accepts, with the series the dashboards need."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from agent.service import AgentService
from agent.store import ModelStore


def test_metrics_are_promtool_clean_and_complete(
    store: ModelStore, make_affine: Callable[..., Path], start_agent: Callable[..., AgentService]
) -> None:
    store.install(make_affine("1"))
    agent = start_agent()
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    for _ in range(3):
        assert httpx.post(agent.url + "/v2/models/affine/infer", json=body).status_code == 200
    assert httpx.post(agent.url + "/v2/models/affine/infer", content=b"{").status_code == 400
    assert httpx.post(agent.url + "/v2/models/affine/infer", json={"inputs": []}).status_code == 400
    response = httpx.get(agent.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for series in [
        'edgefleet_agent_inference_requests_total{model="affine",version="1"} 4.0',
        'edgefleet_agent_inference_failures_total{model="affine",reason="invalid_input",version="1"} 1.0',
        'edgefleet_agent_inference_duration_seconds_count{model="affine",version="1"} 3.0',
        'edgefleet_agent_queue_duration_seconds_count{model="affine",version="1"} 3.0',
        'edgefleet_agent_batch_size_requests_count{model="affine",version="1"} 3.0',
        'edgefleet_agent_model_load_duration_seconds_count{model="affine",version="1"} 1.0',
        'edgefleet_agent_model_active_info{model="affine",version="1"} 1.0',
        'edgefleet_agent_http_errors_total{code="400"} 2.0',
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ]:
        assert series in text, series
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.strip() == "" and check.stderr.strip() == "", (
        check.stdout + check.stderr
    )


def test_swapped_version_is_marked_inactive(
    store: ModelStore, make_affine: Callable[..., Path], start_agent: Callable[..., AgentService]
) -> None:
    store.install(make_affine("1"))
    agent = start_agent()
    agent.store.install(make_affine("2", scale=3.0))
    text = httpx.get(agent.url + "/metrics").text
    assert 'edgefleet_agent_model_active_info{model="affine",version="1"} 0.0' in text
    assert 'edgefleet_agent_model_active_info{model="affine",version="2"} 1.0' in text
