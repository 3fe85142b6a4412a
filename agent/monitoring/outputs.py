"""How a model's outputs become a prediction summary: a class per row (classifiers) or a value per
row (single-value regression). The summary is all the agent keeps of an output.

Which output, and which kind, is read once per version from the manifest: the reference's
``predictions.output`` when the converter named it, else the first floating-point output; shape
[batch, C] with C >= 2 is a classifier (argmax, largest softmax probability as confidence), shape
[batch] or [batch, 1] a regression. Any other output (images, sequences) gets drift and data
quality only. A [batch, C] output that is not class scores (an embedding) cannot be told apart from
one and is read as classes: its figures are then meaningless, not harmful.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from agent.monitoring.scores import softmax_confidence
from sdk.manifest import Manifest, TensorSpec

_FLOAT_TYPES = {"FP16", "FP32", "FP64", "BF16"}
#: rows of one request that are tracked for feedback; a larger batch counts in the window only.
MAX_TRACKED_ROWS = 64

Kind = Literal["classifier", "regression"]


@dataclass(frozen=True, slots=True)
class Prediction:
    #: per row: the predicted class (int) or value (float)
    values: tuple[float | int, ...]
    #: per row: the largest class probability (classifiers only)
    confidence: tuple[float, ...] | None


@dataclass(frozen=True)
class OutputReader:
    kind: Kind
    output: str
    n_classes: int

    def read(self, outputs: Mapping[str, np.ndarray]) -> Prediction | None:
        """The summary of one request's outputs; None when the output was not asked for or has an
        unexpected shape. O(outputs)."""
        value = outputs.get(self.output)
        if value is None or value.dtype.kind != "f" or value.ndim == 0:
            return None
        if self.kind == "classifier":
            if value.ndim != 2 or value.shape[1] != self.n_classes or value.shape[0] == 0:
                return None
            if value.shape[0] == 1:
                return _one_row(value[0])
            # Each row's extremes serve twice: a NaN or an infinity shows in them (a NaN propagates
            # through max and min), and they decide probabilities vs logits.
            rows = value.astype(np.float64, copy=False)
            top, low = rows.max(axis=1), rows.min(axis=1)
            if not (np.isfinite(top).all() and np.isfinite(low).all()):
                return None  # a NaN or infinite output is a data-quality finding, not a prediction
            confidence = softmax_confidence(rows, top, low)
            return Prediction(tuple(rows.argmax(axis=1).tolist()), tuple(confidence.tolist()))
        flat = value.reshape(value.shape[0], -1)
        if flat.shape[1] != 1:
            return None
        column = flat[:, 0].astype(np.float64).tolist()
        if not all(math.isfinite(v) for v in column):
            return None  # a NaN or infinite output is a data-quality finding, not a prediction
        return Prediction(tuple(column), None)


def _one_row(row: np.ndarray) -> Prediction | None:
    """:meth:`OutputReader.read` of a single-row classifier output, the usual online request, in
    as few numpy calls as the rule allows (each costs about a microsecond on the event loop):
    the same rule as :func:`~agent.monitoring.scores.softmax_confidence`."""
    top, low = float(row.max()), float(row.min())
    if not (math.isfinite(top) and math.isfinite(low)):
        return None  # a NaN propagates through max and min; an infinity is one of them
    if low >= 0.0 and top <= 1.0 and abs(float(row.sum(dtype=np.float64)) - 1.0) <= 1e-3 + 1e-5:
        confidence = top
    else:
        # float32 unless the model answers float64: the exponentials are most of the cost, and
        # float32 is twice as fast and ample for a confidence in (0, 1]
        shifted = np.subtract(row, top, dtype=np.float64 if row.dtype == np.float64 else np.float32)
        confidence = 1.0 / float(np.exp(shifted, out=shifted).sum(dtype=np.float64))
    return Prediction((int(row.argmax()),), (confidence,))


def _float(spec: TensorSpec) -> bool:
    return spec.datatype in _FLOAT_TYPES and len(spec.shape) >= 1


def reader_for(manifest: Manifest) -> OutputReader | None:
    named = (
        manifest.reference.predictions.output
        if manifest.reference and manifest.reference.predictions
        else None
    )
    candidates = [o for o in manifest.outputs if _float(o) and (named is None or o.name == named)]
    if not candidates:
        return None
    spec = candidates[0]
    if len(spec.shape) == 2 and spec.shape[1] >= 2:
        return OutputReader("classifier", spec.name, spec.shape[1])
    if len(spec.shape) == 1 or (len(spec.shape) == 2 and spec.shape[1] == 1):
        return OutputReader("regression", spec.name, 0)
    return None
