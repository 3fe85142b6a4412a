"""The rollout controller: one pass moves every running rollout forward by the transition table.

Each pass (1) observes what devices reported, (2) checks the health gates, (3) starts the next
devices within the wave and in-flight limits, (4) completes the rollout when nothing is left.
All state is in the database, so a restarted fleet (or another replica holding the lease)
continues where the last pass stopped; desired states are published only after the commit.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet.alerts.rules import Reference
from fleet.db.models import Bundle, Device, EventRecord, Rollout, RolloutDevice
from fleet.db.session import Database
from fleet.retention import Retention, prune_device_data
from fleet.rollout import desired, downloads, health, lease, service
from fleet.rollout import gates as gate
from fleet.rollout.states import (
    ACTIVE_DEVICE_STATES,
    IN_FLIGHT_STATES,
    DeviceEvent,
    DeviceState,
    RolloutEvent,
    RolloutState,
)
from fleet.schemas import Gates, Strategy

log = logging.getLogger(__name__)
LEASE_NAME = "rollout-controller"


def _reported_event(
    s: Session, device: Device, rd: RolloutDevice, bundle: Bundle
) -> tuple[DeviceEvent, str | None] | None:
    """What the device's reported state says about this rollout's update, if anything yet.

    Only a report of exactly the revision this rollout issued counts, and "active" is believed only
    when the fleet saw the device fetch the bundle, or had given it this very bundle before.
    """
    if rd.revision is None or device.reported_revision != rd.revision:
        return None
    model = next((m for m in device.reported_models if m.get("name") == bundle.name), None)
    if model is None:
        return DeviceEvent.FAIL, device.last_error or f"the device does not report model {bundle.name}"
    if model.get("state") == "active" and model.get("version") == bundle.version:
        if not downloads.fetched(s, device.id, bundle, rd.previous_models):
            log.warning(
                "device %s reports %s %s active at revision %d but never fetched the bundle: not believed",
                device.id,
                bundle.name,
                bundle.version,
                rd.revision,
            )
            return DeviceEvent.FAIL, (
                f"reports {bundle.name} {bundle.version} active but its token never downloaded the"
                " bundle and the fleet had not given it this bundle before: report not believed"
            )
        return DeviceEvent.ACTIVE, None
    if model.get("state") in ("failed", "rolled_back") or model.get("version") != bundle.version:
        reason = model.get("error") or device.last_error or f"model state {model.get('state')}"
        return DeviceEvent.FAIL, reason
    return None  # still downloading or verifying


def _shadow_failure(device: Device, rd: RolloutDevice, bundle: Bundle) -> str | None:
    """The error of the shadow version, if the device reports at this rollout's revision that it
    failed (its entry names the version; the active one names the version serving)."""
    if rd.revision is None or device.reported_revision != rd.revision:
        return None
    for m in device.reported_models:
        if (
            m.get("name") == bundle.name
            and m.get("version") == bundle.version
            and m.get("state") in ("failed", "rolled_back")
        ):
            return str(m.get("error") or device.last_error or f"shadow state {m.get('state')}")
    return None


def _serves_shadow(device: Device, rd: RolloutDevice, bundle: Bundle) -> bool:
    """Whether the device reports the shadow version as the one serving its model."""
    if rd.revision is None or device.reported_revision != rd.revision:
        return False
    return any(
        m.get("name") == bundle.name
        and m.get("state") == "active"
        and (m.get("active_version") or m.get("version")) == bundle.version
        for m in device.reported_models
    )


class _Pass(NamedTuple):
    """What one controller pass knows of one running rollout."""

    s: Session
    rollout: Rollout
    bundle: Bundle
    gates: Gates
    #: the rollout's devices in flight
    live: list[RolloutDevice]
    devices: dict[str, Device]
    now: float
    outbox: service.Outbox


class RolloutController:
    def __init__(
        self,
        db: Database,
        publish: desired.Publisher,
        base_url: str,
        *,
        holder: str | None = None,
        lease_s: float = 10.0,
        retention_s: float = 0.0,
        retention: Retention | None = None,
        refresh_s: float = 0.0,
    ) -> None:
        self.db = db
        self.publish = publish
        self.base_url = base_url
        self.holder = holder or uuid.uuid4().hex[:12]
        self.lease_s = lease_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.is_leader = False
        self._republish = threading.Event()
        #: telemetry older than this is deleted by the leader, at most once a minute (0: keep all).
        self.retention_s = retention_s
        #: and events by age and count per device (fleet.retention); telemetry as retention_s says
        self.retention = retention or Retention(telemetry_s=retention_s)
        self._pruned_at = 0.0
        #: every desired state is republished (and so re-signed with a fresh expiry) this often (0: never).
        self.refresh_s = refresh_s
        self._republished_at = time.monotonic()

    # ------------------------------------------------------------------------------------ loop

    def start(self, interval_s: float) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(interval_s,), name="rollout-controller", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.is_leader:
            lease.release(self.db, LEASE_NAME, self.holder)

    def request_republish(self) -> None:
        """Ask the leader to send every device its desired state again (e.g. the broker restarted)."""
        self._republish.set()

    def _run(self, interval_s: float) -> None:
        while not self._stop.is_set():
            try:
                was_leader = self.is_leader
                self.is_leader = lease.acquire(self.db, LEASE_NAME, self.holder, self.lease_s)
                if self.is_leader:
                    # Republishing here, in the one thread that publishes rollout changes, keeps an
                    # older snapshot from overwriting a newer retained desired state. A new leader
                    # republishes too: the old one may have died between commit and publish.
                    due = self.refresh_s > 0 and time.monotonic() - self._republished_at >= self.refresh_s
                    if self._republish.is_set() or not was_leader or due:
                        self._republish.clear()
                        self._republished_at = time.monotonic()
                        self.republish_all()
                    self.tick()
                    self._prune()
            except Exception:
                log.exception("rollout controller pass failed; retrying")
            self._stop.wait(interval_s)

    def republish_all(self) -> int:
        with self.db.session() as s:
            outbox = [
                (d.id, desired.desired_message(d))
                for d in s.scalars(select(Device).where(Device.desired_revision > 0))
            ]
        for device_id, message in outbox:
            self.publish(device_id, message)
        log.info("republished the desired state of %d device(s)", len(outbox))
        return len(outbox)

    def _prune(self) -> None:
        now = time.time()
        if now - self._pruned_at < 60:
            return
        self._pruned_at = now
        with self.db.session() as s:
            pruned = prune_device_data(s, self.retention, now)
        if pruned.telemetry or pruned.events or pruned.alerts:
            log.info(
                "deleted %d telemetry samples, %d events and %d resolved alerts past retention",
                pruned.telemetry,
                pruned.events,
                pruned.alerts,
            )

    # ------------------------------------------------------------------------------------ pass

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        outbox: service.Outbox = []
        with self.db.session() as s:
            # FOR UPDATE (PostgreSQL): an operator's pause or rollback waits for this pass, or this
            # pass for it, instead of one overwriting the other's device states.
            running = select(Rollout).where(Rollout.state == RolloutState.RUNNING.value).with_for_update()
            for rollout in list(s.scalars(running)):
                self._advance(s, rollout, now, outbox)
        for device_id, message in outbox:
            self.publish(device_id, message)

    def _advance(self, s: Session, rollout: Rollout, now: float, outbox: service.Outbox) -> None:
        bundle = s.get(Bundle, rollout.bundle_id)
        assert bundle is not None
        gates = Gates.model_validate(rollout.gates)
        strategy = Strategy.model_validate(rollout.strategy)
        rds = service.devices_of(s, rollout.id)
        live = [rd for rd in rds if DeviceState(rd.state) in IN_FLIGHT_STATES]
        devices = {
            d.id: d for d in s.scalars(select(Device).where(Device.id.in_([rd.device_id for rd in live])))
        }

        self._observe(_Pass(s, rollout, bundle, gates, live, devices, now, outbox))

        started = [rd for rd in rds if rd.state not in (DeviceState.PENDING.value, DeviceState.SKIPPED.value)]
        failed = [rd for rd in started if rd.state == DeviceState.FAILED.value]
        unaccepted = len(failed) - rollout.acknowledged_failures
        if started and unaccepted > 0 and unaccepted / len(started) > gates.max_failure_share:
            latest = max(failed, key=lambda rd: rd.updated_at)
            reason = (
                f"health gate: {len(failed)} of {len(started)} started devices failed"
                f" (max share {gates.max_failure_share:g}); latest: {latest.device_id}: {latest.error}"
            )
            log.warning("rollout %s: %s", rollout.id, reason)
            if gates.auto_rollback:
                service.rollback(s, rollout, reason, outbox)
            else:
                service.set_state(rollout, RolloutEvent.PAUSE, reason)
            return

        self._start_next(s, rollout, bundle, strategy, rds, now, outbox)
        if not any(DeviceState(rd.state) in ACTIVE_DEVICE_STATES for rd in rds):
            service.set_state(
                rollout, RolloutEvent.COMPLETE, service.describe_done(service.counts(s, rollout.id))
            )
            log.info("rollout %s complete", rollout.id)

    def _observe(self, p: _Pass) -> None:
        s, rollout, bundle, gates, live, devices, now, outbox = p
        self._observe_shadows(p)
        updating = [rd for rd in live if rd.state == DeviceState.UPDATING.value]
        failures = self._failure_events(s, bundle, updating)
        for rd in updating:
            device = devices[rd.device_id]
            seen = _reported_event(s, device, rd, bundle)
            if seen is None and rd.device_id in failures:
                seen = DeviceEvent.FAIL, failures[rd.device_id]
            if (
                seen is None
                and gates.update_timeout_s
                and now - (rd.started_at or now) > gates.update_timeout_s
            ):
                seen = DeviceEvent.TIMEOUT, f"no report within {gates.update_timeout_s:g} s"
            if seen is None:
                continue
            event, error = seen
            service.fire(rd, event, error)
            if event is DeviceEvent.ACTIVE:
                rd.active_at = now
            else:
                service.restore_previous(device, rd, rollout.id, outbox)

        baking = [rd for rd in live if rd.state == DeviceState.BAKING.value]
        # telemetry is read only when a gate looks at it (a pass runs every fraction of a second)
        watched = {rd.device_id: rd.active_at or now for rd in baking} if gate.reads_telemetry(gates) else {}
        figures = health.served(s, watched, bundle.name, bundle.version)
        ref = Reference.of_manifest(bundle.manifest or {})
        for rd in baking:
            device = devices[rd.device_id]
            seen = _reported_event(s, device, rd, bundle)
            if seen is not None and seen[0] is DeviceEvent.FAIL:
                service.fire(rd, DeviceEvent.FAIL, seen[1])
                service.restore_previous(device, rd, rollout.id, outbox)
                continue
            # the device's own figures decide its own gate, and nobody else's
            verdict = gate.bake(gates, figures.get(rd.device_id, health.Served()), ref)
            if verdict.passed is False:
                service.fire(rd, DeviceEvent.UNHEALTHY, verdict.reason)
                service.restore_previous(device, rd, rollout.id, outbox)
                continue
            if verdict.passed and now - (rd.active_at or now) >= gates.bake_s:
                service.fire(rd, DeviceEvent.BAKED)

    def _observe_shadows(self, p: _Pass) -> None:
        s, rollout, bundle, gates, live, devices, now, outbox = p
        """Promote each shadowing device whose own shadow figures pass the gate; fail the others."""
        shadowing = [rd for rd in live if rd.state == DeviceState.SHADOWING.value]
        if not shadowing or gates.shadow is None:
            return
        failures = self._failure_events(s, bundle, shadowing)
        figures = health.shadowed(
            s, {rd.device_id: rd.started_at or now for rd in shadowing}, bundle.name, bundle.version
        )
        for rd in shadowing:
            device = devices[rd.device_id]
            failure = failures.get(rd.device_id) or _shadow_failure(device, rd, bundle)
            if failure is not None:
                service.fire(rd, DeviceEvent.FAIL, f"shadow: {failure}")
                service.restore_previous(device, rd, rollout.id, outbox)
                continue
            if _serves_shadow(device, rd, bundle):
                # an agent that does not know shadows installs the entry like any other: it serves
                service.fire(
                    rd,
                    DeviceEvent.FAIL,
                    f"the device serves {bundle.name} {bundle.version}, given only as a shadow"
                    " (an agent without shadow evaluation?)",
                )
                service.restore_previous(device, rd, rollout.id, outbox)
                continue
            verdict = gate.shadow(gates.shadow, figures[rd.device_id])
            if verdict.passed is not None and not downloads.fetched(s, device.id, bundle, rd.previous_models):
                # figures about a version the device never fetched are not believed
                verdict = gate.Verdict(None, "shadow figures from a device that never fetched the bundle")
            if verdict.passed is None:
                if gates.update_timeout_s and now - (rd.started_at or now) > gates.update_timeout_s:
                    service.fire(
                        rd,
                        DeviceEvent.TIMEOUT,
                        f"shadow: no passing figures within {gates.update_timeout_s:g} s ({verdict.reason})",
                    )
                    service.restore_previous(device, rd, rollout.id, outbox)
                continue
            if verdict.passed is False:
                service.fire(rd, DeviceEvent.UNHEALTHY, verdict.reason)
                service.restore_previous(device, rd, rollout.id, outbox)
                continue
            # promoted: the version now serves on this device, as in a rollout without a shadow phase
            previous: list[Any] = list(rd.previous_models or [])
            rd.revision = desired.set_desired(device, desired.with_bundle(previous, bundle, self.base_url))
            rd.started_at = now
            service.fire(rd, DeviceEvent.PROMOTE)
            outbox.append((device.id, desired.desired_message(device, rollout.id)))
            log.info("rollout %s: device %s promoted from shadow", rollout.id, device.id)

    def _failure_events(self, s: Session, bundle: Bundle, updating: list[RolloutDevice]) -> dict[str, str]:
        """Failure events the devices sent for this bundle since they started it (one query)."""
        if not updating:
            return {}
        since = min(rd.started_at or 0.0 for rd in updating)
        rows = s.execute(
            select(EventRecord.device_id, EventRecord.reason, EventRecord.time).where(
                EventRecord.ok.is_(False),
                EventRecord.model == bundle.name,
                EventRecord.version == bundle.version,
                EventRecord.time >= since,
                EventRecord.device_id.in_([rd.device_id for rd in updating]),
            )
        ).all()
        started = {rd.device_id: rd.started_at or 0.0 for rd in updating}
        return {d: reason or "the device reported a failure" for d, reason, _t in rows if _t >= started[d]}

    def _start_next(
        self,
        s: Session,
        rollout: Rollout,
        bundle: Bundle,
        strategy: Strategy,
        rds: list[RolloutDevice],
        now: float,
        outbox: service.Outbox,
    ) -> None:
        waiting = [rd for rd in rds if DeviceState(rd.state) in ACTIVE_DEVICE_STATES]
        if not waiting:
            return
        wave = min(rd.wave for rd in waiting)
        in_flight = sum(1 for rd in rds if DeviceState(rd.state) in IN_FLIGHT_STATES)
        room = strategy.max_in_flight - in_flight
        to_start = [rd for rd in waiting if rd.wave == wave and rd.state == DeviceState.PENDING.value][
            : max(room, 0)
        ]
        if not to_start:
            return
        devices = {
            d.id: d for d in s.scalars(select(Device).where(Device.id.in_([rd.device_id for rd in to_start])))
        }
        shadow_phase = Gates.model_validate(rollout.gates).shadow is not None
        for rd in to_start:
            device = devices[rd.device_id]
            previous: list[Any] = list(device.desired_models)
            rd.previous_models = previous
            # a shadow runs beside another active version of its model: a device without one has
            # nothing to compare with, so it takes the version directly (its bake gates still hold)
            shadow = shadow_phase and any(
                m.get("name") == bundle.name and not m.get("shadow") and m.get("version") != bundle.version
                for m in previous
            )
            rd.revision = desired.set_desired(
                device, desired.with_bundle(previous, bundle, self.base_url, shadow=shadow)
            )
            rd.started_at = now
            service.fire(rd, DeviceEvent.SHADOW if shadow else DeviceEvent.START)
            outbox.append((device.id, desired.desired_message(device, rollout.id)))
        log.info("rollout %s: started %d device(s) of wave %d", rollout.id, len(to_start), wave)
