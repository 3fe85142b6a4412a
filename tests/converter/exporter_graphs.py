"""ONNX graphs written the way tf2onnx and Paddle2ONNX write them, around weights trained here.

One small CNN (Conv-BN-HardSwish, Conv-BN-ReLU6, two Linear layers) is trained on scikit-learn's
digits with PyTorch; its weights are then laid out as each exporter lays them out, because the
converter sees only the graph, and each exporter's habits are what breaks converters:

* tf2onnx: NHWC input with a ``:0`` tensor name and an ``unk__N`` batch dim, Transpose pairs around
  every Conv and MaxPool (what is left when its transpose optimizer cannot push them through),
  Keras BatchNormalization as Mul/Add on the channel-last axis, hard-swish as Add/Clip/Mul/Mul,
  Flatten as Shape/Gather/Cast(int32)/Concat/Cast/Reshape in H,W,C order, MatMul+Add dense
  layers, an Identity before the output, an unused ``ai.onnx.ml`` opset import; opsets 13-15.
* Paddle2ONNX: Conv without bias plus an Add of a [1,C,1,1] bias, un-folded BatchNormalization,
  HardSigmoid+Mul for hard-swish (HardSwish from opset 14), ReLU6 as Clip with min/max inputs,
  Identity after nearly every op, Shape/Slice/Squeeze/Unsqueeze/Concat/Reshape for the flatten
  (axes as attributes before opset 13), ``p2o.*`` names and a ``save_infer_model/scale_0.tmp_0``
  output; opset 11 by default, any opset on request (the forms follow the opset).

The layouts were checked against real tf2onnx 1.17 and paddle2onnx 2.1 output (see
``tests/converter/test_exporters.py``, which runs the real exporters in a slow test).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: scikit-learn's digits are 8x8 (the CNN pools twice: 8 -> 4 -> 2); kept small so tests stay fast.
SIDE = 8
TRAIN = 1400
BN_EPS = 1e-5


@dataclass(frozen=True)
class TrainedCNN:
    """Weights in PyTorch layout, the digits data (N, 1, SIDE, SIDE) and PyTorch's own logits."""

    weights: dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray
    #: the trained PyTorch model's logits on ``x``: what every exporter-style graph must reproduce.
    logits: np.ndarray

    @property
    def x_nhwc(self) -> np.ndarray:
        return np.ascontiguousarray(self.x.transpose(0, 2, 3, 1))


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (N, 1, 8, 8) float32 in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(np.float32)[:, None], data.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def trained_cnn(epochs: int = 4, seed: int = 0) -> TrainedCNN:
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16, eps=BN_EPS)
            self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32, eps=BN_EPS)
            self.fc1, self.fc2 = nn.Linear(32 * (SIDE // 4) ** 2, 64), nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.max_pool2d(F.hardswish(self.bn1(self.conv1(x))), 2)
            h = F.max_pool2d(F.relu6(self.bn2(self.conv2(h))), 2)
            return self.fc2(F.hardswish(self.fc1(h.flatten(1))))

    x, y = digits()
    torch.manual_seed(seed)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    xt, yt = torch.from_numpy(x[:TRAIN]), torch.from_numpy(y[:TRAIN])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches this small run 4x faster on one thread than on a busy two
    try:
        for _ in range(epochs):
            perm = torch.randperm(TRAIN)
            for i in range(0, TRAIN, 64):
                idx = perm[i : i + 64]
                opt.zero_grad()
                F.cross_entropy(net(xt[idx]), yt[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    weights = {k: v.detach().numpy().copy() for k, v in net.state_dict().items() if v.dtype.is_floating_point}
    return TrainedCNN(weights, x, y, logits)


class _Graph:
    """Collects nodes and initializers; op forms follow ``opset`` where ONNX changed them."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output

    def conv3x3(self, inputs: list[str], name: str, output: str) -> str:
        """A 3x3 'same' convolution with every attribute spelled out, as both exporters write it."""
        return self.op(
            "Conv",
            inputs,
            name,
            output,
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[1, 1],
            dilations=[1, 1],
            group=1,
        )

    def axes_op(self, op_type: str, x: str, axes: list[int], name: str, output: str) -> str:
        """Squeeze/Unsqueeze: ``axes`` an attribute before opset 13, an input from 13."""
        if self.opset < 13:
            return self.op(op_type, [x], name, output, axes=axes)
        return self.op(op_type, [x, self.const(f"{name}/axes", np.array(axes, np.int64))], name, output)

    def model(
        self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], **meta: str
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        opsets = [helper.make_opsetid("", self.opset)]
        if meta.pop("ml_domain", ""):
            opsets.append(helper.make_opsetid("ai.onnx.ml", 2))
        model = helper.make_model(graph, opset_imports=opsets, **meta)
        model.ir_version = 7 if self.opset <= 14 else 8 if self.opset <= 18 else 10
        onnx.checker.check_model(model, full_check=True)
        return model


def _bn_affine(w: dict[str, np.ndarray], bn: str) -> tuple[np.ndarray, np.ndarray]:
    scale = w[f"{bn}.weight"] / np.sqrt(w[f"{bn}.running_var"] + BN_EPS)
    return scale.astype(np.float32), (w[f"{bn}.bias"] - w[f"{bn}.running_mean"] * scale).astype(np.float32)


def tf2onnx_style(cnn: TrainedCNN, path: Path, opset: int = 13) -> Path:
    """The CNN as tf2onnx writes a Keras model: NHWC, ``:0`` names, Transposes around Conv."""
    w = cnn.weights
    g = _Graph(opset)
    nchw, nhwc = [0, 3, 1, 2], [0, 2, 3, 1]

    def conv(x: str, layer: str, torch_name: str) -> str:
        t = g.op("Transpose", [x], f"model/{layer}/Conv2D__6", f"model/{layer}/Conv2D__6:0", perm=nchw)
        kernel = g.const(f"model/{layer}/Conv2D/ReadVariableOp:0", w[f"{torch_name}.weight"])
        bias = g.const(f"model/{layer}/BiasAdd/ReadVariableOp:0", w[f"{torch_name}.bias"])
        c = g.conv3x3([t, kernel, bias], f"model/{layer}/BiasAdd", f"model/{layer}/BiasAdd:0")
        return g.op("Transpose", [c], f"model/{layer}/BiasAdd__8", f"model/{layer}/BiasAdd__8:0", perm=nhwc)

    def batchnorm(x: str, layer: str, torch_name: str) -> str:
        scale, shift = _bn_affine(w, torch_name)
        p = f"model/{layer}/batchnorm"
        m = g.op("Mul", [x, g.const(f"{p}/mul:0", scale)], f"{p}/mul_1", f"{p}/mul_1:0")
        return g.op("Add", [m, g.const(f"{p}/sub:0", shift)], f"{p}/add_1", f"{p}/add_1:0")

    def relu6(x: str, p: str) -> str:
        lo, hi = g.const(f"{p}/Relu6__min:0", np.array(0, np.float32)), f"{p}/Relu6__max:0"
        g.const(hi, np.array(6, np.float32))
        return g.op("Clip", [x, lo, hi], f"{p}/Relu6", f"{p}/Relu6:0")

    def hard_swish(x: str, p: str) -> str:  # Keras: x * relu6(x + 3) * (1/6)
        a = g.op("Add", [x, g.const(f"{p}/add/y:0", np.array(3, np.float32))], f"{p}/add", f"{p}/add:0")
        m = g.op("Mul", [x, relu6(a, p)], f"{p}/mul", f"{p}/mul:0")
        return g.op(
            "Mul", [m, g.const(f"{p}/mul_1/y:0", np.array(1 / 6, np.float32))], f"{p}/mul_1", f"{p}/mul_1:0"
        )

    def pool(x: str, layer: str) -> str:
        t = g.op("Transpose", [x], f"model/{layer}/MaxPool__12", f"model/{layer}/MaxPool__12:0", perm=nchw)
        p = g.op(
            "MaxPool",
            [t],
            f"model/{layer}/MaxPool",
            f"model/{layer}/MaxPool:0",
            kernel_shape=[2, 2],
            strides=[2, 2],
        )
        return g.op("Transpose", [p], f"model/{layer}/MaxPool__14", f"model/{layer}/MaxPool__14:0", perm=nhwc)

    def dense(x: str, layer: str, weight: np.ndarray, bias: np.ndarray) -> str:
        k = g.const(f"model/{layer}/MatMul/ReadVariableOp:0", weight.astype(np.float32))
        mm = g.op("MatMul", [x, k], f"model/{layer}/MatMul", f"model/{layer}/MatMul:0")
        b = g.const(f"model/{layer}/BiasAdd/ReadVariableOp:0", bias)
        return g.op("Add", [mm, b], f"model/{layer}/BiasAdd", f"model/{layer}/BiasAdd:0")

    h = hard_swish(batchnorm(conv("input_1:0", "conv2d", "conv1"), "batch_normalization", "bn1"), "model/act")
    h = pool(h, "max_pooling2d")
    h = relu6(batchnorm(conv(h, "conv2d_1", "conv2"), "batch_normalization_1", "bn2"), "model/re_lu")
    h = pool(h, "max_pooling2d_1")
    # Keras flattens NHWC in (h, w, c) order: the first dense kernel's rows are permuted to match.
    shape = g.op("Shape", [h], "Shape__40", "Shape__40:0")
    batch = g.op(
        "Gather", [shape, g.const("Const__42", np.array([0], np.int64))], "Gather__43", "Gather__43:0"
    )
    batch32 = g.op("Cast", [batch], "model/flatten/Cast", "model/flatten/Cast:0", to=TensorProto.INT32)
    rest = g.const("const_fold_opt__51", np.array([-1], np.int32))
    dims = g.op(
        "Concat", [batch32, rest], "model/flatten/Reshape/shape_Concat", "model/flatten/shape:0", axis=0
    )
    dims64 = g.op(
        "Cast", [dims], "model/flatten/Reshape__30", "model/flatten/Reshape__30:0", to=TensorProto.INT64
    )
    flat = g.op("Reshape", [h, dims64], "model/flatten/Reshape", "model/flatten/Reshape:0")
    c, s = w["conv2.weight"].shape[0], SIDE // 4
    kernel = w["fc1.weight"].reshape(-1, c, s, s).transpose(2, 3, 1, 0).reshape(s * s * c, -1)
    h = hard_swish(dense(flat, "dense", kernel, w["fc1.bias"]), "model/dense_act")
    logits = dense(h, "dense_1", w["fc2.weight"].T, w["fc2.bias"])
    g.op("Identity", [logits], "Identity", "Identity:0")
    model = g.model(
        "tf2onnx",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["unk__23", SIDE, SIDE, 1])],
        [helper.make_tensor_value_info("Identity:0", TensorProto.FLOAT, ["unk__24", 10])],
        producer_name="tf2onnx",
        producer_version="1.17.0",
        ml_domain="yes",
    )
    onnx.save_model(model, str(path))
    return path


def paddle2onnx_style(cnn: TrainedCNN, path: Path, opset: int = 11, dynamic_hw: bool = False) -> Path:
    """The CNN as Paddle2ONNX writes a Paddle inference model (opset 11 unless asked otherwise).

    ``dynamic_hw`` declares height and width dynamic, as ``InputSpec([None, 1, None, None])`` does
    (the Linear head still needs SIDE x SIDE: only data of that size runs).
    """
    w = cnn.weights
    g = _Graph(opset)
    counter = iter(range(1000))

    def ident(x: str, out: str) -> str:
        return g.op("Identity", [x], f"Identity.{next(counter)}", out)

    def conv_bn(x: str, i: int) -> str:
        name = f"conv{i + 1}"
        c = g.conv3x3(
            [x, g.const(f"conv2d_{i}.w_0", w[f"{name}.weight"])], f"Conv.{i}", f"p2o.pd_op.conv2d.{i}.0"
        )
        bias = g.const(f"p2o.pd_op.reshape.{i}.0", w[f"{name}.bias"].reshape(1, -1, 1, 1))
        a = ident(g.op("Add", [c, bias], f"Add.{2 * i}", f"Add.{2 * i + 1}"), f"p2o.pd_op.add.{i}.0")
        bn = f"bn{i + 1}"
        stats = [
            g.const(f"batch_norm2d_{i}.w_0", w[f"{bn}.weight"]),
            g.const(f"batch_norm2d_{i}.b_0", w[f"{bn}.bias"]),
            g.const(f"batch_norm2d_{i}.w_1", w[f"{bn}.running_mean"]),
            g.const(f"batch_norm2d_{i}.w_2", w[f"{bn}.running_var"]),
        ]
        return g.op(
            "BatchNormalization",
            [a, *stats],
            f"BatchNormalization.{i}",
            f"p2o.pd_op.batch_norm_.{i}.0",
            epsilon=BN_EPS,
            momentum=0.9,
        )

    def hardswish(x: str, i: int) -> str:
        out = f"p2o.pd_op.hardswish.{i}.0"
        if g.opset >= 14:
            return g.op("HardSwish", [x], f"HardSwish.{i}", out)
        hs = g.op("HardSigmoid", [x], f"HardSigmoid.{i}", f"HardSigmoid.{i}.1", alpha=1 / 6, beta=0.5)
        return g.op("Mul", [hs, x], f"Mul.{i}", out)

    def pool(x: str, i: int) -> str:
        return g.op(
            "MaxPool",
            [x],
            f"MaxPool.{i}",
            f"p2o.pd_op.pool2d.{i}.0",
            kernel_shape=[2, 2],
            strides=[2, 2],
            pads=[0, 0, 0, 0],
            ceil_mode=0,
        )

    def linear(x: str, i: int, torch_name: str) -> str:
        mm = g.op(
            "MatMul",
            [x, g.const(f"linear_{i}.w_0", w[f"{torch_name}.weight"].T.copy())],
            f"MatMul.{i}",
            f"p2o.pd_op.matmul.{i}.0",
        )
        out = g.op(
            "Add", [mm, g.const(f"linear_{i}.b_0", w[f"{torch_name}.bias"])], f"Add.{10 + i}", f"Add.{20 + i}"
        )
        return ident(out, f"p2o.pd_op.add.{2 + i}.0")

    h = pool(hardswish(conv_bn("x", 0), 0), 0)
    h = ident(conv_bn(h, 1), "auto.cast.2")
    lo = g.const("helper.constant.0", np.array(0, np.float32))
    hi = g.const("helper.constant.1", np.array(6, np.float32))
    h = pool(ident(g.op("Clip", [h, lo, hi], "Clip.0", "Clip.1"), "p2o.pd_op.relu6.0.0"), 1)
    # paddle.reshape(h, [paddle.shape(h)[0], -1])
    shape = ident(g.op("Shape", [h], "Shape.0", "Shape.1"), "p2o.pd_op.shape64.0.0")
    sliced = g.op(
        "Slice",
        [
            shape,
            *(g.const(f"helper.constant.{n}", np.array([v], np.int64)) for n, v in ((2, 0), (3, 1), (4, 0))),
        ],
        "Slice.0",
        "Slice.1",
    )
    batch = ident(g.axes_op("Squeeze", sliced, [0], "Squeeze.0", "p2o.pd_op.slice.0.0"), "auto.cast.5")
    batch = g.axes_op("Unsqueeze", batch, [0], "Unsqueeze.0", "helper.unsqueeze.0")
    rest = g.const("helper.unsqueeze.1", np.array([-1], np.int64))
    dims = ident(g.op("Concat", [batch, rest], "Concat.0", "helper.concat.0", axis=0), "p2o.pd_op.stack.0.0")
    flat = g.op("Reshape", [h, dims], "Reshape.6", "p2o.pd_op.reshape.4.0")
    h = hardswish(linear(flat, 0, "fc1"), 1)
    hw: list[int | str] = ["p2o.DynamicDimension.1", "p2o.DynamicDimension.2"] if dynamic_hw else [SIDE, SIDE]
    # the classic Paddle inference output name, with its '/' and dots
    out = ident(linear(h, 1, "fc2"), "save_infer_model/scale_0.tmp_0")
    model = g.model(
        "paddle2onnx",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["p2o.DynamicDimension.0", 1, *hw])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["p2o.DynamicDimension.3", 10])],
        producer_name="PaddlePaddle",
    )
    onnx.save_model(model, str(path))
    return path
