"""Structured pruning through the activation forms exporters write, and through residual, concat
and split groups; never where a channel leaves for an op the pruner does not follow.

tf2onnx writes hard-swish as Add/Clip/Mul/Mul and Paddle2ONNX (before opset 14) as HardSigmoid+Mul;
ONNX Runtime's cleanup also inlines HardSwish into HardSigmoid+Mul. Channels must be pruned through
those ``x * f(x)`` regions. Channels that meet at a residual ``Add`` go together from every layer
that makes them; concatenated branches are pruned each on its own, and split sizes follow.

The group tests zero the channels that should go beforehand: the pruned graph must then compute
what the whole one did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
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


# -- groups: residual sums, concatenations, splits ---------------------------------------------------


def _zero(model: onnx.ModelProto, layer: str, channels: list[int]) -> None:
    """Output ``channels`` of Conv ``layer`` (weight ``layer.w``, bias ``layer.b`` if any) become 0."""
    for init in model.graph.initializer:
        if init.name in (f"{layer}.w", f"{layer}.b"):
            value = numpy_helper.to_array(init).copy()
            value[channels] = 0
            init.CopyFrom(numpy_helper.from_array(value, init.name))


def _same_after_pruning(
    model: onnx.ModelProto, amount: float, multiple: int = 1, opset_ok: bool = True
) -> pruning.PruneStats:
    """Prune; the graph must stay valid and compute the same outputs (the pruned channels were 0)."""
    x = np.random.default_rng(1).standard_normal((2, 8, 6, 6)).astype(np.float32)
    before = _run(model, {"x": x})
    stats = pruning.structured(model, amount, multiple)
    _valid(model)
    after = _run(model, {"x": x})
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * float(np.abs(before).max()))
    return stats


def _valid(model: onnx.ModelProto) -> None:
    """The checker passes and strict shape inference finds no mismatch (channel counts agree)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for out, meta in zip(probe.graph.output, session.get_outputs(), strict=True):
        if not out.type.tensor_type.HasField("shape"):  # the hand-built graphs leave it open
            out.CopyFrom(helper.make_tensor_value_info(out.name, TensorProto.FLOAT, [None] * len(meta.shape)))
    onnx.checker.check_model(probe)
    onnx.shape_inference.infer_shapes(probe, check_type=True, strict_mode=True)


