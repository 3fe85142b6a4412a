"""The prediction reference a classifier's bundle carries: class shares for prediction drift on the
device, and a reliability table from labelled evaluation data for confidence-based estimates."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converter.calibration import Dataset
from converter.reference import calibration_table, max_probability, reference
from converter.runtime import make_session
from tests.converter.models import tiny_mlp


def test_a_classifier_reference_carries_class_shares_and_a_reliability_table(tmp_path: Path) -> None:
    session = make_session(tiny_mlp(tmp_path / "mlp.onnx"), threads=1)
    # scaled so that confidences spread over 0.3-0.8
    x = (np.random.default_rng(0).standard_normal((300, 16)) * 0.03).astype(np.float32)
    scores = session.run(None, {"x": x})[0]
    predicted = scores.argmax(axis=1)
    # labels right above 0.6 confidence, wrong below: the table must tell them apart
    confidence = max_probability(scores)
    confident = confidence >= 0.6
    labels = np.where(confident, predicted, (predicted + 1) % 4)
    ref = reference(session, Dataset({"x": x}, None, "test"), Dataset({"x": x}, labels, "eval"))
    p = ref.predictions
    assert p is not None and p.output == "logits" and p.calibration_samples == 300
    assert p.class_fractions == [round(float(np.mean(predicted == c)), 6) for c in range(4)]
    assert p.calibration_edges is not None and p.calibration_accuracy is not None
    assert len(p.calibration_edges) == len(p.calibration_accuracy) + 1
    edges = np.asarray(p.calibration_edges)
    bins = np.clip(np.searchsorted(edges[1:-1], confidence, side="right"), 0, len(edges) - 2)
    table = np.asarray(p.calibration_accuracy)
    assert table[bins[confident]].mean() > 0.7 and table[bins[confidence < 0.5]].mean() < 0.2

    # no labels, no table; the class shares stay (the output's name says class scores)
    plain = reference(session, Dataset({"x": x}, None, "test")).predictions
    assert (
        plain is not None and plain.calibration_edges is None and plain.class_fractions == p.class_fractions
    )


def test_an_empty_bin_trusts_the_raw_confidence() -> None:
    scores = np.log(np.array([[0.95, 0.05]] * 50, dtype=np.float64))
    edges, accuracy = calibration_table(scores, np.zeros(50, np.int64))
    assert accuracy[-1] > 0.95 and accuracy[0] == 0.05  # bin [0, 0.1) held nothing: its mid confidence
    assert len(edges) == 11
