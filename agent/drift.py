"""Drift: population stability index (PSI) of live tensors against the manifest's reference histograms.

PSI = sum over bins of (live - ref) * ln(live / ref), with bin shares floored at a small epsilon so
an empty bin does not make it infinite. Values outside the reference range fall into the first or
last bin. Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant shift.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import numpy as np

from sdk.manifest import Reference, TensorStats

_EPS = 1e-4


def psi(reference: np.ndarray, live: np.ndarray) -> float:
    """PSI between two histograms given as counts or fractions over the same bins."""
    ref = np.clip(reference / max(reference.sum(), 1e-12), _EPS, None)
    cur = np.clip(live / max(live.sum(), 1e-12), _EPS, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


class _Tensor:
    def __init__(self, stats: TensorStats) -> None:
        self.edges = np.asarray(stats.hist_edges, dtype=np.float64)
        self.reference = np.asarray(stats.hist_fractions, dtype=np.float64)
        self.counts = np.zeros(len(self.reference), dtype=np.int64)
        # data quality against the reference range (the end bins hide how far out a value is)
        self.lo, self.hi = float(stats.min), float(stats.max)
        self.values = self.non_finite = self.out_of_range = 0

    def observe(self, values: np.ndarray) -> None:
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        size = flat.size
        flat = flat[np.isfinite(flat)]
        self.values += size
        self.non_finite += size - flat.size
        self.out_of_range += int(np.count_nonzero((flat < self.lo) | (flat > self.hi)))
        # searchsorted on the inner edges puts out-of-range values into the end bins.
        idx = np.searchsorted(self.edges[1:-1], flat, side="right")
        self.counts += np.bincount(idx, minlength=len(self.counts))


class DriftTracker:
    """Accumulates live histograms per tensor; :meth:`take` returns PSI per tensor and starts afresh.

    At most one request per ``min_interval_s`` is binned: a few hundred samples a second are plenty
    for a histogram, and binning every request would cost tiny models a large share of their time.
    """

    def __init__(self, reference: Reference | None, min_interval_s: float = 0.005) -> None:
        self._lock = threading.Lock()
        self._min_interval_s = min_interval_s
        self._last = 0.0
        self._tensors: dict[str, _Tensor] = {}
        if reference is None:
            return
        for prefix, table in (("input", reference.inputs), ("output", reference.outputs)):
            for name, stats in table.items():
                if len(stats.hist_edges) >= 2 and len(stats.hist_edges) == len(stats.hist_fractions) + 1:
                    self._tensors[f"{prefix}:{name}"] = _Tensor(stats)

    @property
    def enabled(self) -> bool:
        return bool(self._tensors)

    def observe(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        if not self._tensors:
            return
        now = time.monotonic()
        if now - self._last < self._min_interval_s:
            return
        self._last = now
        with self._lock:
            for prefix, table in (("input", inputs), ("output", outputs)):
                for name, value in table.items():
                    tracker = self._tensors.get(f"{prefix}:{name}")
                    if tracker is not None and value.dtype.kind in "biuf":
                        tracker.observe(value)

    def take(self) -> dict[str, float]:
        """PSI per tensor (``input:x``, ``output:y``) over what was observed since the last call."""
        out: dict[str, float] = {}
        with self._lock:
            for key, tracker in self._tensors.items():
                if tracker.counts.sum() > 0:
                    out[key] = round(psi(tracker.reference, tracker.counts.astype(np.float64)), 6)
                    tracker.counts[:] = 0
        return out

    def take_data_quality(self) -> tuple[int, int, int] | None:
        """Input values binned since the last call, how many were NaN or infinite, and how many lay
        outside the reference's [min, max]; None when none were binned."""
        values = non_finite = out_of_range = 0
        with self._lock:
            for key, tracker in self._tensors.items():
                if key.startswith("input:"):
                    values += tracker.values
                    non_finite += tracker.non_finite
                    out_of_range += tracker.out_of_range
                tracker.values = tracker.non_finite = tracker.out_of_range = 0
        return (values, non_finite, out_of_range) if values else None
