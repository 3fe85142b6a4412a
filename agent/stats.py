"""Per model version request statistics for telemetry: counts, errors, latency percentiles, drift.

The serving path records into :class:`VersionStats`; :meth:`TelemetryBook.telemetry_snapshot`
hands the interval's numbers to the sync side and starts a new interval.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from agent.drift import DriftTracker

if TYPE_CHECKING:
    # Imported when a snapshot is taken: its pydantic models cost start-up time (sync side only).
    from agent.monitoring.monitor import VersionMonitor
    from sdk.messages import ModelTelemetry, ShadowQuality

log = logging.getLogger(__name__)

#: latencies kept per interval; beyond it a reservoir keeps a uniform sample.
_MAX_SAMPLES = 20_000


class TelemetrySource(Protocol):
    def telemetry_snapshot(self) -> list[ModelTelemetry]:
        """Per model+version since the previous call: requests, errors, latency percentiles, drift."""
        ...


class VersionStats:
    def __init__(self, name: str, version: str, drift: DriftTracker) -> None:
        self.name = name
        self.version = version
        self.drift = drift
        #: monitoring of this version (issue 9), when it is on and the model's outputs allow it
        self.monitor: VersionMonitor | None = None
        #: the shadow evaluation against this version, while one runs
        self.shadow: Callable[[], ShadowQuality | None] | None = None
        self._lock = threading.Lock()
        # the stdlib's generator: numpy.random would be ~10 ms more of imports before ready
        self._rng = random.Random()
        self._reset()

    def _reset(self) -> None:
        self.requests = 0
        self.errors = 0
        self._latencies: list[float] = []

    def record(self, latency_s: float, ok: bool) -> None:
        with self._lock:
            self.requests += 1
            if not ok:
                self.errors += 1
                return
            ms = latency_s * 1000.0
            if len(self._latencies) < _MAX_SAMPLES:
                self._latencies.append(ms)
            else:
                slot = self._rng.randrange(self.requests)
                if slot < _MAX_SAMPLES:
                    self._latencies[slot] = ms

    def take(self) -> ModelTelemetry | None:
        with self._lock:
            requests, errors, latencies = self.requests, self.errors, self._latencies
            self._reset()
        drift = self.drift.take()
        data_quality = self.drift.take_data_quality()
        quality = shadow = None
        try:  # monitoring must never cost the version its serving figures
            if self.monitor is not None:
                quality = self.monitor.quality(time.time(), data_quality)
            if self.shadow is not None:
                shadow = self.shadow()
        except Exception:
            log.exception("monitoring figures of %s %s unavailable for this sample", self.name, self.version)
        if requests == 0 and not drift and quality is None and shadow is None:
            return None
        from sdk.messages import ModelTelemetry

        p50 = p95 = p99 = None
        if latencies:
            p50, p95, p99 = (round(float(v), 3) for v in np.percentile(latencies, [50, 95, 99]))
        return ModelTelemetry(
            name=self.name,
            version=self.version,
            requests=requests,
            errors=errors,
            latency_ms_p50=p50,
            latency_ms_p95=p95,
            latency_ms_p99=p99,
            drift=drift,
            quality=quality,
            shadow=shadow,
        )


class TelemetryBook:
    """Every :class:`VersionStats` the server has used, including retired versions not yet reported."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, str], VersionStats] = {}

    def for_version(self, name: str, version: str, drift: DriftTracker) -> VersionStats:
        with self._lock:
            stats = self._stats.get((name, version))
            if stats is None:
                stats = self._stats[(name, version)] = VersionStats(name, version, drift)
            return stats

    def all(self) -> list[VersionStats]:
        with self._lock:
            return list(self._stats.values())

    def telemetry_snapshot(self) -> list[ModelTelemetry]:
        with self._lock:
            items = list(self._stats.values())
        return [t for s in items if (t := s.take()) is not None]
