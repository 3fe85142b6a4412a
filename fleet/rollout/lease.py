"""A named lease in the database: at most one holder at a time, on SQLite and PostgreSQL alike.

Taking or renewing it is one conditional UPDATE (or the first INSERT), so two replicas racing for
an expired lease cannot both win; a replica that dies stops renewing and loses it after ``ttl``.
"""

from __future__ import annotations

import time

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError

from fleet.db.models import Lease
from fleet.db.session import Database


def acquire(db: Database, name: str, holder: str, ttl: float, *, now: float | None = None) -> bool:
    """Take or renew ``name`` for ``holder``; True when ``holder`` holds it for the next ``ttl`` seconds."""
    now = time.time() if now is None else now
    with db.session() as s:
        result = s.execute(
            update(Lease)
            .where(Lease.name == name, or_(Lease.holder == holder, Lease.expires_at < now))
            .values(holder=holder, expires_at=now + ttl)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            return True
        if s.get(Lease, name) is not None:
            return False
    try:
        with db.session() as s:
            s.add(Lease(name=name, holder=holder, expires_at=now + ttl))
        return True
    except IntegrityError:
        return False


def release(db: Database, name: str, holder: str) -> None:
    with db.session() as s:
        s.execute(update(Lease).where(Lease.name == name, Lease.holder == holder).values(expires_at=0.0))
