"""Models as tf2onnx and Paddle2ONNX write them convert for the CPU int8 profiles.

The graphs are built in code (``exporter_graphs``) around a CNN trained here on scikit-learn's
digits, so fidelity and accuracy are measured on a real classifier. The real exporters run in the
slow ``test_exporters.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from converter.calibration import parse_input_overrides
from converter.context import Options
from converter.pipeline import ConvertRequest, ConvertResult, convert
from converter.runtime import make_session
from sdk import keys
from sdk.bundle import extract_bundle, verify_bundle
from sdk.errors import EdgeError
from sdk.profiles import load_profile
from tests.converter import exporter_graphs as eg
from tests.converter.quick_profiles import cpu_int8_static as quick_profile

CALIBRATION = 200


@pytest.fixture(scope="module")
def cnn() -> eg.TrainedCNN:
    return eg.trained_cnn()


@pytest.fixture(scope="module")
def cpu_int8_static(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quick_profile(tmp_path_factory.mktemp("profiles"))


def _data(folder: Path, name: str, x: np.ndarray, y: np.ndarray) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "calibration.npz", **{name: x[:CALIBRATION]})
    np.savez(folder / "eval.npz", **{name: x[eg.TRAIN :]}, labels=y[eg.TRAIN :])
    return folder / "calibration.npz", folder / "eval.npz"


def _convert(model: Path, profile: str, out: Path, key: Path, **options: object) -> ConvertResult:
    return convert(
        ConvertRequest(
            model=str(model),
            profile=profile,
            out_dir=out,
            sign_key=str(key),
            evaluation=options.pop("evaluation", None),  # type: ignore[arg-type]
            options=Options(budget_seconds=60, **options),  # type: ignore[arg-type]
        )
    )


def _bundle_model(result: ConvertResult, key: Path, folder: Path) -> onnx.ModelProto:
    """The bundle verifies against the signer's public key; its model, unpacked."""
    assert verify_bundle(result.bundle, [keys.load_public_key(Path(f"{key}.pub"))]).trusted
    extract_bundle(result.bundle, folder)
    return onnx.load(str(folder / "model.onnx"))


def _assert_fidelity(result: ConvertResult, profile: str) -> None:
    bar = load_profile(profile).quantization
    metrics = result.manifest.metrics
    assert metrics.fidelity is not None and metrics.fidelity.argmax_agreement is not None
    assert metrics.fidelity.argmax_agreement >= bar.min_argmax_agreement
    assert metrics.accuracy is not None and metrics.accuracy.source > 0.9
    assert metrics.accuracy.source - metrics.accuracy.converted <= 0.01


def _first_dim_is_symbolic(model: onnx.ModelProto) -> bool:
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.HasField("dim_param") or not dim.HasField("dim_value")


@pytest.mark.parametrize(
    ("style", "opset"), [("tf2onnx", 13), ("tf2onnx", 15), ("paddle2onnx", 11), ("paddle2onnx", 14)]
)
def test_exporter_style_graphs_compute_the_trained_model(
    cnn: eg.TrainedCNN, style: str, opset: int, tmp_path: Path
) -> None:
    """The builders are faithful: ONNX Runtime on each graph gives PyTorch's logits."""
    if style == "tf2onnx":
        path, feeds = eg.tf2onnx_style(cnn, tmp_path / "m.onnx", opset), {"input_1:0": cnn.x_nhwc}
    else:
        path, feeds = eg.paddle2onnx_style(cnn, tmp_path / "m.onnx", opset), {"x": cnn.x}
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(out, cnn.logits, atol=1e-4)


