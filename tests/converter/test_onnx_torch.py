"""The ONNX graph interpreted with torch ops follows ONNX Runtime on real exporters' graphs, trains,
and writes its trained values back into the ONNX file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from converter import onnx_torch
from tests.converter import byte_graphs, lookalikes, models
from tests.converter import exporter_graphs as eg


def _detector(d: Path) -> tuple[Path, dict[str, np.ndarray]]:
    x = models.detector_images(3, 64)
    return models.export(models.tiny_detector(), (x[:1],), d / "det.onnx", ["images"]), {"images": x.numpy()}


def _digits(d: Path) -> tuple[Path, dict[str, np.ndarray]]:
    model = models.DigitsCNN().eval()  # untrained is enough to compare two runtimes
    x = torch.rand(3, 1, 32, 32)
    return models.export(model, (x[:1],), d / "cnn.onnx", ["pixels"]), {"pixels": x.numpy()}


def _encoder(d: Path) -> tuple[Path, dict[str, np.ndarray]]:
    ids = torch.randint(0, 1000, (2, 16))
    return models.export(models.tiny_encoder(), (ids[:1],), d / "enc.onnx", ["ids"]), {"ids": ids.numpy()}


def _tf2onnx(d: Path) -> tuple[Path, dict[str, np.ndarray]]:
    cnn = eg.trained_cnn(epochs=1)
    return eg.tf2onnx_style(cnn, d / "tf.onnx", 13), {"input_1:0": cnn.x_nhwc[:4]}


def _paddle(d: Path) -> tuple[Path, dict[str, np.ndarray]]:
    cnn = eg.trained_cnn(epochs=1)
    return eg.paddle2onnx_style(cnn, d / "pd.onnx", 11), {"x": cnn.x[:4]}


def _bytes(d: Path) -> tuple[Path, dict[str, np.ndarray]]:
    return byte_graphs.byte_classifier(d / "bytes.onnx"), {"ids": byte_graphs.byte_samples(2)}


def _recognizer(d: Path) -> tuple[Path, dict[str, np.ndarray]]:
    path = lookalikes.build_recognizer(d / "rec.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 48, 64)).astype(np.float32)
    return path, {"image": x}


BUILDERS: dict[str, Callable[[Path], tuple[Path, dict[str, np.ndarray]]]] = {
    "detector": _detector,
    "digits-cnn": _digits,
    "transformer-encoder": _encoder,
    "tf2onnx-cnn": _tf2onnx,
    "paddle2onnx-cnn": _paddle,
    "byte-classifier": _bytes,
    "recognizer": _recognizer,
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_outputs_follow_onnx_runtime(name: str, tmp_path: Path) -> None:
    path, feeds = BUILDERS[name](tmp_path)
    proto = onnx.load(str(path))
    assert onnx_torch.unsupported_ops(proto) == []
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    module = onnx_torch.to_torch(proto)
    with torch.no_grad():
        got = module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert tuple(g.shape) == w.shape
        scale = max(float(np.abs(w).max()), 1e-6)
        assert float(np.abs(g.numpy() - w).max()) <= 1e-3 * scale, name


#: graphs whose shapes and axes come from Shape chains and integer initializers.
SHAPE_ARITHMETIC = ["byte-classifier", "recognizer", "transformer-encoder"]


@pytest.mark.parametrize("name", SHAPE_ARITHMETIC)
def test_the_interpretation_traces_with_torch_export(name: str, tmp_path: Path) -> None:
    """LiteRT export traces the module with ``torch.export`` at static shapes: shape arithmetic must
    be constants there, not data-dependent symbols, and the program must compute what the module does."""
    path, feeds = BUILDERS[name](tmp_path)
    module = onnx_torch.to_torch(onnx.load(str(path)), trainable=False)
    args = tuple(torch.from_numpy(feeds[n][:1]) for n in module.input_names)
    program = torch.export.export(module, args)
    with torch.no_grad():
        for want, got in zip(module(*args), program.module()(*args), strict=True):
            torch.testing.assert_close(got, want)


def test_trained_values_are_written_back(tmp_path: Path) -> None:
    path, feeds = _detector(tmp_path)
    proto = onnx.load(str(path))
    module = onnx_torch.to_torch(proto)
    x = torch.from_numpy(feeds["images"])
    with torch.no_grad():
        before = module(x)[0]
    target = before.detach() * 0.5
    opt = torch.optim.Adam(module.parameters(), 1e-2)
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(module(x)[0], target)
        loss.backward()
        opt.step()
    with torch.no_grad():
        trained = module(x)[0].numpy()
    onnx_torch.write_back(module, proto)
    onnx.save_model(proto, str(tmp_path / "trained.onnx"))
    out = ort.InferenceSession(str(tmp_path / "trained.onnx"), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )[0]
    assert float(np.abs(out - before.numpy()).max()) > 1e-3  # training changed the ONNX model...
    np.testing.assert_allclose(
        out, trained, atol=1e-4 * float(np.abs(trained).max())
    )  # ...to the trained one


def test_batch_norm_statistics_and_settings_are_not_trained() -> None:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 2, 1, 1)).astype(np.float32), "w"),
        *(
            numpy_helper.from_array(np.ones(4, np.float32) * k, n)
            for k, n in ((1, "s"), (0, "b"), (0, "m"), (1, "v"))
        ),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    module = onnx_torch.to_torch(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert sorted(module.parameter_names()) == ["b", "s", "w"]


def test_unsupported_ops_are_named() -> None:
    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["b", "s"], ["i"]), helper.make_node("Relu", ["b"], ["r"])],
        "g",
        [
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 4]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 1, 4]),
        ],
        [helper.make_tensor_value_info("i", TensorProto.INT64, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert onnx_torch.unsupported_ops(model) == ["NonMaxSuppression"]
    with pytest.raises(onnx_torch.UnsupportedOps, match="NonMaxSuppression"):
        onnx_torch.to_torch(model)
