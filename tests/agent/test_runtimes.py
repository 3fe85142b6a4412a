"""Runtimes: the profile's execution providers with fallback, the manifest's session options."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent.runtimes import load_runtime
from agent.runtimes.base import RuntimeClosedError
from agent.runtimes.onnx import OnnxRuntime, choose_providers
from agent.store import ModelStore
from sdk import keys
from sdk.manifest import RuntimeOptions, TensorSpec
from tests.agent.models import affine_onnx, bundle_from_onnx


def test_choose_providers_keeps_order_and_ends_on_cpu(caplog: pytest.LogCaptureFixture) -> None:
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    with caplog.at_level(logging.WARNING):
        assert choose_providers(wanted, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ]
    assert "TensorrtExecutionProvider is not available" in caplog.text
    assert choose_providers(["QNNExecutionProvider"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_jetson_bundle_runs_on_this_cpu(
    store: ModelStore, make_affine: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    assert "TensorrtExecutionProvider" not in ort.get_available_providers()
    with caplog.at_level(logging.WARNING):
        store.install(make_affine("1", profile="jetson"))
    assert "TensorrtExecutionProvider is not available" in caplog.text
    assert "CUDAExecutionProvider is not available" in caplog.text
    directory = store.version_dir("affine", "1")
    runtime = load_runtime(directory, store.manifest("affine", "1"))
    assert runtime.backend == "CPUExecutionProvider"
    out = runtime.run({"x": np.ones((3, 4), np.float32)})
    np.testing.assert_allclose(out["y"], np.full((3, 4), 3.0, np.float32))
    assert out["z"].tolist() == [0, 0, 0]


def test_a_closed_runtime_drops_its_session_and_refuses_runs(
    store: ModelStore, make_affine: Callable[..., Path]
) -> None:
    store.install(make_affine("1"))
    runtime = load_runtime(store.version_dir("affine", "1"), store.manifest("affine", "1"), threads=1)
    assert isinstance(runtime, OnnxRuntime)
    runtime.close()  # a retired version: its weights must not wait for the garbage collector
    assert runtime.session is None
    with pytest.raises(RuntimeClosedError, match="retired"):
        runtime.run({"x": np.ones((1, 4), np.float32)})


def test_manifest_runtime_options_are_applied(tmp_path: Path, key: keys.Ed25519PrivateKey) -> None:
    model = affine_onnx(tmp_path / "model.onnx", 2.0)
    x = np.ones((1, 4), np.float32)
    bundle_from_onnx(
        tmp_path / "b",
        key,
        model,
        name="opts",
        version="1",
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 4])],
        smoke_inputs={"x": x},
        smoke_outputs={"y": x * 2 + 1},
        runtime_options=RuntimeOptions(
            session_config={"session.disable_quant_qdq": "1"}, graph_optimization_level="basic"
        ),
    )
    store = ModelStore(tmp_path / "data", [key.public_key()])
    store.install(next((tmp_path / "b").glob("*.efb")))
    runtime = load_runtime(store.version_dir("opts", "1"), store.manifest("opts", "1"), threads=1)
    assert isinstance(runtime, OnnxRuntime)
    options = runtime.session.get_session_options()
    assert options.get_session_config_entry("session.disable_quant_qdq") == "1"
    # idle servers must not spin their worker threads
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.intra_op_num_threads == 1
