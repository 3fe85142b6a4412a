"""Device events into the database, each once however often it arrives.

An agent keeps an event in its disk outbox until the fleet acknowledges it and sends it again
otherwise (:mod:`fleet.acks`), so the same event may arrive twice, at this replica or another. It
carries the device's ``seq`` and ``time``, and a unique index on ``(device, sent_at, seq)`` makes
the INSERT skip a repeat (``ON CONFLICT DO NOTHING``). Events of agents older than this carry no
``seq``: NULLs never conflict, so those are stored as they come, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from fleet.db.models import EventRecord
from sdk.errors import ConfigError
from sdk.messages import Event

EVENTS = EventRecord.__table__
_KEY = ["device_id", "sent_at", "seq"]


def event_row(
    device_id: str,
    msg: Event,
    received_at: float,
    *,
    cut: Callable[[str | None], str | None] = lambda text: text,
) -> dict[str, Any]:
    """The row of one event; ``cut`` shortens its free-text reason before it is stored."""
    return {
        "device_id": device_id,
        "time": received_at,
        "kind": msg.kind,
        "ok": msg.ok,
        "model": msg.model,
        "version": msg.version,
        "revision": msg.revision,
        "reason": cut(msg.reason),
        "seq": msg.seq,
        "sent_at": msg.time if msg.seq is not None else None,
    }


def store_events(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert the events not stored yet; returns how many were new."""
    unique: dict[tuple[Any, ...], dict[str, Any]] = {}
    for i, row in enumerate(rows):
        key = (row["device_id"], row["sent_at"], row["seq"]) if row["seq"] is not None else (i,)
        unique.setdefault(key, row)  # the first copy wins, also within one batch
    if not unique:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt = pg_insert(EVENTS).on_conflict_do_nothing(index_elements=_KEY).returning(EVENTS.c.id)
    elif dialect == "sqlite":
        stmt = sqlite_insert(EVENTS).on_conflict_do_nothing(index_elements=_KEY).returning(EVENTS.c.id)
    else:
        raise ConfigError(f"event ingest supports PostgreSQL and SQLite, not {dialect}")
    return len(session.execute(stmt, list(unique.values())).all())
