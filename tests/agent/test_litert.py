"""LiteRT (ai-edge-litert) bundles: installed, smoke tested and served like ONNX ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from agent.service import AgentService
from agent.store import ModelStore
from sdk import keys
from tests.agent.models import add_tflite, add_tflite_bundle

pytest.importorskip("ai_edge_litert")


def test_tflite_bundle_is_served(
    store: ModelStore, tmp_path: Path, key: keys.Ed25519PrivateKey, start_agent: Callable[..., AgentService]
) -> None:
    assert store.install(add_tflite_bundle(tmp_path / "src", key)).version == "1"
    agent = start_agent()
    client = triton.InferenceServerClient(f"127.0.0.1:{agent.port}")
    meta = client.get_model_metadata("adder")
    assert meta["platform"] == "tensorflow_lite" and meta["parameters"]["backend"] == "litert-cpu"
    inp = triton.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.array([[10, 20, 30, 40]], np.float32))
    result = client.infer("adder", [inp])
    assert result.as_numpy("y").tolist() == [[11.0, 22.0, 33.0, 44.0]]


#: input (and stored bias) scale, output scale of the full-integer adder; zero points are 0.
SCALES = (0.1, 0.2)


def _infer(port: int, name: str, x: np.ndarray) -> np.ndarray:
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    inp = triton.InferInput("x", list(x.shape), "FP32" if x.dtype == np.float32 else "INT8")
    inp.set_data_from_numpy(x)
    return client.infer(name, [inp]).as_numpy("y")


def test_a_full_integer_model_takes_and_returns_floats(
    store: ModelStore, tmp_path: Path, key: keys.Ed25519PrivateKey, start_agent: Callable[..., AgentService]
) -> None:
    store.install(add_tflite_bundle(tmp_path / "src", key, name="adder-int8", int8_scales=SCALES))
    agent = start_agent()
    x = np.array([[1.0, -2.0, 0.55, 12.0]], np.float32)
    served = _infer(agent.port, "adder-int8", x)
    assert served.dtype == np.float32
    # what LiteRT itself answers on the model, quantizing and dequantizing by hand
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(
        model_path=str(add_tflite(tmp_path / "m.tflite", [1.0, 2.0, 3.0, 4.0], int8_scales=SCALES))
    )
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    assert i["dtype"] == np.int8 and o["dtype"] == np.int8
    it.set_tensor(i["index"], np.round(x / SCALES[0]).astype(np.int8))
    it.invoke()
    direct = it.get_tensor(o["index"]).astype(np.float32) * SCALES[1]
    np.testing.assert_allclose(served, direct, atol=SCALES[1] / 2, rtol=0)
    np.testing.assert_allclose(served, x + np.array([1.0, 2.0, 3.0, 4.0]), atol=SCALES[1], rtol=0)


def test_a_bundle_that_offers_int8_tensors_passes_them_through(
    store: ModelStore, tmp_path: Path, key: keys.Ed25519PrivateKey, start_agent: Callable[..., AgentService]
) -> None:
    store.install(
        add_tflite_bundle(tmp_path / "src", key, name="adder-raw", int8_scales=SCALES, datatype="INT8")
    )
    agent = start_agent()
    served = _infer(agent.port, "adder-raw", np.array([[10, -20, 6, 120]], np.int8))
    assert served.dtype == np.int8
    # (x + bias) in int8 steps of 0.1, requantized to steps of 0.2: [2.0, 0.0, 3.6, 16.0]
    np.testing.assert_allclose(served.astype(int), [[10, 0, 18, 80]], atol=1)


def test_a_full_integer_model_is_hot_swapped_and_counted(
    store: ModelStore, tmp_path: Path, key: keys.Ed25519PrivateKey, start_agent: Callable[..., AgentService]
) -> None:
    store.install(add_tflite_bundle(tmp_path / "src", key, name="adder-int8", int8_scales=SCALES))
    agent = start_agent()
    x = np.zeros((1, 4), np.float32)
    np.testing.assert_allclose(_infer(agent.port, "adder-int8", x), [[1, 2, 3, 4]], atol=SCALES[1])
    v2 = add_tflite_bundle(
        tmp_path / "src", key, name="adder-int8", version="2", int8_scales=SCALES, bias=(4, 3, 2, 1)
    )
    assert agent.store.install(v2).version == "2"  # smoke-tested on the agent's LiteRT before it activates
    np.testing.assert_allclose(_infer(agent.port, "adder-int8", x), [[4, 3, 2, 1]], atol=SCALES[1])
    text = httpx.get(agent.url + "/metrics").text
    assert any(
        line.startswith("edgefleet_agent_") and 'model="adder-int8"' in line for line in text.splitlines()
    )


def test_a_dynamic_batch_is_resized_both_ways(tmp_path: Path) -> None:
    from agent.runtimes.litert import LiteRtRuntime
    from sdk.manifest import Manifest, SourceInfo, TensorSpec

    model = add_tflite(tmp_path / "model.tflite", [1.0, 2.0, 3.0, 4.0], dynamic_batch=True)
    spec = {"datatype": "FP32", "shape": [-1, 4]}
    manifest = Manifest(
        name="adder", version="1", profile="coral", runtime="litert", precision="fp32",
        source=SourceInfo(format="tflite", sha256="0" * 64), model_file="model.tflite",
        inputs=[TensorSpec(name="x", **spec)], outputs=[TensorSpec(name="y", **spec)],
    )  # fmt: skip
    runtime = LiteRtRuntime(model, manifest, threads=1)
    for rows in (3, 1, 2):
        x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
        np.testing.assert_array_equal(runtime.run({"x": x})["y"], x + np.array([1.0, 2.0, 3.0, 4.0]))


def test_a_batch_one_model_offered_any_batch_runs_sample_by_sample(tmp_path: Path) -> None:
    from agent.runtimes.litert import LiteRtRuntime
    from sdk.manifest import Manifest, SourceInfo, TensorSpec

    model = add_tflite(tmp_path / "model.tflite", [1.0, 2.0, 3.0, 4.0], int8_scales=SCALES)  # fixed [1, 4]
    spec = {"datatype": "FP32", "shape": [-1, 4]}
    manifest = Manifest(
        name="adder", version="1", profile="raspberry-pi", runtime="litert", precision="int8",
        source=SourceInfo(format="tflite", sha256="0" * 64), model_file="model.tflite",
        inputs=[TensorSpec(name="x", **spec)], outputs=[TensorSpec(name="y", **spec)],
    )  # fmt: skip
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 4
    y = LiteRtRuntime(model, manifest, threads=1).run({"x": x})["y"]
    np.testing.assert_allclose(y, x + np.array([1.0, 2.0, 3.0, 4.0]), atol=SCALES[1])
