"""Gate decisions for one device, from its own figures (fleet.rollout.health): wait, pass or fail."""

from __future__ import annotations

from dataclasses import dataclass

from fleet.alerts.rules import Reference
from fleet.rollout.health import Served, Shadowed
from fleet.schemas import Gates, ShadowGate


@dataclass(frozen=True)
class Verdict:
    #: True: passed, False: failed, None: not enough figures yet
    passed: bool | None
    reason: str = ""


WAIT = Verdict(None)


def reads_telemetry(gates: Gates) -> bool:
    """Whether any bake gate needs the devices' telemetry."""
    return any(
        v is not None
        for v in (
            gates.min_served_requests,
            gates.max_error_rate,
            gates.max_latency_p99_ms,
            gates.max_latency_factor,
            gates.max_drift,
            gates.min_accuracy,
            gates.max_accuracy_drop,
        )
    )


def bake(gates: Gates, figures: Served, ref: Reference) -> Verdict:
    """After ``min_served_requests`` on the new version: error rate, p99, drift and accuracy within the gate."""
    needed = gates.min_served_requests
    if needed is not None and figures.requests < needed:
        return Verdict(None, f"{figures.requests} of {needed} requests served")
    checked = figures.requests >= (needed or gates.min_requests)
    if not checked:
        return Verdict(True)  # only the bake time decides (the error rate gate needs requests)
    failures: list[str] = []
    rate = figures.error_rate
    if gates.max_error_rate is not None and rate is not None and rate > gates.max_error_rate:
        failures.append(f"error rate {rate:.3f} over {figures.requests} requests > {gates.max_error_rate:g}")
    p99 = figures.latency_p99.value
    ceilings = [gates.max_latency_p99_ms] if gates.max_latency_p99_ms is not None else []
    if gates.max_latency_factor is not None and ref.latency_ms is not None:
        ceilings.append(gates.max_latency_factor * ref.latency_ms)
    if ceilings and p99 is not None and p99 > min(ceilings):
        failures.append(f"latency p99 {p99:.2f} ms > {min(ceilings):.2f} ms")
    drift = figures.drift
    if gates.max_drift is not None and drift is not None and drift > gates.max_drift:
        failures.append(f"drift {drift:.3f} > {gates.max_drift:g}")
    accuracy = figures.accuracy
    floors = [gates.min_accuracy] if gates.min_accuracy is not None else []
    if gates.max_accuracy_drop is not None and ref.accuracy is not None:
        floors.append(ref.accuracy - gates.max_accuracy_drop)
    if floors and accuracy is not None and accuracy < max(floors):
        failures.append(f"accuracy {accuracy:.3f} over {figures.labeled} labels < {max(floors):.3f}")
    return Verdict(False, "; ".join(failures)) if failures else Verdict(True)


def shadow(gate: ShadowGate, figures: Shadowed) -> Verdict:
    """After ``min_samples`` mirrored requests: agreement, latency and accuracy against the active version."""
    if figures.samples < gate.min_samples:
        return Verdict(None, f"{figures.samples} of {gate.min_samples} shadow samples")
    failures: list[str] = []
    agreement = figures.agreement
    if agreement is None or agreement < gate.min_agreement:
        shown = "none reported" if agreement is None else f"{agreement:.3f}"
        failures.append(f"shadow agreement {shown} over {figures.samples} samples < {gate.min_agreement:g}")
    tried = figures.samples + figures.errors
    if tried and figures.errors / tried > gate.max_error_rate:
        failures.append(
            f"shadow failed {figures.errors} of {tried} mirrored requests (max share {gate.max_error_rate:g})"
        )
    p99, active = figures.latency_p99, figures.active_latency_p99
    factor = gate.max_latency_factor
    if factor is not None and p99 is not None and active is not None and p99 > active * factor:
        failures.append(f"shadow p99 {p99:.2f} ms > {factor:g} x active {active:.2f} ms")
    acc, active_acc = figures.accuracy, figures.active_accuracy
    drop = gate.max_accuracy_drop
    if drop is not None and acc is not None and active_acc is not None and acc < active_acc - drop:
        failures.append(f"shadow accuracy {acc:.3f} < active {active_acc:.3f} - {drop:g}")
    return Verdict(False, "; ".join(failures)) if failures else Verdict(True)
