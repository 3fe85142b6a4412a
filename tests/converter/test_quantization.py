"""Activation smoothing, which nodes a quantizer touched, and which embedding tables stay fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converter import sensitivity, smoothing
from converter.calibration import Dataset
from converter.passes import int8_dynamic, weight_only
from converter.runtime import make_session

OUTLIERS = {3: 40.0, 17: 25.0}


def _two_matmuls(path: Path) -> Path:
    """x[N, 16, 64] -> MatMul -> Relu -> MatMul -> y[N, 16, 32] (16 tokens of 64 channels)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((64, 64)) / 8).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((64, 32)) / 8).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
        ],
        "two_matmuls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16, 32])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def _data(n: int, seed: int) -> Dataset:
    """A few channels are large, like the outlier channels of transformer activations."""
    x = np.random.default_rng(seed).standard_normal((n, 16, 64)).astype(np.float32)
    for channel, size in OUTLIERS.items():
        x[:, :, channel] *= size
    return Dataset({"x": x}, None, "test")


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = make_session(path, 1)  # one sample per call, as a served request
    return np.concatenate([session.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))])


def _rel_error(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def test_smoothing_keeps_the_float_function_and_cuts_dynamic_int8_error(tmp_path: Path) -> None:
    src = _two_matmuls(tmp_path / "mm.onnx")
    smoothed = smoothing.smooth(src, tmp_path / "smoothed.onnx", _data(32, 0), 1, tmp_path)
    assert "x" in smoothed.alphas  # the input with outlier channels was smoothed
    before, after = smoothed.errors["x"]
    assert after < before

    x = _data(8, 1).inputs["x"]
    ref = _run(src, x)
    np.testing.assert_allclose(_run(smoothed.path, x), ref, rtol=1e-4, atol=1e-4)

    config = int8_dynamic.Config(op_types=("MatMul",), per_channel=True)
    plain = int8_dynamic.quantize(src, tmp_path / "plain-int8.onnx", config)
    smooth_int8 = int8_dynamic.quantize(smoothed.path, tmp_path / "smoothed-int8.onnx", config)
    assert _rel_error(ref, _run(smooth_int8, x)) < 0.7 * _rel_error(ref, _run(plain, x))


def test_smoothing_leaves_a_model_without_outliers_alone(tmp_path: Path) -> None:
    src = _two_matmuls(tmp_path / "mm.onnx")
    x = np.random.default_rng(0).standard_normal((32, 16, 64)).astype(np.float32)
    smoothed = smoothing.smooth(src, tmp_path / "smoothed.onnx", Dataset({"x": x}, None, "cal"), 1, tmp_path)
    assert "x" not in smoothed.alphas


def test_quantized_nodes_names_only_what_dynamic_int8_replaced(tmp_path: Path) -> None:
    src = _two_matmuls(tmp_path / "mm.onnx")
    only_first = int8_dynamic.Config(op_types=("MatMul",), nodes_to_quantize=("mm1",))
    out = int8_dynamic.quantize(src, tmp_path / "int8.onnx", only_first)
    assert sensitivity.quantized_nodes(src, out) == {"mm1"}


def test_small_embedding_tables_stay_fp32(tmp_path: Path) -> None:
    """A 2-row table (token types) is read by every token: int8 rounding would bias every output."""
    rng = np.random.default_rng(0)
    big = numpy_helper.from_array(rng.standard_normal((1000, 64)).astype(np.float32), "words")
    small = numpy_helper.from_array(rng.standard_normal((2, 64)).astype(np.float32), "types")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["words", "ids"], ["a"], name="g_words"),
            helper.make_node("Gather", ["types", "kinds"], ["b"], name="g_types"),
            helper.make_node("Add", ["a", "b"], ["y"], name="add"),
        ],
        "tables",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 8]),
            helper.make_tensor_value_info("kinds", TensorProto.INT64, ["batch", 8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 64])],
        [big, small],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(tmp_path / "tables.onnx"))
    result = weight_only.quantize(
        tmp_path / "tables.onnx", tmp_path / "int8.onnx", weight_only.Config(op_types=("Gather",))
    )
    inits = {i.name: i for i in onnx.load(str(result.path)).graph.initializer}
    assert result.count == 1
    assert inits["types"].data_type == TensorProto.FLOAT
    assert inits["words_wq"].data_type == TensorProto.INT8
    # quantizing again leaves the per-row scales alone
    again = weight_only.quantize(
        result.path, tmp_path / "again.onnx", weight_only.Config(op_types=("Gather",))
    )
    assert again.count == 0
