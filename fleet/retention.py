"""How long device data is kept: telemetry and events by age, and events by count per device.

Run by the rollout controller's leader (one replica), at most once a minute. Bounded by count as
well as by age because one device can send events far faster than any age limit clears them.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from fleet import telemetry
from fleet.alerts import store as alert_store
from fleet.db.models import EventRecord
from fleet.settings import FleetSettings


@dataclass(frozen=True)
class Retention:
    #: telemetry received longer ago than this is deleted (0 keeps it)
    telemetry_s: float = 0.0
    #: events older than this are deleted (0 keeps them by age)
    events_s: float = 0.0
    #: each device keeps at most its newest this many events (0: no limit)
    events_per_device: int = 0
    #: alerts resolved longer ago than this are deleted (0 keeps them); open ones always stay
    alerts_s: float = 0.0
    #: each device keeps at most its newest this many resolved alerts (0: no limit)
    alerts_per_device: int = 0

    @classmethod
    def from_settings(cls, s: FleetSettings) -> Retention:
        return cls(
            s.telemetry_retention_s,
            s.event_retention_s,
            s.events_per_device,
            s.alert_retention_s,
            s.alerts_per_device,
        )


@dataclass(frozen=True)
class Pruned:
    telemetry: int = 0
    events: int = 0
    alerts: int = 0


def prune_device_data(session: Session, policy: Retention, now: float) -> Pruned:
    """Delete what ``policy`` no longer keeps; says how many rows of each kind went."""
    samples = telemetry.prune(session, now - policy.telemetry_s) if policy.telemetry_s > 0 else 0
    events = 0
    if policy.events_s > 0:
        events += _deleted(
            session.execute(delete(EventRecord).where(EventRecord.time < now - policy.events_s))
        )
    if policy.events_per_device > 0:
        newest_first = (
            select(
                EventRecord.id,
                func.row_number()
                .over(
                    partition_by=EventRecord.device_id,
                    order_by=(EventRecord.time.desc(), EventRecord.id.desc()),
                )
                .label("rank"),
            )
        ).subquery()
        beyond = select(newest_first.c.id).where(newest_first.c.rank > policy.events_per_device)
        events += _deleted(session.execute(delete(EventRecord).where(EventRecord.id.in_(beyond))))
    alerts = alert_store.prune(
        session, now - policy.alerts_s if policy.alerts_s > 0 else None, policy.alerts_per_device
    )
    return Pruned(samples, events, alerts)


def _deleted(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
