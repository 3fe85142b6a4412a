"""ONNX input for coral: the graph interpreted in torch, exported by litert-torch, made full integer.

The CNN is trained here on scikit-learn's digits and exported to ONNX with a dynamic batch, so its
flatten is the exporter's Shape -> Gather -> Concat -> Reshape chain: the shape arithmetic that
``torch.export`` must see as constants.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")

import torch
from onnx import TensorProto, helper
from torch import nn

from sdk.errors import ConversionError
from tests.converter import models
from tests.converter.exporter_graphs import digits

HELD_OUT = 1400
CALIBRATION = 1000


class _BatchFlatten(nn.Module):
    """The trained CNN with its flatten written as ``reshape(size(0), -1)`` (a Shape chain in ONNX)."""

    def __init__(self, cnn: nn.Sequential) -> None:
        super().__init__()
        self.features, self.head = cnn[:6], cnn[7]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(h.reshape(h.size(0), -1))


def _convert(model: Path, tmp_path: Path, sign_key: Path, x: np.ndarray, y: np.ndarray) -> object:
    from converter.context import Options
    from converter.pipeline import ConvertRequest, convert

    np.savez(tmp_path / "cal.npz", pixels=x[:CALIBRATION])
    np.savez(tmp_path / "eval.npz", pixels=x[HELD_OUT:], labels=y[HELD_OUT:])
    request = ConvertRequest(
        model=str(model),
        profile="coral",
        out_dir=tmp_path / "out",
        evaluation=tmp_path / "eval.npz",
        sign_key=str(sign_key),
        options=Options(calibration_path=tmp_path / "cal.npz", budget_seconds=60),
    )
    return convert(request)


def test_an_onnx_cnn_becomes_a_full_integer_coral_bundle(tmp_path: Path, sign_key: Path) -> None:
    x, y = digits()
    cnn = models.train_small_digits_cnn(x[:HELD_OUT], y[:HELD_OUT])
    onnx_path = models.export(
        _BatchFlatten(cnn).eval(), (torch.from_numpy(x[:1]),), tmp_path / "cnn.onnx", ["pixels"]
    )
    import onnx

    assert {"Shape", "Reshape"} <= {n.op_type for n in onnx.load(str(onnx_path)).graph.node}

    result = _convert(onnx_path, tmp_path, sign_key, x, y)
    m = result.manifest  # type: ignore[attr-defined]
    assert m.runtime == "litert" and m.source.format == "onnx" and m.precision == "int8"
    assert m.litert is not None and m.litert.fully_integer and m.litert.edgetpu_unsupported_ops == {}
    assert [(t.name, t.shape) for t in m.inputs] == [("pixels", [1, 1, 8, 8])]
    assert [t.name for t in m.outputs] == ["output"]
    # int8 weights; this model is so small that the flatbuffer itself is half of its float size
    assert m.metrics.size_bytes.converted < 0.6 * m.metrics.size_bytes.source
    acc = m.metrics.accuracy
    assert acc is not None and acc.source > 0.85 and acc.converted >= acc.source - 0.01
    export = next(d for d in m.decisions if d.step == "export")
    assert "ONNX graph interpreted" in export.choice


def test_an_op_without_an_interpretation_is_refused_in_one_line(tmp_path: Path, sign_key: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Hardmax", ["pixels"], ["output"], axis=1)],
        "hardmax",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
    )
    path = tmp_path / "hardmax.onnx"
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    x = np.random.default_rng(0).uniform(0, 1, (1500, 4)).astype(np.float32)
    with pytest.raises(ConversionError, match="Hardmax") as err:
        _convert(path, tmp_path, sign_key, x, np.zeros(1500, np.int64))
    assert "\n" not in str(err.value) and "pass the PyTorch model" in str(err.value)
