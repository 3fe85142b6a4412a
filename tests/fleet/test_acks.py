"""Delivery acknowledgements: what a committed ingest batch stored is acknowledged to each device,
events are stored once however often they are resent, and nothing is acknowledged before a commit."""

from __future__ import annotations

import time

from sqlalchemy import func, select

from fleet.acks import Acknowledger
from fleet.db.models import EventRecord
from fleet.ingest import Ingest
from sdk.messages import Ack, Event, ReportedState, Telemetry, parse_message
from sdk.topics import topic
from tests.fleet.conftest import Fleet


class Sent(list):
    def __call__(self, name: str, payload: bytes, *, qos: int = 1) -> None:
        assert qos == 1
        self.append((name, parse_message(Ack, payload)))


def ingest(fleet: Fleet, sent: Sent) -> Ingest:
    ing = Ingest(fleet.ctx.db, None, fleet.ctx.metrics)  # type: ignore[arg-type]
    ing.on_stored = Acknowledger(sent).committed
    return ing


def tele(seq: int, t: float) -> bytes:
    return Telemetry(seq=seq, time=t, interval_s=1).to_bytes()


def event(seq: int | None, t: float) -> bytes:
    return Event(kind="download", reason="16 MB", seq=seq, time=t).to_bytes()


def events_stored(fleet: Fleet, device_id: str) -> int:
    with fleet.ctx.db.session() as s:
        return s.scalar(
            select(func.count()).select_from(EventRecord).where(EventRecord.device_id == device_id)
        )


def test_each_device_hears_what_was_stored_and_repeats_are_stored_once(fleet: Fleet) -> None:
    fleet.register("d0")
    fleet.register("d1")
    sent = Sent()
    now = time.time()
    batch = [(topic("telemetry", "d0"), tele(i, now + i)) for i in range(5)]
    batch += [(topic("events", "d0"), event(i, now + i)) for i in range(2)]
    batch += [(topic("telemetry", "d1"), tele(7, now))]
    batch += [(topic("reported", "d1"), ReportedState(revision=1, agent_version="a").to_bytes())]
    ing = ingest(fleet, sent)
    ing.process([(t, p, now) for t, p in batch])
    assert dict(sent) == {
        topic("ack", "d0"): Ack(telemetry=[0, 1, 2, 3, 4], events=[0, 1]),
        topic("ack", "d1"): Ack(telemetry=[7]),
    }
    # the agent sends again what it has no ack for (the ack was lost): stored once, acknowledged again
    sent.clear()
    ing.process([(t, p, now + 5) for t, p in batch[3:7]])
    assert dict(sent) == {topic("ack", "d0"): Ack(telemetry=[3, 4], events=[0, 1])}
    assert events_stored(fleet, "d0") == 2
    h = fleet.client.get("/api/v1/devices/d0/health", headers=fleet.admin).json()
    assert h["samples"] == 5


def test_events_of_older_agents_have_no_seq_are_stored_and_not_acknowledged(fleet: Fleet) -> None:
    fleet.register("d0")
    sent = Sent()
    now = time.time()
    ingest(fleet, sent).process([(topic("events", "d0"), event(None, now), now)] * 2)
    assert events_stored(fleet, "d0") == 2 and sent == []


def test_nothing_is_acknowledged_when_the_batch_does_not_commit(fleet: Fleet, monkeypatch) -> None:
    from fleet import telemetry

    fleet.register("d0")
    sent = Sent()

    def broken(*_args: object) -> int:
        raise RuntimeError("disk gone")

    monkeypatch.setattr(telemetry, "store_batch", broken)
    # the batch, then the message alone, fail: it is dropped as a database error, never acknowledged
    ing = ingest(fleet, sent)
    assert ing.process([(topic("telemetry", "d0"), tele(0, time.time()), time.time())]) == []
    assert sent == []
    assert fleet.ctx.metrics.ingest_rejected.labels("db_error")._value.get() == 1
