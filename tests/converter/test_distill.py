"""edge-convert distill: a small student learns the digits CNN's answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from converter.runtime import make_session
from tests.converter.conftest import DigitsModel, edge_convert


def test_student_imitates_the_teacher_and_is_smaller(digits: DigitsModel, tmp_path: Path) -> None:
    x = np.load(digits.evaluation)["pixels"]
    np.savez(tmp_path / "data.npz", pixels=np.concatenate([np.load(digits.calibration)["pixels"], x]))
    result = edge_convert(
        "distill",
        "--teacher",
        digits.onnx,
        "--student",
        "tests.converter.models:digits_student",
        "--data",
        tmp_path / "data.npz",
        "--output",
        tmp_path / "student.onnx",
        "--epochs",
        "15",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["argmax_agreement"] >= 0.8
    student = Path(body["student"])
    assert student.stat().st_size < digits.onnx.stat().st_size / 5
    out = make_session(student, 1).run(None, {"pixels": x[:3]})[0]
    assert out.shape == (3, 10)
