"""edge-convert distill: a small student learns the digits CNN's answers, measured honestly on data
it never trained on, with the sample count and a clear word when it is below the bar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from converter.runtime import make_session
from scripts.demo_model import digits_data
from tests.converter.conftest import DigitsModel, edge_convert


def test_student_imitates_the_teacher_and_is_smaller(digits: DigitsModel, tmp_path: Path) -> None:
    x = np.load(digits.evaluation)["pixels"]
    np.savez(tmp_path / "unlabeled.npz", pixels=digits_data()[0][:1000])
    result = edge_convert(
        "distill",
        "--teacher",
        digits.onnx,
        "--student",
        "tests.converter.models:digits_student",
        "--data",
        tmp_path / "unlabeled.npz",
        "--eval",
        digits.evaluation,
        "--output",
        tmp_path / "student.onnx",
        "--epochs",
        "15",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    # measured on the 397 held-out digits, not on a share of the data it trained on
    assert body["eval_samples"] == 397 and "eval.npz" in body["eval_origin"]
    assert body["argmax_agreement"] >= 0.6
    assert body["teacher_accuracy"] >= 0.9 and body["student_accuracy"] is not None
    # an MLP student of 5.8k parameters does not reach the 0.99 bar: the result says so
    assert body["meets_bar"] is False and "below the bar" in body["warning"]
    student = Path(body["student"])
    assert student.stat().st_size < digits.onnx.stat().st_size / 5
    out = make_session(student, 1).run(None, {"pixels": x[:3]})[0]
    assert out.shape == (3, 10)


def test_without_eval_a_quarter_is_held_out_and_few_samples_are_named(
    digits: DigitsModel, tmp_path: Path
) -> None:
    result = edge_convert(
        "distill",
        "--teacher",
        digits.onnx,
        "--student",
        "tests.converter.models:digits_student",
        "--data",
        digits.calibration,
        "--output",
        tmp_path / "student.onnx",
        "--epochs",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert "50 of 200 samples held out" in result.stdout
    assert "only 50 evaluation samples" in result.stdout
