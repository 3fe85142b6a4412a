"""/api/v1/devices: register (with credentials), list, read, relabel, delete, health."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fleet import audit, devices, telemetry_history
from fleet.api.deps import (
    ActorDep,
    AdminDep,
    ContextDep,
    DeviceOrViewerDep,
    OperatorDep,
    SessionDep,
    ViewerDep,
)
from fleet.errors import ForbiddenError
from fleet.schemas import DeviceCreate, DeviceHealth, DevicePublic, DeviceUpdate, TelemetryPoint
from sdk.credentials import DeviceCredentials
from sdk.errors import ConfigError

router = APIRouter(prefix="/devices", tags=["devices"])


def _labels(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"label filter {pair!r} must be KEY=VALUE")
        out[key] = value
    return out


@router.post("", response_model=DeviceCredentials, status_code=201)
def register_device(
    data: DeviceCreate, session: SessionDep, ctx: ContextDep, actor: ActorDep, _: OperatorDep
) -> DeviceCredentials:
    """Register a device; the answer holds its token and broker password (shown only once)."""
    creds = devices.register(session, data, ctx.settings, ctx.accounts, ctx.fleet_public_key())
    audit.record(
        session,
        actor,
        audit.Action.DEVICE_REGISTER,
        creds.device_id,
        labels=dict(data.labels),
        profile=data.profile,
    )
    return creds


@router.get("", response_model=list[DevicePublic])
def list_devices(
    session: SessionDep,
    _: ViewerDep,
    label: Annotated[list[str], Query(description="KEY=VALUE, repeatable")] = [],  # noqa: B006
    profile: str | None = None,
) -> list[DevicePublic]:
    return [
        DevicePublic.model_validate(d)
        for d in devices.list_devices(session, labels=_labels(label), profile=profile)
    ]


@router.get("/{device_id}", response_model=DevicePublic)
def get_device(device_id: str, session: SessionDep, token: DeviceOrViewerDep) -> DevicePublic:
    if token.role == "device" and token.device_id != device_id:
        raise ForbiddenError("a device token may only read its own device")
    return DevicePublic.model_validate(devices.get(session, device_id))


@router.patch("/{device_id}", response_model=DevicePublic)
def update_device(
    device_id: str, data: DeviceUpdate, session: SessionDep, actor: ActorDep, _: OperatorDep
) -> DevicePublic:
    device = devices.update(session, device_id, data)
    audit.record(session, actor, audit.Action.DEVICE_UPDATE, device_id, **data.model_dump(exclude_none=True))
    return DevicePublic.model_validate(device)


@router.delete("/{device_id}", status_code=204)
def delete_device(device_id: str, ctx: ContextDep, actor: ActorDep, _: AdminDep) -> None:
    """Decommission: the device's tokens are revoked, its broker account and retained desired state removed."""
    with ctx.db.session() as session:
        gone = devices.delete(session, device_id, ctx.accounts)
        audit.record(
            session,
            actor,
            audit.Action.DEVICE_DELETE,
            device_id,
            revoked_tokens=gone.revoked_tokens,
            rollouts=gone.rollouts,
        )
    ctx.forget_device(device_id)  # only after the commit, as desired states are published


@router.get("/{device_id}/health", response_model=DeviceHealth)
def device_health(
    device_id: str, session: SessionDep, _: ViewerDep, window_s: Annotated[float, Query(gt=0)] = 300.0
) -> DeviceHealth:
    return devices.health(session, device_id, window_s)


@router.get("/{device_id}/telemetry", response_model=list[TelemetryPoint])
def device_telemetry(
    device_id: str,
    session: SessionDep,
    _: ViewerDep,
    window_s: Annotated[float, Query(gt=0, le=31 * 86_400)] = 3600.0,
    limit: Annotated[int, Query(ge=1, le=telemetry_history.MAX_POINTS)] = 500,
) -> list[TelemetryPoint]:
    """The device's telemetry samples of the last ``window_s`` seconds, oldest first (the newest
    ``limit`` when there are more): CPU, memory, temperature, disk, requests, errors, the worst
    model's latency percentiles and drift."""
    return telemetry_history.history(session, device_id, window_s, limit)
