"""Per model monitoring: the request path hands each answered request to :meth:`ModelMonitor.observe`
(after the response is sent), feedback to :meth:`ModelMonitor.feedback`, and telemetry asks
:meth:`VersionMonitor.quality` for the aggregates of one version over the rolling window.

Rolling window: predictions made, and labels that arrived, in the last ``window_s`` seconds (at
most ``window_rows`` rows each, the oldest go first). Labels arrive late, so the labelled figures
cover labels received in the window, whenever their predictions were made.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.drift import psi
from agent.monitoring import scores
from agent.monitoring.ledger import Entry, PredictionLedger
from agent.monitoring.outputs import MAX_TRACKED_ROWS, OutputReader, Prediction
from agent.monitoring.window import NO_GROUP, Ring
from sdk.errors import InvalidInputError
from sdk.manifest import Manifest

if TYPE_CHECKING:
    from sdk.messages import ModelQuality

#: groups longer than this are refused: a group names a site or band, not a record.
MAX_GROUP_LENGTH = 64
#: the group that collects requests once ``max_groups`` distinct groups were seen in the window.
OTHER_GROUP = "(other)"


@dataclass(frozen=True)
class MonitorSettings:
    enabled: bool = True
    #: k: no figure is computed over fewer samples, and a group with fewer is suppressed.
    min_samples: int = 20
    window_s: float = 3600.0
    #: rows kept per window (predictions, and labels), about 115 bytes each
    window_rows: int = 20_000
    #: predictions kept for joining labels (about 430 bytes each with a 40-character id: 8.5 MB), and for how long
    ledger_size: int = 20_000
    ledger_max_age_s: float = 7 * 86_400.0
    #: the class whose selection rate and recall the bias figures compare (fairlearn's pos_label)
    positive_class: int = 1
    max_groups: int = 32
    #: feedback items per call
    max_feedback: int = 10_000


@dataclass(frozen=True)
class FeedbackResult:
    accepted: int = 0
    unknown: int = 0
    expired: int = 0
    invalid: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "unknown": self.unknown,
            "expired": self.expired,
            "invalid": self.invalid,
        }


def _label_values(label: Any, reader: OutputReader) -> tuple[float | int, ...] | None:
    """The label as one value per row; None when it does not fit the model's kind."""
    items = label if isinstance(label, list) else [label]
    if not items or len(items) > MAX_TRACKED_ROWS:
        return None
    out: list[float | int] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float):
            return None
        if reader.kind == "classifier":
            if isinstance(item, float) and not item.is_integer():
                return None
            if not 0 <= int(item) < reader.n_classes:
                return None
            out.append(int(item))
        else:
            if not math.isfinite(float(item)):
                return None
            out.append(float(item))
    return tuple(out)


