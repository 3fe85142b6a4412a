"""What each device's own telemetry says about a rollout's version: the figures its gates check.

Every figure is one device's, over its windows since a point in time, and decides only that
device's gate: a device is believed about itself and nothing else, so one that reports absurd
numbers can pass (or fail) only itself, never a wave on behalf of the others. Averages are
weighted by the requests each window covers, so a short window with few requests cannot
outweigh a long one.
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


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class Served:
    """One device's figures for one model version over its windows since a time.

    Counters, latency and input drift are per telemetry interval (summed, or averaged by
    requests); ``quality`` is the agent's rolling window, which every message repeats with its
    overlap, so only the newest one counts (a sum would count the same labels many times).
    """

    requests: int = 0
    errors: int = 0
    latency_p99: _Mean = field(default_factory=_Mean)
    input_drift: _Mean = field(default_factory=_Mean)
    prediction_drift: float | None = None
    #: the newest measured accuracy, and the labels it is over
    accuracy: float | None = None
    labeled: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def drift(self) -> float | None:
        figures = [v for v in (self.input_drift.value, self.prediction_drift) if v is not None]
        return max(figures) if figures else None

    def add(self, m: dict[str, Any]) -> None:
        """Add one window (oldest first)."""
        requests = int(m.get("requests", 0))
        self.requests += requests
        self.errors += int(m.get("errors", 0))
        self.latency_p99.add(m.get("latency_ms_p99"), requests)
        psi = [v for v in (m.get("drift") or {}).values() if _number(v) is not None]
        if psi:
            self.input_drift.add(max(psi), max(requests, 1))
        quality = m.get("quality") or {}
        if _number(quality.get("prediction_drift")) is not None:
            self.prediction_drift = float(quality["prediction_drift"])
        if _number(quality.get("accuracy")) is not None:
            self.accuracy, self.labeled = float(quality["accuracy"]), int(quality.get("labeled") or 0)


@dataclass
class Shadowed:
    """One device's newest shadow figures for one version (ModelTelemetry.shadow).

    The agent's shadow figures are over its rolling window, repeated by every message, so the
    newest window that reports an agreement stands for them all (one with fewer mirrored requests
    than the agent's k reports none: its samples back no figure).
    """

    samples: int = 0
    errors: int = 0
    agreement: float | None = None
    latency_p99: float | None = None
    active_latency_p99: float | None = None
    accuracy: float | None = None
    active_accuracy: float | None = None

    def add(self, sh: dict[str, Any]) -> None:
        """Add one window (oldest first): the newest with an agreement replaces the rest."""
        if _number(sh.get("agreement")) is None:
            return
        self.samples = int(sh.get("samples", 0))
        self.errors = int(sh.get("errors", 0))
        self.agreement = _number(sh.get("agreement"))
        self.latency_p99 = _number(sh.get("latency_ms_p99"))
        self.active_latency_p99 = _number(sh.get("active_latency_ms_p99"))
        # a comparison only on the same labelled requests: both, or neither
        both = _number(sh.get("accuracy")) is not None and _number(sh.get("active_accuracy")) is not None
        self.accuracy = _number(sh.get("accuracy")) if both else None
        self.active_accuracy = _number(sh.get("active_accuracy")) if both else None


def _windows(s: Session, since: dict[str, float]) -> Iterable[tuple[str, list[Any]]]:
    """(device, models) of every telemetry sample each device sent since its own time, oldest
    first by the device's clock (one query)."""
    if not since:
        return []
    rows = s.execute(
        select(TelemetrySample.device_id, TelemetrySample.received_at, TelemetrySample.models)
        .where(TelemetrySample.device_id.in_(list(since)), TelemetrySample.received_at >= min(since.values()))
        .order_by(TelemetrySample.time, TelemetrySample.seq)
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
