"""Operator actions on rollouts: create (select devices, plan waves), pause, resume, roll back."""

from __future__ import annotations

import math
import secrets
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet import bundles as bundle_store
from fleet import devices as device_registry
from fleet.alerts.rules import Reference
from fleet.db.models import Device, Rollout, RolloutDevice
from fleet.db.session import get_existing
from fleet.rollout import desired
from fleet.rollout.states import (
    ACTIVE_DEVICE_STATES,
    TOUCHED_STATES,
    DeviceEvent,
    DeviceState,
    RolloutEvent,
    RolloutState,
    device_transition,
    rollout_transition,
)
from fleet.schemas import Gates, RolloutCreate, Strategy
from sdk.errors import ConfigError, ConflictError
from sdk.messages import DesiredState

Outbox = list[tuple[str, DesiredState]]


def plan_waves(count: int, strategy: Strategy) -> list[int]:
    """The wave of each of ``count`` devices: wave 0 is the canaries (if any), then ``waves`` groups."""
    if strategy.canary_count is not None:
        canaries = min(count, strategy.canary_count)
    elif strategy.canary_share is not None:
        canaries = min(count, math.ceil(strategy.canary_share * count))
    else:
        canaries = 0
    rest = count - canaries
    waves = [0] * canaries
    first = 1 if canaries else 0
    for i in range(rest):
        waves.append(first + (i * strategy.waves) // rest)
    return waves


def check_gates(gates: Gates, manifest: dict) -> None:
    """Refuse gates relative to a figure the bundle's converter did not measure (they could never hold)."""
    ref = Reference.of_manifest(manifest)
    if gates.max_accuracy_drop is not None and ref.accuracy is None:
        raise ConfigError(
            "gates.max_accuracy_drop compares with the bundle's measured accuracy, which its manifest lacks"
            " (convert with --eval data that has labels, or use gates.min_accuracy)"
        )
    if gates.max_latency_factor is not None and ref.latency_ms is None:
        raise ConfigError(
            "gates.max_latency_factor compares with the bundle's measured latency, which its manifest lacks"
            " (use gates.max_latency_p99_ms)"
        )


def create(session: Session, data: RolloutCreate) -> Rollout:
    bundle = bundle_store.get(session, data.bundle_id)
    check_gates(data.gates, bundle.manifest or {})
    sel = data.selector
    if sel.device_ids is not None:
        chosen = [device_registry.get(session, d) for d in sel.device_ids]
        chosen = [d for d in chosen if all(d.labels.get(k) == v for k, v in sel.labels.items())]
    else:
        chosen = device_registry.list_devices(session, labels=sel.labels)
    if sel.profile and sel.profile != bundle.profile:
        raise ConfigError(
            f"the selector asks for profile {sel.profile} but the bundle is for {bundle.profile}"
        )
    if sel.profile and sel.device_ids is None:
        # the operator asked for this profile's devices: others are not part of the rollout at all
        # (without it they are listed as skipped, saying why). A device whose profile is unknown
        # stays listed, skipped, so a registration that forgot the profile shows.
        chosen = [d for d in chosen if d.profile in (sel.profile, None)]
    # A bundle runs only on its own profile: a device whose profile is unknown (registered without
    # one and never reported one) or another is not offered it, and the rollout says why.
    skipped = {d.id: device_registry.profile_mismatch(d, bundle.profile) for d in chosen}
    skipped = {k: v for k, v in skipped.items() if v is not None}
    chosen = [d for d in chosen if d.id not in skipped]
    if not chosen:
        why = f" ({next(iter(skipped.values()))})" if skipped else ""
        raise ConfigError(
            f"the selector matches no device that can run the bundle's profile {bundle.profile}{why}"
        )
    busy = session.scalars(
        select(RolloutDevice.device_id)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(
            Rollout.state.in_([RolloutState.RUNNING.value, RolloutState.PAUSED.value]),
            RolloutDevice.state.in_([s.value for s in ACTIVE_DEVICE_STATES]),
            RolloutDevice.device_id.in_([d.id for d in chosen]),
        )
    ).all()
    if busy:
        raise ConflictError(
            f"{len(busy)} selected device(s) are in another unfinished rollout: {busy[0]}, ..."
        )
    rollout = Rollout(
        id=secrets.token_hex(8),
        bundle_id=bundle.id,
        state=RolloutState.RUNNING.value,
        selector=sel.model_dump(),
        strategy=data.strategy.model_dump(),
        gates=data.gates.model_dump(),
        alert_thresholds=data.alerts.model_dump(exclude_none=True) if data.alerts else None,
    )
    session.add(rollout)
    session.flush()
    for device, wave in zip(chosen, plan_waves(len(chosen), data.strategy), strict=True):
        session.add(
            RolloutDevice(
                rollout_id=rollout.id, device_id=device.id, wave=wave, state=DeviceState.PENDING.value
            )
        )
    last_wave = max(plan_waves(len(chosen), data.strategy), default=0)
    for device_id, reason in skipped.items():
        session.add(
            RolloutDevice(
                rollout_id=rollout.id,
                device_id=device_id,
                wave=last_wave,
                state=DeviceState.SKIPPED.value,
                error=reason,
            )
        )
    return rollout


def get(session: Session, rollout_id: str, *, for_update: bool = False) -> Rollout:
    return get_existing(session, Rollout, rollout_id, "rollout", for_update=for_update)


def devices_of(session: Session, rollout_id: str) -> list[RolloutDevice]:
    return list(
        session.scalars(
            select(RolloutDevice)
            .where(RolloutDevice.rollout_id == rollout_id)
            .order_by(RolloutDevice.wave, RolloutDevice.device_id)
        )
    )


def describe_done(counts: dict[str, int]) -> str:
    """A completed rollout's reason in words: ``done: 3 succeeded, 1 failed``."""
    order = [s.value for s in DeviceState]
    ranked = sorted(counts.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    parts = [f"{n} {state.replace('_', ' ')}" for state, n in ranked if n]
    return "done: " + (", ".join(parts) if parts else "no devices matched")


def set_state(rollout: Rollout, event: RolloutEvent, reason: str | None = None) -> None:
    rollout.state = rollout_transition(rollout.state, event).value
    rollout.updated_at = time.time()
    if reason is not None:
        rollout.reason = reason


def fire(rd: RolloutDevice, event: DeviceEvent, error: str | None = None) -> None:
    rd.state = device_transition(rd.state, event).value
    rd.updated_at = time.time()
    if error is not None:
        rd.error = error


def restore_previous(device: Device, rd: RolloutDevice, rollout_id: str, outbox: Outbox) -> None:
    """Give the device back the desired state this rollout replaced, unless something newer changed it."""
    if rd.revision is None or device.desired_revision != rd.revision:
        return
    # Signed as authorized downgrades: the device refuses to go back to older versions otherwise.
    restored = [{**m, "allow_downgrade": True} for m in rd.previous_models or []]
    desired.set_desired(device, restored)
    outbox.append((device.id, desired.desired_message(device, rollout_id)))


def rollback(session: Session, rollout: Rollout, reason: str, outbox: Outbox) -> None:
    """Roll back: every device this rollout touched gets its previous desired state; the rest are skipped."""
    set_state(rollout, RolloutEvent.ROLLBACK, reason)
    rds = devices_of(session, rollout.id)
    devices = {
        d.id: d for d in session.scalars(select(Device).where(Device.id.in_([r.device_id for r in rds])))
    }
    for rd in rds:
        state = DeviceState(rd.state)
        if state in TOUCHED_STATES:
            restore_previous(devices[rd.device_id], rd, rollout.id, outbox)
            fire(rd, DeviceEvent.ROLLBACK)
        elif state is DeviceState.PENDING:
            fire(rd, DeviceEvent.ROLLBACK)


def act(session: Session, rollout_id: str, event: RolloutEvent, outbox: Outbox, reason: str) -> Rollout:
    """An operator's pause, resume or rollback (the rollout row locked against a controller pass)."""
    rollout = get(session, rollout_id, for_update=True)
    if event is RolloutEvent.ROLLBACK:
        rollback(session, rollout, reason, outbox)
        return rollout
    set_state(rollout, event, reason)
    if event is RolloutEvent.RESUME:
        # Resuming after a gate paused the rollout accepts the failures so far; new ones still count.
        rollout.acknowledged_failures = counts(session, rollout.id).get(DeviceState.FAILED.value, 0)
    return rollout


def counts(session: Session, rollout_id: str) -> dict[str, int]:
    result: dict[str, int] = {}
    for rd in devices_of(session, rollout_id):
        result[rd.state] = result.get(rd.state, 0) + 1
    return result
