"""Delivery acknowledgements: after an ingest batch commits, each device hears what was stored.

A message handed to the broker is not yet in the fleet's database: the broker may restart without
its persistence file, the fleet may be away or lose its in-memory queue. So the agent keeps every
telemetry sample and event in its disk outbox until the fleet lists its ``seq`` in an ``ack``
(``edgefleet/v1/devices/{id}/ack``, QoS 1, not retained; :class:`sdk.messages.Ack`) and sends it
again otherwise. An ack is published only after the commit, so a crash before it means a resend,
never a loss; a repeat that was stored before is acknowledged again (the INSERTs skip it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from fleet.ingest import Stored
from sdk.messages import MAX_ACK_SEQS, Ack
from sdk.topics import topic

log = logging.getLogger(__name__)

#: publish(topic, payload, qos=...), e.g. :meth:`fleet.mqtt.client.FleetMqtt.publish`.
Publish = Callable[..., None]


class Acknowledger:
    def __init__(self, publish: Publish) -> None:
        self._publish = publish

    def committed(self, batch: Iterable[Stored]) -> int:
        """Acknowledge the telemetry and events of a committed batch; returns how many acks went.

        ``batch`` is what :meth:`fleet.ingest.Ingest.commit` stored; other kinds (reported,
        status: retained state, not the outbox's business) and events without a seq are skipped.
        """
        seqs: dict[str, dict[str, set[int]]] = {}
        for device_id, kind, seq in batch:
            if kind in ("telemetry", "events") and seq is not None:
                seqs.setdefault(device_id, {"telemetry": set(), "events": set()})[kind].add(seq)
        for device_id, streams in seqs.items():
            telemetry, events = sorted(streams["telemetry"]), sorted(streams["events"])
            # one batch stays far below the bound; split anyway so no ack is ever refused
            for start in range(0, max(len(telemetry), len(events)), MAX_ACK_SEQS):
                ack = Ack(
                    telemetry=telemetry[start : start + MAX_ACK_SEQS],
                    events=events[start : start + MAX_ACK_SEQS],
                )
                try:
                    self._publish(topic("ack", device_id), ack.to_bytes(), qos=1)
                except Exception:  # the agent sends again; the ingest thread must go on
                    log.exception("could not acknowledge to device %s", device_id)
        return len(seqs)
