"""A device's telemetry over time, for the dashboard's charts: one point per stored sample, bounded.

The per-model figures (latency percentiles, drift) are folded into one value per sample: the worst
model's, which is what an operator looks at first; the raw per-model rows stay in the database.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet.db.models import TelemetrySample
from fleet.devices import get as get_device
from fleet.schemas import TelemetryPoint

#: the most points one answer carries (the newest ones when the window holds more)
MAX_POINTS = 2000


def _worst(models: list[dict[str, Any]], key: str) -> float | None:
    values = [m[key] for m in models if isinstance(m.get(key), int | float)]
    return max(values) if values else None


def _worst_drift(models: list[dict[str, Any]]) -> float | None:
    values = [
        v
        for m in models
        if isinstance(m.get("drift"), dict)
        for v in m["drift"].values()
        if isinstance(v, int | float)
    ]
    return max(values) if values else None


def history(
    session: Session, device_id: str, window_s: float, limit: int = MAX_POINTS
) -> list[TelemetryPoint]:
    """The device's samples of the last ``window_s`` seconds, oldest first, at most ``limit``."""
    get_device(session, device_id)  # 404 for an unknown device, not an empty chart
    since = time.time() - window_s
    rows = session.scalars(
        select(TelemetrySample)
        .where(TelemetrySample.device_id == device_id, TelemetrySample.time >= since)
        .order_by(TelemetrySample.time.desc())
        .limit(min(limit, MAX_POINTS))
    ).all()
    points = []
    for row in reversed(rows):
        models = row.models if isinstance(row.models, list) else []
        points.append(
            TelemetryPoint(
                time=row.time,
                interval_s=row.interval_s,
                cpu_percent=row.cpu_percent,
                memory_percent=row.memory_percent,
                temperature_c=row.temperature_c,
                disk_used_percent=row.disk_used_percent,
                requests=row.requests,
                errors=row.errors,
                latency_ms_p50=_worst(models, "latency_ms_p50"),
                latency_ms_p95=row.latency_ms_p95,
                latency_ms_p99=_worst(models, "latency_ms_p99"),
                drift=_worst_drift(models),
            )
        )
    return points
