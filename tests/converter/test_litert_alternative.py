"""raspberry-pi may ship LiteRT (XNNPACK) instead of ONNX Runtime for a PyTorch model: it races both,
records why it chose, and whichever it ships serves the source's answers within the bar.

No timing assert: which runtime wins depends on this host; what must hold is that the choice is
measured and recorded, and that the bundle it made is sound for the runtime it names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")

from agent.runtimes import load_runtime
from converter.context import Options
from converter.pipeline import ConvertRequest, convert
from sdk.bundle import extract_bundle
from sdk.profiles import load_profile
from tests.converter.exporter_graphs import digits


def test_raspberry_pi_races_litert_against_onnxruntime_and_records_why(
    tmp_path: Path, sign_key: Path
) -> None:
    x, y = digits()
    np.savez(tmp_path / "cal.npz", image=x[:300])
    np.savez(tmp_path / "eval.npz", image=x[1400:1600], labels=y[1400:1600])
    result = convert(
        ConvertRequest(
            model="tests.converter.models:trained_small_digits_cnn",
            profile="raspberry-pi",
            out_dir=tmp_path / "out",
            evaluation=tmp_path / "eval.npz",
            sign_key=str(sign_key),
            options=Options(calibration_path=tmp_path / "cal.npz", budget_seconds=60),
        )
    )
    m = result.manifest
    decisions = [d for d in m.decisions if d.step == "runtime"]
    assert {d.choice.split(":")[0] for d in decisions} >= {"litert-fp32", "litert-int8"}  # both judged
    final = decisions[-1]
    assert final.choice.startswith(m.runtime)  # the last runtime decision names what shipped, and why
    assert (
        "onnxruntime (chosen)" in final.measured
        or "below the bar" in final.reason
        or "no LiteRT" in final.reason
    )
    assert m.model_file == ("model.tflite" if m.runtime == "litert" else "model.onnx")
    assert m.inputs[0].shape[0] == -1  # either way clients may send any batch
    # the bundle serves a batch of the source's held-out inputs within the profile's bar
    unpacked = extract_bundle(result.bundle, tmp_path / "unpacked")
    runtime = load_runtime(tmp_path / "unpacked", m, threads=1)
    served = runtime.run({"image": x[1400:1410]})[m.outputs[0].name]
    assert served.shape == (10, 10)
    assert unpacked.manifest.model_file == m.model_file
    fid, bar = m.metrics.fidelity, load_profile("raspberry-pi").quantization
    assert (
        fid is not None
        and fid.argmax_agreement is not None
        and fid.argmax_agreement >= bar.min_argmax_agreement
    )
