"""What reached the fleet's database, read straight from it, for delivery tests (issue 14, finding 10).

Also the fleet's ``serve`` flags for Mosquitto with the dynamic security plugin, so agents log in
with the accounts the fleet creates and are confined (by the broker) to their own topics.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

from tests.support.fleet_proc import serve_args

BROKER_ADMIN = ("edge-fleet", "fleet-secret")
FLEET_ENV = {"EDGEFLEET_BROKER_PASSWORD": BROKER_ADMIN[1]}


def dynsec_serve_args(tmp_path: Path, db: str, broker_url: str, *extra: str) -> list[str]:
    return serve_args(
        tmp_path,
        db,
        broker_url,
        "--broker-accounts",
        "dynsec",
        "--broker-username",
        BROKER_ADMIN[0],
        "--mqtt-protocol",
        "5",
        *extra,
    )


def _rows(db_path: Path, sql: str, *args: object) -> list[tuple]:
    # A fresh connection per read: the fleet writes the file from another process.
    conn = sqlite3.connect(db_path, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def stored_telemetry_seqs(db_path: Path, device_id: str) -> Counter[int]:
    """How many rows each telemetry ``seq`` of the device has."""
    return Counter(
        seq for (seq,) in _rows(db_path, "SELECT seq FROM telemetry WHERE device_id = ?", device_id)
    )


def stored_event_seqs(db_path: Path, device_id: str) -> Counter[int]:
    return Counter(
        seq
        for (seq,) in _rows(
            db_path, "SELECT seq FROM events WHERE device_id = ? AND seq IS NOT NULL", device_id
        )
    )


def exactly_once_up_to(seqs: Counter[int], at_least: int) -> bool:
    """Every seq from 0 to the highest stored is there exactly once, and the highest is ``at_least``."""
    if not seqs:
        return False
    top = max(seqs)
    return top >= at_least and set(seqs) == set(range(top + 1)) and all(n == 1 for n in seqs.values())


def outbox_last_seq(data_dir: Path, stream_key: str = "last_seq") -> int:
    """The last sequence number the agent's outbox handed out (what it has produced so far)."""
    rows = _rows(data_dir / "sync" / "outbox.sqlite3", "SELECT value FROM meta WHERE key = ?", stream_key)
    return int(rows[0][0]) if rows else -1


def outbox_waiting(data_dir: Path) -> int:
    """Telemetry and events in the agent's outbox: sent or not, not yet acknowledged by the fleet."""
    path = data_dir / "sync" / "outbox.sqlite3"
    return sum(_rows(path, f"SELECT COUNT(*) FROM {table}")[0][0] for table in ("messages", "events"))
