"""Schemas of the MQTT messages between fleet and agents (see DESIGN.md, MQTT protocol).

Every message carries ``schema`` (its version). Readers accept unknown fields so that a newer
sender does not break an older reader; they refuse a schema version they do not know.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sdk.errors import ProtocolError, validation_summary
from sdk.manifest import check_name

MESSAGE_SCHEMA = 1
#: Bounds of every number on the wire, so a reader refuses an out-of-range message on its own
#: instead of failing the database write of a whole batch. Sequence numbers, revisions and counters
#: fit a 32-bit signed integer: the fleet's INTEGER columns on PostgreSQL (68 years of 1 Hz telemetry).
MAX_INT = 2**31 - 1
#: byte counts (memory, disk, bundle sizes) fit a 64-bit signed integer (BIGINT).
MAX_BYTES = 2**63 - 1
#: times are epoch seconds between 1970 and 2100; no reader trusts more than that.
MAX_TIME = 4_102_444_800.0
#: strings the fleet stores in a column of this width (model names, versions, profiles).
MAX_NAME = 128
#: list lengths: models on one device, tensors with drift.
MAX_ITEMS = 256


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
    size: int = Field(ge=0, le=MAX_BYTES)
    #: the fleet authorizes activating this version even if the device has verified a newer one
    #: (a rollback). Honoured only in a desired state signed by the pinned fleet key.
    allow_downgrade: bool = False
    #: shadow evaluation: install and verify this version beside the active one of the same name,
    #: mirror a sample of live requests to it off the request path and report how it compares
    #: (ModelTelemetry.shadow); it answers no caller and never becomes active by itself.
    shadow: bool = False

    @field_validator("name", "version")
    @classmethod
    def _safe(cls, v: str) -> str:
        return check_name(v)


class DesiredState(Message):
    """fleet → agent, QoS 1, retained: what the device should run. Idempotent by ``revision``."""

    revision: int = Field(ge=0, le=MAX_INT)
    models: list[DesiredModel] = Field(default_factory=list, max_length=MAX_ITEMS)
    rollout_id: str | None = None
    issued_at: float = Field(default_factory=now, ge=0, le=MAX_TIME, allow_inf_nan=False)
    #: the device this state is for: a state signed for one device is refused by every other.
    device_id: str | None = Field(None, max_length=MAX_NAME)
    #: Unix time after which the device does not apply this state (stops an indefinite freeze);
    #: the fleet re-signs it before then. See sdk.desired_auth.
    expires: float | None = Field(None, ge=0, le=MAX_TIME, allow_inf_nan=False)
    #: id (sdk.keys.key_id) of the fleet key that signed, and the base64 Ed25519 signature over
    #: the canonical bytes of every other field (sdk.desired_auth.canonical_bytes).
    key_id: str | None = Field(None, max_length=MAX_NAME)
    signature: str | None = Field(None, max_length=MAX_NAME)


# --------------------------------------------------------------------------------- reported state

ModelStateName = Literal["downloading", "verifying", "active", "failed", "rolled_back", "inactive"]


class ReportedModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(max_length=MAX_NAME)
    #: the desired version this entry is about (the one that failed, when ``state`` is failed).
    version: str | None = Field(None, max_length=MAX_NAME)
    state: ModelStateName
    #: the version actually serving now (differs from ``version`` after a failure or a rollback).
    active_version: str | None = Field(None, max_length=MAX_NAME)
    previous_version: str | None = Field(None, max_length=MAX_NAME)
    error: str | None = None


class ReportedState(Message):
    """agent → fleet, QoS 1, retained: what the device has applied."""

    #: the last revision handled, also when it failed.
    revision: int = Field(ge=-1, le=MAX_INT)
    #: a newer revision being worked on right now, if any.
    applying_revision: int | None = Field(None, ge=-1, le=MAX_INT)
    models: list[ReportedModel] = Field(default_factory=list, max_length=MAX_ITEMS)
    agent_version: str = Field(max_length=64)
    profile: str | None = Field(None, max_length=MAX_NAME)
    last_error: str | None = None
    time: float = Field(default_factory=now, ge=0, le=MAX_TIME, allow_inf_nan=False)


# ----------------------------------------------------------------------------------------- status


class Status(Message):
    """agent → fleet, QoS 1, retained; the broker publishes :func:`offline_status` as last will."""

    state: Literal["online", "offline"]
    time: float | None = Field(None, ge=0, le=MAX_TIME, allow_inf_nan=False)


def offline_status() -> Status:
    # No timestamp: the last will is fixed when the agent connects, not when it dies.
    return Status(state="offline")


# -------------------------------------------------------------------------------------- telemetry


#: a share between 0 and 1
Ratio = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
#: a finite non-negative figure (errors, drift)
Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]
#: classes a confusion matrix is sent for: 64 x 64 counts stay far below the payload cap
MAX_CONFUSION_CLASSES = 64


class ClassQuality(BaseModel):
    """One class of a classifier over one window, from the labels fed back."""

    model_config = ConfigDict(extra="allow")

    label: str = Field(max_length=MAX_NAME)
    #: labelled samples whose true class is this one
    support: int = Field(ge=0, le=MAX_INT)
    precision: Ratio | None = None
    recall: Ratio | None = None
    f1: Ratio | None = None


class GroupQuality(BaseModel):
    """One group (the ``group`` request parameter: a site, scanner, age band) over one window."""

    model_config = ConfigDict(extra="allow")

    group: str = Field(max_length=MAX_NAME)
    samples: int = Field(ge=0, le=MAX_INT)
    #: fewer than ``ModelQuality.min_samples`` samples: no figure is sent for this group
    suppressed: bool = False
    #: share of predictions of the positive class (fairlearn's selection rate)
    selection_rate: Ratio | None = None
    accuracy: Ratio | None = None
    recall: Ratio | None = None


class ModelQuality(BaseModel):
    """Monitoring aggregates of one model version over one window; never an input, output, label or
    request id. Every figure is over at least ``min_samples`` samples, else it is left out."""

    model_config = ConfigDict(extra="allow")

    window_s: float = Field(gt=0, le=30 * 86_400, allow_inf_nan=False)
    #: predictions made in the window, and how many of them got a label fed back
    samples: int = Field(ge=0, le=MAX_INT)
    labeled: int = Field(ge=0, le=MAX_INT)
    #: k: the smallest count any figure (or group) is computed over
    min_samples: int = Field(ge=1, le=MAX_INT)
    # classifiers, measured on labels fed back
    accuracy: Ratio | None = None
    macro_precision: Ratio | None = None
    macro_recall: Ratio | None = None
    macro_f1: Ratio | None = None
    classes: list[ClassQuality] = Field(default_factory=list, max_length=MAX_ITEMS)
    #: rows: true class, columns: predicted class, in ``classes`` order
    confusion: list[list[int]] | None = Field(None, max_length=MAX_CONFUSION_CLASSES)
    # regression outputs, measured on labels fed back
    mae: Amount | None = None
    rmse: Amount | None = None
    #: accuracy estimated without labels from the model's calibrated confidence (CBPE)
    estimated_accuracy: Ratio | None = None
    #: population stability index of the predicted class (or output) distribution vs the reference
    prediction_drift: Amount | None = None
    #: data quality: share of input values that are NaN, and outside the reference ranges
    nan_share: Ratio | None = None
    out_of_range_share: Ratio | None = None
    groups: list[GroupQuality] = Field(default_factory=list, max_length=MAX_ITEMS)
    #: fairlearn's definitions over the groups that are not suppressed
    demographic_parity_difference: Ratio | None = None
    equal_opportunity_difference: Ratio | None = None

    @field_validator("confusion")
    @classmethod
    def _square_counts(cls, v: list[list[int]] | None) -> list[list[int]] | None:
        if v is not None and any(len(row) != len(v) or min(row, default=0) < 0 for row in v):
            raise ValueError("confusion must be a square matrix of counts")
        return v


class ShadowQuality(BaseModel):
    """A shadow version (DesiredModel.shadow) compared with the active one on mirrored requests."""

    model_config = ConfigDict(extra="allow")

    version: str = Field(max_length=MAX_NAME)
    #: mirrored requests both versions answered in the window
    samples: int = Field(ge=0, le=MAX_INT)
    #: share of mirrored requests where both versions agree (argmax, or within tolerance)
    agreement: Ratio | None = None
    latency_ms_p50: Amount | None = None
    latency_ms_p99: Amount | None = None
    #: the active version's latency on the same mirrored requests, measured the same way
    active_latency_ms_p50: Amount | None = None
    active_latency_ms_p99: Amount | None = None
    #: both versions' accuracy on mirrored requests that got a label fed back
    accuracy: Ratio | None = None
    active_accuracy: Ratio | None = None
    errors: int = Field(0, ge=0, le=MAX_INT)
    #: requests not mirrored in the interval because the shadow's queue was full (it lags behind)
    dropped: int = Field(0, ge=0, le=MAX_INT)


class ModelTelemetry(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(max_length=MAX_NAME)
    version: str = Field(max_length=MAX_NAME)
    requests: int = Field(ge=0, le=MAX_INT)
    errors: int = Field(ge=0, le=MAX_INT)
    latency_ms_p50: float | None = Field(None, ge=0, allow_inf_nan=False)
    latency_ms_p95: float | None = Field(None, ge=0, allow_inf_nan=False)
    latency_ms_p99: float | None = Field(None, ge=0, allow_inf_nan=False)
    #: per tensor: population stability index of live data vs the manifest's reference.
    drift: dict[str, float] = Field(default_factory=dict, max_length=MAX_ITEMS)
    #: monitoring of this version over the window (issue 9), when the agent has any to send
    quality: ModelQuality | None = None
    #: a shadow version of this model being evaluated beside it
    shadow: ShadowQuality | None = None

    @field_validator("drift")
    @classmethod
    def _finite_drift(cls, v: dict[str, float]) -> dict[str, float]:
        if not all(math.isfinite(x) for x in v.values()):
            raise ValueError("drift values must be finite numbers")
        return v


class Telemetry(Message):
    """agent → fleet, QoS 1. Counters are per interval (since the previous message)."""

    time: float = Field(default_factory=now, ge=0, le=MAX_TIME, allow_inf_nan=False)
    #: per-device sequence number: buffered messages are sent in order and duplicates are dropped.
    seq: int = Field(ge=0, le=MAX_INT)
    #: at most a day: a longer interval is no telemetry
    interval_s: float = Field(gt=0, le=86_400, allow_inf_nan=False)
    #: psutil's system-wide figure (0-100); per-process figures may pass 100 on many cores.
    cpu_percent: float | None = Field(None, ge=0, le=100_000, allow_inf_nan=False)
    memory_bytes: int | None = Field(None, ge=0, le=MAX_BYTES)
    memory_percent: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    #: finite, else unbounded: a broken thermal zone's reading must not cost the device its telemetry
    temperature_c: float | None = Field(None, allow_inf_nan=False)
    disk_free_bytes: int | None = Field(None, ge=0, le=MAX_BYTES)
    disk_used_percent: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    models: list[ModelTelemetry] = Field(default_factory=list, max_length=MAX_ITEMS)

    @model_validator(mode="after")
    def _sums_fit(self) -> Telemetry:
        # the fleet stores the per-message sums in one INTEGER column each
        if sum(m.requests for m in self.models) > MAX_INT or sum(m.errors for m in self.models) > MAX_INT:
            raise ValueError(f"the models' requests or errors add up to more than {MAX_INT}")
        return self


# ----------------------------------------------------------------------------------------- events

EventKind = Literal["download", "verify", "activate", "rollback", "failure", "install"]


class Event(Message):
    """agent → fleet, QoS 1: one step of an update, with its reason."""

    kind: EventKind
    ok: bool = True
    model: str | None = Field(None, max_length=MAX_NAME)
    version: str | None = Field(None, max_length=MAX_NAME)
    revision: int | None = Field(None, ge=-1, le=MAX_INT)
    reason: str | None = None
    time: float = Field(default_factory=now, ge=0, le=MAX_TIME, allow_inf_nan=False)
    #: per-device event sequence number (the agent's outbox): with ``time`` it makes a resent
    #: event a repeat the fleet stores once. Absent from agents older than acknowledgements.
    seq: int | None = Field(None, ge=0, le=MAX_INT)


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