def _biased_conv(
    name: str, cin: int, cout: int, rng: np.random.Generator, src: str, k: int = 3
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    w = numpy_helper.from_array(rng.standard_normal((cout, cin, k, k)).astype(np.float32), f"{name}.w")
    b = numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), f"{name}.b")
    pads = [k // 2] * 4
    return helper.make_node("Conv", [src, f"{name}.w", f"{name}.b"], [name], name=name, pads=pads), [w, b]


def _silu(src: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node("Sigmoid", [src], [f"{src}.sig"]),
        helper.make_node("Mul", [src, f"{src}.sig"], [f"{src}.silu"]),
    ]


def test_residual_producers_are_pruned_as_one_group() -> None:
    """a -> SiLU -> r; b(r) -> SiLU; r + b -> c. a's and b's channels meet at the Add: one keep-set."""
    rng = np.random.default_rng(0)
    a, ia = _biased_conv("a", 8, 16, rng, "x")
    b, ib = _biased_conv("b", 16, 16, rng, "a.silu")
    c, ic = _biased_conv("c", 16, 4, rng, "sum", k=1)
    nodes = [a, *_silu("a"), b, *_silu("b"), helper.make_node("Add", ["a.silu", "b.silu"], ["sum"]), c]
    model = _graph(nodes, ia + ib + ic, "c")
    for layer in ("a", "b"):
        _zero(model, layer, [1, 4, 9, 15])
    stats = _same_after_pruning(model, 0.25)
    assert (stats.weights, stats.removed_channels) == (16 + 16, 4 + 4)
    assert [w.shape[:2] for w in _weights_of(model, "Conv")] == [(12, 8), (12, 12), (4, 12)]


def test_a_residual_group_that_reaches_a_reshape_is_left_whole() -> None:
    rng = np.random.default_rng(0)
    a, ia = _biased_conv("a", 8, 16, rng, "x")
    b, ib = _biased_conv("b", 16, 16, rng, "a")
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    nodes = [
        a,
        b,
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Reshape", ["sum", "shape"], ["y"]),
    ]
    model = _graph(nodes, [*ia, *ib, shape], "y")
    assert pruning.structured(model, 0.5).weights == 0
    assert [w.shape[:2] for w in _weights_of(model, "Conv")] == [(16, 8), (16, 16)]


def _c2f(opset: int) -> onnx.ModelProto:
    """YOLOv8's C2f block: a -> Split in halves; b(second half) + second half; Concat of the three
    -> c. The split sizes are an input (opset 13), an attribute (11) or left to num_outputs (18)."""
    rng = np.random.default_rng(0)
    a, ia = _biased_conv("a", 8, 16, rng, "x", k=1)
    b, ib = _biased_conv("b", 8, 8, rng, "s1")
    c, ic = _biased_conv("c", 24, 4, rng, "cat", k=1)
    inits = ia + ib + ic
    if opset >= 18:
        split = helper.make_node("Split", ["a.silu"], ["s0", "s1"], axis=1, num_outputs=2)
    elif opset >= 13:
        inits.append(numpy_helper.from_array(np.array([8, 8], np.int64), "halves"))
        split = helper.make_node("Split", ["a.silu", "halves"], ["s0", "s1"], axis=1)
    else:
        split = helper.make_node("Split", ["a.silu"], ["s0", "s1"], axis=1, split=[8, 8])
    nodes = [
        a,
        *_silu("a"),
        split,
        b,
        *_silu("b"),
        helper.make_node("Add", ["s1", "b.silu"], ["r"]),
        helper.make_node("Concat", ["s0", "s1", "r"], ["cat"], axis=1),
        c,
    ]
    model = _graph(nodes, inits, "c")
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", opset))
    return model


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_concat_and_split_groups_are_pruned_with_their_readers(opset: int) -> None:
    model = _c2f(opset)
    _zero(model, "a", [1, 5, 8 + 2, 8 + 6])  # two of each half
    _zero(model, "b", [2, 6])  # the residual partner of a's second half
    stats = _same_after_pruning(model, 0.25)
    # each half of a is a kind of its own (a split output must keep channels); b goes with a's second half
    assert (stats.weights, stats.removed_channels) == (16 + 8, 4 + 2)
    assert [w.shape[:2] for w in _weights_of(model, "Conv")] == [(12, 8), (6, 6), (4, 18)]
    split = next(n for n in model.graph.node if n.op_type == "Split")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    sizes = list(split.attribute[-1].ints) if opset < 13 else inits[split.input[1]].tolist()
    assert sizes == [6, 6]


def test_a_concat_with_a_branch_it_does_not_follow_is_a_barrier() -> None:
    rng = np.random.default_rng(0)
    a, ia = _biased_conv("a", 8, 16, rng, "x")
    c, ic = _biased_conv("c", 24, 4, rng, "cat", k=1)
    nodes = [a, helper.make_node("Concat", ["a", "x"], ["cat"], axis=1), c]
    model = _graph(nodes, ia + ic, "c")
    assert pruning.structured(model, 0.5).weights == 0


def test_batch_norm_per_channel_scale_and_depthwise_conv_are_pruned_with_the_channels() -> None:
    rng = np.random.default_rng(0)
    a, ia = _biased_conv("a", 8, 16, rng, "x")
    dw = numpy_helper.from_array(rng.standard_normal((16, 1, 3, 3)).astype(np.float32), "dw.w")
    bn = [
        numpy_helper.from_array(v.astype(np.float32), f"bn.{k}")
        for k, v in {
            "scale": rng.random(16) + 0.5,
            "bias": rng.standard_normal(16),
            "mean": rng.standard_normal(16),
            "var": rng.random(16) + 0.5,
        }.items()
    ]
    scale = numpy_helper.from_array((rng.random((16, 1, 1)) + 0.5).astype(np.float32), "scale")
    c, ic = _biased_conv("c", 16, 4, rng, "m", k=1)
    nodes = [
        a,
        helper.make_node("BatchNormalization", ["a", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("Conv", ["r", "dw.w"], ["d"], group=16, pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["d", "scale"], ["m"]),
        c,
    ]
    model = _graph(nodes, [*ia, *bn, dw, scale, *ic], "c")
    zeroed = [0, 3, 7, 12]
    _zero(model, "a", zeroed)
    for init in model.graph.initializer:  # BatchNorm maps the zero channels to 0 too
        if init.name in ("bn.bias", "bn.mean"):
            value = numpy_helper.to_array(init).copy()
            value[zeroed] = 0
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    stats = _same_after_pruning(model, 0.25)
    assert stats.removed_channels == 4
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert inits["bn.scale"].shape == (12,) and inits["scale"].shape == (12, 1, 1)
    depthwise = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[1] == "dw.w")
    assert inits["dw.w"].shape == (12, 1, 3, 3) and pruning._attr(depthwise, "group", 1) == 12


def test_the_exported_detector_is_pruned_through_its_groups(tmp_path: Path) -> None:
    """The YOLO-style detector exported by torch and cleaned: in every C2f block the split conv and
    its residual partner lose channels together; the heads, read by a Reshape, keep theirs; ONNX
    Runtime runs the result."""
    from tests.converter import models

    det = models.tiny_detector(width=16)
    x = models.detector_images(2, 64, seed=3).numpy()
    model = _cleaned(
        models.export(det, (torch.from_numpy(x[:1]),), tmp_path / "det.onnx", ["images"]), tmp_path
    )
    before = _out_channels(model)
    reference = _run(model, {"images": x})
    stats = pruning.structured(model, 0.5, multiple=8)
    _valid(model)
    after = _out_channels(model)
    assert _run(model, {"images": x}).shape == reference.shape
    for block in ("/stem/stem.2", "/p4/p4.1", "/p5/p5.1", "/neck"):
        for conv in ("cv1/cv1.0", "blocks.0/blocks.0.1/blocks.0.1.0"):
            name = f"{block}/{conv}/Conv"
            assert after[name] < before[name], (name, before[name], after[name])
    for head in ("/head4/head4.1/Conv", "/head5/head5.1/Conv"):
        assert after[head] == before[head] == 12
    # every Conv but the two heads may be pruned (the old single-chain pruner reached about half)
    assert stats.weights == sum(before.values()) - 24
    assert stats.removed_channels > 0.3 * stats.weights


def _out_channels(model: onnx.ModelProto) -> dict[str, int]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.name: inits[n.input[1]].shape[0] for n in model.graph.node if n.op_type == "Conv"}


def test_channels_a_subgraph_reads_from_the_outer_scope_are_kept() -> None:
    """An If branch reads a's output by name: the walk does not see that reader, so a stays whole."""
    rng = np.random.default_rng(0)
    a, ia = _biased_conv("a", 8, 16, rng, "x")
    c, ic = _biased_conv("c", 16, 4, rng, "a", k=1)
    branch = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["from_a"])],
        "branch",
        [],
        [helper.make_tensor_value_info("from_a", TensorProto.FLOAT, None)],
    )
    flag = numpy_helper.from_array(np.array(True), "flag")
    cond = helper.make_node("If", ["flag"], ["picked"], then_branch=branch, else_branch=branch)
    model = _graph([a, c, cond], [*ia, *ic, flag], "c")
    model.graph.output.append(helper.make_tensor_value_info("picked", TensorProto.FLOAT, None))
    assert pruning.structured(model, 0.5).weights == 0
