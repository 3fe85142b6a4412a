"""Schema migrations on a database that already holds data (an upgrade, not a fresh start)."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from fleet.db.session import MIGRATIONS, Database, migrate


def _upgrade_to(db: Database, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def test_upgrade_keeps_one_copy_of_telemetry_stored_twice(db_url: str) -> None:
    db = Database(db_url)
    _upgrade_to(db, "0001")
    row = "('d0', {t}, {t}, {seq}, 10, 0, 0, '[]')"
    values = ", ".join(
        row.format(t=t, seq=seq) for t, seq in [(1.5, 1), (1.5, 1), (2.5, 2), (1.5, 1), (3.5, 0)]
    )
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO telemetry (device_id, time, received_at, seq, interval_s, requests, errors, models) "
                f"VALUES {values}"
            )
        )
    migrate(db.engine)  # 0001 -> head
    with db.engine.begin() as conn:
        kept = conn.execute(text("SELECT time, seq FROM telemetry ORDER BY time")).all()
    assert [tuple(r) for r in kept] == [(1.5, 1), (2.5, 2), (3.5, 0)]
    with pytest.raises(IntegrityError), db.engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO telemetry (device_id, time, received_at, seq, interval_s, requests, errors, models) VALUES {row.format(t=2.5, seq=2)}"
            )
        )
    db.dispose()
