"""The reconcile transition table, tested table-first: every (state, event) pair."""

from __future__ import annotations

import itertools

import pytest

from agent.sync.states import (
    FINAL,
    REPORTED_AS,
    TRANSITIONS,
    Event,
    InvalidTransitionError,
    State,
    next_state,
)

S, E = State, Event
IN_PROGRESS = [S.DOWNLOADING, S.INSTALLING, S.ACTIVATING, S.ROLLING_BACK]

EXPECTED: dict[tuple[State, Event], State] = {
    (S.IDLE, E.MISSING): S.DOWNLOADING,
    (S.IDLE, E.INSTALLED): S.ACTIVATING,
    (S.IDLE, E.PREVIOUS): S.ROLLING_BACK,
    (S.IDLE, E.CURRENT): S.ACTIVE,
    (S.IDLE, E.GAVE_UP): S.FAILED,
    (S.DOWNLOADING, E.DOWNLOADED): S.INSTALLING,
    (S.DOWNLOADING, E.RETRY): S.DOWNLOADING,
    (S.DOWNLOADING, E.FAILED): S.FAILED,
    (S.INSTALLING, E.SUCCEEDED): S.ACTIVE,
    (S.INSTALLING, E.FAILED): S.FAILED,
    (S.ACTIVATING, E.SUCCEEDED): S.ACTIVE,
    (S.ACTIVATING, E.FAILED): S.FAILED,
    (S.ROLLING_BACK, E.SUCCEEDED): S.ACTIVE,
    (S.ROLLING_BACK, E.FAILED): S.FAILED,
    **{(s, E.INTERRUPTED): S.IDLE for s in IN_PROGRESS},
    **{(s, E.GAVE_UP): S.FAILED for s in IN_PROGRESS},
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(State, Event)), ids=lambda v: v.value)
def test_every_pair(state: State, event: Event) -> None:
    if (state, event) in EXPECTED:
        assert next_state(state, event) is EXPECTED[(state, event)]
    else:
        with pytest.raises(InvalidTransitionError, match=f"{event.value}.*{state.value}"):
            next_state(state, event)


def test_table_is_exactly_the_reviewed_one() -> None:
    assert TRANSITIONS == EXPECTED


def test_final_states_have_no_way_out_and_every_state_is_reported() -> None:
    assert not [pair for pair in TRANSITIONS if pair[0] in FINAL]
    assert set(REPORTED_AS) == set(State)


def test_every_non_final_state_reaches_a_final_one() -> None:
    reach = {s: {t for (f, _), t in TRANSITIONS.items() if f is s} for s in State}
    for start in set(State) - FINAL:
        seen, todo = set(), [start]
        while todo:
            s = todo.pop()
            if s not in seen:
                seen.add(s)
                todo += reach[s]
        assert seen & FINAL, start
