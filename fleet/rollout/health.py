"""What each device's own telemetry says about a rollout's version: the figures its gates check.

Every figure is one device's, over its windows since a point in time, and decides only that
device's gate: a device is believed about itself and nothing else, so one that reports absurd
numbers can pass (or fail) only itself, never a wave on behalf of the others. Averages are
weighted by the requests (or mirrored samples) each window covers, so a short window with few
requests cannot outweigh a long one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet.db.models import TelemetrySample


@dataclass
class _Mean:
    """A weighted mean, built window by window."""

    total: float = 0.0
    weight: float = 0.0

    def add(self, value: Any, weight: float) -> None:
        if isinstance(value, int | float) and weight > 0:
            self.total += float(value) * weight
            self.weight += weight

    @property
    def value(self) -> float | None:
        return self.total / self.weight if self.weight > 0 else None


@dataclass
class Served:
    """One device's figures for one model version over its windows since a time."""

    requests: int = 0
    errors: int = 0
    latency_p99: _Mean = field(default_factory=_Mean)
    drift: _Mean = field(default_factory=_Mean)
    accuracy: _Mean = field(default_factory=_Mean)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def add(self, m: dict[str, Any]) -> None:
        requests = int(m.get("requests", 0))
        self.requests += requests
        self.errors += int(m.get("errors", 0))
        self.latency_p99.add(m.get("latency_ms_p99"), requests)
        quality = m.get("quality") or {}
        figures = [v for v in (m.get("drift") or {}).values() if isinstance(v, int | float)]
        if isinstance(quality.get("prediction_drift"), int | float):
            figures.append(quality["prediction_drift"])
        if figures:
            self.drift.add(max(figures), max(requests, 1))
        self.accuracy.add(quality.get("accuracy"), int(quality.get("labeled") or 0))


@dataclass
class Shadowed:
    """One device's shadow figures for one version (ModelTelemetry.shadow) over its windows since a time."""

    #: mirrored requests of the windows that report an agreement (a window with fewer than the
    #: agent's k samples reports none, so its samples back no figure and do not count)
    samples: int = 0
    errors: int = 0
    agreement: _Mean = field(default_factory=_Mean)
    latency_p99: _Mean = field(default_factory=_Mean)
    active_latency_p99: _Mean = field(default_factory=_Mean)
    #: weighted by the samples of the window: the labelled share is not sent per version
    accuracy: _Mean = field(default_factory=_Mean)
    active_accuracy: _Mean = field(default_factory=_Mean)

    def add(self, sh: dict[str, Any]) -> None:
        samples = int(sh.get("samples", 0))
        self.errors += int(sh.get("errors", 0))
        if not isinstance(sh.get("agreement"), int | float):
            return
        self.samples += samples
        self.agreement.add(sh.get("agreement"), samples)
        self.latency_p99.add(sh.get("latency_ms_p99"), samples)
        self.active_latency_p99.add(sh.get("active_latency_ms_p99"), samples)
        if sh.get("accuracy") is not None and sh.get("active_accuracy") is not None:
            # only windows with both: a comparison on the same labelled requests
            self.accuracy.add(sh.get("accuracy"), samples)
            self.active_accuracy.add(sh.get("active_accuracy"), samples)


def _windows(s: Session, since: dict[str, float]) -> Iterable[tuple[str, list[Any]]]:
    """(device, models) of every telemetry sample each device sent since its own time (one query)."""
    if not since:
        return []
    rows = s.execute(
        select(TelemetrySample.device_id, TelemetrySample.received_at, TelemetrySample.models).where(
            TelemetrySample.device_id.in_(list(since)), TelemetrySample.received_at >= min(since.values())
        )
    ).all()
    return [(d, models or []) for d, at, models in rows if at >= since[d]]


def served(s: Session, since: dict[str, float], model: str, version: str) -> dict[str, Served]:
    """device -> its figures for ``model`` ``version`` since ``since[device]`` (other models and versions ignored)."""
    out: dict[str, Served] = {d: Served() for d in since}
    for device_id, models in _windows(s, since):
        for m in models:
            if m.get("name") == model and m.get("version") == version:
                out[device_id].add(m)
    return out


def shadowed(s: Session, since: dict[str, float], model: str, version: str) -> dict[str, Shadowed]:
    """device -> its shadow figures for ``version`` of ``model`` since ``since[device]``."""
    out: dict[str, Shadowed] = {d: Shadowed() for d in since}
    for device_id, models in _windows(s, since):
        for m in models:
            sh = m.get("shadow")
            if m.get("name") == model and isinstance(sh, dict) and sh.get("version") == version:
                out[device_id].add(sh)
    return out
