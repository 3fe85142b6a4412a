"""The LiteRT pieces of the converter on small flatbuffers built here: the Edge TPU op audit, the
session adapter's int8 io, and the profile settings the coral path accepts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from converter import edgetpu
from converter.litert_session import IoNames, LiteRtSession
from converter.passes import tflite
from sdk.errors import ProfileError
from sdk.profiles import load_profile
from tests.agent.models import add_tflite

BIAS = [1.0, 2.0, 3.0, 4.0]


def test_a_float_model_is_not_full_integer_and_its_ops_are_named(tmp_path: Path) -> None:
    audit = edgetpu.audit(add_tflite(tmp_path / "f.tflite", BIAS))
    assert not audit.fully_integer
    assert audit.unsupported == {"ADD": {"count": 1, "reason": "float tensors (not quantized)"}}
    assert edgetpu.is_float(tmp_path / "f.tflite")


def test_an_int8_model_is_full_integer_and_edge_tpu_ready(tmp_path: Path) -> None:
    model = add_tflite(tmp_path / "q.tflite", BIAS, int8_scales=(0.1, 0.2))
    audit = edgetpu.audit(model)
    assert audit.fully_integer and audit.unsupported == {} and audit.total_ops == 1
    assert not edgetpu.is_float(model)


def test_the_session_quantizes_floats_in_and_out_under_the_bundle_names(tmp_path: Path) -> None:
    model = add_tflite(tmp_path / "q.tflite", BIAS, int8_scales=(0.1, 0.2))
    session = LiteRtSession(model, 1, IoNames(["pixels"], ["logits"]))
    assert [(i.name, i.dtype) for i in session.get_inputs()] == [("pixels", np.float32)]
    assert session.get_outputs()[0].quant is not None
    x = np.array([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]], np.float32)  # a batch of 2, model batch 1
    (y,) = session.run(None, {"pixels": x})
    assert y.dtype == np.float32 and y.shape == (2, 4)
    np.testing.assert_allclose(y, x + np.array(BIAS), atol=0.2)


def test_coral_settings_and_what_the_litert_path_refuses() -> None:
    coral = load_profile("coral")
    assert tflite.configure_profile(coral) == tflite.Config(per_channel=coral.quantization.per_channel)
    uint8 = coral.model_copy(
        update={"quantization": coral.quantization.model_copy(update={"activation_type": "uint8"})}
    )
    with pytest.raises(ProfileError, match="full-integer int8"):
        tflite.configure_profile(uint8)


def _convert_adder(tmp_path: Path, sign_key: Path, eval_scale: float) -> object:
    from converter.context import Options
    from converter.pipeline import ConvertRequest, convert

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.uniform(0, 1, (64, 4)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=(eval_scale * rng.uniform(0, 1, (32, 4))).astype(np.float32))
    request = ConvertRequest(
        model=str(add_tflite(tmp_path / "adder.tflite", BIAS)),
        profile="coral",
        out_dir=tmp_path / "out",
        evaluation=tmp_path / "eval.npz",
        sign_key=str(sign_key),
        options=Options(calibration_path=tmp_path / "cal.npz", budget_seconds=30),
    )
    return convert(request)


def test_a_float_tflite_becomes_a_full_integer_bundle(tmp_path: Path, sign_key: Path) -> None:
    result = _convert_adder(tmp_path, sign_key, eval_scale=1.0)
    m = result.manifest  # type: ignore[attr-defined]
    assert m.runtime == "litert" and m.model_file == "model.tflite" and m.source.format == "tflite"
    assert m.litert is not None and m.litert.fully_integer and m.litert.edgetpu_unsupported_ops == {}
    assert [(t.name, t.datatype, t.shape) for t in m.inputs] == [("x", "FP32", [1, 4])]
    assert m.metrics.fidelity is not None and m.metrics.fidelity.cosine >= 0.999
    assert m.smoke is not None and m.reference is not None and set(m.reference.inputs) == {"x"}
    assert "Edge TPU" in result.report.read_text()  # type: ignore[attr-defined]


def test_inputs_beyond_the_calibrated_range_fail_the_bar_in_one_line(tmp_path: Path, sign_key: Path) -> None:
    from sdk.errors import ConversionError

    with pytest.raises(ConversionError, match="no int8 model meets the bar") as err:
        _convert_adder(tmp_path, sign_key, eval_scale=50.0)  # int8 inputs saturate at the calibrated 1.0
    assert "\n" not in str(err.value)
