"""The shared transition lookup: a pair in the table moves, any other is refused with the caller's error."""

from __future__ import annotations

import enum

import pytest

from sdk.errors import ConflictError
from sdk.transitions import transition


class Light(str, enum.Enum):
    OFF = "off"
    ON = "on"


class Press(str, enum.Enum):
    SWITCH = "switch"
    DIM = "dim"


TABLE = {(Light.OFF, Press.SWITCH): Light.ON, (Light.ON, Press.SWITCH): Light.OFF}


def test_a_pair_in_the_table_moves() -> None:
    assert transition(TABLE, Light.OFF, Press.SWITCH, machine="lamp", error=ConflictError) is Light.ON


def test_any_other_pair_raises_the_callers_error_naming_machine_event_and_state() -> None:
    with pytest.raises(ConflictError, match="^lamp event 'dim' is not allowed in state 'on'$"):
        transition(TABLE, Light.ON, Press.DIM, machine="lamp", error=ConflictError)
