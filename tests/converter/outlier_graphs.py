"""A model static int8 cannot keep on any CPU: one input channel spans +-1000, the output depends on
the others (N(0, 1)), so a per-tensor 8-bit activation range of ~2000 rounds them to zero."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = 256
OUTLIER = 1000.0


def outlier_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, size=(FEATURES, FEATURES)).astype(np.float32)
    w[0, :] = 1e-6  # the outlier channel hardly matters to the output
    w2 = rng.normal(0, 0.1, size=(FEATURES, FEATURES)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="first"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["h2"], name="second"),
            helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
            helper.make_node("MatMul", ["r2", "w2"], ["h3"], name="third"),
            helper.make_node("Relu", ["h3"], ["r3"], name="relu3"),
            helper.make_node("MatMul", ["r3", "w2"], ["y"], name="fourth"),
        ],
        "outlier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", FEATURES])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w2, "w2")],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def outlier_data(path: Path) -> Path:
    x = np.random.default_rng(1).normal(0, 1, size=(128, FEATURES)).astype(np.float32)
    x[:, 0] = np.where(np.arange(128) % 2, OUTLIER, -OUTLIER)
    np.savez(path, x=x)
    return path
