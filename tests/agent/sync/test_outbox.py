"""The on-disk telemetry outbox: order, bound, sequence numbers across restarts, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.sync.outbox import Outbox, OutboxSender


def _payload(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


def test_append_keeps_order_and_seq_survives_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    assert [box.append(_payload) for _ in range(3)] == [0, 1, 2]
    box.remove([0, 1, 2])
    box.close()
    box = Outbox(tmp_path / "o.sqlite3")
    assert box.append(_payload) == 3  # never reuses a sequence number, even when empty
    assert box.pending(-1, 10) == [(3, _payload(3))]


def test_bound_drops_oldest_first_and_counts(tmp_path: Path, caplog) -> None:
    box = Outbox(tmp_path / "o.sqlite3", max_messages=5)
    for _ in range(12):
        box.append(_payload)
    assert [seq for seq, _ in box.pending(-1, 100)] == [7, 8, 9, 10, 11]
    assert box.dropped == 7
    assert "dropped the 1 oldest (7 in total)" in caplog.text


def test_byte_bound(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", max_bytes=100)
    for _ in range(20):
        box.append(lambda seq: b"x" * 30)
    assert len(box) == 3 and box.dropped == 17


class _Link:
    def __init__(self) -> None:
        self.connected = True
        self.sent: list[tuple[int, bytes]] = []

    def is_connected(self) -> bool:
        return self.connected

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        self.sent.append((len(self.sent) + 100, payload))
        return self.sent[-1][0]


def test_sender_hands_a_window_in_order_and_retires_on_ack(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    for _ in range(5):
        box.append(_payload)
    link = _Link()
    sender = OutboxSender(box, link, "t", window=2)
    assert sender.pump() == 2 and sender.pump() == 0  # window full
    sender.acknowledged(100)
    sender.acknowledged(999)  # someone else's message
    assert sender.pump() == 1
    assert [json.loads(p)["seq"] for _, p in link.sent] == [0, 1, 2]
    assert [seq for seq, _ in box.pending(-1, 10)] == [1, 2, 3, 4]
    link.connected = False
    sender.acknowledged(101)
    assert sender.pump() == 0 and len(box) == 3


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
    rows = box.pending(-1, 1_000_000)
    assert len(rows) > 10
    assert [seq for seq, _ in rows] == list(range(len(rows)))
    assert all(json.loads(p)["seq"] == seq for seq, p in rows)
    assert box.append(_payload) == len(rows)


def test_drain_waits_for_acknowledgements(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    for _ in range(3):
        box.append(_payload)
    link = _Link()
    sender = OutboxSender(box, link, "t", window=2)
    assert sender.drain(0.2) is False  # nobody acknowledges: not drained, nothing lost
    assert len(box) == 3
    for mid, _ in link.sent:
        sender.acknowledged(mid)
    sender.pump()
    for mid, _ in link.sent[2:]:
        sender.acknowledged(mid)
    assert sender.drain(0.5) is True and len(box) == 0
