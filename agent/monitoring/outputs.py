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
        if value is None or value.dtype.kind != "f" or value.ndim == 0 or not np.isfinite(value).all():
            return None  # a NaN or infinite output is a data-quality finding, not a prediction
        if self.kind == "classifier":
            if value.ndim != 2 or value.shape[1] != self.n_classes:
                return None
            classes = value.argmax(axis=1)
            confidence = softmax_confidence(value)
            return Prediction(tuple(classes.tolist()), tuple(confidence.tolist()))
        flat = value.reshape(value.shape[0], -1)
        if flat.shape[1] != 1:
            return None
        return Prediction(tuple(flat[:, 0].astype(np.float64).tolist()), None)


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
