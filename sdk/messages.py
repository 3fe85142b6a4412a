"""Schemas of the MQTT messages between fleet and agents (see DESIGN.md, MQTT protocol).

Every message carries ``schema`` (its version). Readers accept unknown fields so that a newer
sender does not break an older reader; they refuse a schema version they do not know.
"""

from __future__ import annotations

import time
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sdk.errors import ProtocolError, validation_summary
from sdk.manifest import check_name

MESSAGE_SCHEMA = 1


def now() -> float:
    return time.time()


class Message(BaseModel):
    schema_version: int = Field(MESSAGE_SCHEMA, alias="schema")

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v != MESSAGE_SCHEMA:
            raise ValueError(f"message schema {v} is not supported (this edgefleet speaks {MESSAGE_SCHEMA})")
        return v

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode("utf-8")


M = TypeVar("M", bound=Message)


def parse_message(cls: type[M], payload: bytes | str) -> M:
    """Parse and validate a payload; one :class:`ProtocolError` line for anything wrong."""
    try:
        return cls.model_validate_json(payload)
    except ValidationError as exc:
        raise ProtocolError(f"bad {cls.__name__} message: {validation_summary(exc)}") from None


# ---------------------------------------------------------------------------------- desired state


class DesiredModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    bundle_url: str
    sha256: str
    size: int = Field(ge=0)

    @field_validator("name", "version")
    @classmethod
    def _safe(cls, v: str) -> str:
        return check_name(v)


class DesiredState(Message):
    """fleet → agent, QoS 1, retained: what the device should run. Idempotent by ``revision``."""

    revision: int = Field(ge=0)
    models: list[DesiredModel] = Field(default_factory=list)
    rollout_id: str | None = None
    issued_at: float = Field(default_factory=now)


# --------------------------------------------------------------------------------- reported state

ModelStateName = Literal["downloading", "verifying", "active", "failed", "rolled_back", "inactive"]


class ReportedModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    #: the desired version this entry is about (the one that failed, when ``state`` is failed).
    version: str | None = None
    state: ModelStateName
    #: the version actually serving now (differs from ``version`` after a failure or a rollback).
    active_version: str | None = None
    previous_version: str | None = None
    error: str | None = None


class ReportedState(Message):
    """agent → fleet, QoS 1, retained: what the device has applied."""

    #: the last revision handled, also when it failed.
    revision: int = Field(ge=-1)
    #: a newer revision being worked on right now, if any.
    applying_revision: int | None = None
    models: list[ReportedModel] = Field(default_factory=list)
    agent_version: str
    profile: str | None = None
    last_error: str | None = None
    time: float = Field(default_factory=now)


# ----------------------------------------------------------------------------------------- status


class Status(Message):
    """agent → fleet, QoS 1, retained; the broker publishes :func:`offline_status` as last will."""

    state: Literal["online", "offline"]
    time: float | None = None


def offline_status() -> Status:
    # No timestamp: the last will is fixed when the agent connects, not when it dies.
    return Status(state="offline")


# -------------------------------------------------------------------------------------- telemetry


class ModelTelemetry(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    requests: int = Field(ge=0)
    errors: int = Field(ge=0)
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    #: per tensor: population stability index of live data vs the manifest's reference.
    drift: dict[str, float] = Field(default_factory=dict)


class Telemetry(Message):
    """agent → fleet, QoS 1. Counters are per interval (since the previous message)."""

    time: float = Field(default_factory=now)
    #: per-device sequence number: buffered messages are sent in order and duplicates are dropped.
    seq: int = Field(ge=0)
    interval_s: float = Field(gt=0)
    cpu_percent: float | None = None
    memory_bytes: int | None = None
    memory_percent: float | None = None
    temperature_c: float | None = None
    disk_free_bytes: int | None = None
    disk_used_percent: float | None = None
    models: list[ModelTelemetry] = Field(default_factory=list)


# ----------------------------------------------------------------------------------------- events

EventKind = Literal["download", "verify", "activate", "rollback", "failure", "install"]


class Event(Message):
    """agent → fleet, QoS 1: one step of an update, with its reason."""

    kind: EventKind
    ok: bool = True
    model: str | None = None
    version: str | None = None
    revision: int | None = None
    reason: str | None = None
    time: float = Field(default_factory=now)
    #: per-device event sequence number (the agent's outbox): with ``time`` it makes a resent
    #: event a repeat the fleet stores once. Absent from agents older than acknowledgements.
    seq: int | None = Field(None, ge=0)


# -------------------------------------------------------------------------------- acknowledgements

#: the most sequence numbers one :class:`Ack` lists per stream (one ingest batch stays far below).
MAX_ACK_SEQS = 10_000


class Ack(Message):
    """fleet → agent, QoS 1, not retained: the telemetry and events the fleet has STORED.

    Sent after the ingest transaction commits, never before; the agent keeps each message in its
    disk outbox until it is listed here and sends it again otherwise, so a broker restarted
    without persistence or a fleet that was away loses nothing. A repeat is acknowledged again.
    """

    telemetry: list[int] = Field(default_factory=list, max_length=MAX_ACK_SEQS)
    events: list[int] = Field(default_factory=list, max_length=MAX_ACK_SEQS)
