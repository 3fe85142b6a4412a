"""Structured pruning through the activation forms exporters write, and not through branches.

tf2onnx writes hard-swish as Add/Clip/Mul/Mul and Paddle2ONNX (before opset 14) as HardSigmoid+Mul;
ONNX Runtime's cleanup also inlines HardSwish into HardSigmoid+Mul. Channels must be pruned through
those ``x * f(x)`` regions, and never where a channel leaves the region another way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter import pruning
from converter.context import Options, PassContext
from converter.loading import load_source
from converter.passes import cleanup, export
from sdk.profiles import load_profile
from tests.converter import exporter_graphs as eg


def _cleaned(path: Path, workdir: Path) -> onnx.ModelProto:
    """The graph the prune pass sees: after the export (opset) and cleanup passes."""
    source = load_source(str(path), workdir)
    ctx = PassContext(load_profile("x86-server"), workdir, Options())
    model = export.run(source.artifact, ctx, export.configure(ctx))
    model = cleanup.run(model, ctx, cleanup.configure(ctx))
    assert model.onnx_path is not None
    return onnx.load(str(model.onnx_path))


def _weights_of(model: onnx.ModelProto, op_type: str) -> list[np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [inits[n.input[1]] for n in model.graph.node if n.op_type == op_type and n.input[1] in inits]


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize(("style", "opset"), [("tf2onnx", 13), ("paddle2onnx", 11), ("paddle2onnx", 15)])
def test_channels_are_pruned_through_hard_swish_forms(style: str, opset: int, tmp_path: Path) -> None:
    cnn = eg.trained_cnn()
    if style == "tf2onnx":
        path, name, x = eg.tf2onnx_style(cnn, tmp_path / "m.onnx", opset), "input_1:0", cnn.x_nhwc
    else:
        path, name, x = eg.paddle2onnx_style(cnn, tmp_path / "m.onnx", opset), "x", cnn.x
    model = _cleaned(path, tmp_path)
    before = _run(model, {name: x})
    stats = pruning.structured(model, 0.25)
    # conv1 (16 channels, through hard-swish and MaxPool into conv2) and the first dense layer (64,
    # through hard-swish into the second); conv2 feeds a Reshape, which is not channel-wise.
    assert (stats.weights, stats.removed_channels) == (16 + 64, 4 + 16)
    conv1, conv2 = _weights_of(model, "Conv")
    assert conv1.shape[0] == 12 and conv2.shape[1] == 12 and conv2.shape[0] == 32
    # cleanup fused MatMul+Add into Gemm; the weights stay [in, out]
    assert [w.shape for w in _weights_of(model, "Gemm")] == [(128, 48), (48, 10)]
    onnx.checker.check_model(model)
    after = _run(model, {name: x[:64]})
    assert after.shape == (64, 10)
    assert (
        after.argmax(1) == before[:64].argmax(1)
    ).mean() >= 0.7  # a quarter of the channels gone, no fine-tuning


def _conv(
    name: str, cin: int, cout: int, rng: np.random.Generator
) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    w = numpy_helper.from_array(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32), f"{name}.w")
    return helper.make_node("Conv", ["", f"{name}.w"], [name], name=name, pads=[1, 1, 1, 1]), w


def _graph(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], out: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 6, 6])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_residual_branch_keeps_its_channels() -> None:
    rng = np.random.default_rng(0)
    (a, wa), (b, wb) = _conv("a", 8, 8, rng), _conv("b", 8, 8, rng)
    a.input[0], b.input[0] = "x", "r"
    relu = helper.make_node("Relu", ["a"], ["r"])
    add = helper.make_node("Add", ["b", "r"], ["y"])  # r leaves the a -> b path: a's channels must stay
    model = _graph([a, relu, b, add], [wa, wb], "y")
    stats = pruning.structured(model, 0.5)
    assert stats.removed_channels == 0
    assert [w.shape for w in _weights_of(model, "Conv")] == [(8, 8, 3, 3), (8, 8, 3, 3)]


def test_a_per_channel_scale_is_not_walked_through() -> None:
    """Mul by a [C,1,1] vector would need pruning too; the walk stops there instead of breaking it."""
    rng = np.random.default_rng(0)
    (a, wa), (b, wb) = _conv("a", 8, 8, rng), _conv("b", 8, 4, rng)
    a.input[0], b.input[0] = "x", "s"
    scale = numpy_helper.from_array(rng.standard_normal((8, 1, 1)).astype(np.float32), "scale")
    mul = helper.make_node("Mul", ["a", "scale"], ["s"])
    model = _graph([a, mul, b], [wa, wb, scale], "b")
    assert pruning.structured(model, 0.5).removed_channels == 0


def test_silu_written_as_x_times_sigmoid_is_walked_through() -> None:
    rng = np.random.default_rng(0)
    (a, wa), (b, wb) = _conv("a", 8, 8, rng), _conv("b", 8, 4, rng)
    a.input[0], b.input[0] = "x", "silu"
    nodes = [
        a,
        helper.make_node("Sigmoid", ["a"], ["sig"]),
        helper.make_node("Mul", ["a", "sig"], ["silu"]),
        b,
    ]
    model = _graph(nodes, [wa, wb], "b")
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    assert pruning.structured(model, 0.5).removed_channels == 4
    assert [w.shape for w in _weights_of(model, "Conv")] == [(4, 8, 3, 3), (4, 4, 3, 3)]
    assert _run(model, {"x": x}).shape == (2, 4, 6, 6)


def test_conv_channels_are_pruned_through_flatten_into_a_dense_layer() -> None:
    """Each channel of a Conv read by Flatten -> Gemm is a block of the Gemm's inputs: pruned as one,
    keeping a multiple of 8 channels (CPU convolution kernels work on channel blocks)."""
    rng = np.random.default_rng(0)
    (a, wa) = _conv("a", 8, 32, rng)
    a.input[0] = "x"
    dense = numpy_helper.from_array(rng.standard_normal((32 * 6 * 6, 5)).astype(np.float32), "dense")
    nodes = [
        a,
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "dense"], ["y"]),
    ]
    model = _graph(nodes, [wa, dense], "y")
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    kept_norms = np.abs(weights["a.w"]).reshape(32, -1).sum(1)
    stats = pruning.structured(model, 0.3, multiple=8)
    assert stats.removed_channels == 8  # 32 * 0.7 = 22.4 -> 24 kept, a multiple of 8
    conv, gemm = _weights_of(model, "Conv")[0], _weights_of(model, "Gemm")[0]
    assert conv.shape == (24, 8, 3, 3) and gemm.shape == (24 * 6 * 6, 5)
    # the channels kept are the 24 largest, and the dense rows kept are exactly theirs
    keep = np.sort(np.argsort(-kept_norms)[:24])
    rows = (keep[:, None] * 36 + np.arange(36)).reshape(-1)
    np.testing.assert_array_equal(gemm, weights["dense"][rows])
    assert _run(model, {"x": x}).shape == (2, 5)


def test_shared_weights_are_untied_so_they_can_be_pruned() -> None:
    rng = np.random.default_rng(0)
    (a, wa), (b, wb) = _conv("a", 8, 16, rng), _conv("b", 16, 8, rng)
    (c, _), (d, _) = _conv("c", 8, 16, rng), _conv("d", 16, 8, rng)
    a.input[0], b.input[0] = "x", "ra"
    c.input[:2], d.input[:2] = ["b", "a.w"], ["rc", "b.w"]  # c and d reuse a's and b's weights
    nodes = [a, helper.make_node("Relu", ["a"], ["ra"]), b, c, helper.make_node("Relu", ["c"], ["rc"]), d]
    model = _graph(nodes, [wa, wb], "d")
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    before = _run(model, {"x": x})
    assert pruning.structured(model, 0.0).weights == 0  # tied: nothing may be pruned
    assert pruning.untie(model) == 2
    np.testing.assert_allclose(_run(model, {"x": x}), before, rtol=1e-5)
    assert pruning.structured(model, 0.0).weights == 16 + 8 + 16  # a, b and c feed one Conv each
