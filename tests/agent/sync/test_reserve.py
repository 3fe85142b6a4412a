"""The disk reserve: on a full disk the agent still saves its journal and records update events."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sync.journal import Journal
from agent.sync.outbox import Outbox
from agent.sync.reserve import DiskReserve, is_no_room
from tests.support.disk import fill, small_tmpfs

RESERVE = 256 * 1024


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root and mount; skipped with the reason)."""
    with small_tmpfs(tmp_path / "disk", "2m") as mount_point:
        yield mount_point


def test_is_no_room_knows_the_os_and_sqlite_errors() -> None:
    assert is_no_room(OSError(errno.ENOSPC, "No space left on device"))
    assert is_no_room(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_no_room(OSError(errno.EACCES, "Permission denied"))
    assert is_no_room(sqlite3.OperationalError("database or disk is full"))
    assert not is_no_room(sqlite3.OperationalError("database is locked"))
    assert not is_no_room(ValueError("disk is full"))


def test_a_full_disk_releases_the_reserve_for_the_journal_and_restores_it_later(disk: Path) -> None:
    reserve = DiskReserve(disk / "sync" / "reserve", RESERVE)
    (disk / "sync").mkdir()
    assert reserve.restore() and reserve.held
    journal = Journal(disk / "sync" / "journal.json", reserve)
    ballast = fill(disk)
    journal.data.last_error = "x" * 20_000  # more than any page left over
    journal.save()  # would fail without the reserve
    assert not reserve.held
    assert Journal(disk / "sync" / "journal.json").data.last_error == "x" * 20_000
    assert not reserve.restore(), "the reserve came back on a disk without room for it"
    ballast.unlink()
    assert reserve.restore() and reserve.path.stat().st_size == RESERVE


def test_without_a_reserve_a_full_disk_is_an_error_not_a_silent_loss(disk: Path) -> None:
    journal = Journal(disk / "journal.json", DiskReserve(disk / "reserve", RESERVE))  # never written
    fill(disk)
    journal.data.last_error = "x" * 20_000
    with pytest.raises(OSError) as info:
        journal.save()
    assert is_no_room(info.value)


def test_an_event_is_recorded_on_a_full_disk_and_the_outbox_keeps_working(disk: Path) -> None:
    outbox = Outbox(disk / "outbox.sqlite3")
    reserve = DiskReserve(disk / "reserve", RESERVE)
    assert reserve.restore()
    ballast = fill(disk)
    # telemetry does not spend the reserve: with no room, a sample fails with the disk's own error
    failed = 0
    for i in range(200):
        try:
            outbox.append(lambda seq, i=i: b"t" * 4000 + str(i).encode())
        except sqlite3.OperationalError as exc:
            assert is_no_room(exc), exc  # not "cannot rollback - no transaction is active"
            failed += 1
            break
    assert failed, "the disk never filled"
    seq = reserve.retry_when_full(lambda: outbox.append(lambda seq: b'{"kind": "failure"}' * 200, "events"))
    assert [s for s, _ in outbox.pending("events")] == [seq]
    ballast.unlink()
    # after the failures, the same connection still appends and removes (no transaction left open)
    outbox.append(lambda seq: b"after", "telemetry")
    outbox.remove([seq], "events")
    assert outbox.count("events") == 0
    outbox.close()
