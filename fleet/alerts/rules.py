"""The alert rules, as pure functions of one telemetry window, its thresholds and the bundle's figures."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from fleet.schemas import AlertThresholds
from fleet.settings import FleetSettings
from sdk.messages import ModelTelemetry

#: characters of a device-chosen name (a tensor's) shown in an alert's detail
MAX_NAME_SHOWN = 64


class Rule(str, Enum):
    DRIFT = "drift"
    ACCURACY = "accuracy"
    BIAS = "bias"
    LATENCY = "latency"


@dataclass(frozen=True)
class Limits:
    """Thresholds with every default filled in."""

    drift_psi: float
    accuracy_drop: float
    min_accuracy: float | None
    bias_gap: float
    latency_factor: float
    max_latency_ms: float | None
    windows: int

    @classmethod
    def defaults(cls, s: FleetSettings) -> Limits:
        return cls(
            drift_psi=s.alert_drift_psi,
            accuracy_drop=s.alert_accuracy_drop,
            min_accuracy=s.alert_min_accuracy,
            bias_gap=s.alert_bias_gap,
            latency_factor=s.alert_latency_factor,
            max_latency_ms=s.alert_max_latency_ms,
            windows=s.alert_windows,
        )

    def overridden(self, given: dict[str, Any] | None) -> Limits:
        """These limits with thresholds (from :func:`thresholds`) over them."""
        return Limits(**{**self.__dict__, **given}) if given else self


def thresholds(stored: dict[str, Any] | None) -> dict[str, Any]:
    """Stored thresholds (a rollout's, a policy's) checked again and without the fields left out."""
    return AlertThresholds.model_validate(stored or {}).model_dump(exclude_none=True)


@dataclass(frozen=True)
class Reference:
    """What the converter measured for the bundle (manifest ``metrics``), to compare devices against."""

    accuracy: float | None = None
    latency_ms: float | None = None

    @classmethod
    def of_manifest(cls, manifest: dict[str, Any]) -> Reference:
        metrics = manifest.get("metrics") or {}
        accuracy = (metrics.get("accuracy") or {}).get("converted")
        latency = (metrics.get("latency_ms") or {}).get("converted")
        return cls(
            accuracy=float(accuracy) if isinstance(accuracy, int | float) else None,
            latency_ms=float(latency) if isinstance(latency, int | float) and latency > 0 else None,
        )


@dataclass(frozen=True)
class Reading:
    """One rule on one window: the figure, the threshold it was held against, and the verdict."""

    rule: Rule
    value: float
    threshold: float
    breached: bool
    detail: str


def drift_value(m: ModelTelemetry) -> tuple[float, str] | None:
    """The largest of the inputs' PSI and the prediction drift, and which one it was."""
    # a tensor name is the device's text: cut, it ends up in the alert's detail and the webhook
    figures = {f"input {name[:MAX_NAME_SHOWN]}": psi for name, psi in m.drift.items()}
    if m.quality is not None and m.quality.prediction_drift is not None:
        figures["predictions"] = m.quality.prediction_drift
    if not figures:
        return None
    which = max(figures, key=lambda k: figures[k])
    return figures[which], which


def accuracy_value(m: ModelTelemetry) -> tuple[float, str] | None:
    """Measured accuracy where labels were fed back, else the estimate from confidence."""
    q = m.quality
    if q is None:
        return None
    if q.accuracy is not None:
        return q.accuracy, f"measured on {q.labeled} labels"
    if q.estimated_accuracy is not None:
        return q.estimated_accuracy, f"estimated from confidence over {q.samples} samples"
    return None


def readings(m: ModelTelemetry, limits: Limits, ref: Reference) -> list[Reading]:
    """Every rule this window has figures for; a rule without figures keeps its alert as it is."""
    out: list[Reading] = []
    drift = drift_value(m)
    if drift is not None:
        value, which = drift
        out.append(Reading(Rule.DRIFT, value, limits.drift_psi, value > limits.drift_psi, f"PSI of {which}"))
    accuracy = accuracy_value(m)
    floor = ref.accuracy - limits.accuracy_drop if ref.accuracy is not None else limits.min_accuracy
    if accuracy is not None and floor is not None:
        value, how = accuracy
        base = f"bundle measured {ref.accuracy:.3f}" if ref.accuracy is not None else "no bundle figure"
        out.append(Reading(Rule.ACCURACY, value, floor, value < floor, f"{how}; {base}"))
    q = m.quality
    if q is not None:
        gaps = {
            "demographic parity difference": q.demographic_parity_difference,
            "equal opportunity difference": q.equal_opportunity_difference,
        }
        present = {k: v for k, v in gaps.items() if v is not None}
        if present:
            which = max(present, key=lambda k: present[k])
            value = present[which]
            out.append(Reading(Rule.BIAS, value, limits.bias_gap, value > limits.bias_gap, which))
    ceiling = ref.latency_ms * limits.latency_factor if ref.latency_ms is not None else limits.max_latency_ms
    if m.latency_ms_p99 is not None and m.requests > 0 and ceiling is not None:
        base = (
            f"{limits.latency_factor:g} x the bundle's measured {ref.latency_ms:g} ms"
            if ref.latency_ms is not None
            else "the fleet's limit"
        )
        value = m.latency_ms_p99
        out.append(
            Reading(Rule.LATENCY, value, ceiling, value > ceiling, f"p99 over {m.requests} requests; {base}")
        )
    return out
