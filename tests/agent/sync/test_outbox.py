"""The on-disk outbox: order, bound (telemetry dropped before events), sequence numbers across
restarts, kill -9, and the sender that deletes a message only when the fleet acknowledged it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.sync.outbox import Outbox, OutboxSender
from sdk.messages import Ack

TOPICS = {"telemetry": "t", "events": "e"}


def _payload(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


def test_append_keeps_order_and_seq_survives_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    assert [box.append(_payload) for _ in range(3)] == [0, 1, 2]
    assert [box.append(_payload, "events") for _ in range(2)] == [0, 1]  # one counter per stream
    box.remove([0, 1, 2])
    box.close()
    box = Outbox(tmp_path / "o.sqlite3")
    assert box.append(_payload) == 3  # never reuses a sequence number, even when empty
    assert box.append(_payload, "events") == 2
    assert box.pending() == [(3, _payload(3))]
    assert [seq for seq, _ in box.pending("events")] == [0, 1, 2]


def test_bound_drops_oldest_telemetry_first_counts_and_records(tmp_path: Path, caplog) -> None:
    box = Outbox(tmp_path / "o.sqlite3", max_messages=5)
    for _ in range(12):
        box.append(_payload)
    assert [seq for seq, _ in box.pending()] == [7, 8, 9, 10, 11]
    assert box.dropped("telemetry") == 7
    assert "dropped the 1 oldest telemetry (7 in total)" in caplog.text
    # events push telemetry out, never the other way round
    for _ in range(4):
        box.append(_payload, "events")
    assert [seq for seq, _ in box.pending()] == [11]
    box.append(_payload)
    assert [seq for seq, _ in box.pending()] == [12] and box.count("events") == 4
    # with no telemetry left to drop, the oldest event goes
    for _ in range(2):
        box.append(_payload, "events")
    assert box.count("telemetry") == 0
    assert [seq for seq, _ in box.pending("events")] == [1, 2, 3, 4, 5]
    assert box.dropped("events") == 1
    box.close()
    assert Outbox(tmp_path / "o.sqlite3").dropped("telemetry") == 13  # recorded on disk


def test_byte_bound(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", max_bytes=100)
    for _ in range(20):
        box.append(lambda seq: b"x" * 30)
    assert len(box) == 3 and box.dropped("telemetry") == 17


class _Link:
    def __init__(self) -> None:
        self.connected = True
        self.sent: list[tuple[str, int]] = []

    def is_connected(self) -> bool:
        return self.connected

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        self.sent.append((topic, json.loads(payload)["seq"]))
        return len(self.sent)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sender_deletes_only_what_the_fleet_acknowledged(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    for _ in range(5):
        box.append(_payload)
    box.append(_payload, "events")
    link = _Link()
    sender = OutboxSender(box, link, TOPICS, window=3, clock=_Clock())
    assert sender.pump() == 3 and sender.pump() == 0  # window full
    assert link.sent == [("e", 0), ("t", 0), ("t", 1)]  # events first
    sender.acknowledged(Ack(telemetry=[0, 7], events=[0]))  # 7: not ours (any more): ignored
    assert sender.pump() == 2
    assert link.sent[3:] == [("t", 2), ("t", 3)]
    assert [seq for seq, _ in box.pending()] == [1, 2, 3, 4] and box.count("events") == 0
    link.connected = False
    sender.acknowledged(Ack(telemetry=[1]))
    assert sender.pump() == 0 and len(box) == 3  # acks retire even while disconnected


def test_sender_resends_after_reconnect_and_when_overdue(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    for _ in range(3):
        box.append(_payload)
    link, clock = _Link(), _Clock()
    sender = OutboxSender(box, link, TOPICS, window=10, ack_timeout_s=10, ack_timeout_max_s=25, clock=clock)
    assert sender.pump() == 3
    # a broker restarted without persistence: everything unacknowledged goes again
    sender.reconnected()
    assert sender.pump() == 3 and [s for _, s in link.sent] == [0, 1, 2, 0, 1, 2]
    sender.acknowledged(Ack(telemetry=[0]))
    assert sender.pump() == 0
    # the fleet was away: overdue messages go again, with a timeout that doubles up to the maximum
    clock.now += 9.9
    assert sender.pump() == 0
    clock.now += 0.1
    assert sender.pump() == 2
    clock.now += 10
    assert sender.pump() == 0  # now 20 s
    clock.now += 10
    assert sender.pump() == 2
    clock.now += 24.9
    assert sender.pump() == 0  # capped at 25 s
    clock.now += 0.1
    assert sender.pump() == 2
    # an acknowledgement sets the timeout back
    sender.acknowledged(Ack(telemetry=[1]))
    assert sender.pump() == 0
    clock.now += 10
    assert sender.pump() == 1 and sender.resent == 3 + 2 + 2 + 2 + 1
    assert [seq for seq, _ in box.pending()] == [2]


def test_outbox_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    code = (
        "import sys, time; from agent.sync.outbox import Outbox\n"
        f"box = Outbox(__import__('pathlib').Path({str(path)!r}))\n"
        "print('ready', flush=True)\n"
        "while True: box.append(lambda s: b'{\"seq\": %d}' % s)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=Path(__file__).parents[3]
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    box = Outbox(path)
    rows = box.pending()
    assert len(rows) > 10
    assert [seq for seq, _ in rows] == list(range(len(rows)))
    assert all(json.loads(p)["seq"] == seq for seq, p in rows)
    assert box.append(_payload) == len(rows)


def test_drain_waits_for_the_fleet(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    for _ in range(3):
        box.append(_payload)
    link = _Link()
    sender = OutboxSender(box, link, TOPICS, window=2)
    assert sender.drain(0.2) is False  # nobody acknowledges: not drained, nothing lost
    assert len(box) == 3
    sender.acknowledged(Ack(telemetry=[0, 1, 2]))
    assert sender.drain(0.5) is True and len(box) == 0
