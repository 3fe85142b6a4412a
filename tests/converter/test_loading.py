"""Every input form the converter accepts becomes an ONNX model in the profile's opset range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from converter.context import Options, PassContext
from converter.loading import load_source
from converter.passes import export
from converter.pipeline import ConvertRequest, convert
from converter.runtime import input_specs, make_session
from sdk.errors import ConfigError, ConversionError
from sdk.profiles import load_profile
from tests.converter import models


def _export(source_spec: str, tmp_path: Path, profile: str = "x86-server", **options: object):  # type: ignore[no-untyped-def]
    source = load_source(source_spec, tmp_path)
    ctx = PassContext(
        load_profile(profile), tmp_path, Options(**options), example_inputs=source.example_inputs
    )  # type: ignore[arg-type]
    return source, export.run(source.artifact, ctx, export.configure(ctx)), ctx


def test_torchscript_file(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.script(models.small_cnn()).save(str(path))
    source, model, _ = _export(str(path), tmp_path, input_shapes={"image": (1, 3, 16, 16)})
    assert source.format == "torchscript"
    session = make_session(model.onnx_path, 1)
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert session.run(None, {"image": np.zeros((3, 3, 16, 16), np.float32)})[0].shape == (
        3,
        5,
    )  # batch stays dynamic


def test_torch_export_program(tmp_path: Path) -> None:
    program = torch.export.export(models.small_cnn(), (torch.randn(1, 3, 16, 16),))
    torch.export.save(program, str(tmp_path / "model.pt2"))
    source, model, _ = _export(str(tmp_path / "model.pt2"), tmp_path)
    assert source.format == "torch-export"
    session = make_session(model.onnx_path, 1)
    out = session.run(None, {session.get_inputs()[0].name: np.ones((1, 3, 16, 16), np.float32)})[0]
    np.testing.assert_allclose(out, models.small_cnn()(torch.ones(1, 3, 16, 16)).detach().numpy(), atol=1e-5)


def test_factory_without_shapes_asks_for_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--input NAME:SHAPE"):
        _export("tests.converter.models:small_cnn", tmp_path)


def test_onnx_with_external_data_is_folded_into_one_file(tmp_path: Path) -> None:
    model = onnx.load(str(models.tiny_mlp(tmp_path / "mlp.onnx", hidden=512)))
    onnx.save_model(
        model,
        str(tmp_path / "ext.onnx"),
        save_as_external_data=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    assert (tmp_path / "ext.onnx.data").is_file()
    work = tmp_path / "work"
    work.mkdir()
    source = load_source(str(tmp_path / "ext.onnx"), work)
    assert (
        not onnx.load(str(source.artifact.onnx_path), load_external_data=False)
        .graph.initializer[0]
        .external_data
    )
    assert make_session(source.artifact.onnx_path, 1).run(None, {"x": np.ones((2, 16), np.float32)})[
        0
    ].shape == (2, 4)


def test_opset_below_the_profile_range_is_converted(tmp_path: Path) -> None:
    models.export(
        models.small_cnn(), (torch.randn(1, 3, 16, 16),), tmp_path / "old.onnx", ["image"], opset=11
    )
    work = tmp_path / "work"
    work.mkdir()
    _, model, ctx = _export(str(tmp_path / "old.onnx"), work, profile="jetson")  # jetson needs opset >= 13
    opset = next(
        o.version for o in onnx.load(str(model.onnx_path)).opset_import if o.domain in ("", "ai.onnx")
    )
    assert opset == 13
    assert any("opset 11 -> 13" in d.choice for d in ctx.decisions)


def test_integer_inputs_are_kept(tmp_path: Path) -> None:
    path = models.export(
        models.tiny_encoder(), (torch.randint(0, 1000, (1, 12)),), tmp_path / "enc.onnx", ["ids"]
    )
    specs = input_specs(make_session(path, 1))
    assert specs[0].dtype == "int64" and specs[0].shape[1] == 12


def test_factory_end_to_end_with_input_shape(tmp_path: Path, sign_key: Path) -> None:
    result = convert(
        ConvertRequest(
            model="tests.converter.models:small_cnn",
            profile="raspberry-pi",
            out_dir=tmp_path,
            sign_key=str(sign_key),
            options=Options(input_shapes={"image": (1, 3, 32, 32)}, budget_seconds=30),
        )
    )
    m = result.manifest
    assert m.name == "small_cnn" and m.source.format == "torch-module"
    assert (
        m.inputs[0].name == "image"
        and m.inputs[0].shape == [-1, 3, 32, 32]
        and m.inputs[0].datatype == "FP32"
    )


def test_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "x.pt").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises((ConversionError, ConfigError)):
        load_source(str(tmp_path / "x.pt"), tmp_path)


def test_ai_onnx_ml_domain_model_converts(tmp_path: Path, sign_key: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Scaler", ["x"], ["s"], domain="ai.onnx.ml", offset=[0.5] * 8, scale=[2.0] * 8),
            helper.make_node("MatMul", ["s", "w"], ["y"], name="mm"),
        ],
        "ml",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
        [w],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    model.ir_version = 8
    onnx.save_model(model, str(tmp_path / "ml.onnx"))
    result = convert(
        ConvertRequest(
            model=str(tmp_path / "ml.onnx"),
            profile="x86-server",
            out_dir=tmp_path / "out",
            sign_key=str(sign_key),
            options=Options(budget_seconds=20),
        )
    )
    assert result.manifest.metrics.fidelity is not None and result.manifest.metrics.fidelity.cosine >= 0.999
