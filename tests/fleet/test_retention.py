"""Finding 8: device data is bounded: events by age and by count per device, the database file by mode."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from fleet.db.models import EventRecord
from fleet.db.session import Database, migrate
from fleet.ingest import Ingest
from fleet.retention import Retention, prune_device_data
from sdk.messages import Event
from sdk.topics import topic
from tests.fleet.conftest import Fleet


def events_of(fleet: Fleet, device_id: str) -> list[EventRecord]:
    with fleet.ctx.db.session() as s:
        return list(s.query(EventRecord).filter_by(device_id=device_id).order_by(EventRecord.time))


def test_events_are_pruned_by_age_and_by_count_per_device(fleet: Fleet) -> None:
    fleet.register("chatty")
    fleet.register("quiet")
    ingest = Ingest(fleet.ctx.db, None, fleet.ctx.metrics)  # type: ignore[arg-type]
    now = time.time()
    old = Event(kind="failure", ok=False, reason="long ago").to_bytes()
    ingest.process([(topic("events", "quiet"), old, now - 40 * 86400)])
    ingest.process([(topic("events", "quiet"), Event(kind="install", reason="recent").to_bytes(), now - 60)])
    ingest.process(
        [
            (topic("events", "chatty"), Event(kind="download", reason=f"n{i}").to_bytes(), now - 50 + i)
            for i in range(30)
        ]
    )
    with fleet.ctx.db.session() as s:
        pruned = prune_device_data(s, Retention(events_s=30 * 86400, events_per_device=10), now)
    assert pruned.events == 1 + 20
    assert [e.reason for e in events_of(fleet, "quiet")] == ["recent"]
    assert [e.reason for e in events_of(fleet, "chatty")] == [f"n{i}" for i in range(20, 30)]


def test_the_controller_prunes_events_with_the_fleet_settings(fleet: Fleet) -> None:
    fleet.register("d0")
    ingest = Ingest(fleet.ctx.db, None, fleet.ctx.metrics)  # type: ignore[arg-type]
    now = time.time()
    ingest.process(
        [(topic("events", "d0"), Event(kind="install").to_bytes(), now - 1 - i) for i in range(1005)]
    )
    assert fleet.ctx.controller is not None
    fleet.ctx.controller._prune()  # what the leader runs after each pass, at most once a minute
    assert len(events_of(fleet, "d0")) == fleet.ctx.settings.events_per_device == 1000


def test_the_sqlite_database_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "data" / "fleet.db"
    db = Database(f"sqlite:///{path}")
    migrate(db.engine)
    with db.engine.connect() as conn:  # WAL mode: the -wal and -shm files exist while connected
        conn.exec_driver_sql("SELECT 1")
        files = [p for p in path.parent.iterdir() if p.name.startswith("fleet.db")]
        assert {p.name for p in files} >= {"fleet.db", "fleet.db-wal", "fleet.db-shm"}
        for p in files:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    db.dispose()


def test_an_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    db = Database(f"sqlite:///{path}")
    migrate(db.engine)
    db.dispose()
    os.chmod(path, 0o644)
    Database(f"sqlite:///{path}").dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
