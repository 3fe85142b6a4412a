"""ONNX files that break a checker rule ONNX Runtime does not need are repaired, not refused."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from converter.context import Options
from converter.loading import load_source
from converter.pipeline import ConvertRequest, convert
from converter.runtime import make_session
from sdk.errors import ConversionError
from tests.converter import exporter_graphs as eg
from tests.converter.quick_profiles import cpu_int8_static


def test_an_output_without_declared_type_is_filled_in_from_the_runtime(
    tmp_path: Path, sign_key: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cnn = eg.trained_cnn()
    model = onnx.load(str(eg.paddle2onnx_style(cnn, tmp_path / "m.onnx")))
    name = model.graph.output[0].name
    del model.graph.output[:]
    model.graph.output.append(onnx.ValueInfoProto(name=name))  # as some older exporters write it
    onnx.save_model(model, str(tmp_path / "untyped.onnx"))
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    (tmp_path / "work").mkdir()
    with caplog.at_level(logging.WARNING, logger="converter.loading"):
        source = load_source(str(tmp_path / "untyped.onnx"), tmp_path / "work")
    assert "filled in from ONNX Runtime" in caplog.text
    assert source.artifact.onnx_path is not None
    loaded = onnx.load(str(source.artifact.onnx_path))
    onnx.checker.check_model(loaded)  # valid now, so the opset converter and quantizers accept it
    output = loaded.graph.output[0].type.tensor_type
    # the rank comes from one run; ONNX Runtime could not infer the sizes (they follow a Reshape)
    assert output.elem_type == TensorProto.FLOAT and len(output.shape.dim) == 2
    out = make_session(source.artifact.onnx_path, 1).run(None, {"x": cnn.x[:3]})[0]
    np.testing.assert_allclose(out, cnn.logits[:3], atol=1e-4)
    # and the passes after loading take it: opset 11 -> 13 and per-channel int8 QDQ
    np.savez(tmp_path / "calibration.npz", x=cnn.x[:100])
    result = convert(
        ConvertRequest(
            model=str(tmp_path / "untyped.onnx"),
            profile=str(cpu_int8_static(tmp_path / "profiles")),
            out_dir=tmp_path / "out",
            sign_key=str(sign_key),
            options=Options(calibration_path=tmp_path / "calibration.npz"),
        )
    )
    assert any(d.choice == "opset 11 -> 13" for d in result.manifest.decisions)
    assert result.manifest.outputs[0].datatype == "FP32" and len(result.manifest.outputs[0].shape) == 2


def test_a_model_neither_the_checker_nor_the_runtime_accepts_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "b.onnx")
    )
    with pytest.raises(ConversionError, match="the ONNX model is invalid"):
        load_source(str(tmp_path / "b.onnx"), tmp_path)
