"""What the bundle tells the device about normal data: ``reference`` statistics and the ``smoke`` sample.

``reference`` summarises every input and output over the calibration data (mean, std, min, max and
a histogram) so the agent can compute drift (PSI) of live traffic. ``smoke`` is one input and the
converted model's output on it; its tolerances are wide enough for the same model on another CPU
(whose kernels round differently, by at most about the quantization error measured here) and
narrow enough that a broken or swapped model fails.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from converter.calibration import Dataset
from converter.measure import judged_as_classifier, outputs_over
from converter.runtime import run
from sdk.manifest import PredictionReference, Reference, Smoke, TensorStats
from sdk.tensors import EncodedTensor

HISTOGRAM_BINS = 10
REFERENCE_SAMPLES = 512
#: confidence bins of the reliability table the device estimates accuracy from (CBPE)
CALIBRATION_BINS = 10
#: a bin's accuracy is pulled towards its mid confidence as if it held this many more samples, so a
#: nearly empty bin says "trust the raw confidence" instead of 0 % or 100 %.
CALIBRATION_PRIOR = 5.0


def tensor_stats(array: np.ndarray, bins: int = HISTOGRAM_BINS) -> TensorStats:
    values = np.asarray(array, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return TensorStats(mean=0.0, std=0.0, min=0.0, max=0.0)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1e-6
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return TensorStats(
        mean=float(values.mean()),
        std=float(values.std()),
        min=lo,
        max=float(values.max()),
        hist_edges=[float(e) for e in edges],
        hist_fractions=[float(c) / values.size for c in counts],
    )


def max_probability(scores: np.ndarray) -> np.ndarray:
    """Largest class probability per row: rows that are probabilities as they are, else softmax
    (the same rule as the device's, agent.monitoring.scores.softmax_confidence)."""
    rows = scores.astype(np.float64)
    if rows.min() >= 0.0 and rows.max() <= 1.0 and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3):
        return rows.max(axis=1)
    e = np.exp(rows - rows.max(axis=1, keepdims=True))
    return 1.0 / e.sum(axis=1)


def calibration_table(scores: np.ndarray, labels: np.ndarray) -> tuple[list[float], list[float]]:
    """A reliability table: equal-width confidence bins and the accuracy observed in each."""
    confidence = max_probability(scores)
    correct = scores.argmax(axis=1) == labels.reshape(-1)
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    idx = np.clip(np.searchsorted(edges[1:-1], confidence, side="right"), 0, CALIBRATION_BINS - 1)
    hits = np.bincount(idx, weights=correct.astype(np.float64), minlength=CALIBRATION_BINS)
    counts = np.bincount(idx, minlength=CALIBRATION_BINS)
    mids = (edges[:-1] + edges[1:]) / 2
    accuracy = (hits + CALIBRATION_PRIOR * mids) / (counts + CALIBRATION_PRIOR)
    return [float(e) for e in edges], [round(float(a), 4) for a in accuracy]


def predictions(
    session: ort.InferenceSession, outputs: list[np.ndarray], data: Dataset, evaluation: Dataset | None
) -> PredictionReference | None:
    """What a classifier predicts on the reference data (for prediction drift on the device) and,
    with labelled evaluation data, how its confidence relates to its accuracy."""
    if not outputs or not judged_as_classifier(session, outputs, data):
        return None
    scores = outputs[0].reshape(len(outputs[0]), -1)
    classes = scores.shape[1]
    fractions = np.bincount(scores.argmax(axis=1), minlength=classes) / max(len(scores), 1)
    found = PredictionReference(
        output=session.get_outputs()[0].name, class_fractions=[round(float(f), 6) for f in fractions]
    )
    if evaluation is not None and evaluation.labels is not None:
        evaluation = evaluation.take(REFERENCE_SAMPLES * 4)
        labels, eval_scores = evaluation.labels, outputs_over(session, evaluation)[0]
    elif data.labels is not None:
        labels, eval_scores = data.labels, scores
    else:
        return found
    assert labels is not None
    eval_scores = eval_scores.reshape(len(eval_scores), -1)
    edges, accuracy = calibration_table(eval_scores, labels[: len(eval_scores)])
    found.calibration_edges, found.calibration_accuracy = edges, accuracy
    found.calibration_samples = len(eval_scores)
    return found


def reference(session: ort.InferenceSession, data: Dataset, evaluation: Dataset | None = None) -> Reference:
    data = data.take(REFERENCE_SAMPLES)
    outputs = outputs_over(session, data)
    names = [o.name for o in session.get_outputs()]
    return Reference(
        samples=len(data),
        inputs={k: tensor_stats(v) for k, v in data.inputs.items() if v.dtype.kind in "fiub"},
        outputs={n: tensor_stats(o) for n, o in zip(names, outputs, strict=True) if o.dtype.kind in "fiub"},
        predictions=predictions(session, outputs, data, evaluation),
    )


def smoke(converted: ort.InferenceSession, source: ort.InferenceSession, data: Dataset) -> Smoke:
    feeds = data.first()
    got = run(converted, feeds)
    want = run(source, feeds)
    scale = max((float(np.max(np.abs(g))) for g in got if g.dtype.kind == "f" and g.size), default=1.0) or 1.0
    err = max(
        (
            float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64))))
            for g, w in zip(got, want, strict=True)
            if g.dtype.kind == "f" and g.size
        ),
        default=0.0,
    )
    # another CPU differs from this one by about the quantization error, never by the output's scale.
    atol = min(max(4.0 * err, 1e-4 * scale, 1e-5), 0.25 * scale)
    names = [o.name for o in converted.get_outputs()]
    return Smoke(
        inputs={k: EncodedTensor.from_numpy(v) for k, v in feeds.items()},
        outputs={n: EncodedTensor.from_numpy(o) for n, o in zip(names, got, strict=True)},
        rtol=1e-3,
        atol=float(f"{atol:.3g}"),
    )
