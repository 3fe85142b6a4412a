"""The session cache (agent.session_cache): ONNX Runtime's optimised, prepacked copy of a served model,
used only while it is the file the agent wrote, checked against the original's outputs."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.early import start_early
from agent.service import AgentService
from agent.session_cache import CACHE_DIR, DATA_NAME, ENTRY_NAME, MIN_BYTES, SessionCache
from agent.store import ModelStore
from sdk import keys
from sdk.agent_client import AgentClient
from tests.agent.models import mlp_onnx, onnx_bundle
from tests.support.disk import small_tmpfs

Start = Callable[..., AgentService]
WIDTH = 1024  # 1024 x 1024 fp32 = 4 MiB a layer: two layers are past the cache's minimum size


@pytest.fixture
def mlp(tmp_path: Path, key: keys.Ed25519PrivateKey) -> Path:
    model = mlp_onnx(tmp_path / "mlp.onnx", width=WIDTH, depth=2)
    assert model.stat().st_size >= MIN_BYTES
    return onnx_bundle(tmp_path / "bundles", key, model, "mlp", "1")


def _x() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((3, WIDTH)).astype(np.float32)


def _infer(agent: AgentService) -> np.ndarray:
    with AgentClient(agent.url) as client:
        return client.infer("mlp", {"x": _x()}).outputs["y"]


def _entries(data_dir: Path) -> list[Path]:
    root = data_dir / CACHE_DIR
    return sorted(p for p in root.iterdir() if (p / ENTRY_NAME).is_file()) if root.is_dir() else []


def _cached_start(agent: AgentService) -> Path:
    """Fill the cache of a running agent (the background verifier does the same after start-up;
    called here so that the test does not wait for it) and return the one entry."""
    agent.repository.fill_session_cache()
    [entry] = _entries(agent.settings.data_dir)
    return entry


def test_the_next_start_builds_from_the_entry_and_answers_as_the_original(
    data_dir: Path, store: ModelStore, mlp: Path, start_agent: Start
) -> None:
    store.install(mlp)
    agent = start_agent()
    assert agent.repository.get("mlp").runtime.cached is None  # nothing cached yet
    original = _infer(agent)
    entry = _cached_start(agent)
    agent.stop()
    # The entry holds the weights as read and as packed for this CPU.
    assert (entry / DATA_NAME).stat().st_size > (store.version_dir("mlp", "1") / "model.onnx").stat().st_size

    agent = start_agent()
    cached = agent.repository.get("mlp").runtime.cached
    assert cached is not None and cached.path.parent == entry
    np.testing.assert_allclose(_infer(agent), original, rtol=1e-5, atol=1e-6)
    agent.stop()

    # The early load (edge-agent serve's, before the imports) builds from the entry too.
    early = start_early(data_dir, SessionCache(data_dir))
    assert early is not None
    agent = start_agent(early=early)
    runtime = agent.repository.get("mlp").runtime
    assert runtime.cached == cached
    np.testing.assert_allclose(_infer(agent), original, rtol=1e-5, atol=1e-6)


def test_an_entry_written_to_since_is_not_used(
    data_dir: Path, store: ModelStore, mlp: Path, start_agent: Start
) -> None:
    store.install(mlp)
    agent = start_agent()
    original = _infer(agent)
    entry = _cached_start(agent)
    agent.stop()
    data = entry / DATA_NAME
    data.write_bytes(data.read_bytes())  # the same bytes, but written: its ctime moved

    assert start_early(data_dir, SessionCache(data_dir)) is not None
    agent = start_agent()
    assert agent.repository.get("mlp").runtime.cached is None
    np.testing.assert_allclose(_infer(agent), original, rtol=1e-5, atol=1e-6)


def test_an_entry_whose_bytes_no_longer_hash_as_recorded_is_deleted_and_the_model_reloaded(
    data_dir: Path, store: ModelStore, mlp: Path, start_agent: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """Damage the light check cannot see (the files' facts unchanged, their bytes not the ones
    written: bit rot, or a writer that restored the facts) is found by the re-hash after start-up."""
    store.install(mlp)
    agent = start_agent()
    original = _infer(agent)
    entry = _cached_start(agent)
    agent.stop()
    doc = json.loads((entry / ENTRY_NAME).read_text())
    doc["files"][DATA_NAME]["sha256"] = "0" * 64
    (entry / ENTRY_NAME).write_text(json.dumps(doc))

    agent = start_agent()
    assert agent.repository.get("mlp").runtime.cached is not None  # the light check passed
    with caplog.at_level(logging.ERROR, logger="agent.repository"):
        agent.repository.check_session_cache()
    assert "damaged" in caplog.text
    assert not entry.exists()
    assert agent.repository.get("mlp").runtime.cached is None  # rebuilt from the original
    np.testing.assert_allclose(_infer(agent), original, rtol=1e-5, atol=1e-6)
    # the same version serves on: its monitoring window is still reported as serving
    window = agent.repository.get("mlp").window
    assert window is not None and window.serving


def test_entries_of_versions_no_longer_served_are_deleted(
    tmp_path: Path,
    data_dir: Path,
    store: ModelStore,
    key: keys.Ed25519PrivateKey,
    mlp: Path,
    start_agent: Start,
) -> None:
    store.install(mlp)
    agent = start_agent()
    first = _cached_start(agent)
    v2 = onnx_bundle(
        tmp_path / "bundles-2", key, mlp_onnx(tmp_path / "mlp2.onnx", WIDTH, 2, seed=1), "mlp", "2"
    )
    agent.store.install(v2)  # the running agent swaps to 2
    assert agent.repository.get("mlp").version == "2"
    second = _cached_start(agent)
    assert second != first and not first.exists()


def test_a_gpu_session_or_a_small_model_is_not_cached(
    data_dir: Path, store: ModelStore, mlp: Path, make_affine: Callable[..., Path], start_agent: Start
) -> None:
    store.install(make_affine("1"))  # a few hundred bytes
    store.install(mlp)
    agent = start_agent()
    agent.repository.fill_session_cache()
    assert len(_entries(data_dir)) == 1  # the MLP's only
    params = agent.repository.get("mlp").runtime.params
    cache = SessionCache(data_dir)
    assert cache.cacheable(params)
    gpu = dataclasses.replace(params, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert not cache.cacheable(gpu)


def test_off_with_the_setting(data_dir: Path, store: ModelStore, mlp: Path, start_agent: Start) -> None:
    store.install(mlp)
    agent = start_agent(session_cache=False)
    agent.repository.fill_session_cache()
    assert _entries(data_dir) == []
    assert httpx.get(agent.url + "/v2/health/ready").status_code == 200


def test_no_entry_when_it_would_leave_the_disk_short(
    tmp_path: Path, key: keys.Ed25519PrivateKey, pub_path: Path, mlp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On a 64 MiB disk an entry (twice the model) would leave less than the agent keeps free."""
    from agent.settings import AgentSettings

    with small_tmpfs(tmp_path / "disk", "64m") as disk:
        store = ModelStore(disk / "data", [key.public_key()])
        store.install(mlp)
        settings = AgentSettings(data_dir=disk / "data", trust_keys=[pub_path], port=0)
        agent = AgentService(settings).start_background()
        try:
            with caplog.at_level(logging.INFO, logger="agent.session_cache"):
                agent.repository.fill_session_cache()
            assert "not caching the session" in caplog.text and "free" in caplog.text
            assert _entries(disk / "data") == []
            assert not list((disk / "data" / CACHE_DIR).glob(".tmp-*"))
        finally:
            agent.stop()


