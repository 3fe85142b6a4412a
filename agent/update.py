"""The update state machine: one table says which event moves an update from which state to which.

Every install, activation and rollback walks this table, and the state is saved to disk *before*
the step it names runs, so after a crash or power cut the store knows what was interrupted and
finishes it (see :meth:`agent.store.ModelStore.recover`). A loop guard stops a device from
bouncing between installing and rolling back the same version forever.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sdk.errors import ModelStoreError
from sdk.fsio import write_atomic
from sdk.transitions import transition

log = logging.getLogger(__name__)


class State(str, enum.Enum):
    IDLE = "idle"
    UNPACKING = "unpacking"
    SMOKE_TESTING = "smoke_testing"
    ACTIVATING = "activating"
    ROLLING_BACK = "rolling_back"
    FAILED = "failed"


class Event(str, enum.Enum):
    INSTALL = "install"
    UNPACKED = "unpacked"
    SMOKE_PASSED = "smoke_passed"
    ACTIVATE = "activate"
    ACTIVATED = "activated"
    ROLLBACK = "rollback"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


#: (state, event) -> next state. Anything missing is a bug and raises.
TRANSITIONS: dict[tuple[State, Event], State] = {
    # install: unpack + verify, smoke test, then switch the pointer
    (State.IDLE, Event.INSTALL): State.UNPACKING,
    (State.FAILED, Event.INSTALL): State.UNPACKING,
    (State.UNPACKING, Event.UNPACKED): State.SMOKE_TESTING,
    (State.UNPACKING, Event.FAILED): State.FAILED,
    (State.SMOKE_TESTING, Event.SMOKE_PASSED): State.ACTIVATING,
    (State.SMOKE_TESTING, Event.FAILED): State.FAILED,
    # activate an installed version (re-verified and smoke tested first)
    (State.IDLE, Event.ACTIVATE): State.SMOKE_TESTING,
    (State.FAILED, Event.ACTIVATE): State.SMOKE_TESTING,
    (State.ACTIVATING, Event.ACTIVATED): State.IDLE,
    (State.ACTIVATING, Event.FAILED): State.FAILED,
    # rollback to the previous version
    (State.IDLE, Event.ROLLBACK): State.ROLLING_BACK,
    (State.FAILED, Event.ROLLBACK): State.ROLLING_BACK,
    (State.ROLLING_BACK, Event.ROLLED_BACK): State.IDLE,
    (State.ROLLING_BACK, Event.FAILED): State.FAILED,
}

#: states an update rests in; any other state found on disk at start-up was interrupted.
RESTING = frozenset({State.IDLE, State.FAILED})
#: a version that failed (or was rolled back from) this many times is not tried again on its own.
MAX_FAILURES = 3
_HISTORY = 20


@dataclass
class UpdateRecord:
    """What is persisted in ``<data-dir>/update.json``."""

    state: State = State.IDLE
    model: str | None = None
    version: str | None = None
    #: the version that was active when the step began (what keeps serving on failure).
    previous: str | None = None
    error: str | None = None
    updated: float = 0.0
    #: "name@version" -> failures, for the loop guard.
    failures: dict[str, int] = field(default_factory=dict)
    #: model name -> reason its last update failed; cleared when one succeeds.
    errors: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, object]] = field(default_factory=list)


def next_state(state: State, event: Event) -> State:
    return transition(TRANSITIONS, state, event, machine="update", error=ModelStoreError)


class UpdateJournal:
    """The persisted update record; :meth:`post` moves it through :data:`TRANSITIONS`, saving first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.record = self._load()

    def _load(self) -> UpdateRecord:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return UpdateRecord()
        except (OSError, ValueError) as exc:
            # A damaged journal must not brick the device: the active pointer is the truth.
            log.error("update journal %s is unreadable (%s); starting a fresh one", self.path, exc)
            return UpdateRecord()
        data["state"] = State(data.get("state", "idle"))
        return UpdateRecord(**{k: v for k, v in data.items() if k in UpdateRecord.__dataclass_fields__})

    def reload(self) -> UpdateRecord:
        self.record = self._load()
        return self.record

    def post(self, event: Event, **changes: object) -> State:
        rec = self.record
        new = next_state(rec.state, event)
        for key, value in changes.items():
            setattr(rec, key, value)
        if event is Event.FAILED and rec.model:
            key = f"{rec.model}@{rec.version}"
            rec.failures[key] = rec.failures.get(key, 0) + 1
            rec.errors[rec.model] = str(rec.error)
        elif new is State.IDLE and rec.model:
            rec.errors.pop(rec.model, None)
            rec.error = None
        rec.state = new
        rec.updated = time.time()
        rec.history = [
            *rec.history[-(_HISTORY - 1) :],
            {
                "time": rec.updated,
                "event": event.value,
                "state": new.value,
                "model": rec.model,
                "version": rec.version,
                "error": rec.error if event is Event.FAILED else None,
            },
        ]
        self._save()
        log.debug("update %s -> %s (%s %s)", event.value, new.value, rec.model, rec.version)
        return new

    def note_rollback_from(self, model: str, version: str) -> None:
        """Rolling back from a version counts against it in the loop guard."""
        key = f"{model}@{version}"
        self.record.failures[key] = self.record.failures.get(key, 0) + 1
        self._save()

    def check_loop_guard(self, model: str, version: str) -> None:
        failures = self.record.failures.get(f"{model}@{version}", 0)
        if failures >= MAX_FAILURES:
            raise ModelStoreError(
                f"{model} {version} already failed or was rolled back {failures} times; not trying it again"
                " (install it by hand with `edge-agent install` to override)"
            )

    def note_error(self, model: str, error: str) -> None:
        self.record.errors[model] = error
        self._save()

    def clear_failures(self, model: str, version: str) -> None:
        self.record.failures.pop(f"{model}@{version}", None)
        self._save()

    def _save(self) -> None:
        data = asdict(self.record)
        data["state"] = self.record.state.value
        write_atomic(self.path, json.dumps(data, indent=1).encode("utf-8"))
