"""A write the API answers 2xx for is committed before the answer leaves: a client reads it back at once."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from sqlalchemy import event
from sqlalchemy.orm import Session

from fleet import auth
from tests.fleet.live_server import fleet_in_thread


def test_a_created_resource_is_readable_as_soon_as_the_answer_arrives(tmp_path: Path) -> None:
    with fleet_in_thread(tmp_path) as (app, base):
        ctx = app.state.fleet
        with ctx.db.session() as s:
            admin = {"Authorization": f"Bearer {auth.create_token(s, 'admin')}"}

        # A slow commit (a busy PostgreSQL): only a transaction that wrote something waits.
        def wrote(session: Session, _context: object) -> None:
            session.info["wrote"] = True

        def slow_commit(session: Session) -> None:
            if session.new or session.dirty or session.info.pop("wrote", False):
                time.sleep(0.5)

        event.listen(ctx.db.sessions, "after_flush", wrote)
        event.listen(ctx.db.sessions, "before_commit", slow_commit)
        with httpx.Client(base_url=base, headers=admin, timeout=10) as api:
            assert api.post("/api/v1/devices", json={"device_id": "cam-9"}).status_code == 201
            assert api.get("/api/v1/devices/cam-9").status_code == 200