def test_a_model_whose_shape_inference_reads_a_small_constant_is_cached(tmp_path: Path) -> None:
    """An Unsqueeze reads its axes from a constant that ONNX shape inference must find inline: with
    every initializer moved to the external weights file the saved model did not load back (seen
    on all-MiniLM-L6-v2's attention)."""
    import hashlib

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from agent.early import SessionParams, create_session

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((WIDTH, WIDTH)).astype(np.float32), f"w{i}")
        for i in range(2)
    ]
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w0"], ["h"]),
            helper.make_node("MatMul", ["h", "w1"], ["m"]),
            helper.make_node("Unsqueeze", ["m", "axes"], ["y"]),
        ],
        "unsqueeze",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1, WIDTH])],
        [*weights, axes],
    )
    model = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    params = SessionParams(str(model), ("CPUExecutionProvider",), 2, 1, "ORT_ENABLE_ALL", ())
    cache = SessionCache(tmp_path / "data")
    x = _x()
    cached = cache.build(params, hashlib.sha256(model.read_bytes()).hexdigest(), {"x": x}, lambda: True)
    assert cached is not None
    want = create_session(params).run(None, {"x": x})[0]
    np.testing.assert_allclose(
        create_session(params, source=cached.path).run(None, {"x": x})[0], want, rtol=1e-5
    )


def test_a_disk_that_fills_up_during_the_save_is_tried_again_not_marked_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The room check passed, then the disk filled while ONNX Runtime wrote the entry (here the
    check is skipped on a disk too small for it): the model is not at fault, so the key must not be
    recorded as one that cannot be cached."""
    import hashlib

    from agent.early import SessionParams

    model = mlp_onnx(tmp_path / "mlp.onnx", width=WIDTH, depth=2)  # 8 MiB; the entry needs ~16
    params = SessionParams(str(model), ("CPUExecutionProvider",), 2, 1, "ORT_ENABLE_ALL", ())
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    monkeypatch.setattr(SessionCache, "_no_room", lambda self, model_bytes: None)
    with small_tmpfs(tmp_path / "disk", "12m") as disk:
        cache = SessionCache(disk / "data")
        with caplog.at_level(logging.INFO, logger="agent.session_cache"):
            assert cache.build(params, sha, {"x": _x()}, lambda: True) is None
        assert "disk filled up" in caplog.text
        assert not list((disk / "data" / CACHE_DIR).glob("*.failed"))
        assert not list((disk / "data" / CACHE_DIR).glob(".tmp-*"))
    # with room, the same key is built
    assert SessionCache(tmp_path / "data").build(params, sha, {"x": _x()}, lambda: True) is not None