def test_tf2onnx_nhwc_model_with_colon_names_converts_for_x86(
    cnn: eg.TrainedCNN, sign_key: Path, tmp_path: Path
) -> None:
    source = eg.tf2onnx_style(cnn, tmp_path / "keras_model.onnx")
    calibration, evaluation = _data(tmp_path / "data", "input_1:0", cnn.x_nhwc, cnn.y)
    result = _convert(
        source, "x86-server", tmp_path / "out", sign_key, calibration_path=calibration, evaluation=evaluation
    )
    m = result.manifest
    assert [(t.name, t.shape) for t in m.inputs] == [("input_1:0", [-1, eg.SIDE, eg.SIDE, 1])]
    assert [(t.name, t.shape) for t in m.outputs] == [("Identity:0", [-1, 10])]
    _assert_fidelity(result, "x86-server")
    model = _bundle_model(result, sign_key, tmp_path / "unpacked")
    assert _first_dim_is_symbolic(model)
    session = make_session(tmp_path / "unpacked" / "model.onnx", 1, m.runtime_options.session_config)
    batch = cnn.x_nhwc[eg.TRAIN : eg.TRAIN + 5]
    logits = session.run(None, {"input_1:0": batch})[0]
    assert logits.shape == (5, 10)
    assert (logits.argmax(1) == cnn.logits[eg.TRAIN : eg.TRAIN + 5].argmax(1)).mean() >= 0.8


def test_paddle_opset11_model_is_raised_to_13_for_per_channel_int8(
    cnn: eg.TrainedCNN, sign_key: Path, tmp_path: Path
) -> None:
    """Per-channel QDQ needs DequantizeLinear's axis (opset 13): an opset 11 model is upgraded first."""
    source = eg.paddle2onnx_style(cnn, tmp_path / "inference.onnx", opset=11)
    calibration, evaluation = _data(tmp_path / "data", "x", cnn.x, cnn.y)
    result = _convert(
        source,
        "raspberry-pi",
        tmp_path / "out",
        sign_key,
        calibration_path=calibration,
        evaluation=evaluation,
    )
    m = result.manifest
    assert any(d.step == "export" and d.choice == "opset 11 -> 13" for d in m.decisions)
    assert [t.name for t in m.outputs] == ["save_infer_model/scale_0.tmp_0"]
    assert m.inputs[0].shape == [-1, 1, eg.SIDE, eg.SIDE]
    _assert_fidelity(result, "raspberry-pi")
    model = _bundle_model(result, sign_key, tmp_path / "unpacked")
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 13
    assert _first_dim_is_symbolic(model)


def test_input_override_accepts_tensor_names_with_colons() -> None:
    assert parse_input_overrides(["input_1:0:1x8x8x1", "ids:1,12"]) == {
        "input_1:0": (1, 8, 8, 1),
        "ids": (1, 12),
    }


def test_dynamic_height_and_width_stay_dynamic_and_input_fixes_them(
    cnn: eg.TrainedCNN, sign_key: Path, tmp_path: Path, cpu_int8_static: Path
) -> None:
    """No data: synthetic inputs follow --input; the bundle still declares H and W dynamic."""
    source = eg.paddle2onnx_style(cnn, tmp_path / "dyn.onnx", opset=11, dynamic_hw=True)
    result = _convert(
        source, str(cpu_int8_static), tmp_path / "out", sign_key, input_shapes={"x": (1, 1, eg.SIDE, eg.SIDE)}
    )
    assert result.manifest.inputs[0].shape == [-1, 1, -1, -1]
    assert any(
        f"[1, 1, {eg.SIDE}, {eg.SIDE}]" in d.choice for d in result.manifest.decisions if d.step == "data"
    )
    model = _bundle_model(result, sign_key, tmp_path / "unpacked")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.HasField("dim_value") for d in dims] == [False, True, False, False]


def test_dynamic_dims_without_input_or_data_fail_in_one_clear_line(
    cnn: eg.TrainedCNN, sign_key: Path, tmp_path: Path, cpu_int8_static: Path
) -> None:
    source = eg.paddle2onnx_style(cnn, tmp_path / "dyn.onnx", opset=11, dynamic_hw=True)
    with pytest.raises(EdgeError) as caught:
        _convert(source, str(cpu_int8_static), tmp_path / "out", sign_key)
    assert "\n" not in str(caught.value) and "--input" in str(caught.value)
