"""The monitor's figures against scikit-learn and fairlearn on the same data, k-suppression, drift,
data quality and the confidence-based estimate."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_difference, equal_opportunity_difference
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from agent.monitoring.monitor import ModelMonitor, MonitorSettings, VersionMonitor
from agent.monitoring.outputs import OutputReader, Prediction, reader_for
from sdk.manifest import Manifest, PredictionReference, Reference, SourceInfo, TensorSpec

CLASSES = 3


def _manifest(reference: Reference | None = None, outputs: list[TensorSpec] | None = None) -> Manifest:
    return Manifest(
        name="m",
        version="1",
        profile="x86-server",
        runtime="onnxruntime",
        precision="fp32",
        source=SourceInfo(format="onnx", sha256="0" * 64),
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
        outputs=outputs or [TensorSpec(name="scores", datatype="FP32", shape=[-1, CLASSES])],
        reference=reference,
    )


def _window(k: int = 20, reference: Reference | None = None) -> VersionMonitor:
    settings = MonitorSettings(min_samples=k, positive_class=1)
    return VersionMonitor("1", _manifest(reference), OutputReader("classifier", "scores", CLASSES), settings)


def _traffic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions, labels and groups where group 'b' is recalled worse than 'a'."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, CLASSES, n)
    groups = rng.choice(["a", "b", "c"], n, p=[0.5, 0.45, 0.05])
    wrong = rng.random(n) < np.where(groups == "b", 0.45, 0.15)
    y_pred = np.where(wrong, rng.integers(0, CLASSES, n), y_true)
    return y_true, y_pred, groups


def _feed(window: VersionMonitor, y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray) -> None:
    for t, p, g in zip(y_true.tolist(), y_pred.tolist(), groups.tolist(), strict=True):
        prediction = Prediction((p,), (0.9,))
        window.observe(1000.0, g, prediction)
        window.add_labels(1000.0, g, prediction, (t,))


def test_scores_match_scikit_learn_and_bias_matches_fairlearn() -> None:
    y_true, y_pred, groups = _traffic(2000)
    window = _window(k=20)
    _feed(window, y_true, y_pred, groups)
    q = window.quality(1001.0)
    assert q is not None and q.samples == q.labeled == 2000

    assert q.accuracy == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-6)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(CLASSES))
    )
    assert [c.precision for c in q.classes] == pytest.approx(precision.tolist(), abs=1e-6)
    assert [c.recall for c in q.classes] == pytest.approx(recall.tolist(), abs=1e-6)
    assert [c.f1 for c in q.classes] == pytest.approx(f1.tolist(), abs=1e-6)
    assert [c.support for c in q.classes] == support.tolist()
    assert q.macro_f1 == pytest.approx(float(np.mean(f1)), abs=1e-6)
    assert q.confusion == confusion_matrix(y_true, y_pred).tolist()

    # fairlearn over the groups that are not suppressed ('c' has ~100 samples: kept at k=20)
    pos_true, pos_pred = (y_true == 1).astype(int), (y_pred == 1).astype(int)
    dpd = demographic_parity_difference(pos_true, pos_pred, sensitive_features=groups)
    eod = equal_opportunity_difference(pos_true, pos_pred, sensitive_features=groups)
    assert q.demographic_parity_difference == pytest.approx(dpd, abs=1e-6)
    assert q.equal_opportunity_difference == pytest.approx(eod, abs=1e-6)
    by_name = {g.group: g for g in q.groups}
    for name in ("a", "b", "c"):
        mask = groups == name
        assert by_name[name].selection_rate == pytest.approx(float(np.mean(y_pred[mask] == 1)), abs=1e-6)
        assert by_name[name].accuracy == pytest.approx(accuracy_score(y_true[mask], y_pred[mask]), abs=1e-6)
    assert by_name["b"].recall < by_name["a"].recall


def test_groups_and_figures_below_k_are_suppressed() -> None:
    y_true, y_pred, _ = _traffic(300, seed=1)
    groups = np.array(["a", "b"] * 150, dtype=object)
    groups[:5] = "rare"  # five samples only
    window = _window(k=20)
    _feed(window, y_true, y_pred, groups)
    q = window.quality(1001.0)
    assert q is not None
    rare = next(g for g in q.groups if g.group == "rare")
    assert rare.suppressed and rare.samples == 5
    assert rare.selection_rate is None and rare.accuracy is None and rare.recall is None
    assert {g.group for g in q.groups if not g.suppressed} == {"a", "b"}
    # the gaps leave the suppressed group out: fairlearn on the other groups gives the same
    keep = groups != "rare"
    dpd = demographic_parity_difference(
        (y_true[keep] == 1).astype(int), (y_pred[keep] == 1).astype(int), sensitive_features=groups[keep]
    )
    assert q.demographic_parity_difference == pytest.approx(dpd, abs=1e-6)

    few = _window(k=20)
    _feed(few, y_true[:19], y_pred[:19], groups[:19])
    q = few.quality(1001.0)
    assert q is not None and q.labeled == 19
    assert q.accuracy is None and q.confusion is None and q.classes == [] and q.estimated_accuracy is None


def test_prediction_drift_and_calibrated_estimate() -> None:
    reference = Reference(
        samples=100,
        predictions=PredictionReference(
            output="scores",
            class_fractions=[0.5, 0.3, 0.2],
            calibration_edges=[0.0, 0.5, 1.0],
            calibration_accuracy=[0.4, 0.7],
        ),
    )
    stable, shifted = _window(reference=reference), _window(reference=reference)
    rng = np.random.default_rng(2)
    for cls in rng.choice(3, 1000, p=[0.5, 0.3, 0.2]).tolist():
        stable.observe(1.0, None, Prediction((cls,), (0.9,)))
    for cls in rng.choice(3, 1000, p=[0.1, 0.2, 0.7]).tolist():
        shifted.observe(1.0, None, Prediction((cls,), (0.3,)))
    s, d = stable.quality(2.0), shifted.quality(2.0)
    assert s is not None and d is not None
    assert s.prediction_drift < 0.05 < 0.25 < d.prediction_drift
    # the estimate is the bundle's measured accuracy at that confidence, not the raw confidence
    assert s.estimated_accuracy == pytest.approx(0.7) and d.estimated_accuracy == pytest.approx(0.4)
    # without a table: the raw confidence
    raw = _window()
    for _ in range(30):
        raw.observe(1.0, None, Prediction((0,), (0.8,)))
    q = raw.quality(2.0)
    assert q is not None and q.estimated_accuracy == pytest.approx(0.8) and q.prediction_drift is None


def test_rolling_window_forgets_old_rows_and_regression_errors() -> None:
    window = _window()
    for _ in range(30):
        window.observe(0.0, None, Prediction((0,), (0.9,)))
    q = window.quality(window.settings.window_s + 10.0)
    assert q is not None and q.samples == 0
    assert window.quality(window.settings.window_s + 20.0) is None  # nothing new: nothing to send

    manifest = _manifest(outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 1])])
    reader = reader_for(manifest)
    assert reader == OutputReader("regression", "y", 0)
    reg = VersionMonitor("1", manifest, reader, MonitorSettings())
    true = np.linspace(0, 10, 40)
    pred = true + np.where(np.arange(40) % 2, 1.0, -3.0)
    for t, p in zip(true.tolist(), pred.tolist(), strict=True):
        reg.add_labels(1.0, None, Prediction((p,), None), (t,))
    q = reg.quality(2.0)
    assert q is not None and q.mae == pytest.approx(2.0) and q.rmse == pytest.approx(np.sqrt(5.0))


def test_feedback_joins_by_id_and_counts_what_it_cannot() -> None:
    manifest = _manifest()
    settings = MonitorSettings(ledger_size=3, ledger_max_age_s=60)
    monitor = ModelMonitor("m", settings)
    window = monitor.for_version("1", manifest, OutputReader("classifier", "scores", CLASSES))
    scores = np.array([[0.1, 2.0, 0.3]], np.float32)
    for i in range(4):  # capacity 3: the first is evicted
        monitor.observe(window, f"id-{i}", None, {"scores": scores})
    monitor.ledger._entries["id-1"].time -= 120  # older than the ledger keeps
    result, joined = monitor.feedback(
        [
            {"id": "id-0", "label": 1},  # evicted
            {"id": "id-1", "label": 1},  # expired
            {"id": "id-2", "label": 7},  # no such class
            {"id": "id-3", "label": [1]},
            {"id": "id-3", "label": 1},  # labelled already
            {"label": 1},
        ]
    )
    assert result.as_dict() == {"accepted": 1, "unknown": 2, "expired": 1, "invalid": 2}
    assert [labels for _entry, labels in joined] == [(1,)]
    assert len(monitor.ledger) == 0


def test_nan_outputs_are_no_predictions_and_never_break_the_figures() -> None:
    monitor = ModelMonitor("m", MonitorSettings(min_samples=5))
    window = monitor.for_version("1", _manifest(), OutputReader("classifier", "scores", CLASSES))
    for i in range(10):
        monitor.observe(window, f"ok-{i}", None, {"scores": np.array([[0.1, 2.0, 0.3]], np.float32)})
        monitor.observe(window, f"nan-{i}", None, {"scores": np.full((1, CLASSES), np.nan, np.float32)})
    q = window.quality(time.time())
    assert q is not None and q.samples == 10 and q.estimated_accuracy is not None
    assert 0 < q.estimated_accuracy < 1
    regression = _manifest(outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 1])])
    reg = monitor.for_version("2", regression, reader_for(regression))  # type: ignore[arg-type]
    for i in range(10):
        monitor.observe(reg, f"r-{i}", None, {"y": np.array([[np.nan if i % 2 else 1.0]], np.float32)})
    q = reg.quality(time.time())
    assert q is not None and q.samples == 5


def test_one_row_reads_as_it_does_in_a_batch() -> None:
    """A single-row output takes the request path's short cut; it must read as the same row does in
    a batch (the vectorized rule): class, confidence, probabilities vs logits, NaN and infinities."""
    reader = OutputReader("classifier", "scores", CLASSES)
    rows = [
        [0.1, 2.0, 0.3],  # logits
        [-3.0, -1.0, -2.5],  # negative logits
        [0.2, 0.7, 0.1],  # probabilities
        [0.2, 0.7, 0.1005],  # sums to 1.0005: still probabilities
        [0.2, 0.7, 0.2],  # in [0, 1] but sums to 1.1: logits
        [5.0, 5.0, 1.0],  # a tie: the first class, as argmax
    ]
    for row in rows:
        one = reader.read({"scores": np.array([row], np.float32)})
        batch = reader.read({"scores": np.array([row, row], np.float32)})
        assert one is not None and batch is not None
        assert one.values == batch.values[:1]
        assert one.confidence == pytest.approx(batch.confidence[:1])  # type: ignore[index]
    for bad in (np.nan, np.inf, -np.inf):
        assert reader.read({"scores": np.array([[0.1, bad, 0.3]], np.float32)}) is None
        assert reader.read({"scores": np.array([[0.1, 0.2, 0.3], [0.1, bad, 0.3]], np.float32)}) is None
    assert reader.read({"scores": np.zeros((0, CLASSES), np.float32)}) is None
