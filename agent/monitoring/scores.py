"""Pure functions: classification and regression scores, fairness gaps, confidence-based estimates.

Definitions follow scikit-learn and fairlearn so the fleet's numbers mean what operators expect:
precision, recall and F1 per class with zero where a denominator is empty (reported as None here,
see :func:`class_scores`); demographic parity difference = largest minus smallest selection rate
over groups; equal opportunity difference = largest minus smallest true positive rate over groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClassScores:
    support: int
    predicted: int
    precision: float | None
    recall: float | None
    f1: float | None


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class (scikit-learn's layout)."""
    idx = y_true.astype(np.int64) * n_classes + y_pred.astype(np.int64)
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def class_scores(matrix: np.ndarray, min_count: int) -> list[ClassScores]:
    """Per class precision, recall and F1 from a confusion matrix; a figure whose denominator holds
    fewer than ``min_count`` samples is None (too few to be meaningful, or to be sent)."""
    out: list[ClassScores] = []
    for c in range(matrix.shape[0]):
        tp = int(matrix[c, c])
        support = int(matrix[c, :].sum())
        predicted = int(matrix[:, c].sum())
        precision = tp / predicted if predicted >= min_count else None
        recall = tp / support if support >= min_count else None
        f1 = None
        if precision is not None and recall is not None:
            f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        out.append(ClassScores(support, predicted, precision, recall, f1))
    return out


def macro(values: list[float | None]) -> float | None:
    """Unweighted mean over the classes that have the figure."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def regression_errors(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """MAE and RMSE."""
    diff = y_pred.astype(np.float64) - y_true.astype(np.float64)
    return float(np.mean(np.abs(diff))), float(np.sqrt(np.mean(diff * diff)))


def selection_rate(y_pred: np.ndarray, positive: int) -> float:
    return float(np.mean(y_pred == positive)) if y_pred.size else 0.0


def true_positive_rate(y_true: np.ndarray, y_pred: np.ndarray, positive: int) -> float | None:
    """Recall of the positive class; None without positive samples."""
    positives = y_true == positive
    if not positives.any():
        return None
    return float(np.mean(y_pred[positives] == positive))


def gap(values: list[float]) -> float | None:
    """fairlearn's ``between_groups`` difference: largest minus smallest."""
    return float(max(values) - min(values)) if len(values) >= 2 else None


def softmax_confidence(
    scores: np.ndarray, top: np.ndarray | None = None, low: np.ndarray | None = None
) -> np.ndarray:
    """Largest class probability per row. Rows that already are probabilities (in [0, 1], summing
    to 1) are taken as they are; anything else is treated as logits. ``top`` and ``low``, each
    row's largest and smallest score, may be passed when the caller has them (the request path:
    every numpy call on a small array costs about a microsecond)."""
    rows = scores.astype(np.float64, copy=False)
    top = rows.max(axis=-1) if top is None else top
    low = rows.min(axis=-1) if low is None else low
    # the last test is np.allclose(sums, 1.0, atol=1e-3) without its generality (which costs ~30 us)
    if (
        low.min(initial=0.0) >= 0.0
        and top.max(initial=0.0) <= 1.0
        and float(np.abs(rows.sum(axis=-1) - 1.0).max(initial=0.0)) <= 1e-3 + 1e-5
    ):
        return top
    e = np.exp(rows - top[..., None])
    return 1.0 / e.sum(axis=-1)


def calibrated(confidence: np.ndarray, edges: list[float] | None, accuracy: list[float] | None) -> np.ndarray:
    """Map raw confidence to the accuracy the bundle's evaluation data showed at that confidence
    (a reliability table: bins by confidence, observed accuracy per bin). Without a table the raw
    confidence is the estimate, which is optimistic for an over-confident model."""
    if not edges or not accuracy or len(edges) != len(accuracy) + 1:
        return confidence
    idx = np.clip(np.searchsorted(np.asarray(edges[1:-1]), confidence, side="right"), 0, len(accuracy) - 1)
    return np.asarray(accuracy, dtype=np.float64)[idx]
