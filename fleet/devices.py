"""Device registry: register (with credentials), list, update, decommission, health."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet import auth
from fleet.db.models import Alert, BundleDownload, Device, EventRecord, RolloutDevice, TelemetrySample
from fleet.db.session import get_existing
from fleet.schemas import DeviceCreate, DeviceHealth, DeviceUpdate
from fleet.settings import FleetSettings
from sdk.credentials import DeviceCredentials
from sdk.errors import ConflictError


class BrokerAccounts(Protocol):
    """Creates the broker account a device connects with (Mosquitto dynamic security, or nothing)."""

    def add_device(self, device_id: str, password: str) -> None: ...

    def remove_device(self, device_id: str) -> None: ...


class NoBrokerAccounts:
    """The broker is open, or checks passwords against the fleet database itself (embedded broker)."""

    def add_device(self, device_id: str, password: str) -> None:
        return None

    def remove_device(self, device_id: str) -> None:
        return None


def register(
    session: Session,
    data: DeviceCreate,
    settings: FleetSettings,
    accounts: BrokerAccounts,
    fleet_key: str | None = None,
) -> DeviceCredentials:
    """``fleet_key`` (base64 public key) goes into the credentials: the device pins it."""
    device_id = data.device_id or f"dev-{secrets.token_hex(6)}"
    if session.get(Device, device_id) is not None:
        raise ConflictError(f"device {device_id} is already registered")
    # Registered again under an old id: it never inherits a token of the device that had it.
    auth.revoke_device_tokens(session, device_id)
    password = auth.new_secret()
    session.add(
        Device(
            id=device_id,
            labels=dict(data.labels),
            profile=data.profile,
            mqtt_password_hash=auth.sha256_hex(password),
            desired_models=[],
            reported_models=[],
        )
    )
    token = auth.create_token(session, "device", device_id=device_id, name=f"device {device_id}")
    session.flush()
    accounts.add_device(device_id, password)
    return DeviceCredentials(
        device_id=device_id,
        token=token,
        mqtt_username=device_id,
        mqtt_password=password,
        fleet_url=settings.base_url(),
        broker_url=settings.device_broker_url or settings.broker_url or None,
        ca_pem=settings.device_ca_pem(),
        fleet_key=fleet_key,
        profile=data.profile,
    )


def get(session: Session, device_id: str) -> Device:
    return get_existing(session, Device, device_id, "device")


def list_devices(
    session: Session, *, labels: dict[str, str] | None = None, profile: str | None = None
) -> list[Device]:
    query = select(Device).order_by(Device.id)
    if profile:
        query = query.where(Device.profile == profile)
    devices = list(session.scalars(query))
    if labels:
        devices = [d for d in devices if all(d.labels.get(k) == v for k, v in labels.items())]
    return devices


def profile_mismatch(device: Device, profile: str) -> str | None:
    """Why ``device`` must not be offered a bundle built for ``profile``; None when it may."""
    if device.profile is None:
        return f"the device's profile is unknown (a bundle for {profile} is not offered to it)"
    if device.profile != profile:
        return f"the device's profile is {device.profile}, the bundle's {profile}"
    return None


def update(session: Session, device_id: str, data: DeviceUpdate) -> Device:
    device = get(session, device_id)
    if data.labels is not None:
        device.labels = dict(data.labels)
    if data.profile is not None:
        device.profile = data.profile
    return device


@dataclass(frozen=True)
class Decommissioned:
    revoked_tokens: list[str]
    #: the rollouts the device was taken out of (its progress rows there are gone with it).
    rollouts: list[str]


def delete(session: Session, device_id: str, accounts: BrokerAccounts) -> Decommissioned:
    """Decommission: the device, its tokens, its rollout progress, the data it sent (telemetry,
    events, the fleet's record of its downloads) and its broker account go, so that a device
    registered again under the same id inherits nothing: no evidence of downloads it never made,
    no health from samples it never sent.

    The broker account goes last, once the database accepted the rest: if the broker cannot be
    reached the whole call fails and the device stays (it is never half decommissioned with a
    working broker login).
    """
    device = get(session, device_id)
    revoked = auth.revoke_device_tokens(session, device_id)
    progress = session.scalars(select(RolloutDevice).where(RolloutDevice.device_id == device_id)).all()
    for rd in progress:
        session.delete(rd)
    for table in (BundleDownload, TelemetrySample, EventRecord, Alert):
        session.execute(sa.delete(table).where(table.device_id == device_id))
    session.flush()  # before the device: the tables have no ORM relationship to order the deletes
    session.delete(device)
    session.flush()
    accounts.remove_device(device_id)
    return Decommissioned(revoked, sorted(rd.rollout_id for rd in progress))


def health(session: Session, device_id: str, window_s: float = 300.0) -> DeviceHealth:
    device = get(session, device_id)
    since = time.time() - window_s
    row = session.execute(
        select(
            func.count(TelemetrySample.id),
            func.coalesce(func.sum(TelemetrySample.requests), 0),
            func.coalesce(func.sum(TelemetrySample.errors), 0),
        ).where(TelemetrySample.device_id == device_id, TelemetrySample.time >= since)
    ).one()
    last = session.scalars(
        select(TelemetrySample)
        .where(TelemetrySample.device_id == device_id)
        .order_by(TelemetrySample.time.desc())
        .limit(1)
    ).first()
    events = session.scalars(
        select(EventRecord)
        .where(EventRecord.device_id == device_id)
        .order_by(EventRecord.time.desc())
        .limit(20)
    ).all()
    samples, requests, errors = int(row[0]), int(row[1]), int(row[2])
    return DeviceHealth(
        device_id=device_id,
        online=device.online,
        last_seen=device.last_seen,
        window_s=window_s,
        samples=samples,
        requests=requests,
        errors=errors,
        error_rate=(errors / requests) if requests else None,
        cpu_percent=last.cpu_percent if last else None,
        memory_percent=last.memory_percent if last else None,
        temperature_c=last.temperature_c if last else None,
        disk_used_percent=last.disk_used_percent if last else None,
        latency_ms_p95=last.latency_ms_p95 if last else None,
        recent_events=[
            {
                "time": e.time,
                "kind": e.kind,
                "ok": e.ok,
                "model": e.model,
                "version": e.version,
                "revision": e.revision,
                "reason": e.reason,
            }
            for e in events
        ],
    )
