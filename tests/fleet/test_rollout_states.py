"""The rollout state machines, table first: every (state, event) pair is either this transition or refused."""

from __future__ import annotations

import itertools

import pytest

from fleet.rollout.states import (
    DEVICE_TRANSITIONS,
    ROLLOUT_TRANSITIONS,
    DeviceEvent,
    DeviceState,
    RolloutEvent,
    RolloutState,
    device_transition,
    rollout_transition,
)
from sdk.errors import ConflictError

D, E = DeviceState, DeviceEvent
R, RE = RolloutState, RolloutEvent

EXPECTED_DEVICE = {
    (D.PENDING, E.START): D.UPDATING,
    (D.PENDING, E.ROLLBACK): D.SKIPPED,
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
    # a shadow phase (issue 9): promoted to an update, or failed before the version serves
    (D.PENDING, E.SHADOW): D.SHADOWING,
    (D.SHADOWING, E.PROMOTE): D.UPDATING,
    (D.SHADOWING, E.FAIL): D.FAILED,
    (D.SHADOWING, E.TIMEOUT): D.FAILED,
    (D.SHADOWING, E.UNHEALTHY): D.FAILED,
    (D.SHADOWING, E.ROLLBACK): D.ROLLED_BACK,
}

EXPECTED_ROLLOUT = {
    (R.RUNNING, RE.PAUSE): R.PAUSED,
    (R.RUNNING, RE.ROLLBACK): R.ROLLED_BACK,
    (R.RUNNING, RE.COMPLETE): R.SUCCEEDED,
    (R.PAUSED, RE.RESUME): R.RUNNING,
    (R.PAUSED, RE.ROLLBACK): R.ROLLED_BACK,
    (R.SUCCEEDED, RE.ROLLBACK): R.ROLLED_BACK,
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(DeviceState, DeviceEvent)))
def test_every_device_pair(state: DeviceState, event: DeviceEvent) -> None:
    expected = EXPECTED_DEVICE.get((state, event))
    if expected is None:
        with pytest.raises(ConflictError):
            device_transition(state, event)
    else:
        assert device_transition(state.value, event) is expected


@pytest.mark.parametrize(("state", "event"), list(itertools.product(RolloutState, RolloutEvent)))
def test_every_rollout_pair(state: RolloutState, event: RolloutEvent) -> None:
    expected = EXPECTED_ROLLOUT.get((state, event))
    if expected is None:
        with pytest.raises(ConflictError):
            rollout_transition(state, event)
    else:
        assert rollout_transition(state.value, event) is expected


def test_tables_hold_nothing_else() -> None:
    assert DEVICE_TRANSITIONS == EXPECTED_DEVICE
    assert ROLLOUT_TRANSITIONS == EXPECTED_ROLLOUT


def test_terminal_states_only_leave_by_rollback() -> None:
    for state in (D.ROLLED_BACK, D.SKIPPED):
        assert not [e for (s, e) in DEVICE_TRANSITIONS if s is state]
    assert {e for (s, e) in DEVICE_TRANSITIONS if s in (D.SUCCEEDED, D.FAILED)} <= {E.ROLLBACK, E.FAIL}
