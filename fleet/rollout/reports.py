"""Which of a device's ``reported`` messages the fleet takes in.

A device reports the revision it applied. It can only have applied a revision the fleet issued to
it, so a report above the device's desired revision is forged or broken: it is refused, logged
with the device's name, and changes nothing, so it cannot advance a rollout nor hide the device's
later, honest reports (which are compared with the last *accepted* revision).
"""

from __future__ import annotations

from collections.abc import Callable

from fleet.db.models import Device
from fleet.limits import Rejected, RejectReason
from sdk.messages import ReportedModel, ReportedState

_REPORTED_FIELDS = set(ReportedModel.model_fields)


def _keep(text: str | None) -> str | None:
    return text


def accept(
    device: Device,
    msg: ReportedState,
    received_at: float,
    *,
    cut: Callable[[str | None], str | None] = _keep,
) -> bool:
    """Apply ``msg`` to ``device``; False when it is stale (an older revision seen late).

    Raises :class:`Rejected` (the caller counts and logs it, naming the device) for a revision the
    fleet never issued. ``cut`` shortens the free texts a device sends before they are stored.
    """
    if msg.revision > device.desired_revision:
        raise Rejected(
            device.id,
            RejectReason.UNISSUED_REVISION,
            f"reports revision {msg.revision}, above revision {device.desired_revision} the fleet issued to it",
        )
    # Replicas may see a device's reports out of order: never go back to an older revision.
    # (A revision stored before this check existed may be above the desired one: not a floor.)
    if msg.revision < device.reported_revision <= device.desired_revision:
        return False
    device.reported_revision = msg.revision
    # Only the declared fields are stored: a device cannot park arbitrary data in the database.
    device.reported_models = [
        {
            **m.model_dump(include=_REPORTED_FIELDS, exclude_none=True),
            **({"error": cut(m.error)} if m.error else {}),
        }
        for m in msg.models
    ]
    device.agent_version = msg.agent_version
    device.last_error = cut(msg.last_error)
    device.reported_at = received_at
    device.last_seen = received_at
    if device.profile is None and msg.profile:
        device.profile = msg.profile
    return True
