"""Static int8 on the byte-sequence classifier pattern: int32 ids [N, 2048], a one-hot made of
Expand/Equal/Cast/Mul, a layer norm spelled ReduceSum/Sqrt/Reciprocal, two MatMuls.

A real export of this shape failed static int8 inside onnxruntime's quantizer with "The truth value
of an array with more than one element is ambiguous". Both one-hot spellings must give static int8
candidates that are built, loaded and judged (whatever their verdict), never a failed step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from converter.context import Options
from converter.pipeline import ConvertRequest, convert
from sdk.profiles import load_profile
from tests.converter.byte_graphs import SEQ, byte_classifier, byte_samples


@pytest.mark.parametrize(("onehot", "opset"), [("expand", 13), ("equal", 18)])
def test_static_int8_candidates_are_made_for_the_byte_pattern(
    onehot: str, opset: int, tmp_path: Path, sign_key: Path
) -> None:
    src = byte_classifier(tmp_path / "bytes.onnx", opset=opset, onehot=onehot)
    ids = byte_samples(48)
    logits = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"ids": ids[:2]})[0]
    assert ids.shape == (48, SEQ) and logits.shape == (2, 8)
    np.savez(tmp_path / "cal.npz", ids=ids[:32])
    np.savez(tmp_path / "eval.npz", ids=ids[32:])
    result = convert(
        ConvertRequest(
            model=str(src),
            profile="x86-server",
            out_dir=tmp_path / "out",
            evaluation=tmp_path / "eval.npz",
            sign_key=str(sign_key),
            options=Options(calibration_path=tmp_path / "cal.npz", budget_seconds=120),
        )
    )
    verdicts = dict(
        d.choice.split(": ", 1) for d in result.manifest.decisions if d.step == "quantize-candidate"
    )
    for name in ("static-int8", "static-int8-arith"):
        assert name in verdicts and not verdicts[name].startswith("failed"), verdicts.get(name)
    assert not any(d.choice.endswith(" failed") for d in result.manifest.decisions if d.step == "search")
    bar = load_profile("x86-server").quantization
    fid = result.manifest.metrics.fidelity
    assert fid is not None and fid.argmax_agreement is not None  # "logits": judged as a classifier
    assert fid.argmax_agreement >= bar.min_argmax_agreement
