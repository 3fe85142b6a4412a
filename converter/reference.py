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
from converter.measure import outputs_over
from converter.runtime import run
from sdk.manifest import Reference, Smoke, TensorStats
from sdk.tensors import EncodedTensor

HISTOGRAM_BINS = 10
REFERENCE_SAMPLES = 512


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


def reference(session: ort.InferenceSession, data: Dataset) -> Reference:
    data = data.take(REFERENCE_SAMPLES)
    outputs = outputs_over(session, data)
    names = [o.name for o in session.get_outputs()]
    return Reference(
        samples=len(data),
        inputs={k: tensor_stats(v) for k, v in data.inputs.items() if v.dtype.kind in "fiub"},
        outputs={n: tensor_stats(o) for n, o in zip(names, outputs, strict=True) if o.dtype.kind in "fiub"},
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
