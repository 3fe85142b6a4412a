"""Telemetry ingest: one batch of telemetry messages becomes one bulk INSERT and one bulk UPDATE.

Duplicates (a buffered message sent twice after an outage) are dropped by the device's ``seq``:
a message whose ``seq`` is not above the last one stored, and whose time is not newer, was seen.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import bindparam, case, delete, insert, select, update
from sqlalchemy.orm import Session

from fleet.db.models import Device, TelemetrySample
from sdk.messages import Telemetry

log = logging.getLogger(__name__)
DEVICES = Device.__table__
SAMPLES = TelemetrySample.__table__


def _larger(column: Any, value: Any) -> Any:
    """``max(column, value)`` on SQLite and PostgreSQL alike (NULL counts as smaller)."""
    return case((column.is_(None), value), (column > value, column), else_=value)


def sample_row(device_id: str, msg: Telemetry, received_at: float) -> dict[str, Any]:
    requests = sum(m.requests for m in msg.models)
    errors = sum(m.errors for m in msg.models)
    p95 = max((m.latency_ms_p95 for m in msg.models if m.latency_ms_p95 is not None), default=None)
    return {
        "device_id": device_id,
        "time": msg.time,
        "received_at": received_at,
        "seq": msg.seq,
        "interval_s": msg.interval_s,
        "cpu_percent": msg.cpu_percent,
        "memory_percent": msg.memory_percent,
        "temperature_c": msg.temperature_c,
        "disk_used_percent": msg.disk_used_percent,
        "requests": requests,
        "errors": errors,
        "latency_ms_p95": p95,
        "models": [m.model_dump(exclude_none=True) for m in msg.models],
    }


def store_batch(session: Session, batch: list[tuple[str, Telemetry, float]]) -> int:
    """Insert new samples for known devices; returns how many were stored.

    Plain Core statements on purpose: loading ORM ``Device`` objects (and their JSON columns) for
    every batch cost more than the inserts themselves.
    """
    ids = {device_id for device_id, _, _ in batch}
    known = {
        row.id: (row.telemetry_seq, row.telemetry_time or 0.0)
        for row in session.execute(
            select(DEVICES.c.id, DEVICES.c.telemetry_seq, DEVICES.c.telemetry_time).where(
                DEVICES.c.id.in_(ids)
            )
        )
    }
    rows: list[dict[str, Any]] = []
    last: dict[str, tuple[int, float, float]] = {}
    for device_id, msg, received_at in batch:
        if device_id not in known:
            continue
        seq, t = last[device_id][:2] if device_id in last else known[device_id]
        if msg.seq <= seq and msg.time <= t:
            continue  # a replay of something already stored
        rows.append(sample_row(device_id, msg, received_at))
        last[device_id] = (max(msg.seq, seq), max(msg.time, t), received_at)
    if rows:
        session.execute(insert(SAMPLES), rows)
        session.execute(
            update(DEVICES)
            .where(DEVICES.c.id == bindparam("b_id"))
            .values(
                # Only ever forward: a replica storing an older batch must not lower the marks.
                telemetry_seq=_larger(DEVICES.c.telemetry_seq, bindparam("b_seq")),
                telemetry_time=_larger(DEVICES.c.telemetry_time, bindparam("b_time")),
                last_seen=_larger(DEVICES.c.last_seen, bindparam("b_seen")),
            ),
            [{"b_id": d, "b_seq": seq, "b_time": t, "b_seen": seen} for d, (seq, t, seen) in last.items()],
        )
    return len(rows)


def prune(session: Session, older_than: float) -> int:
    """Delete samples received before ``older_than`` (epoch seconds); returns how many."""
    result = session.execute(delete(SAMPLES).where(SAMPLES.c.received_at < older_than))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
