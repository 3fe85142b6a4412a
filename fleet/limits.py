"""What the fleet accepts from a device over MQTT, checked one message at a time.

Every check a database write could otherwise fail on (a number too large for its column, a string
too long for it) is a bound in the sdk schemas, checked here per message, so one bad message is
dropped and counted and never costs the rest of its batch. What only the fleet can judge (its own
clock, its retention) is checked here too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from fleet.settings import FleetSettings
from sdk.errors import ProtocolError, validation_summary
from sdk.messages import Event, Message, ReportedState, Status, Telemetry
from sdk.topics import TopicKind, parse_topic

SCHEMAS: dict[str, type[Message]] = {
    "telemetry": Telemetry,
    "reported": ReportedState,
    "status": Status,
    "events": Event,
}
#: pydantic error types that mean "not JSON at all" rather than "JSON of the wrong shape".
_NOT_JSON = frozenset({"json_invalid", "json_type"})


class RejectReason(enum.Enum):
    """The ``reason`` label of ``edgefleet_ingest_rejected_total``."""

    BAD_TOPIC = "bad_topic"
    OVERSIZE = "oversize"
    MALFORMED = "malformed"
    INVALID = "invalid"
    FUTURE_TIME = "future_time"
    STALE_TIME = "stale_time"
    UNKNOWN_DEVICE = "unknown_device"
    DB_ERROR = "db_error"
    #: a report of a revision the fleet never issued to the device (forged or broken)
    UNISSUED_REVISION = "unissued_revision"
    #: the fleet's inbox was full (ingest far behind); dropped before ingest read it
    QUEUE_FULL = "queue_full"


class Rejected(ProtocolError):
    """One device message the fleet drops, with the device it came from (or its topic) and why."""

    def __init__(self, device: str, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.device = device
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Accepted:
    """A message that passed every check, ready to be stored."""

    device_id: str
    kind: TopicKind
    msg: Any
    received_at: float


@dataclass(frozen=True)
class IngestLimits:
    max_message_bytes: int = 256 * 1024
    #: how far ahead of the fleet's clock a telemetry sample may be dated
    clock_skew_s: float = 300.0
    #: how far back a telemetry sample may be dated (0: no limit); older ones are past retention
    max_age_s: float = 0.0
    #: event reasons and reported errors longer than this are cut before they are stored
    max_text: int = 2000

    @classmethod
    def from_settings(cls, s: FleetSettings) -> IngestLimits:
        return cls(
            max_message_bytes=int(s.mqtt_max_message_kb * 1024),
            clock_skew_s=s.ingest_clock_skew_s,
            max_age_s=s.telemetry_retention_s,
            max_text=s.ingest_max_text,
        )

    def accept(self, name: str, payload: bytes, received_at: float) -> Accepted | None:
        """The checked message, None for one that is rightly ignored, or :class:`Rejected`."""
        try:
            device_id, kind = parse_topic(name)
        except ProtocolError as exc:
            raise Rejected(name[:200], RejectReason.BAD_TOPIC, str(exc)) from None
        schema = SCHEMAS.get(kind)
        if schema is None:
            return None  # a topic the fleet publishes itself (desired)
        if len(payload) > self.max_message_bytes:
            raise Rejected(
                device_id,
                RejectReason.OVERSIZE,
                f"{kind} message of {len(payload)} bytes (the limit is {self.max_message_bytes})",
            )
        if kind == "status" and not payload:
            return None  # a retained status being cleared
        try:
            msg = schema.model_validate_json(payload)
        except ValidationError as exc:
            reason = (
                RejectReason.MALFORMED
                if any(e["type"] in _NOT_JSON for e in exc.errors())
                else RejectReason.INVALID
            )
            raise Rejected(device_id, reason, f"{kind}: {validation_summary(exc)}") from None
        if isinstance(msg, Telemetry):
            self._check_time(device_id, msg, received_at)
        return Accepted(device_id, kind, msg, received_at)

    def _check_time(self, device_id: str, msg: Telemetry, received_at: float) -> None:
        # The newest sample is the device's health: one dated next week would hide every real
        # one until then. Old ones are kept back to the retention, as a buffer replayed after an outage.
        ahead = msg.time - received_at
        if ahead > self.clock_skew_s:
            raise Rejected(
                device_id,
                RejectReason.FUTURE_TIME,
                f"telemetry seq {msg.seq} is dated {ahead:.0f} s ahead of the fleet's clock "
                f"(allowed: {self.clock_skew_s:g} s)",
            )
        if self.max_age_s > 0 and received_at - msg.time > self.max_age_s:
            raise Rejected(
                device_id,
                RejectReason.STALE_TIME,
                f"telemetry seq {msg.seq} is dated {received_at - msg.time:.0f} s ago, "
                f"past the retention of {self.max_age_s:g} s",
            )

    def cut(self, text: str | None) -> str | None:
        """``text`` cut to :attr:`max_text` characters, marked as cut."""
        if text is None or len(text) <= self.max_text:
            return text
        return text[: self.max_text] + f"... [{len(text) - self.max_text} characters cut]"
