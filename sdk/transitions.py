"""State machines as data: one ``(state, event) -> next state`` table per machine, one lookup for all.

Each package keeps its own table beside its states and events (the table is the design, reviewed
in one place: see ``agent/update.py``, ``agent/sync/states.py``, ``fleet/rollout/states.py``).
:func:`transition` is the mechanism they share: a pair missing from a table is refused with the
caller's error type and the same wording everywhere. Standard library only: the agent imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import TypeVar

from sdk.errors import EdgeError

S = TypeVar("S", bound=Enum)
E = TypeVar("E", bound=Enum)


def transition(
    table: Mapping[tuple[S, E], S], state: S, event: E, *, machine: str, error: type[EdgeError]
) -> S:
    """The state that ``event`` moves ``state`` to; ``error`` when the table has no such pair.

    ``machine`` names what moves (``"update"``, ``"rollout"``) in the error, so the one line a CLI
    or an HTTP edge shows says which machine refused which event in which state.
    """
    try:
        return table[(state, event)]
    except KeyError:
        raise error(f"{machine} event {event.value!r} is not allowed in state {state.value!r}") from None
