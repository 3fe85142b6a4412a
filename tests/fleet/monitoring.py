"""A device's monitoring windows as real telemetry messages, through the fleet's real ingest path."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fleet.alerts.rules import Limits
from fleet.ingest import Ingest
from sdk.manifest import AccuracyMetric, LatencyMetric, Metrics
from sdk.messages import ModelQuality, ModelTelemetry, ShadowQuality, Telemetry
from sdk.topics import topic
from tests.fleet.conftest import Fleet

#: what the converter "measured" for the test bundles: accuracy 0.91, median latency 1.5 ms
MEASURED = Metrics(
    accuracy=AccuracyMetric(metric="top1", source=0.92, converted=0.91),
    latency_ms=LatencyMetric(source=2.0, converted=1.5),
)


def ingest(fleet: Fleet, items: list[tuple[str, bytes]]) -> None:
    """One ingest batch, with the alert rules the fleet's settings define."""
    ing = Ingest(fleet.ctx.db, None, fleet.ctx.metrics, alert_limits=Limits.defaults(fleet.ctx.settings))  # type: ignore[arg-type]
    ing.process([(t, p, time.time()) for t, p in items])


def quality(**figures: Any) -> ModelQuality:
    return ModelQuality(
        window_s=60, samples=200, labeled=figures.pop("labeled", 0), min_samples=20, **figures
    )


@dataclass
class Sender:
    """One device's telemetry stream: every window a new seq, 60 s after the last (in the past)."""

    device_id: str
    seq: int = 0
    start: float = field(default_factory=lambda: time.time() - 86_400)

    def window(
        self,
        *,
        version: str = "1.0.0",
        requests: int = 200,
        errors: int = 0,
        p99: float | None = 2.0,
        psi: float | None = 0.03,
        quality: ModelQuality | None = None,
        shadow: ShadowQuality | None = None,
        model: str = "tiny",
        tensor: str = "x",
    ) -> tuple[str, bytes]:
        self.seq += 1
        m = ModelTelemetry(
            name=model,
            version=version,
            requests=requests,
            errors=errors,
            latency_ms_p50=p99 / 2 if p99 else None,
            latency_ms_p99=p99,
            drift={tensor: psi} if psi is not None else {},
            quality=quality,
            shadow=shadow,
        )
        msg = Telemetry(seq=self.seq, time=self.start + 60 * self.seq, interval_s=60, models=[m])
        return topic("telemetry", self.device_id), msg.to_bytes()