class VersionMonitor:
    """The rolling window of one model version."""

    def __init__(
        self, version: str, manifest: Manifest, reader: OutputReader, settings: MonitorSettings
    ) -> None:
        self.version = version
        self.reader = reader
        self.settings = settings
        ref = manifest.reference
        self._predictions_ref = ref.predictions if ref is not None else None
        self._output_ref = ref.outputs.get(reader.output) if ref is not None else None
        self._lock = threading.Lock()
        # per row: time, group, predicted class or value, confidence (NaN for regressions)
        self._rows = Ring(settings.window_rows)
        # per labelled row: time, group, predicted, true
        self._labels = Ring(settings.window_rows)
        self._group_codes: dict[str, int] = {}
        self._touched = False
        #: the version answers callers: its window is repeated in every message; a retired one's
        #: only when late labels change it, so the fleet sees the device no longer runs it
        self.serving = True

    def _code(self, group: str | None) -> int:
        if group is None:
            return NO_GROUP
        code = self._group_codes.get(group)
        if code is None:
            code = self._group_codes[group] = len(self._group_codes)
        return code

    def observe(self, now: float, group: str | None, prediction: Prediction) -> None:
        conf = prediction.confidence
        with self._lock:
            code = self._code(group)
            for i, value in enumerate(prediction.values):
                if math.isfinite(value):  # a NaN output is a data-quality finding, not a prediction
                    self._rows.append(now, code, value, conf[i] if conf else math.nan)
            self._touched = True

    def add_labels(
        self, now: float, group: str | None, prediction: Prediction, labels: tuple[float | int, ...]
    ) -> None:
        with self._lock:
            code = self._code(group)
            for predicted, true in zip(prediction.values, labels, strict=True):
                if math.isfinite(predicted):
                    self._labels.append(now, code, predicted, true)
            self._touched = True

    def quality(self, now: float, data_quality: tuple[int, int, int] | None = None) -> ModelQuality | None:
        """Aggregates over the window; None when nothing happened since the previous call and the
        window is empty or the version no longer serves.

        A serving version's non-empty window is repeated by every telemetry message: the fleet
        counts consecutive messages as windows (an alert fires on the second breach), so figures
        sent once, e.g. after one batch of labels, would leave an alert pending for good."""
        from sdk.messages import ModelQuality

        cutoff = now - self.settings.window_s
        with self._lock:
            touched, self._touched = self._touched, False
            rows, labels = self._rows.since(cutoff), self._labels.since(cutoff)
            names = {code: name for name, code in self._group_codes.items()}
        repeat = self.serving and (len(rows[0]) > 0 or len(labels[0]) > 0)
        if not touched and not data_quality and not repeat:
            return None
        k = self.settings.min_samples
        figures: dict[str, Any] = {}
        figures.update(self._prediction_figures(rows[1], rows[2], k))
        figures.update(self._label_figures(labels[1], labels[2], k))
        figures.update(self._group_figures(rows, labels, names, k))
        if data_quality is not None:
            values, non_finite, out_of_range = data_quality
            if values >= k:
                figures["nan_share"] = round(non_finite / values, 6)
                figures["out_of_range_share"] = round(out_of_range / values, 6)
        return ModelQuality(
            window_s=self.settings.window_s,
            samples=len(rows[0]),
            labeled=len(labels[0]),
            min_samples=k,
            **figures,
        )

    # --------------------------------------------------------------------------------- figures

    def _prediction_figures(self, values: np.ndarray, confidence: np.ndarray, k: int) -> dict[str, Any]:
        if len(values) < k:
            return {}
        out: dict[str, Any] = {}
        if self.reader.kind == "classifier":
            counts = np.bincount(values.astype(np.int64), minlength=self.reader.n_classes).astype(np.float64)
            ref = self._predictions_ref
            if ref is not None and len(ref.class_fractions) == self.reader.n_classes:
                out["prediction_drift"] = round(psi(np.asarray(ref.class_fractions), counts), 6)
            edges = ref.calibration_edges if ref is not None else None
            accuracy = ref.calibration_accuracy if ref is not None else None
            confidence = confidence[np.isfinite(confidence)]
            if len(confidence) >= k:
                out["estimated_accuracy"] = round(
                    float(np.mean(scores.calibrated(confidence, edges, accuracy))), 6
                )
        elif self._output_ref is not None and len(self._output_ref.hist_edges) >= 2:
            edges = np.asarray(self._output_ref.hist_edges)
            idx = np.searchsorted(edges[1:-1], values, side="right")
            counts = np.bincount(idx, minlength=len(edges) - 1).astype(np.float64)
            out["prediction_drift"] = round(psi(np.asarray(self._output_ref.hist_fractions), counts), 6)
        return out

    def _label_figures(self, y_pred: np.ndarray, y_true: np.ndarray, k: int) -> dict[str, Any]:
        if len(y_pred) < k:
            return {}
        if self.reader.kind == "regression":
            mae, rmse = scores.regression_errors(y_true, y_pred)
            return {"mae": round(mae, 6), "rmse": round(rmse, 6)}
        from sdk.messages import MAX_CONFUSION_CLASSES, ClassQuality

        n = self.reader.n_classes
        matrix = scores.confusion(y_true, y_pred, n)
        per_class = scores.class_scores(matrix, k)
        out: dict[str, Any] = {
            "accuracy": _r(float(np.trace(matrix)) / len(y_pred)),
            "macro_precision": _r(scores.macro([c.precision for c in per_class])),
            "macro_recall": _r(scores.macro([c.recall for c in per_class])),
            "macro_f1": _r(scores.macro([c.f1 for c in per_class])),
            "classes": [
                ClassQuality(
                    label=str(i),
                    support=c.support,
                    precision=_r(c.precision),
                    recall=_r(c.recall),
                    f1=_r(c.f1),
                )
                for i, c in enumerate(per_class)
            ][:256],
        }
        if n <= MAX_CONFUSION_CLASSES:
            out["confusion"] = matrix.tolist()
        return out

    def _group_figures(
        self,
        rows: tuple[np.ndarray, np.ndarray, np.ndarray],
        labels: tuple[np.ndarray, np.ndarray, np.ndarray],
        names: dict[int, str],
        k: int,
    ) -> dict[str, Any]:
        from sdk.messages import GroupQuality

        codes = (set(np.unique(rows[0]).tolist()) | set(np.unique(labels[0]).tolist())) - {NO_GROUP}
        if not codes:
            return {}
        classifier = self.reader.kind == "classifier"
        positive = self.settings.positive_class
        groups: list[GroupQuality] = []
        rates: list[float] = []
        recalls: list[float] = []
        for code in sorted(codes, key=lambda c: names[c]):
            name = names[code]
            predicted = rows[1][rows[0] == code]
            if predicted.size < k:
                groups.append(GroupQuality(group=name, samples=int(predicted.size), suppressed=True))
                continue
            g = GroupQuality(group=name, samples=int(predicted.size))
            if classifier:
                g.selection_rate = _r(scores.selection_rate(predicted, positive))
                rates.append(g.selection_rate)  # type: ignore[arg-type]
                mine = labels[0] == code
                if int(mine.sum()) >= k:
                    y_pred, y_true = labels[1][mine], labels[2][mine]
                    g.accuracy = _r(float(np.mean(y_true == y_pred)))
                    if int(np.sum(y_true == positive)) >= k:
                        g.recall = _r(scores.true_positive_rate(y_true, y_pred, positive))
                        recalls.append(g.recall)  # type: ignore[arg-type]
            groups.append(g)
        return {
            "groups": groups[:256],
            "demographic_parity_difference": _r(scores.gap(rates)),
            "equal_opportunity_difference": _r(scores.gap(recalls)),
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class ModelMonitor:
    """One model name: its ledger of recent predictions and a window per version."""

    def __init__(self, name: str, settings: MonitorSettings) -> None:
        self.name = name
        self.settings = settings
        self.ledger = PredictionLedger(settings.ledger_size, settings.ledger_max_age_s)
        self._versions: dict[str, VersionMonitor] = {}
        self._groups: set[str] = set()
        self._lock = threading.Lock()

    def for_version(self, version: str, manifest: Manifest, reader: OutputReader) -> VersionMonitor:
        with self._lock:
            monitor = self._versions.get(version)
            if monitor is None:
                monitor = self._versions[version] = VersionMonitor(version, manifest, reader, self.settings)
            return monitor

    def group_of(self, parameters: Mapping[str, Any]) -> str | None:
        """The request's ``group`` parameter, checked on the request path (a bad one is a 400)."""
        raw = parameters.get("group")
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise InvalidInputError("parameter 'group' must be a string or an integer")
        group = str(raw)
        if not group or len(group) > MAX_GROUP_LENGTH:
            raise InvalidInputError(f"parameter 'group' must be 1-{MAX_GROUP_LENGTH} characters")
        with self._lock:
            if group not in self._groups:
                if len(self._groups) >= self.settings.max_groups:
                    return OTHER_GROUP
                self._groups.add(group)
        return group

    def observe(
        self, monitor: VersionMonitor, request_id: str | None, group: str | None, outputs: Mapping[str, Any]
    ) -> tuple[Prediction | None, Entry | None]:
        """One answered request (called after its response was sent): its prediction, and its
        ledger entry when it had an id to join labels by."""
        prediction = monitor.reader.read(outputs)
        if prediction is None:
            return None, None
        now = time.time()
        monitor.observe(now, group, prediction)
        if request_id is None or len(prediction.values) > MAX_TRACKED_ROWS:
            return prediction, None
        entry = Entry(now, monitor.version, group, prediction)
        self.ledger.add(request_id, entry)
        return prediction, entry

    def feedback(
        self, items: list[Any]
    ) -> tuple[FeedbackResult, list[tuple[Entry, tuple[float | int, ...]]]]:
        """Join labels to earlier predictions; returns the counts and the joined pairs."""
        accepted = unknown = expired = invalid = 0
        joined: list[tuple[Entry, tuple[float | int, ...]]] = []
        now = time.time()
        for item in items:
            request_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(request_id, str) or "label" not in item:
                invalid += 1
                continue
            entry, too_old = self.ledger.take(request_id, now)
            if entry is None:
                expired += too_old
                unknown += not too_old
                continue
            with self._lock:
                monitor = self._versions.get(entry.version)
            labels = _label_values(item["label"], monitor.reader) if monitor is not None else None
            if monitor is None or labels is None or len(labels) != len(entry.prediction.values):
                invalid += 1
                continue
            monitor.add_labels(now, entry.group, entry.prediction, labels)
            joined.append((entry, labels))
            accepted += 1
        return FeedbackResult(accepted, unknown, expired, invalid), joined
