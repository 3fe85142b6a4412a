"""The update state table, pair by pair, and the journal that persists it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from agent.update import MAX_FAILURES, RESTING, TRANSITIONS, Event, State, UpdateJournal, next_state
from sdk.errors import ModelStoreError

EXPECTED: dict[tuple[State, Event], State] = {
    (State.IDLE, Event.INSTALL): State.UNPACKING,
    (State.FAILED, Event.INSTALL): State.UNPACKING,
    (State.UNPACKING, Event.UNPACKED): State.SMOKE_TESTING,
    (State.UNPACKING, Event.FAILED): State.FAILED,
    (State.SMOKE_TESTING, Event.SMOKE_PASSED): State.ACTIVATING,
    (State.SMOKE_TESTING, Event.FAILED): State.FAILED,
    (State.IDLE, Event.ACTIVATE): State.SMOKE_TESTING,
    (State.FAILED, Event.ACTIVATE): State.SMOKE_TESTING,
    (State.ACTIVATING, Event.ACTIVATED): State.IDLE,
    (State.ACTIVATING, Event.FAILED): State.FAILED,
    (State.IDLE, Event.ROLLBACK): State.ROLLING_BACK,
    (State.FAILED, Event.ROLLBACK): State.ROLLING_BACK,
    (State.ROLLING_BACK, Event.ROLLED_BACK): State.IDLE,
    (State.ROLLING_BACK, Event.FAILED): State.FAILED,
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(State, Event)))
def test_every_pair(state: State, event: Event) -> None:
    if (state, event) in EXPECTED:
        assert next_state(state, event) is EXPECTED[(state, event)]
    else:
        with pytest.raises(ModelStoreError, match="not allowed"):
            next_state(state, event)


def test_table_is_what_this_test_reviews() -> None:
    assert TRANSITIONS == EXPECTED
    # every step in progress can fail, and failing always lands in a resting state
    for state in set(State) - RESTING:
        assert next_state(state, Event.FAILED) in RESTING


def test_journal_saves_before_acting_and_counts_failures(tmp_path: Path) -> None:
    path = tmp_path / "update.json"
    journal = UpdateJournal(path)
    journal.post(Event.INSTALL, model="m", version="2", previous="1")
    on_disk = json.loads(path.read_text())
    assert (on_disk["state"], on_disk["model"], on_disk["version"]) == ("unpacking", "m", "2")
    journal.post(Event.FAILED, error="boom")
    reopened = UpdateJournal(path)
    assert reopened.record.state is State.FAILED
    assert reopened.record.failures == {"m@2": 1} and reopened.record.errors == {"m": "boom"}
    assert [h["event"] for h in reopened.record.history] == ["install", "failed"]


def test_loop_guard(tmp_path: Path) -> None:
    journal = UpdateJournal(tmp_path / "update.json")
    for _ in range(MAX_FAILURES - 1):
        journal.note_rollback_from("m", "2")
    journal.check_loop_guard("m", "2")
    journal.note_rollback_from("m", "2")
    with pytest.raises(ModelStoreError, match="not trying it again"):
        journal.check_loop_guard("m", "2")
    journal.clear_failures("m", "2")
    journal.check_loop_guard("m", "2")


def test_unreadable_journal_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "update.json"
    path.write_text("{torn")
    assert UpdateJournal(path).record.state is State.IDLE
