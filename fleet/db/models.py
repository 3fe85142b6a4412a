"""Table models of the fleet (SQLAlchemy 2). Secrets live only here, hashed; never in an API schema."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now() -> float:
    return time.time()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Token(Base):
    """An API token: ``ef_{id}_{secret}``; only the secret's sha256 is stored."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str | None] = mapped_column(String(128), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float, default=now)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    #: unix time after which the token is refused (None: never expires).
    expires_at: Mapped[float | None] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    profile: Mapped[str | None] = mapped_column(String(128))
    #: PBKDF2 hash of the device's broker password (for brokers that ask the fleet).
    mqtt_password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float, default=now)

    online: Mapped[bool] = mapped_column(Boolean, default=False)
    status_at: Mapped[float | None] = mapped_column(Float)
    last_seen: Mapped[float | None] = mapped_column(Float)

    desired_revision: Mapped[int] = mapped_column(Integer, default=0)
    desired_models: Mapped[list[Any]] = mapped_column(JSON, default=list)

    reported_revision: Mapped[int] = mapped_column(Integer, default=-1)
    reported_models: Mapped[list[Any]] = mapped_column(JSON, default=list)
    agent_version: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    reported_at: Mapped[float | None] = mapped_column(Float)
    #: highest telemetry ``seq`` stored: buffered messages replayed twice are dropped.
    telemetry_seq: Mapped[int] = mapped_column(Integer, default=-1)
    telemetry_time: Mapped[float | None] = mapped_column(Float)


class Bundle(Base):
    __tablename__ = "bundles"
    __table_args__ = (UniqueConstraint("name", "version", "profile"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    profile: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(400))
    signer: Mapped[str] = mapped_column(String(32))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Rollout(Base):
    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    bundle_id: Mapped[str] = mapped_column(ForeignKey("bundles.id"))
    state: Mapped[str] = mapped_column(String(16), index=True)
    selector: Mapped[dict[str, Any]] = mapped_column(JSON)
    strategy: Mapped[dict[str, Any]] = mapped_column(JSON)
    gates: Mapped[dict[str, Any]] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text)
    #: failures an operator accepted by resuming after a gate paused the rollout.
    acknowledged_failures: Mapped[int] = mapped_column(Integer, default=0)
    #: alert thresholds (fleet.schemas.AlertThresholds) for the devices running this rollout's
    #: version; None: the fleet's defaults.
    alert_thresholds: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now)


class RolloutDevice(Base):
    """One device's progress in one rollout; ``state`` moves only through ``rollout.states``."""

    __tablename__ = "rollout_devices"

    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    wave: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    #: the desired revision this rollout gave the device, and what it replaced (for roll back).
    revision: Mapped[int | None] = mapped_column(Integer)
    previous_models: Mapped[list[Any] | None] = mapped_column(JSON)
    started_at: Mapped[float | None] = mapped_column(Float)
    active_at: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float, default=now)
    error: Mapped[str | None] = mapped_column(Text)


class TelemetrySample(Base):
    """One telemetry message; per-model counters summed so health gates read one row per message."""

    __tablename__ = "telemetry"
    # Unique: a message the agent resends after an outage (same device, time and seq) is stored once.
    __table_args__ = (Index("ux_telemetry_device_time_seq", "device_id", "time", "seq", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128))
    time: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)
    seq: Mapped[int] = mapped_column(Integer)
    interval_s: Mapped[float] = mapped_column(Float)
    cpu_percent: Mapped[float | None] = mapped_column(Float)
    memory_percent: Mapped[float | None] = mapped_column(Float)
    temperature_c: Mapped[float | None] = mapped_column(Float)
    disk_used_percent: Mapped[float | None] = mapped_column(Float)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms_p95: Mapped[float | None] = mapped_column(Float)
    models: Mapped[list[Any]] = mapped_column(JSON, default=list)


class EventRecord(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_device_time", "device_id", "time"),
        # a resent event is a repeat (fleet/event_log.py); NULLs (older agents) never conflict
        Index("ux_events_device_sent_seq", "device_id", "sent_at", "seq", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128))
    time: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(16))
    ok: Mapped[bool] = mapped_column(Boolean)
    model: Mapped[str | None] = mapped_column(String(128))
    version: Mapped[str | None] = mapped_column(String(128))
    revision: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    #: the agent's outbox sequence number and its own time of the event (the dedupe key).
    seq: Mapped[int | None] = mapped_column(BigInteger)
    sent_at: Mapped[float | None] = mapped_column(Float)


class Lease(Base):
    """A named lease (the rollout controller's): one holder at a time, renewed before it expires."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Float)


class AuditRecord(Base):
    """One change made through the API or the CLI: who, what, when, from where (``fleet.audit``)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_time", "time"), Index("ix_audit_log_actor", "actor_token_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(Float, default=now)
    #: ``device.register``, ``token.revoke``, ... (``fleet.audit.Action``).
    action: Mapped[str] = mapped_column(String(32), index=True)
    #: the id of what changed (a device, bundle, rollout or token id).
    target: Mapped[str | None] = mapped_column(String(128))
    #: the token used (None for the CLI, which works on the database directly).
    actor_token_id: Mapped[str | None] = mapped_column(String(32))
    actor_role: Mapped[str | None] = mapped_column(String(16))
    actor_device_id: Mapped[str | None] = mapped_column(String(128))
    #: the token's name, or the local user for the CLI.
    actor_name: Mapped[str | None] = mapped_column(String(200))
    #: the client's address as the server saw it, or ``local`` for the CLI.
    address: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class BundleDownload(Base):
    """A device's token fetched a bundle (recorded by the download route): what the fleet itself saw,
    so a device's report that it runs a bundle is believed only if it really fetched it."""

    __tablename__ = "bundle_downloads"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    bundle_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    first_at: Mapped[float] = mapped_column(Float, default=now)
    last_at: Mapped[float] = mapped_column(Float, default=now)


class AlertPolicy(Base):
    """Alert thresholds (fleet.schemas.AlertThresholds) for the devices a selector matches."""

    __tablename__ = "alert_policies"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: devices whose labels include all of these ...
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: ... for this model only (None: every model)
    model: Mapped[str | None] = mapped_column(String(128))
    thresholds: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now)


class Alert(Base):
    """One alert (fleet.alerts): a rule breached by one model version on one device.

    ``open`` is True while the alert is pending or firing and NULL once resolved: the unique index
    then allows one open row per (rule, device, model, version) and any number of resolved ones
    (NULLs never conflict), which retention deletes by age.
    """

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ux_alerts_open", "rule", "device_id", "model", "version", "open", unique=True),
        Index("ix_alerts_device", "device_id"),
        Index("ix_alerts_state", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(String(16))
    device_id: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    #: pending, firing or resolved (fleet.alerts.AlertState)
    state: Mapped[str] = mapped_column(String(16))
    open: Mapped[bool | None] = mapped_column(Boolean)
    #: the last window's figure and the threshold it was held against
    value: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    detail: Mapped[str | None] = mapped_column(Text)
    #: when the current state began (fleet clock); first breach; last update
    since: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    #: consecutive windows in breach, and the device's time of the last window counted (a window
    #: sent again, or out of order, is not counted twice)
    streak: Mapped[int] = mapped_column(Integer, default=1)
    last_window: Mapped[float] = mapped_column(Float)
