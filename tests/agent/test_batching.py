"""Scheduling: dynamic batching joins concurrent requests; a full queue answers 503."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.batching import Scheduler, SchedulingConfig
from agent.service import AgentService
from agent.store import ModelStore
from sdk import keys
from sdk.errors import OverloadedError
from tests.agent.models import mlp_onnx, onnx_bundle


def _affine_run(calls: list[int]) -> Callable[..., dict[str, np.ndarray]]:
    def run(inputs: dict[str, np.ndarray], names: list[str] | None) -> dict[str, np.ndarray]:
        calls.append(inputs["x"].shape[0])
        return {"y": inputs["x"] * 2 + 1}

    return run


async def _gather(scheduler: Scheduler, n: int) -> list[np.ndarray]:
    xs = [np.full((1, 4), i, np.float32) for i in range(n)]
    results = await asyncio.gather(*(scheduler.submit({"x": x}, None) for x in xs))
    for x, r in zip(xs, results, strict=True):
        np.testing.assert_array_equal(r.outputs["y"], x * 2 + 1)  # each caller gets its own rows back
    return [r.batch_size for r in results]


def test_batching_joins_concurrent_requests() -> None:
    calls: list[int] = []
    with ThreadPoolExecutor(2) as pool:
        config = SchedulingConfig(max_concurrency=1, max_batch_size=8, max_queue_delay_ms=50)
        scheduler = Scheduler("m 1", _affine_run(calls), pool, config, batchable=True)
        sizes = asyncio.run(_gather(scheduler, 16))
    assert sum(calls) == 16 and max(calls) == 8 and len(calls) == 2
    assert max(sizes) == 8


def test_batching_is_off_by_default_and_for_models_without_batch_dim() -> None:
    calls: list[int] = []
    with ThreadPoolExecutor(2) as pool:
        assert not Scheduler("m", _affine_run(calls), pool, SchedulingConfig(), batchable=True).batching
        no_dim = Scheduler("m", _affine_run(calls), pool, SchedulingConfig(max_batch_size=8), batchable=False)
        assert not no_dim.batching
        asyncio.run(_gather(no_dim, 6))
    assert calls == [1] * 6


@pytest.mark.parametrize("batch", [0, 4])
def test_full_queue_is_refused(batch: int) -> None:
    release = threading.Event()

    def blocked(inputs: dict[str, np.ndarray], names: list[str] | None) -> dict[str, np.ndarray]:
        release.wait(10)
        return {"y": inputs["x"]}

    async def scenario() -> tuple[int, int]:
        config = SchedulingConfig(max_concurrency=1, max_queue=2, max_batch_size=batch, max_queue_delay_ms=0)
        scheduler = Scheduler("m 1", blocked, pool, config, batchable=True)
        # shapes differ so batching cannot merge them: one runs, two wait, the rest are refused
        tasks = [
            asyncio.create_task(scheduler.submit({"x": np.zeros((1, i + 1), np.float32)}, None))
            for i in range(6)
        ]
        await asyncio.sleep(0.2)
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        refused = [r for r in results if isinstance(r, OverloadedError)]
        assert all("busy" in str(r) for r in refused)
        return len(results) - len(refused), len(refused)

    with ThreadPoolExecutor(2) as pool:
        ok, refused = asyncio.run(scenario())
    assert refused >= 3 and ok >= 1 and ok + refused == 6


def _mlp_bundle(tmp_path: Path, key: keys.Ed25519PrivateKey) -> Path:
    return onnx_bundle(tmp_path / "b", key, mlp_onnx(tmp_path / "mlp.onnx", width=256, depth=4), "mlp", "1")


async def _burst(url: str, n: int, rows: int = 1) -> list[httpx.Response]:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 256], "data": [0.5] * (256 * rows)}]}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(*(client.post("/v2/models/mlp/infer", json=body) for _ in range(n)))


def test_http_batching_and_503(
    store: ModelStore, tmp_path: Path, key: keys.Ed25519PrivateKey, start_agent: Callable[..., AgentService]
) -> None:
    store.install(_mlp_bundle(tmp_path, key))
    # batching is off by default and turned on for this one model
    batched = start_agent(model_batching={"mlp": (16, 20.0)}, max_concurrency=1)
    responses = asyncio.run(_burst(batched.url, 32))
    assert [r.status_code for r in responses] == [200] * 32
    metrics = httpx.get(batched.url + "/metrics").text
    count = float(
        next(
            line.split()[-1]
            for line in metrics.splitlines()
            if line.startswith("edgefleet_agent_batch_size_requests_count")
        )
    )
    total = float(
        next(
            line.split()[-1]
            for line in metrics.splitlines()
            if line.startswith("edgefleet_agent_batch_size_requests_sum")
        )
    )
    assert total == 32 and count < 32  # fewer executions than requests
    batched.stop()

    tight = start_agent(max_concurrency=1, max_queue=1)
    responses = asyncio.run(_burst(tight.url, 24, rows=64))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) > 0
    refused = next(r for r in responses if r.status_code == 503)
    assert "busy" in refused.json()["error"]
    assert (
        'edgefleet_agent_inference_failures_total{model="mlp",reason="overloaded",version="1"}'
        in httpx.get(tight.url + "/metrics").text
    )


def test_tiny_models_run_on_the_loop_and_slow_ones_on_workers() -> None:
    def run_in(seconds: float, seen: list[int]) -> Callable[..., dict[str, np.ndarray]]:
        def run(inputs: dict[str, np.ndarray], names: list[str] | None) -> dict[str, np.ndarray]:
            time.sleep(seconds)
            seen.append(threading.get_ident())
            return {"y": inputs["x"]}

        return run

    async def drive(scheduler: Scheduler, n: int) -> int:
        for _ in range(n):
            await scheduler.submit({"x": np.zeros((1, 4), np.float32)}, None)
        return threading.get_ident()

    async def crowd(scheduler: Scheduler, n: int) -> int:
        await asyncio.gather(*(scheduler.submit({"x": np.zeros((1, 4), np.float32)}, None) for _ in range(n)))
        return threading.get_ident()

    fast: list[int] = []
    slow: list[int] = []
    alone: list[int] = []
    crowded: list[int] = []
    never: list[int] = []
    no_alone = SchedulingConfig(inline_alone_below_ms=0)
    with ThreadPoolExecutor(2) as pool:
        loop_thread = asyncio.run(
            drive(Scheduler("fast", run_in(0, fast), pool, SchedulingConfig(), True), 80)
        )
        asyncio.run(drive(Scheduler("slow", run_in(0.002, slow), pool, no_alone, True), 20))
        # alone in the agent, a 0.6 ms model (over the 0.3 ms of a tiny one) runs on the loop too once it has shown its speed
        alone_thread = asyncio.run(
            drive(Scheduler("alone", run_in(0.0006, alone), pool, SchedulingConfig(), True), 40)
        )
        # with other requests in flight it goes to the workers
        crowd_thread = asyncio.run(
            crowd(Scheduler("crowd", run_in(0.0006, crowded), pool, SchedulingConfig(), True), 40)
        )
        never_thread = asyncio.run(
            drive(Scheduler("never", run_in(0, never), pool, SchedulingConfig(inline_below_ms=0), True), 40)
        )
    assert fast[0] != loop_thread and fast[-1] == loop_thread  # learnt that it is tiny
    assert loop_thread not in slow
    assert alone[0] != alone_thread and alone[-1] == alone_thread
    assert sum(t != crowd_thread for t in crowded) >= len(crowded) // 2
    assert never_thread not in never  # 0 turns running on the loop off, alone or not


def test_model_batching_flag() -> None:
    from agent.cli import build_parser

    args = build_parser().parse_args(
        ["serve", "--data-dir", "d", "--model-batching", "a=8", "--model-batching", "b=16:5"]
    )
    assert dict(args.model_batching) == {"a": (8, 2.0), "b": (16, 5.0)}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--data-dir", "d", "--model-batching", "a:8"])
