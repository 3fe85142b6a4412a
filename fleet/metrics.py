"""Fleet-wide Prometheus metrics at ``/metrics``: counters of this process plus gauges read from the database."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from fleet.db.models import Device, Rollout, RolloutDevice
from fleet.db.session import Database


class _FleetState(Collector):
    """Read at scrape time, so every replica reports the same fleet-wide numbers."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.db.session() as s:
            devices = GaugeMetricFamily(
                "edgefleet_devices", "Registered devices by online state", labels=["online"]
            )
            for online, n in s.execute(select(Device.online, func.count()).group_by(Device.online)):
                devices.add_metric(["true" if online else "false"], n)
            rollouts = GaugeMetricFamily("edgefleet_rollouts", "Rollouts by state", labels=["state"])
            for state, n in s.execute(select(Rollout.state, func.count()).group_by(Rollout.state)):
                rollouts.add_metric([state], n)
            rds = GaugeMetricFamily(
                "edgefleet_rollout_devices",
                "Devices in running or paused rollouts by state",
                labels=["state"],
            )
            for state, n in s.execute(
                select(RolloutDevice.state, func.count())
                .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
                .where(Rollout.state.in_(["running", "paused"]))
                .group_by(RolloutDevice.state)
            ):
                rds.add_metric([state], n)
        yield devices
        yield rollouts
        yield rds


class FleetMetrics:
    def __init__(self, db: Database | None = None) -> None:
        self.registry = CollectorRegistry()
        self.messages_ingested = Counter(
            "edgefleet_mqtt_messages_ingested",
            "Device messages ingested by this process",
            ["kind"],
            registry=self.registry,
        )
        self.messages_rejected = Counter(
            "edgefleet_mqtt_messages_rejected",
            "Malformed messages or messages from unknown devices",
            registry=self.registry,
        )
        self.ingest_rejected = Counter(
            "edgefleet_ingest_rejected",
            "Device messages dropped one by one, by reason (the rest of their batch is stored)",
            ["reason"],
            registry=self.registry,
        )
        self.ingest_failed = Counter(
            "edgefleet_ingest_failed_messages",
            "Messages lost to a failed database batch",
            registry=self.registry,
        )
        self.telemetry_stored = Counter(
            "edgefleet_telemetry_samples_stored",
            "Telemetry samples written to the database",
            registry=self.registry,
        )
        self.desired_published = Counter(
            "edgefleet_desired_published", "Desired states published to devices", registry=self.registry
        )
        if db is not None:
            self.registry.register(_FleetState(db))

    def render(self) -> bytes:
        return generate_latest(self.registry)
