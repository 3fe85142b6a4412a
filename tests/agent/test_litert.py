"""LiteRT (ai-edge-litert) bundles: installed, smoke tested and served like ONNX ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from agent.service import AgentService
from agent.store import ModelStore
from sdk import keys
from tests.agent.models import add_tflite_bundle

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
