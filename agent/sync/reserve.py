"""Room kept on the data disk for the agent's own records, so that a full disk is reported.

Something else on a device can fill its disk: a runaway log, another program, a camera dump.
The agent then cannot save its sync journal or record the failure event, so the fleet hears
nothing and the update it was applying stalls there (a clean-clone CI run caught exactly this:
the disk filled before the first byte of a download arrived, and the rollout never ended).

At start the sync service writes a reserve file of ``size`` bytes in its folder. When a write of
the agent's own records (the journal, an update event) fails for lack of room, the reserve is
deleted and the write is tried once more: the failure is recorded and reaches the fleet, which
decides (a rollback, a paused rollout). The reserve is written again once the disk has room for
it; telemetry samples never spend it.
"""

from __future__ import annotations

import errno
import logging
import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sdk.fsio import atomic_writer

log = logging.getLogger(__name__)

T = TypeVar("T")

#: a full disk, a quota, a file size limit.
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
DEFAULT_RESERVE_BYTES = 2 * 1024 * 1024
_CHUNK = 64 * 1024


def is_no_room(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the quota) is full, from the OS or from SQLite."""
    if isinstance(exc, OSError):
        return exc.errno in NO_ROOM_ERRNOS
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return False


class DiskReserve:
    """A file of ``size`` real bytes, given back to the agent's records when the disk is full."""

    def __init__(self, path: Path, size: int = DEFAULT_RESERVE_BYTES) -> None:
        self.path = path
        self.size = size
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def restore(self) -> bool:
        """Write the reserve if it is missing and the disk has room for it twice over; True if held.

        Twice over: taking the last free bytes for the reserve would itself fill the disk.
        """
        if self.size <= 0:
            return False
        with self._lock:
            if self.held:
                return True
            try:
                if shutil.disk_usage(self.path.parent).free < 2 * self.size:
                    return False
                # Real bytes, not a sparse file or a preallocation some filesystems skip: the
                # room must exist now, to be handed back later.
                with atomic_writer(self.path) as f:
                    zeros = bytes(_CHUNK)
                    for _ in range(0, self.size, _CHUNK):
                        f.write(zeros)
            except OSError as exc:
                log.warning("cannot write the %d-byte disk reserve %s: %s", self.size, self.path, exc)
                return False
        log.info("disk reserve of %d bytes held at %s", self.size, self.path)
        return True

    def release(self) -> bool:
        """Delete the reserve; True if that freed room (it was there)."""
        with self._lock:
            try:
                self.path.unlink()
            except FileNotFoundError:
                return False
        log.warning(
            "the disk is full: released the %d-byte reserve so that the agent can record and report;"
            " it is written again when there is room",
            self.size,
        )
        return True

    def retry_when_full(self, write: Callable[[], T]) -> T:
        """Run ``write``; if it fails for lack of room, release the reserve and run it once more."""
        try:
            return write()
        except (OSError, sqlite3.Error) as exc:
            if not is_no_room(exc) or not self.release():
                raise
        return write()
