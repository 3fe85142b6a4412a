"""A byte-sequence classifier written the way small exported text models write it, built here.

int32 byte ids [N, 2048]; one-hot as Unsqueeze/Equal/Cast against a 0..255 range, then an Expand of
a per-byte weight and a Mul; a layer norm spelled out as ReduceSum/Div/Sub/Mul/Sqrt/Reciprocal (no
LayerNormalization op); two MatMuls with a mean over the sequence between them. The weights are
random (seeded): the converter sees only the graph, and these ops are what broke static int8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEQ = 2048
VOCAB = 256
HIDDEN = 64
CLASSES = 8


def byte_classifier(path: Path, seed: int = 0, opset: int = 13, onehot: str = "expand") -> Path:
    rng = np.random.default_rng(seed)

    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(value, name)

    inits = [
        const("vocab", np.arange(VOCAB, dtype=np.int32)),
        const("vocab_f", np.arange(VOCAB, dtype=np.float32)),
        const("vocab_dim", np.array([VOCAB], dtype=np.int64)),
        const("minus_one", np.array([-1], dtype=np.int64)),
        const("seq_axis", np.array([1], dtype=np.int64)),
        const("byte_weight", rng.uniform(0.5, 1.5, size=(1, 1, VOCAB)).astype(np.float32)),
        const("expand_shape", np.array([1, SEQ, VOCAB], dtype=np.int64)),
        const("dim", np.array(VOCAB, dtype=np.float32)),
        const("eps", np.array(1e-5, dtype=np.float32)),
        const("gamma", rng.uniform(0.8, 1.2, size=VOCAB).astype(np.float32)),
        const("beta", rng.normal(0, 0.1, size=VOCAB).astype(np.float32)),
        const("w1", rng.normal(0, 0.3, size=(VOCAB, HIDDEN)).astype(np.float32)),
        const("b1", rng.normal(0, 0.1, size=HIDDEN).astype(np.float32)),
        const("w2", rng.normal(0, 0.3, size=(HIDDEN, CLASSES)).astype(np.float32)),
        const("b2", rng.normal(0, 0.1, size=CLASSES).astype(np.float32)),
    ]
    axes_last = ["minus_one"]
    nodes = [
        *(_expand_onehot() if onehot == "expand" else _equal_onehot()),
        helper.make_node("Mul", ["hot", "weight_seq"], ["x"]),
        # layer norm over the vocab axis, spelled out
        helper.make_node("ReduceSum", ["x", *axes_last], ["sum"], keepdims=1),
        helper.make_node("Div", ["sum", "dim"], ["mean"]),
        helper.make_node("Sub", ["x", "mean"], ["xc"]),
        helper.make_node("Mul", ["xc", "xc"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", *axes_last], ["sq_sum"], keepdims=1),
        helper.make_node("Div", ["sq_sum", "dim"], ["var"]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Reciprocal", ["std"], ["inv"]),
        helper.make_node("Mul", ["xc", "inv"], ["normed"]),
        helper.make_node("Mul", ["normed", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], ["ln"]),
        helper.make_node("MatMul", ["ln", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h"]),
        (
            helper.make_node("ReduceMean", ["h", "seq_axis"], ["pooled"], keepdims=0)
            if opset >= 18
            else helper.make_node("ReduceMean", ["h"], ["pooled"], axes=[1], keepdims=0)
        ),
        helper.make_node("MatMul", ["pooled", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "byte_classifier",
        [helper.make_tensor_value_info("ids", TensorProto.INT32, ["N", SEQ])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _equal_onehot() -> list[onnx.NodeProto]:
    """ids == 0..255 on int32, cast to float; the per-byte weight broadcast to [1, SEQ, VOCAB]."""
    return [
        helper.make_node("Unsqueeze", ["ids", "minus_one"], ["ids_col"]),
        helper.make_node("Equal", ["ids_col", "vocab"], ["hot_bool"]),
        helper.make_node("Cast", ["hot_bool"], ["hot"], to=TensorProto.FLOAT),
        helper.make_node("Expand", ["byte_weight", "expand_shape"], ["weight_seq"]),
    ]


def _expand_onehot() -> list[onnx.NodeProto]:
    """ids cast to float, Expanded to [N, SEQ, VOCAB] (shape from Shape/Concat), compared with 0..255."""
    return [
        helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["ids_f", "minus_one"], ["ids_col"]),
        helper.make_node("Shape", ["ids"], ["ids_shape"]),
        helper.make_node("Concat", ["ids_shape", "vocab_dim"], ["hot_shape"], axis=0),
        helper.make_node("Expand", ["ids_col", "hot_shape"], ["ids_wide"]),
        helper.make_node("Equal", ["ids_wide", "vocab_f"], ["hot_bool"]),
        helper.make_node("Cast", ["hot_bool"], ["hot"], to=TensorProto.FLOAT),
        helper.make_node("Expand", ["byte_weight", "hot_shape"], ["weight_seq"]),
    ]


def byte_samples(n: int, seed: int = 1) -> np.ndarray:
    """Byte ids as text gives them: mostly printable ASCII, some high bytes."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(32, 127, size=(n, SEQ), dtype=np.int32)
    high = rng.random((n, SEQ)) < 0.05
    ids[high] = rng.integers(128, VOCAB, size=int(high.sum()), dtype=np.int32)
    return ids
