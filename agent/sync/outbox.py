"""Telemetry waiting for the broker: kept on disk within a bound, sent in order when it is back.

:class:`Outbox` is a SQLite file (stdlib ``sqlite3``, WAL, synchronous=FULL), so what was
appended survives a ``kill -9`` or a power cut. It also hands out the per-device sequence numbers,
which keep increasing across restarts. When the bound (messages or bytes) is passed, the oldest
messages are dropped first and the count is logged.

:class:`OutboxSender` hands the oldest messages to the MQTT link, a window at a time, and deletes
each one when the broker acknowledges it. Messages handed over stay in paho's queue across a
reconnect and are resent first, so the broker sees them in sequence order without duplicates
while this process lives; after a restart, unacknowledged messages are simply sent again (the
fleet drops repeats by ``seq``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGES = 10_000
DEFAULT_MAX_BYTES = 16 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Outbox:
    def __init__(
        self, path: Path, *, max_messages: int = DEFAULT_MAX_MESSAGES, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        #: messages dropped by the bound since this outbox was opened.
        self.dropped = 0
        self._lock = threading.Lock()
        # Shared by the telemetry, sender and paho threads, always under self._lock.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, compose: Callable[[int], bytes]) -> int:
        """Store ``compose(seq)`` under the next sequence number and return that number."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
                seq = 0 if row is None else row[0] + 1
                self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?)", (seq,))
                self._db.execute("INSERT INTO messages (seq, payload) VALUES (?, ?)", (seq, compose(seq)))
                dropped = self._enforce_bound()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if dropped:
            self.dropped += dropped
            log.warning(
                "telemetry buffer full (%d messages / %d bytes): dropped the %d oldest (%d in total)",
                self.max_messages,
                self.max_bytes,
                dropped,
                self.dropped,
            )
        return seq

    def _enforce_bound(self) -> int:
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages"
        ).fetchone()
        dropped = 0
        # Oldest first; the newest message always stays, even if it alone passes max_bytes.
        for seq, length in self._db.execute(
            "SELECT seq, LENGTH(payload) FROM messages ORDER BY seq"
        ).fetchall():
            if count - dropped <= 1 or (count - dropped <= self.max_messages and size <= self.max_bytes):
                break
            self._db.execute("DELETE FROM messages WHERE seq = ?", (seq,))
            dropped += 1
            size -= length
        return dropped

    def pending(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` messages with a sequence number above ``after``, oldest first."""
        with self._lock:
            return self._db.execute(
                "SELECT seq, payload FROM messages WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()

    def remove(self, seqs: list[int]) -> None:
        """Delete delivered messages, in one transaction (one fsync however many)."""
        if not seqs:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM messages WHERE seq = ?", [(seq,) for seq in seqs])
            self._db.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]


class Link(Protocol):
    def is_connected(self) -> bool: ...

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int: ...


class OutboxSender:
    """Moves outbox messages to the broker in order, from one thread that calls :meth:`pump`.

    :meth:`acknowledged` is called on paho's network thread while paho holds its own message
    lock, so it only queues the mid; :meth:`pump` (which calls into paho) does the bookkeeping on
    the sender's thread. Taking a lock of ours inside the callback could deadlock against it.
    """

    def __init__(self, outbox: Outbox, link: Link, topic: str, *, window: int = 64) -> None:
        self._outbox = outbox
        self._link = link
        self._topic = topic
        self._window = window
        self._acks: deque[int] = deque()
        #: mid -> seq of messages handed to the link and not yet acknowledged.
        self._in_flight: dict[int, int] = {}
        self._last_handed = -1
        #: set when there may be work; the sender thread waits on it.
        self.wake = threading.Event()

    def acknowledged(self, mid: int) -> None:
        self._acks.append(mid)
        self.wake.set()

    def pump(self) -> int:
        """Retire acknowledged messages, then hand the next ones over while connected."""
        delivered = []
        while self._acks:
            seq = self._in_flight.pop(self._acks.popleft(), None)
            if seq is not None:  # other mids are status, reported and events messages
                delivered.append(seq)
        self._outbox.remove(delivered)
        if not self._link.is_connected():
            return 0
        free = self._window - len(self._in_flight)
        handed = 0
        if free > 0:
            for seq, payload in self._outbox.pending(self._last_handed, free):
                self._in_flight[self._link.publish(self._topic, payload, qos=1)] = seq
                self._last_handed = seq
                handed += 1
        return handed

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def drain(self, timeout_s: float) -> bool:
        """Send what is waiting and wait for the acknowledgements (a clean stop); True when all went."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._link.is_connected():
            self.pump()
            if not self._in_flight and not self._outbox.pending(self._last_handed, 1):
                return True
            self.wake.wait(0.05)
            self.wake.clear()
        return False

    def run(self, stop: threading.Event, idle_s: float = 1.0) -> None:
        """The sender thread: pump whenever woken (append, ack, connect) or every ``idle_s``."""
        while not stop.is_set():
            self.wake.wait(idle_s)
            self.wake.clear()
            try:
                self.pump()
            except sqlite3.Error:
                log.exception("telemetry outbox failed; retrying")
