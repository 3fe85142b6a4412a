"""Telemetry and events on their way to the fleet: kept on disk until the fleet has STORED them.

Handing a message to the broker is not delivering it: a broker restarted without its persistence
file forgets what it held, and a fleet that is away misses what the broker passes on meanwhile.
So an outbox message is deleted only when the fleet's ``ack`` (:class:`sdk.messages.Ack`, sent
after its ingest transaction commits) lists it; until then it is sent again after every reconnect
and whenever its acknowledgement is overdue. The fleet stores a repeat once (telemetry by
``(device, time, seq)``, events by ``(device, time, seq)``), so resending is always safe.

:class:`Outbox` is a SQLite file (stdlib ``sqlite3``, WAL, synchronous=FULL), so what was
appended survives a ``kill -9`` or a power cut. It hands out one sequence number per stream, which
keeps increasing across restarts. It is bounded (messages and bytes, both streams together): when
full, the oldest telemetry goes first, events only when no telemetry is left to drop (an event
says what happened to an update; one sample less is a gap in a chart). Drops are logged and
counted, also on disk.

:class:`OutboxSender` moves the oldest unacknowledged messages to the MQTT link, a window at a time.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Protocol

from sdk.messages import Ack

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGES = 10_000
DEFAULT_MAX_BYTES = 16 * 1024 * 1024

Stream = Literal["telemetry", "events"]
STREAMS: tuple[Stream, ...] = ("events", "telemetry")  # the order the sender serves them
#: one table per stream; ``messages`` is telemetry, its name kept from before events were buffered.
_TABLE: dict[Stream, str] = {"telemetry": "messages", "events": "events"}
_LAST_SEQ: dict[Stream, str] = {"telemetry": "last_seq", "events": "last_seq_events"}
_DROPPED: dict[Stream, str] = {"telemetry": "dropped_telemetry", "events": "dropped_events"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL);
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
        self._lock = threading.Lock()
        # Shared by the telemetry, reconcile and sender threads, always under self._lock.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, compose: Callable[[int], bytes], stream: Stream = "telemetry") -> int:
        """Store ``compose(seq)`` under the stream's next sequence number and return that number."""
        with self._lock, self._transaction():
            seq = self._meta(_LAST_SEQ[stream], -1) + 1
            self._set_meta(_LAST_SEQ[stream], seq)
            self._db.execute(
                f"INSERT INTO {_TABLE[stream]} (seq, payload) VALUES (?, ?)", (seq, compose(seq))
            )
            dropped = self._enforce_bound(keep=(stream, seq))
            for name, n in dropped.items():
                if n:
                    self._set_meta(_DROPPED[name], self._meta(_DROPPED[name], 0) + n)
            totals = {name: self._meta(_DROPPED[name], 0) for name in dropped}
        for name, n in dropped.items():
            if n:
                log.warning(
                    "outbox full (%d messages / %d bytes): dropped the %d oldest %s (%d in total)",
                    self.max_messages,
                    self.max_bytes,
                    n,
                    name,
                    totals[name],
                )
        return seq

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction; on an error it is rolled back, if SQLite has not done so itself.

        A full disk makes SQLite roll back on its own (a failed COMMIT included): a ROLLBACK then
        would raise "no transaction is active" and hide the real error.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _meta(self, key: str, default: int) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _enforce_bound(self, keep: tuple[Stream, int]) -> dict[Stream, int]:
        count = size = 0
        for table in _TABLE.values():
            n, b = self._db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM {table}"
            ).fetchone()
            count, size = count + n, size + b
        dropped: dict[Stream, int] = {"telemetry": 0, "events": 0}
        # Telemetry first, then events; oldest first; the message just appended always stays,
        # even if it alone passes max_bytes.
        for stream in ("telemetry", "events"):
            if count <= self.max_messages and size <= self.max_bytes:
                break
            rows = self._db.execute(f"SELECT seq, LENGTH(payload) FROM {_TABLE[stream]} ORDER BY seq")
            for seq, length in rows.fetchall():
                if count <= self.max_messages and size <= self.max_bytes:
                    break
                if (stream, seq) == keep:
                    continue
                self._db.execute(f"DELETE FROM {_TABLE[stream]} WHERE seq = ?", (seq,))
                dropped[stream] += 1
                count, size = count - 1, size - length
        return dropped

    def pending(
        self, stream: Stream = "telemetry", limit: int = 1_000_000, after: int = -1
    ) -> list[tuple[int, bytes]]:
        """Up to ``limit`` messages of ``stream`` with a sequence number above ``after``, oldest first."""
        with self._lock:
            return self._db.execute(
                f"SELECT seq, payload FROM {_TABLE[stream]} WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()

    def remove(self, seqs: list[int], stream: Stream = "telemetry") -> None:
        """Delete delivered messages, in one transaction (one fsync however many)."""
        if not seqs:
            return
        with self._lock, self._transaction():
            self._db.executemany(f"DELETE FROM {_TABLE[stream]} WHERE seq = ?", [(seq,) for seq in seqs])

    def count(self, stream: Stream) -> int:
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM {_TABLE[stream]}").fetchone()[0]

    def dropped(self, stream: Stream) -> int:
        """Messages of ``stream`` the bound has dropped, over the life of this file."""
        with self._lock:
            return self._meta(_DROPPED[stream], 0)

    def __len__(self) -> int:
        return sum(self.count(stream) for stream in STREAMS)


class Link(Protocol):
    def is_connected(self) -> bool: ...

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int: ...


class OutboxSender:
    """Moves outbox messages to the broker from one thread that calls :meth:`pump`.

    A message handed to the link waits for the fleet's acknowledgement. It is sent again after a
    reconnect (the broker may have lost it, or the session with it) and when its acknowledgement
    is ``ack_timeout_s`` overdue (the fleet may have been away, or lost it before its commit);
    each overdue round doubles the timeout up to ``ack_timeout_max_s``, so a fleet that stays away
    is not flooded, and any acknowledgement sets it back.

    :meth:`acknowledged` and :meth:`reconnected` are called on paho's network thread, so they only
    queue and wake; :meth:`pump` does the bookkeeping on the sender's thread.
    """

    def __init__(
        self,
        outbox: Outbox,
        link: Link,
        topics: dict[Stream, str],
        *,
        window: int = 256,
        ack_timeout_s: float = 10.0,
        ack_timeout_max_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._outbox = outbox
        self._link = link
        self._topics = topics
        self._window = window
        self._ack_timeout_s = ack_timeout_s
        self._ack_timeout_max_s = ack_timeout_max_s
        self._timeout_s = ack_timeout_s
        self._clock = clock
        self._acks: deque[Ack] = deque()
        self._reconnects: deque[None] = deque()
        #: (stream, seq) -> when it was handed to the link, for messages not yet acknowledged.
        self._sent: dict[tuple[Stream, int], float] = {}
        #: messages sent again (overdue or after a reconnect) since this sender started.
        self.resent = 0
        #: set when there may be work; the sender thread waits on it.
        self.wake = threading.Event()

    def acknowledged(self, ack: Ack) -> None:
        self._acks.append(ack)
        self.wake.set()

    def reconnected(self) -> None:
        self._reconnects.append(None)
        self.wake.set()

    def pump(self) -> int:
        """Retire acknowledged messages, then hand over the oldest unacknowledged ones while connected."""
        self._retire()
        if not self._link.is_connected():
            return 0
        now = self._clock()
        if self._reconnects:
            self._reconnects.clear()
            self.resent += len(self._sent)
            self._sent.clear()
            self._timeout_s = self._ack_timeout_s
        overdue = [key for key, sent_at in self._sent.items() if now - sent_at >= self._timeout_s]
        if overdue:
            log.info(
                "%d messages not acknowledged by the fleet within %.0f s; sending them again",
                len(overdue),
                self._timeout_s,
            )
            for key in overdue:
                del self._sent[key]
            self.resent += len(overdue)
            self._timeout_s = min(self._timeout_s * 2, self._ack_timeout_max_s)
        free = self._window - len(self._sent)
        handed = 0
        for stream in STREAMS:
            if free <= 0:
                break
            # The window oldest rows hold every message in flight, so at least `free` others.
            for seq, payload in self._outbox.pending(stream, self._window):
                if (stream, seq) in self._sent:
                    continue
                self._link.publish(self._topics[stream], payload, qos=1)
                self._sent[(stream, seq)] = now
                handed += 1
                free -= 1
                if free <= 0:
                    break
        return handed

    def _retire(self) -> None:
        while self._acks:
            ack = self._acks.popleft()
            for stream, seqs in (("telemetry", ack.telemetry), ("events", ack.events)):
                if not seqs:
                    continue
                self._outbox.remove(seqs, stream)  # type: ignore[arg-type]
                for seq in seqs:
                    self._sent.pop((stream, seq), None)  # type: ignore[arg-type]
                self._timeout_s = self._ack_timeout_s

    @property
    def in_flight(self) -> int:
        return len(self._sent)

    def drain(self, timeout_s: float) -> bool:
        """Send what is waiting and wait for the fleet's acknowledgements; True when all were stored."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._link.is_connected():
            self.pump()
            if not len(self._outbox):
                return True
            self.wake.wait(0.05)
            self.wake.clear()
        return False

    def run(self, stop: threading.Event, idle_s: float = 1.0) -> None:
        """The sender thread: pump whenever woken (append, ack, connect) or every ``idle_s``."""
        failing = False
        while not stop.is_set():
            self.wake.wait(idle_s)
            self.wake.clear()
            try:
                self.pump()
                failing = False
            except sqlite3.OperationalError as exc:
                # a full disk (or a locked file) is the device's condition, not a bug: one line per
                # streak, and the next pump retries
                if not failing:
                    log.warning("outbox cannot write its database (%s); retrying", exc)
                failing = True
            except sqlite3.Error:
                log.exception("outbox failed; retrying")
