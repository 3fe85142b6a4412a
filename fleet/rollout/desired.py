"""Desired state per device: change it, restore it, and publish it (after the database commit)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fleet.db.models import Bundle, Device
from sdk.messages import DesiredModel, DesiredState

#: sends one device's desired state to the broker (QoS 1, retained).
Publisher = Callable[[str, DesiredState], None]


def bundle_url(base_url: str, bundle: Bundle) -> str:
    return f"{base_url}/api/v1/bundles/{bundle.id}/download"


def with_bundle(
    models: list[Any], bundle: Bundle, base_url: str, *, shadow: bool = False
) -> list[dict[str, Any]]:
    """``models`` with the bundle's model name set to this bundle (other models unchanged).

    ``shadow``: the bundle goes beside the active entry of its name as a shadow (DesiredModel.shadow),
    which answers no caller; the active entry stays as it is.
    """
    entry = DesiredModel(
        name=bundle.name,
        version=bundle.version,
        bundle_url=bundle_url(base_url, bundle),
        sha256=bundle.sha256,
        size=bundle.size,
        shadow=shadow,
    ).model_dump()
    if not shadow:
        del entry["shadow"]  # the desired state of a plain update stays as older agents know it
    if shadow:
        kept = [m for m in models if not (m.get("name") == bundle.name and m.get("shadow"))]
    else:
        kept = [m for m in models if m.get("name") != bundle.name]
    return [*kept, entry]


def set_desired(device: Device, models: list[Any]) -> int:
    """Give ``device`` a new desired revision; the caller publishes it after commit."""
    device.desired_revision += 1
    device.desired_models = list(models)
    return device.desired_revision


def desired_message(device: Device, rollout_id: str | None = None) -> DesiredState:
    return DesiredState(
        revision=device.desired_revision,
        models=[DesiredModel.model_validate(m) for m in device.desired_models],
        rollout_id=rollout_id,
    )
