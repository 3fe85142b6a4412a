"""Alert state in the database, moved by each telemetry window inside the ingest transaction.

For each (rule, device, model, version) at most one alert is open (pending or firing). A window
in breach opens a pending alert, or extends its streak; ``windows`` consecutive windows in breach
make it fire. A window within the threshold resolves a firing alert and drops a pending one (it
never fired, so nobody heard of it). A window the device sends again, or late, is counted once:
each alert remembers the device time of the last window it counted.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from fleet.alerts.rules import Limits, Reading, Reference, readings, thresholds
from fleet.db.models import Alert, AlertPolicy, Bundle, Device, Rollout, RolloutDevice
from sdk.messages import ModelTelemetry, Telemetry

log = logging.getLogger(__name__)


class AlertState(str, Enum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class Window:
    """One model version's figures from one telemetry message of one device."""

    device_id: str
    time: float
    model: ModelTelemetry


@dataclass(frozen=True)
class Change:
    """An alert that started firing or resolved: what the webhook and the metrics hear of."""

    rule: str
    state: str
    device_id: str
    model: str
    version: str
    value: float
    threshold: float
    detail: str | None
    started_at: float
    since: float

    @classmethod
    def of(cls, a: Alert) -> Change:
        return cls(
            a.rule,
            a.state,
            a.device_id,
            a.model,
            a.version,
            a.value,
            a.threshold,
            a.detail,
            a.started_at,
            a.since,
        )


Key = tuple[str, str, str, str]
#: selector policies at most (the API refuses more): each window is matched against all of them
MAX_POLICIES = 100


#: bundle sha256 -> its Reference: a bundle's bytes (and so its manifest) never change under its
#: hash, so its manifest, which can be large, is read once per process, not once per batch
_REFERENCES: dict[str, Reference] = {}
_MAX_REFERENCES = 1024


def _references(s: Session, windows: list[Window]) -> dict[tuple[str, str, str], Reference]:
    """(model, version, profile) -> what the converter measured, for the bundles these windows run."""
    names = {w.model.name for w in windows}
    versions = {w.model.version for w in windows}
    rows = s.execute(
        select(Bundle.name, Bundle.version, Bundle.profile, Bundle.sha256).where(
            Bundle.name.in_(names), Bundle.version.in_(versions)
        )
    ).all()
    missing = {sha for *_, sha in rows if sha not in _REFERENCES}
    if missing:
        if len(_REFERENCES) + len(missing) > _MAX_REFERENCES:
            _REFERENCES.clear()
        for sha, manifest in s.execute(
            select(Bundle.sha256, Bundle.manifest).where(Bundle.sha256.in_(missing))
        ):
            _REFERENCES[sha] = Reference.of_manifest(manifest or {})
    return {(n, v, p): _REFERENCES.get(sha, Reference()) for n, v, p, sha in rows}


def _rollout_thresholds(s: Session, device_ids: set[str]) -> dict[tuple[str, str, str], dict]:
    """(device, model, version) -> the thresholds of the newest rollout that gave it that version."""
    rows = s.execute(
        select(RolloutDevice.device_id, Bundle.name, Bundle.version, Rollout.alert_thresholds)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .join(Bundle, Bundle.id == Rollout.bundle_id)
        .where(
            RolloutDevice.device_id.in_(device_ids),
            Rollout.alert_thresholds.is_not(None),
            RolloutDevice.state.not_in(["pending", "skipped"]),
        )
        .order_by(Rollout.created_at)
    ).all()
    return {(d, n, v): thresholds(t) for d, n, v, t in rows if t}


def evaluate(s: Session, windows: list[Window], defaults: Limits, now: float | None = None) -> list[Change]:
    """Move the alerts of these windows' (device, model, version) by each window, oldest first."""
    if not windows:
        return []
    now = time.time() if now is None else now
    device_ids = {w.device_id for w in windows}
    known = {
        d: (p, labels or {})
        for d, p, labels in s.execute(
            select(Device.id, Device.profile, Device.labels).where(Device.id.in_(device_ids))
        )
    }
    refs = _references(s, windows)
    overrides = _rollout_thresholds(s, device_ids)
    policies = [
        (p.labels or {}, p.model, thresholds(p.thresholds))
        for p in s.scalars(select(AlertPolicy).order_by(AlertPolicy.created_at).limit(MAX_POLICIES))
    ]
    open_alerts: dict[Key, Alert] = {
        (a.rule, a.device_id, a.model, a.version): a
        for a in s.scalars(select(Alert).where(Alert.device_id.in_(device_ids), Alert.open.is_(True)))
    }
    changes: list[Change] = []
    for w in sorted(windows, key=lambda w: w.time):
        if w.device_id not in known:
            continue  # an unknown device: its telemetry is dropped, so are its figures
        profile, labels = known[w.device_id]
        m = w.model
        limits = defaults
        for selected, model, given in policies:  # older first; a rollout's thresholds last
            if model in (None, m.name) and all(labels.get(k) == v for k, v in selected.items()):
                limits = limits.overridden(given)
        limits = limits.overridden(overrides.get((w.device_id, m.name, m.version)))
        ref = refs.get((m.name, m.version, profile or ""), Reference())
        for reading in readings(m, limits, ref):
            key = (reading.rule.value, w.device_id, m.name, m.version)
            change = _step(s, open_alerts, key, reading, w.time, limits.windows, now)
            if change is not None:
                changes.append(change)
    changes += _retire_replaced(s, open_alerts, windows, now)
    return changes


