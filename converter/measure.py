"""Measurements: host latency, fidelity of one model against another, and accuracy with labels.

Latency is compared side by side: candidates run in interleaved rounds on the same input, so a
burst of load from another process hits all of them alike, and the median per call is reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort

from converter.calibration import Dataset
from converter.runtime import run
from sdk.profiles import QuantizationSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fidelity:
    """How closely a converted model's outputs follow the reference model's on the same inputs."""

    #: share of samples whose top class matches (first output, classifiers only).
    argmax_agreement: float | None
    #: mean per-sample cosine similarity, the worst over float outputs.
    cosine: float
    max_abs_error: float
    samples: int

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)

    def meets(self, bar: QuantizationSpec) -> bool:
        """Classifiers are judged by argmax agreement, everything else by cosine."""
        if self.argmax_agreement is not None:
            return self.argmax_agreement >= bar.min_argmax_agreement
        return self.cosine >= bar.min_cosine

    def shortfall(self, bar: QuantizationSpec) -> str:
        if self.argmax_agreement is not None:
            return f"argmax agreement {self.argmax_agreement:.4f} (bar {bar.min_argmax_agreement})"
        return f"cosine {self.cosine:.5f} (bar {bar.min_cosine})"


def batch_size_for(session: ort.InferenceSession) -> int:
    """Batches of 16 when the batch dim is dynamic, else the model's fixed batch."""
    dims = [i.shape[0] if i.shape else 1 for i in session.get_inputs()]
    return 16 if all(not isinstance(d, int) or d <= 0 for d in dims) else 1


def outputs_over(session: ort.InferenceSession, data: Dataset) -> list[np.ndarray]:
    """Every output of the model over every sample, concatenated along the sample axis."""
    parts: list[list[np.ndarray]] = []
    for feeds in data.batches(batch_size_for(session)):
        outs = run(session, feeds)
        if not parts:
            parts = [[] for _ in outs]
        for acc, out in zip(parts, outs, strict=True):
            acc.append(np.asarray(out))
    return [np.concatenate(p) if p[0].ndim else np.stack(p) for p in parts]


#: output names that mark class scores (argmax is meaningful); embeddings and regressions are not.
CLASSIFIER_HINTS = ("logit", "prob", "score", "class", "label", "softmax", "pred")


def is_classifier(
    outputs: list[np.ndarray], names: list[str] | None = None, has_labels: bool = False
) -> bool:
    """Class scores: [N, C] floats, and labels were given or the output's name says so."""
    first = outputs[0]
    shaped = first.dtype.kind == "f" and first.ndim == 2 and first.shape[1] > 1
    named = bool(names) and any(h in names[0].lower() for h in CLASSIFIER_HINTS)  # type: ignore[index]
    return shaped and (has_labels or named)


def judged_as_classifier(session: ort.InferenceSession, outputs: list[np.ndarray], data: Dataset) -> bool:
    return is_classifier(outputs, [o.name for o in session.get_outputs()], data.labels is not None)


def fidelity(reference: list[np.ndarray], candidate: list[np.ndarray], classifier: bool = False) -> Fidelity:
    """Cosine and max abs error always; argmax agreement of the first output for classifiers."""
    agreement = None
    if classifier:
        agreement = float(np.mean(reference[0].argmax(axis=1) == candidate[0].argmax(axis=1)))
    cosines, max_err = [], 0.0
    for ref, got in zip(reference, candidate, strict=True):
        if ref.dtype.kind != "f":
            cosines.append(float(np.mean(ref == got)))
            continue
        r = ref.reshape(len(ref), -1).astype(np.float64) if ref.ndim else ref.reshape(1, -1)
        g = got.reshape(r.shape).astype(np.float64)
        denom = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
        cos = np.where(denom > 0, np.sum(r * g, axis=1) / np.maximum(denom, 1e-30), 1.0)
        cosines.append(float(np.mean(cos)))
        max_err = max(max_err, float(np.max(np.abs(r - g))) if r.size else 0.0)
    return Fidelity(agreement, min(cosines), max_err, len(reference[0]) if reference[0].ndim else 1)


def accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> float:
    """Top-1 accuracy of the first output against integer labels."""
    return float(np.mean(outputs[0].reshape(len(labels), -1).argmax(axis=1) == labels.reshape(-1)))


@dataclass(frozen=True)
class Latency:
    """Milliseconds per call of each model, from interleaved rounds on the same input."""

    calls: dict[str, list[float]]

    def median(self, name: str) -> float:
        return float(np.median(self.calls[name]))

    def quick(self, name: str) -> float:
        """The 10th percentile: what the model costs when the machine is not busy with others."""
        return float(np.percentile(self.calls[name], 10))

    def ratio(self, name: str, baseline: str) -> float:
        """name / baseline on the 10th percentile: a shared machine's bursts inflate medians, not this."""
        return self.quick(name) / max(self.quick(baseline), 1e-9)


def compare_latency(
    sessions: Mapping[str, ort.InferenceSession],
    feeds: dict[str, np.ndarray],
    rounds: int = 30,
    seconds_per_model: float = 1.0,
    block: int = 4,
) -> Latency:
    """Time each session on the same feeds, in short blocks taken in turn (order alternates).

    Short blocks interleave finely, so a burst of load from other processes hits every model
    alike; the first call of each block is not counted, since it pays for the caches the previous
    model evicted, which a device serving one model does not. At least ``rounds`` blocks per model,
    more for fast models, up to about ``seconds_per_model``.
    """
    names = list(sessions)
    for name in names:  # warm-up: first calls pay for allocation and kernel selection
        for _ in range(3):
            sessions[name].run(None, feeds)
    slowest = max(_one_call_seconds(sessions[name], feeds) for name in names)
    total = max(rounds, min(300, int(seconds_per_model / max(slowest * block, 1e-6))))
    calls: dict[str, list[float]] = {name: [] for name in names}
    for r in range(total):
        for name in names if r % 2 == 0 else names[::-1]:
            sessions[name].run(None, feeds)  # re-warms the caches for this model
            for _ in range(block - 1):
                t0 = time.perf_counter()
                sessions[name].run(None, feeds)
                calls[name].append((time.perf_counter() - t0) * 1000.0)
    return Latency(calls)


def _one_call_seconds(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> float:
    t0 = time.perf_counter()
    session.run(None, feeds)
    return time.perf_counter() - t0
