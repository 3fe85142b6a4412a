"""Which of a device's ``reported`` messages the fleet takes in.

A device reports the revision it applied. It can only have applied a revision the fleet issued to
it, so a report above the device's desired revision is forged or broken: it is refused, logged
with the device's name, and changes nothing, so it cannot advance a rollout nor hide the device's
later, honest reports (which are compared with the last *accepted* revision).
"""

from __future__ import annotations

import logging

from fleet.db.models import Device
from sdk.messages import ReportedState

log = logging.getLogger(__name__)


def accept(device: Device, msg: ReportedState, received_at: float) -> bool:
    """Apply ``msg`` to ``device``; False (and a WARNING) when it is refused or stale."""
    if msg.revision > device.desired_revision:
        log.warning(
            "device %s reports revision %d, above revision %d the fleet issued to it: report refused",
            device.id,
            msg.revision,
            device.desired_revision,
        )
        return False
    # Replicas may see a device's reports out of order: never go back to an older revision.
    # (A revision stored before this check existed may be above the desired one: not a floor.)
    if msg.revision < device.reported_revision <= device.desired_revision:
        return False
    device.reported_revision = msg.revision
    device.reported_models = [m.model_dump(exclude_none=True) for m in msg.models]
    device.agent_version = msg.agent_version
    device.last_error = msg.last_error
    device.reported_at = received_at
    device.last_seen = received_at
    if device.profile is None and msg.profile:
        device.profile = msg.profile
    return True
