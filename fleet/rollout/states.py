"""Rollout state machines as data: ``(state, event) -> next state``. Every rollback path is in these two tables.

A pair that is not in a table is not allowed: :func:`device_transition` and
:func:`rollout_transition` raise :class:`ConflictError`, which the API answers with 409.
"""

from __future__ import annotations

from enum import Enum

from sdk.errors import ConflictError
from sdk.transitions import transition


class DeviceState(str, Enum):
    PENDING = "pending"  # selected, desired state not yet changed
    SHADOWING = "shadowing"  # runs the new version as a shadow beside the active one (a shadow phase)
    UPDATING = "updating"  # desired published, waiting for the device to report it
    BAKING = "baking"  # reported active, watching its telemetry for the bake time
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # failed, timed out or unhealthy; its previous desired state is restored
    ROLLED_BACK = "rolled_back"  # the rollout was rolled back; previous desired state restored
    SKIPPED = "skipped"  # never started: the rollout ended first


class DeviceEvent(str, Enum):
    START = "start"
    SHADOW = "shadow"  # the rollout starts the device with a shadow phase
    PROMOTE = "promote"  # the shadow passed its gate: the device is given the version to serve
    ACTIVE = "active"  # the device reports the new version active at our revision
    FAIL = "fail"  # the device reports the update failed (download, verify, smoke test, activate)
    TIMEOUT = "timeout"  # no report within the update timeout
    BAKED = "baked"  # the bake time passed within the health gates
    UNHEALTHY = "unhealthy"  # telemetry error rate over the gate during the bake time
    ROLLBACK = "rollback"  # the whole rollout is rolled back


D, E = DeviceState, DeviceEvent

DEVICE_TRANSITIONS: dict[tuple[DeviceState, DeviceEvent], DeviceState] = {
    (D.PENDING, E.START): D.UPDATING,
    (D.PENDING, E.ROLLBACK): D.SKIPPED,
    (D.PENDING, E.SHADOW): D.SHADOWING,
    (D.SHADOWING, E.PROMOTE): D.UPDATING,
    (D.SHADOWING, E.FAIL): D.FAILED,
    (D.SHADOWING, E.TIMEOUT): D.FAILED,
    (D.SHADOWING, E.UNHEALTHY): D.FAILED,
    (D.SHADOWING, E.ROLLBACK): D.ROLLED_BACK,
    (D.UPDATING, E.ACTIVE): D.BAKING,
    (D.UPDATING, E.FAIL): D.FAILED,
    (D.UPDATING, E.TIMEOUT): D.FAILED,
    (D.UPDATING, E.ROLLBACK): D.ROLLED_BACK,
    (D.BAKING, E.BAKED): D.SUCCEEDED,
    (D.BAKING, E.UNHEALTHY): D.FAILED,
    (D.BAKING, E.FAIL): D.FAILED,
    (D.BAKING, E.ROLLBACK): D.ROLLED_BACK,
    (D.SUCCEEDED, E.FAIL): D.FAILED,
    (D.SUCCEEDED, E.ROLLBACK): D.ROLLED_BACK,
    (D.FAILED, E.ROLLBACK): D.ROLLED_BACK,
}

#: states whose device still waits for something from the controller or the device.
ACTIVE_DEVICE_STATES = frozenset({D.PENDING, D.SHADOWING, D.UPDATING, D.BAKING})
IN_FLIGHT_STATES = frozenset({D.SHADOWING, D.UPDATING, D.BAKING})
#: states in which the device's desired state names this rollout's bundle (roll back restores them).
TOUCHED_STATES = frozenset({D.SHADOWING, D.UPDATING, D.BAKING, D.SUCCEEDED, D.FAILED})


class RolloutState(str, Enum):
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"  # every device succeeded or failed within the gates
    ROLLED_BACK = "rolled_back"


class RolloutEvent(str, Enum):
    PAUSE = "pause"  # by an operator, or by a health gate when auto roll back is off
    RESUME = "resume"
    ROLLBACK = "rollback"  # by an operator, or by a health gate
    COMPLETE = "complete"


R, RE = RolloutState, RolloutEvent

ROLLOUT_TRANSITIONS: dict[tuple[RolloutState, RolloutEvent], RolloutState] = {
    (R.RUNNING, RE.PAUSE): R.PAUSED,
    (R.RUNNING, RE.ROLLBACK): R.ROLLED_BACK,
    (R.RUNNING, RE.COMPLETE): R.SUCCEEDED,
    (R.PAUSED, RE.RESUME): R.RUNNING,
    (R.PAUSED, RE.ROLLBACK): R.ROLLED_BACK,
    (R.SUCCEEDED, RE.ROLLBACK): R.ROLLED_BACK,
}


#: the events an operator may send (the controller alone completes a rollout)
OPERATOR_EVENTS = (RE.PAUSE, RE.RESUME, RE.ROLLBACK)


def operator_actions(state: RolloutState | str) -> list[str]:
    """What an operator may do to a rollout in ``state``: the dashboard offers only these."""
    return [e.value for e in OPERATOR_EVENTS if (RolloutState(state), e) in ROLLOUT_TRANSITIONS]


def device_transition(state: DeviceState | str, event: DeviceEvent) -> DeviceState:
    # the database stores the state's value; the table is keyed by the enum
    return transition(DEVICE_TRANSITIONS, DeviceState(state), event, machine="device", error=ConflictError)


def rollout_transition(state: RolloutState | str, event: RolloutEvent) -> RolloutState:
    return transition(ROLLOUT_TRANSITIONS, RolloutState(state), event, machine="rollout", error=ConflictError)
