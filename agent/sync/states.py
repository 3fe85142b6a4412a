"""The per-model reconcile steps: ONE table says which event moves a model from which state to which.

A model of a desired revision starts in ``IDLE``. Planning looks at the store and posts
``MISSING`` (download it), ``INSTALLED`` (activate the installed version), ``PREVIOUS`` (roll back
to the version that was active before) or ``CURRENT`` (nothing to do). ``ACTIVE`` and ``FAILED``
are final. ``INTERRUPTED`` is posted when the agent restarts and finds a step in progress on disk:
the model goes back to ``IDLE`` and is planned again, so a crash resumes instead of repeating
blindly. ``GAVE_UP`` is the loop guard: too many attempts at the same revision.
"""

from __future__ import annotations

import enum

from sdk.errors import EdgeError
from sdk.messages import ModelStateName
from sdk.transitions import transition


class State(str, enum.Enum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    ACTIVATING = "activating"
    ROLLING_BACK = "rolling_back"
    ACTIVE = "active"
    FAILED = "failed"


class Event(str, enum.Enum):
    MISSING = "missing"
    INSTALLED = "installed"
    PREVIOUS = "previous"
    CURRENT = "current"
    DOWNLOADED = "downloaded"
    RETRY = "retry"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    GAVE_UP = "gave_up"


class InvalidTransitionError(EdgeError):
    """An event arrived in a state where the table does not allow it (a bug, never user input)."""


_IN_PROGRESS = (State.DOWNLOADING, State.INSTALLING, State.ACTIVATING, State.ROLLING_BACK)

TRANSITIONS: dict[tuple[State, Event], State] = {
    # planning: what the store already has decides the first step
    (State.IDLE, Event.MISSING): State.DOWNLOADING,
    (State.IDLE, Event.INSTALLED): State.ACTIVATING,
    (State.IDLE, Event.PREVIOUS): State.ROLLING_BACK,
    (State.IDLE, Event.CURRENT): State.ACTIVE,
    (State.IDLE, Event.GAVE_UP): State.FAILED,
    # download: transient errors retry (resuming the .part file); bad content fails
    (State.DOWNLOADING, Event.DOWNLOADED): State.INSTALLING,
    (State.DOWNLOADING, Event.RETRY): State.DOWNLOADING,
    (State.DOWNLOADING, Event.FAILED): State.FAILED,
    # store.install verifies signature, hashes and smoke test, then activates atomically
    (State.INSTALLING, Event.SUCCEEDED): State.ACTIVE,
    (State.INSTALLING, Event.FAILED): State.FAILED,
    (State.ACTIVATING, Event.SUCCEEDED): State.ACTIVE,
    (State.ACTIVATING, Event.FAILED): State.FAILED,
    (State.ROLLING_BACK, Event.SUCCEEDED): State.ACTIVE,
    (State.ROLLING_BACK, Event.FAILED): State.FAILED,
    # after a restart every step in progress is planned again; the loop guard ends any of them
    **{(state, Event.INTERRUPTED): State.IDLE for state in _IN_PROGRESS},
    **{(state, Event.GAVE_UP): State.FAILED for state in _IN_PROGRESS},
}

FINAL = frozenset({State.ACTIVE, State.FAILED})

#: How each state shows in the ``reported`` message.
REPORTED_AS: dict[State, ModelStateName] = {
    State.IDLE: "inactive",
    State.DOWNLOADING: "downloading",
    State.INSTALLING: "verifying",
    State.ACTIVATING: "verifying",
    State.ROLLING_BACK: "verifying",
    State.ACTIVE: "active",
    State.FAILED: "failed",
}


def next_state(state: State, event: Event) -> State:
    return transition(TRANSITIONS, state, event, machine="model", error=InvalidTransitionError)
