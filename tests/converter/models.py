"""Real models built and trained inside the tests: no weights are downloaded."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

# The digits CNN is the demo's model: one definition, in scripts/ because the demo must not need
# the test tree; re-exported here for the converter tests and bench/convert.py.
from scripts.demo_model import DigitsCNN as DigitsCNN
from scripts.demo_model import fit
from scripts.demo_model import train_digits_cnn as train_digits_cnn


class TinyEncoder(nn.Module):
    """A transformer encoder over token ids with a mean-pooled embedding output."""

    def __init__(self, vocab: int = 1000, dim: int = 256, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(ids)).mean(dim=1)


def tiny_encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyEncoder().eval()


def export(
    model: nn.Module, example: tuple[torch.Tensor, ...], path: Path, names: list[str], opset: int = 17
) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=names,
            output_names=["output"],
            dynamic_axes={**{n: {0: "batch"} for n in names}, "output": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return path


def tiny_mlp(path: Path, hidden: int = 64) -> Path:
    """x[N, 16] -> Gemm -> Relu -> Gemm -> logits[N, 4], random weights, built without torch."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((hidden, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, hidden)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1", transB=1),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Gemm", ["r", "w2"], ["logits"], name="fc2", transB=1),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def bag_of_words(path: Path, vocab: int = 6000, dim: int = 64, dims: int = 8) -> Path:
    """ids[N, 16] int32 -> embedding Gather -> mean -> MatMul+Add -> features[N, dims], built without torch.

    A 1.5 MB text encoder whose few-microsecond latency is mostly ONNX Runtime's fixed per-call
    cost: almost all its bytes are the embedding table. Random weights, seeded.
    """
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array((0.1 * rng.standard_normal((vocab, dim))).astype(np.float32), "embed")
    w = numpy_helper.from_array(rng.standard_normal((dim, dims)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(dims).astype(np.float32), "b")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["embed", "ids"], ["vectors"], name="embedding"),
            helper.make_node("ReduceMean", ["vectors", "axes"], ["pooled"], name="mean", keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["mm"], name="fc"),
            helper.make_node("Add", ["mm", "b"], ["features"], name="bias"),
        ],
        "bag_of_words",
        [helper.make_tensor_value_info("ids", TensorProto.INT32, ["batch", 16])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", dims])],
        [table, w, b, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def small_cnn() -> nn.Module:
    """``package.module:factory`` target for tests: a seeded, untrained small CNN."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)
    ).eval()


def train_small_digits_cnn(x: np.ndarray, y: np.ndarray, epochs: int = 6) -> nn.Module:
    """A small CNN trained on 8x8 digits ``x`` [N, 1, 8, 8] and labels ``y``: mini-batch Adam on one
    thread (about a second)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 10),
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: more threads only contend on a busy 2-core host
    try:
        return fit(model, x, y, epochs, lr=1e-2)
    finally:
        torch.set_num_threads(threads)


def trained_small_digits_cnn() -> nn.Module:
    """``package.module:factory`` target: :func:`train_small_digits_cnn` on the first 1400 digits."""
    from tests.converter.exporter_graphs import digits

    x, y = digits()
    return train_small_digits_cnn(x[:1400], y[:1400])


def digits_student() -> nn.Module:
    """A small MLP student for the digits CNN (``package.module:factory`` for distill tests)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


class _ConvSiLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class _C2f(nn.Module):
    """YOLOv8's block: a 1x1 conv split in two, bottlenecks (3x3, 3x3, residual add) on one half,
    every intermediate concatenated, then a 1x1 conv."""

    def __init__(self, cin: int, cout: int, n: int = 1) -> None:
        super().__init__()
        self.half = cout // 2
        self.cv1 = _ConvSiLU(cin, 2 * self.half)
        self.blocks = nn.ModuleList(
            nn.Sequential(_ConvSiLU(self.half, self.half, 3), _ConvSiLU(self.half, self.half, 3))
            for _ in range(n)
        )
        self.cv2 = _ConvSiLU((2 + n) * self.half, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x).split(self.half, dim=1))
        for block in self.blocks:
            parts.append(parts[-1] + block(parts[-1]))
        return self.cv2(torch.cat(parts, dim=1))


class TinyDetector(nn.Module):
    """A YOLO-style detector: Conv-BN-SiLU, C2f blocks (split, residual adds, concat), a nearest
    upsampling neck and two heads concatenated into ``[N, 4 + classes, anchors]``."""

    def __init__(self, classes: int = 8, width: int = 32) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(_ConvSiLU(3, w // 2, 3, 2), _ConvSiLU(w // 2, w, 3, 2), _C2f(w, w))
        self.p4 = nn.Sequential(_ConvSiLU(w, 2 * w, 3, 2), _C2f(2 * w, 2 * w))
        self.p5 = nn.Sequential(_ConvSiLU(2 * w, 4 * w, 3, 2), _C2f(4 * w, 4 * w))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.neck = _C2f(6 * w, 2 * w)
        self.head4 = nn.Sequential(_ConvSiLU(2 * w, 2 * w, 3), nn.Conv2d(2 * w, 4 + classes, 1))
        self.head5 = nn.Sequential(_ConvSiLU(4 * w, 2 * w, 3), nn.Conv2d(2 * w, 4 + classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p4 = self.p4(self.stem(x))
        p5 = self.p5(p4)
        n4 = self.neck(torch.cat([self.up(p5), p4], dim=1))
        outs = [self.head4(n4).flatten(2), self.head5(p5).flatten(2)]
        return torch.cat(outs, dim=2)


def tiny_detector(seed: int = 0, width: int = 32) -> nn.Module:
    """A seeded detector whose BatchNorm statistics are set from a pass over image-like data, so its
    activations are in range like a trained model's (no weights are downloaded)."""
    torch.manual_seed(seed)
    model = TinyDetector(width=width)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(detector_images(16, 64, seed=seed + 7))
    return model.eval()


def detector_images(n: int, size: int = 64, seed: int = 1) -> torch.Tensor:
    """Image-like inputs in [0, 1]: smooth blobs on noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, 3, size // 8, size // 8))
    fine = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)
    return torch.from_numpy(np.clip(fine + rng.normal(0, 0.05, fine.shape), 0, 1).astype(np.float32))


class SmallDigitsCNN(DigitsCNN):
    """The demo's digits CNN at 16x16 input (same layers, a quarter of the pixels): trains in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.head[1] = nn.Linear(64 * 4 * 4, 128)


def small_digits(epochs: int = 4, seed: int = 0) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """The trained 16x16 digits CNN (eval mode) and all digits at 16x16; ``x[:1400]`` trained it."""
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    d = load_digits()
    x = np.kron((d.images / 16.0).astype(np.float32)[:, None], np.ones((1, 1, 2, 2), np.float32))
    y = d.target.astype(np.int64)
    return fit(SmallDigitsCNN(), x[:1400], y[:1400], epochs), x, y
