"""No bundle is written below the profile's fidelity bar, whatever passes a user's profile lists.

The model is built so that static int8 cannot keep it on any CPU: one input channel spans +-1000
while the output depends on the other channels (N(0, 1)); a per-tensor uint8 activation range
of ~2000 rounds those channels to zero. A user profile that runs only a static int8 step must then
ship the source graph (measured, recorded) or, when the source does not fit the profile, stop with
one line that names the bar and the shortfall.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import yaml

from converter.context import Options
from converter.pipeline import ConvertRequest, convert
from sdk.bundle import extract_bundle
from sdk.errors import ConversionError
from sdk.profiles import available_profiles, load_profile_file
from tests.converter.outlier_graphs import outlier_data, outlier_model


def _user_profile(folder: Path, **changes: object) -> Path:
    """x86-server as a user would copy it, with only a static int8 step among its passes."""
    data = yaml.safe_load(available_profiles()["x86-server"].read_text(encoding="utf-8"))
    data.update(name="my-static", passes=["export", "cleanup", "int8-static", "validate"], **changes)
    data["quantization"]["scheme"] = "int8-static"
    path = folder / "my-static.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _convert(tmp_path: Path, profile: Path, key: Path) -> object:
    data = outlier_data(tmp_path / "data.npz")
    return convert(
        ConvertRequest(
            model=str(outlier_model(tmp_path / "outlier.onnx")),
            profile=str(profile),
            out_dir=tmp_path / "out",
            evaluation=data,
            sign_key=str(key),
            options=Options(calibration_path=data, budget_seconds=60),
        )
    )


def test_a_static_int8_only_profile_ships_the_source_when_int8_misses_the_bar(
    tmp_path: Path, sign_key: Path
) -> None:
    profile = _user_profile(tmp_path)
    bar = load_profile_file(profile).quantization.min_cosine
    result = _convert(tmp_path, profile, sign_key)
    m = result.manifest  # type: ignore[attr-defined]
    assert m.metrics.fidelity.cosine >= bar
    # the static model was made, measured below the bar, and the switch was recorded with its numbers
    rows = [d for d in m.decisions if d.step == "validate" and d.choice.startswith("int8-static:")]
    assert rows and "below the bar" in rows[0].choice and rows[0].measured["fidelity"]["cosine"] < bar
    assert any(d.choice == "fell back from int8-static to source-graph" for d in m.decisions)
    extract_bundle(result.bundle, tmp_path / "unpacked")  # type: ignore[attr-defined]
    shipped = onnx.load(str(tmp_path / "unpacked" / "model.onnx"))
    assert not [n for n in shipped.graph.node if n.op_type == "DequantizeLinear"]


def test_when_the_source_does_not_fit_either_the_conversion_stops_with_one_line(
    tmp_path: Path, sign_key: Path
) -> None:
    # the source (256 KiB of weights) is over this limit, its int8 version (64 KiB) is not
    profile = _user_profile(tmp_path, max_model_mb=0.15)
    with pytest.raises(ConversionError) as caught:
        _convert(tmp_path, profile, sign_key)
    message = str(caught.value)
    assert "\n" not in message
    assert "cosine" in message and "below the bar 0.999 by" in message
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())  # no bundle written


def test_a_speedup_model_is_the_fallback_before_the_source(tmp_path: Path) -> None:
    """When everything quantized from the --speedup model misses the bar, validation tries that
    pruned model (it met the bar when it was chosen) before it falls back to the unpruned source."""
    from types import SimpleNamespace

    from converter.context import Alternative
    from converter.passes import validate

    files = {}
    for name in ("source", "pruned", "quantized"):
        files[name] = tmp_path / f"{name}.onnx"
        files[name].write_bytes(b"x" * 100)
    ctx = SimpleNamespace(
        alternatives=[],
        fallbacks=[Alternative("pruned-step-2", files["pruned"], "fp32", {}, "the --speedup step 2 model")],
        source_onnx=files["source"],
        profile=SimpleNamespace(passes=["export", "cleanup", "prune", "int8-static", "validate"]),
    )
    model = SimpleNamespace(onnx_path=files["quantized"], precision="int8", session_config={})
    chain = validate._options(model, ctx, validate.Config(max_model_mb=1))  # type: ignore[arg-type]
    assert [c.name for c in chain] == ["int8-static", "pruned-step-2", "source-graph"]
    # a fallback too big for the profile is not offered
    small = validate.Config(max_model_mb=50 / 1024 / 1024)
    files["pruned"].write_bytes(b"x" * 60)
    assert "pruned-step-2" not in [c.name for c in validate._options(model, ctx, small)]  # type: ignore[arg-type]