def _retire_replaced(
    s: Session, open_alerts: dict[Key, Alert], windows: list[Window], now: float
) -> list[Change]:
    """Close the alerts of versions a device no longer serves: its newest message reports the
    model, but not that version (an update or a rollback replaced it), so no window will ever
    resolve them."""
    newest: dict[str, float] = {}
    for w in windows:
        newest[w.device_id] = max(w.time, newest.get(w.device_id, w.time))
    serving: dict[tuple[str, str], set[str]] = {}
    for w in windows:
        if w.time == newest[w.device_id]:
            serving.setdefault((w.device_id, w.model.name), set()).add(w.model.version)
    changes: list[Change] = []
    for key, alert in list(open_alerts.items()):
        versions = serving.get((alert.device_id, alert.model))
        if versions is None or alert.version in versions or newest[alert.device_id] <= alert.last_window:
            continue
        del open_alerts[key]
        if alert.state == AlertState.PENDING.value:
            s.delete(alert)
            continue
        alert.state, alert.open, alert.since, alert.updated_at = AlertState.RESOLVED.value, None, now, now
        alert.detail = (
            f"version {alert.version} no longer reported by the device ({', '.join(sorted(versions))} is)"
        )
        changes.append(Change.of(alert))
    return changes


def _step(
    s: Session, open_alerts: dict[Key, Alert], key: Key, r: Reading, window: float, windows: int, now: float
) -> Change | None:
    alert = open_alerts.get(key)
    if alert is not None and window <= alert.last_window:
        return None  # this window (or a later one) was counted already
    if alert is None:
        if not r.breached:
            return None
        rule, device_id, model, version = key
        state = AlertState.FIRING if windows <= 1 else AlertState.PENDING
        alert = Alert(
            rule=rule,
            device_id=device_id,
            model=model,
            version=version,
            state=state.value,
            open=True,
            value=r.value,
            threshold=r.threshold,
            detail=r.detail,
            since=now,
            started_at=now,
            updated_at=now,
            streak=1,
            last_window=window,
        )
        s.add(alert)
        open_alerts[key] = alert
        return Change.of(alert) if state is AlertState.FIRING else None
    alert.value, alert.threshold, alert.detail = r.value, r.threshold, r.detail
    alert.updated_at, alert.last_window = now, window
    if r.breached:
        alert.streak += 1
        if alert.state == AlertState.PENDING.value and alert.streak >= windows:
            alert.state, alert.since = AlertState.FIRING.value, now
            return Change.of(alert)
        return None
    del open_alerts[key]
    if alert.state == AlertState.PENDING.value:
        s.delete(alert)  # it never fired: nobody was told, nothing to resolve
        return None
    alert.state, alert.open, alert.since = AlertState.RESOLVED.value, None, now
    return Change.of(alert)


def windows_of(batch: Iterable[tuple[str, Telemetry, float]]) -> list[Window]:
    """The model windows of a batch of (device, Telemetry, received_at) that telemetry stores."""
    return [
        Window(device_id, msg.time, m)
        for device_id, msg, _ in batch
        if math.isfinite(msg.time)
        for m in msg.models
    ]


def prune(s: Session, older_than: float | None, per_device: int = 0) -> int:
    """Delete alerts resolved before ``older_than``, and beyond the newest ``per_device`` resolved
    ones of each device (an alert that flaps opens a new row each time); open ones always stay."""
    deleted = 0
    if older_than is not None:
        result = s.execute(delete(Alert).where(Alert.open.is_(None), Alert.since < older_than))
        deleted += int(getattr(result, "rowcount", 0) or 0)
    if per_device > 0:
        newest_first = (
            select(
                Alert.id,
                func.row_number()
                .over(partition_by=Alert.device_id, order_by=(Alert.since.desc(), Alert.id.desc()))
                .label("rank"),
            ).where(Alert.open.is_(None))
        ).subquery()
        beyond = select(newest_first.c.id).where(newest_first.c.rank > per_device)
        result = s.execute(delete(Alert).where(Alert.id.in_(beyond)))
        deleted += int(getattr(result, "rowcount", 0) or 0)
    return deleted


def forget_device(s: Session, device_id: str) -> None:
    s.execute(delete(Alert).where(Alert.device_id == device_id))
