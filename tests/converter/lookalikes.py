"""Look-alikes of three field models that broke the converter (issue 12), built in code.

The real models stay unseen; these copy what made them hard, not their weights:

- :func:`recognizer`: a Paddle2ONNX-style text-line recognizer, input ``[N, 3, 48, W]`` with ``W``
  dynamic, 38 Conv with hard-swish written as Clip/Div/Mul, two attention blocks and a wide
  classifier head (13 MatMul), about 11 MB; its intermediate tensors at ``W = 320`` are large.
- :func:`detector`: a YOLO-style detector, input ``[N, 3, H, W]`` with ``H`` and ``W`` dynamic,
  Conv + SiLU (Sigmoid/Mul), Split/Concat blocks with residual Adds, upsampling, three heads, ~12 MB.
- :func:`byte_classifier`: int32 input ``[N, 2048]``, one-hot via Expand/Equal/Cast/Mul, layer norm
  written as ReduceSum/Sqrt/Reciprocal, two MatMul, ~3.2 MB.

Weights are random (He-scaled, so activations stay in range through depth) and fixed by a seed.
Each builder writes the model and returns it with calibration data in the ``.npz`` layout
``edge-convert --calibration`` reads. The bench (bench/convert.py) and the tests import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13


@dataclass(frozen=True)
class LookAlike:
    name: str
    onnx: Path
    calibration: Path
    evaluation: Path


class _Graph:
    """A tiny graph builder: named nodes, He-initialised weights, fixed seed."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, op: str) -> str:
        self._n += 1
        return f"{op.lower()}_{self._n}"

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        name = f"{hint}_{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: object) -> list[str]:
        name = self.name(op_type)
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs

    def one(self, op_type: str, inputs: list[str], **attrs: object) -> str:
        return self.op(op_type, inputs, **attrs)[0]

    def conv(
        self, x: str, cin: int, cout: int, k: int, stride: tuple[int, int] = (1, 1), group: int = 1
    ) -> str:
        fan_in = cin // group * k * k
        w = (self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.05).astype(np.float32)
        return self.one(
            "Conv",
            [x, self.const(w, "w"), self.const(b, "b")],
            kernel_shape=[k, k],
            strides=list(stride),
            pads=[k // 2] * 4,
            group=group,
        )

    def hardswish(self, x: str) -> str:
        """x * clip(x + 3, 0, 6) / 6, as Paddle2ONNX writes it."""
        shifted = self.one("Add", [x, self.const(np.float32(3.0))])
        clipped = self.one("Clip", [shifted, self.const(np.float32(0.0)), self.const(np.float32(6.0))])
        return self.one("Mul", [x, self.one("Div", [clipped, self.const(np.float32(6.0))])])

    def silu(self, x: str) -> str:
        return self.one("Mul", [x, self.one("Sigmoid", [x])])

    def matmul(self, x: str, cin: int, cout: int, bias: bool = True, gain: float = 1.0) -> str:
        w = (self.rng.standard_normal((cin, cout)) * gain * np.sqrt(1.0 / cin)).astype(np.float32)
        y = self.one("MatMul", [x, self.const(w, "w")])
        if bias:
            y = self.one(
                "Add", [y, self.const((self.rng.standard_normal(cout) * 0.02).astype(np.float32), "b")]
            )
        return y

    def layer_norm(self, x: str, dim: int) -> str:
        """Primitive layer norm over the last axis (ReduceMean/Sub/Mul/Sqrt/Div)."""
        mean = self.one("ReduceMean", [x], axes=[-1], keepdims=1)
        centred = self.one("Sub", [x, mean])
        var = self.one("ReduceMean", [self.one("Mul", [centred, centred])], axes=[-1], keepdims=1)
        std = self.one("Sqrt", [self.one("Add", [var, self.const(np.float32(1e-5))])])
        normed = self.one("Div", [centred, std])
        scaled = self.one("Mul", [normed, self.const(np.ones(dim, np.float32), "gamma")])
        return self.one("Add", [scaled, self.const(np.zeros(dim, np.float32), "beta")])

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "lookalike", inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


# ---------------------------------------------------------------------------------------- recognizer
#: (out channels, stride) of the depthwise-separable blocks: height 24 -> 3, width /2 once more.
_REC_BLOCKS = (
    (32, (1, 1)),
    (64, (2, 1)),
    (64, (1, 1)),
    (128, (2, 2)),
    (128, (1, 1)),
    (256, (2, 1)),
    (256, (1, 1)),
    (256, (1, 1)),
    (256, (1, 1)),
    (256, (1, 1)),
    (256, (1, 1)),
    (384, (1, 1)),
    (384, (1, 1)),
    (384, (1, 1)),
    (384, (1, 1)),
    (512, (1, 1)),
)
REC_CLASSES = 4000
REC_DIM = 128
REC_HEADS = 4
#: the head's weights are scaled so the class scores are peaked like a trained model's, not uniform.
REC_HEAD_GAIN = 3.0


def build_recognizer(path: Path, seed: int = 0) -> Path:
    """38 Conv (hard-swish), two attention blocks (12 MatMul), a MatMul head: ~11 MB, W dynamic."""
    g = _Graph(seed)
    x = g.hardswish(g.conv("image", 3, 16, 3, (2, 2)))
    cin = 16
    for cout, stride in _REC_BLOCKS:
        x = g.hardswish(g.conv(x, cin, cin, 3, stride, group=cin))  # depthwise
        x = g.hardswish(g.conv(x, cin, cout, 1))  # pointwise
        cin = cout
    # [N, 512, 3, W/4] -> pool the height away -> neck convs -> [N, T, D] sequence
    x = g.one("AveragePool", [x], kernel_shape=[3, 2], strides=[3, 2])
    shortcut = g.hardswish(g.conv(x, cin, REC_DIM, 1))
    x = g.hardswish(g.conv(shortcut, REC_DIM, REC_DIM, 3))
    seq = g.one("Transpose", [g.one("Squeeze", [x, g.const(np.array([2], np.int64))])], perm=[0, 2, 1])
    for _ in range(2):
        seq = _attention_block(g, seq)
    back = g.one("Unsqueeze", [g.one("Transpose", [seq], perm=[0, 2, 1]), g.const(np.array([2], np.int64))])
    x = g.hardswish(g.conv(back, REC_DIM, REC_DIM, 1))
    x = g.one("Concat", [x, shortcut], axis=1)
    x = g.hardswish(g.conv(x, 2 * REC_DIM, REC_DIM, 3))
    x = g.hardswish(g.conv(x, REC_DIM, REC_DIM, 1))
    seq = g.one("Transpose", [g.one("Squeeze", [x, g.const(np.array([2], np.int64))])], perm=[0, 2, 1])
    logits = g.matmul(seq, REC_DIM, REC_CLASSES, gain=REC_HEAD_GAIN)
    g.nodes.append(helper.make_node("Softmax", [logits], ["probs"], name="head_softmax", axis=-1))
    model = g.model(
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 48, "W"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", "T", REC_CLASSES])],
    )
    assert sum(n.op_type == "Conv" for n in model.graph.node) == 38
    assert sum(n.op_type == "MatMul" for n in model.graph.node) == 13
    onnx.save_model(model, str(path))
    return path


def _attention_block(g: _Graph, seq: str) -> str:
    """Pre-norm multi-head self-attention (one fused qkv MatMul) and an MLP, residual around each: 6 MatMul."""
    d, heads = REC_DIM, REC_HEADS
    h = g.layer_norm(seq, d)
    split = g.const(np.array([0, 0, heads, d // heads], np.int64))

    qkv = g.op("Split", [g.matmul(h, d, 3 * d), g.const(np.array([d, d, d], np.int64))], n_out=3, axis=-1)

    def heads_of(t: str, perm: list[int]) -> str:
        return g.one("Transpose", [g.one("Reshape", [t, split])], perm=perm)

    q, k, v = heads_of(qkv[0], [0, 2, 1, 3]), heads_of(qkv[1], [0, 2, 3, 1]), heads_of(qkv[2], [0, 2, 1, 3])
    scores = g.one("Mul", [g.one("MatMul", [q, k]), g.const(np.float32((d // heads) ** -0.5))])
    context = g.one("MatMul", [g.one("Softmax", [scores], axis=-1), v])
    merged = g.one(
        "Reshape", [g.one("Transpose", [context], perm=[0, 2, 1, 3]), g.const(np.array([0, 0, d], np.int64))]
    )
    seq = g.one("Add", [seq, g.matmul(merged, d, d)])
    h = g.layer_norm(seq, d)
    hidden = g.hardswish(g.matmul(h, d, 2 * d))
    return g.one("Add", [seq, g.matmul(hidden, 2 * d, d)])


def recognizer(directory: Path, samples: int = 16, width: int = 320, seed: int = 0) -> LookAlike:
    """The recognizer with ``samples`` calibration images of 3x48x``width`` (and as many to evaluate)."""
    onnx_path = build_recognizer(directory / "recognizer.onnx", seed)
    rng = np.random.default_rng(seed + 1)

    def images(n: int) -> np.ndarray:
        # text lines: a bright background with darker strokes, normalised to about [-1, 1]
        base = rng.uniform(0.6, 1.0, (n, 1, 48, width)) - (rng.random((n, 1, 48, width)) < 0.2) * 0.7
        return ((np.repeat(base, 3, axis=1) - 0.5) / 0.5).astype(np.float32)

    np.savez(directory / "recognizer_cal.npz", image=images(samples))
    np.savez(directory / "recognizer_eval.npz", image=images(samples))
    return LookAlike(
        "recognizer look-alike",
        onnx_path,
        directory / "recognizer_cal.npz",
        directory / "recognizer_eval.npz",
    )


# ---------------------------------------------------------------------------------------- detector
DET_CLASSES = 80


def build_detector(path: Path, seed: int = 0) -> Path:
    """A YOLOv8n-shaped detector: C2f blocks (Split, bottlenecks with residual Add, Concat), SPPF,
    an upsampling neck and three heads concatenated into ``[N, 64 + classes, anchors]``."""
    g = _Graph(seed)

    def cbs(x: str, cin: int, cout: int, k: int = 1, s: int = 1) -> str:
        return g.silu(g.conv(x, cin, cout, k, (s, s)))

    def c2f(x: str, cin: int, cout: int, n: int, shortcut: bool) -> str:
        half = cout // 2
        y = cbs(x, cin, 2 * half)
        parts = g.op("Split", [y, g.const(np.array([half, half], np.int64))], n_out=2, axis=1)
        last = parts[1]
        for _ in range(n):
            z = cbs(cbs(last, half, half, 3), half, half, 3)
            last = g.one("Add", [last, z]) if shortcut else z
            parts.append(last)
        return cbs(g.one("Concat", parts, axis=1), (2 + n) * half, cout)

    x = cbs("images", 3, 16, 3, 2)
    x = cbs(x, 16, 32, 3, 2)
    x = c2f(x, 32, 32, 1, True)
    x = cbs(x, 32, 64, 3, 2)
    p3 = c2f(x, 64, 64, 2, True)
    x = cbs(p3, 64, 128, 3, 2)
    p4 = c2f(x, 128, 128, 2, True)
    x = cbs(p4, 128, 256, 3, 2)
    x = c2f(x, 256, 256, 1, True)
    # SPPF
    y = cbs(x, 256, 128)
    pools = [y]
    for _ in range(3):
        pools.append(g.one("MaxPool", [pools[-1]], kernel_shape=[5, 5], pads=[2, 2, 2, 2], strides=[1, 1]))
    p5 = cbs(g.one("Concat", pools, axis=1), 512, 256)
    scales = g.const(np.array([1, 1, 2, 2], np.float32))

    def up(t: str) -> str:
        return g.one("Resize", [t, "", scales], mode="nearest")

    n4 = c2f(g.one("Concat", [up(p5), p4], axis=1), 384, 128, 1, False)
    n3 = c2f(g.one("Concat", [up(n4), p3], axis=1), 192, 64, 1, False)
    n4b = c2f(g.one("Concat", [cbs(n3, 64, 64, 3, 2), n4], axis=1), 192, 128, 1, False)
    n5b = c2f(g.one("Concat", [cbs(n4b, 128, 128, 3, 2), p5], axis=1), 384, 256, 1, False)
    flat = g.const(np.array([0, 64 + DET_CLASSES, -1], np.int64))
    heads = []
    for feat, c in ((n3, 64), (n4b, 128), (n5b, 256)):
        box = g.conv(cbs(cbs(feat, c, 64, 3), 64, 64, 3), 64, 64, 1)
        cls = g.one("Sigmoid", [g.conv(cbs(cbs(feat, c, 80, 3), 80, 80, 3), 80, DET_CLASSES, 1)])
        heads.append(g.one("Reshape", [g.one("Concat", [box, cls], axis=1), flat]))
    g.nodes.append(helper.make_node("Concat", heads, ["output0"], name="detect_concat", axis=2))
    model = g.model(
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 64 + DET_CLASSES, "A"])],
    )
    onnx.save_model(model, str(path))
    return path


def detector(directory: Path, samples: int = 16, size: int = 320, seed: int = 0) -> LookAlike:
    onnx_path = build_detector(directory / "detector.onnx", seed)
    rng = np.random.default_rng(seed + 1)

    def images(n: int) -> np.ndarray:
        # smooth blobs on noise, in [0, 1] like a normalised photo
        coarse = rng.random((n, 3, size // 16, size // 16))
        fine = np.repeat(np.repeat(coarse, 16, axis=2), 16, axis=3)
        return np.clip(fine + rng.normal(0, 0.05, fine.shape), 0, 1).astype(np.float32)

    np.savez(directory / "detector_cal.npz", images=images(samples))
    np.savez(directory / "detector_eval.npz", images=images(samples))
    return LookAlike(
        "detector look-alike", onnx_path, directory / "detector_cal.npz", directory / "detector_eval.npz"
    )


# ---------------------------------------------------------------------------------------- byte classifier
BYTES_LEN = 2048
BYTES_HIDDEN = 1024
BYTES_CLASSES = 512


def build_byte_classifier(path: Path, seed: int = 0) -> Path:
    """int32 bytes -> one-hot (Expand/Equal/Cast/Mul) -> MatMul -> primitive layer norm
    (ReduceSum/Sqrt/Reciprocal) -> ReLU -> mean over the sequence -> MatMul -> logits."""
    g = _Graph(seed)
    ids = g.one("Unsqueeze", ["bytes", g.const(np.array([2], np.int64))])  # [N, L, 1]
    wide = g.one("Expand", [ids, g.const(np.array([1, 1, 256], np.int64))])  # [N, L, 256]
    hot = g.one(
        "Cast", [g.one("Equal", [wide, g.const(np.arange(256, dtype=np.int32))])], to=TensorProto.FLOAT
    )
    # padding (byte 0) contributes nothing: multiply by a mask of non-zero bytes
    mask = g.one("Cast", [g.one("Greater", [ids, g.const(np.array(0, np.int32))])], to=TensorProto.FLOAT)
    hot = g.one("Mul", [hot, mask])
    h = g.matmul(hot, 256, BYTES_HIDDEN, bias=True)
    axes = g.const(np.array([-1], np.int64))
    inv_d = g.const(np.float32(1.0 / BYTES_HIDDEN))
    mean = g.one("Mul", [g.one("ReduceSum", [h, axes], keepdims=1), inv_d])
    centred = g.one("Sub", [h, mean])
    var = g.one("Mul", [g.one("ReduceSum", [g.one("Mul", [centred, centred]), axes], keepdims=1), inv_d])
    inv_std = g.one("Reciprocal", [g.one("Sqrt", [g.one("Add", [var, g.const(np.float32(1e-5))])])])
    normed = g.one("Relu", [g.one("Mul", [centred, inv_std])])
    pooled = g.one("ReduceMean", [normed], axes=[1], keepdims=0)  # [N, hidden]
    logits = g.matmul(pooled, BYTES_HIDDEN, BYTES_CLASSES, bias=False)
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits_identity"))
    model = g.model(
        [helper.make_tensor_value_info("bytes", TensorProto.INT32, ["N", BYTES_LEN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", BYTES_CLASSES])],
    )
    onnx.save_model(model, str(path))
    return path


def byte_classifier(directory: Path, samples: int = 64, seed: int = 0) -> LookAlike:
    onnx_path = build_byte_classifier(directory / "bytes.onnx", seed)
    rng = np.random.default_rng(seed + 1)

    def sequences(n: int) -> np.ndarray:
        # file-like bytes: a few dominant values per sample, a zero-padded tail of random length
        out = np.zeros((n, BYTES_LEN), np.int32)
        for i in range(n):
            length = int(rng.integers(BYTES_LEN // 4, BYTES_LEN))
            alphabet = rng.integers(1, 256, int(rng.integers(4, 64)))
            out[i, :length] = rng.choice(alphabet, length)
        return out

    np.savez(directory / "bytes_cal.npz", bytes=sequences(samples))
    np.savez(directory / "bytes_eval.npz", bytes=sequences(samples))
    return LookAlike(
        "byte classifier look-alike", onnx_path, directory / "bytes_cal.npz", directory / "bytes_eval.npz"
    )


BUILDERS = {"recognizer": recognizer, "detector": detector, "bytes": byte_classifier}
