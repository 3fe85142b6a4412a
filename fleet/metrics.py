"""Fleet-wide Prometheus metrics at ``/metrics``: counters of this process plus gauges read from the database."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from fleet.db.models import Alert, Device, Rollout, RolloutDevice
from fleet.db.session import Database

#: every rule and state shows on /metrics from the start, at 0
_RULES = ("drift", "accuracy", "bias", "latency")
_STATES = ("pending", "firing", "resolved")


class _FleetState(Collector):
    """Read at scrape time, so every replica reports the same fleet-wide numbers."""

    def __init__(self, db: Database, max_series: int = 500) -> None:
        self.db = db
        #: per-device series (one per open alert) at most; the rest are left out, counted in
        #: edgefleet_alert_series_omitted, so a fleet in trouble cannot blow up Prometheus
        self.max_series = max_series

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
            alerts = GaugeMetricFamily(
                "edgefleet_alerts", "Alerts by rule and state", labels=["rule", "state"]
            )
            counted = {(r, st): 0 for r in _RULES for st in _STATES}
            for rule, state, n in s.execute(
                select(Alert.rule, Alert.state, func.count()).group_by(Alert.rule, Alert.state)
            ):
                counted[(rule, state)] = n
            for (rule, state), n in sorted(counted.items()):
                alerts.add_metric([rule, state], n)
            values = GaugeMetricFamily(
                "edgefleet_device_model_quality",
                "The last figure of each open alert's rule on its device (drift PSI, accuracy, bias gap, p99 ms)",
                labels=["rule", "state", "device_id", "model", "version"],
            )
            limits = GaugeMetricFamily(
                "edgefleet_device_model_quality_threshold",
                "The threshold each open alert's figure is held against",
                labels=["rule", "state", "device_id", "model", "version"],
            )
            rows = s.execute(
                select(
                    Alert.rule,
                    Alert.state,
                    Alert.device_id,
                    Alert.model,
                    Alert.version,
                    Alert.value,
                    Alert.threshold,
                )
                .where(Alert.open.is_(True))
                .order_by(Alert.state, Alert.device_id, Alert.rule)  # firing before pending
                .limit(self.max_series + 1)
            ).all()
            for rule, state, device_id, model, version, value, threshold in rows[: self.max_series]:
                values.add_metric([rule, state, device_id, model, version], value)
                limits.add_metric([rule, state, device_id, model, version], threshold)
            omitted = GaugeMetricFamily(
                "edgefleet_alert_series_omitted",
                "Whether open alerts were left out of edgefleet_device_model_quality (more than the series limit)",
            )
            omitted.add_metric([], 1 if len(rows) > self.max_series else 0)
        yield devices
        yield rollouts
        yield rds
        yield alerts
        yield values
        yield limits
        yield omitted


class FleetMetrics:
    def __init__(self, db: Database | None = None, *, max_alert_series: int = 500) -> None:
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
        self.alert_changes = Counter(
            "edgefleet_alert_changes",
            "Alerts that started firing or resolved, as ingest by this process moved them",
            ["rule", "state"],
            registry=self.registry,
        )
        self.alert_webhook = Counter(
            "edgefleet_alert_webhook_changes",
            "Alert changes the webhook sent, or dropped (queue full or receiver failing)",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("sent", "dropped"):
            self.alert_webhook.labels(outcome)
        if db is not None:
            self.registry.register(_FleetState(db, max_alert_series))

    def render(self) -> bytes:
        return generate_latest(self.registry)
