"""API schemas, one family per entity: Create/Update (input) and Public (output).

Secrets (token hashes, broker password hashes) exist only on the table models in ``db.models``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sdk.topics import check_device_id


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# ------------------------------------------------------------------------------------------ devices


class DeviceCreate(_In):
    #: chosen by the caller (e.g. a serial number) or generated.
    device_id: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    profile: str | None = None

    @field_validator("device_id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return check_device_id(v)
        except Exception as exc:
            raise ValueError(str(exc)) from None


class DeviceUpdate(_In):
    labels: dict[str, str] | None = None
    profile: str | None = None


class DevicePublic(_Out):
    id: str
    labels: dict[str, Any]
    profile: str | None
    online: bool
    last_seen: float | None
    desired_revision: int
    desired_models: list[Any]
    reported_revision: int
    reported_models: list[Any]
    agent_version: str | None
    last_error: str | None
    created_at: float


class DeviceHealth(BaseModel):
    device_id: str
    online: bool
    last_seen: float | None
    window_s: float
    samples: int
    requests: int
    errors: int
    error_rate: float | None
    cpu_percent: float | None
    memory_percent: float | None
    temperature_c: float | None
    disk_used_percent: float | None
    latency_ms_p95: float | None
    recent_events: list[dict[str, Any]]


class TelemetryPoint(BaseModel):
    """One telemetry sample of a device; per-model figures are the worst model's."""

    time: float
    interval_s: float
    cpu_percent: float | None
    memory_percent: float | None
    temperature_c: float | None
    disk_used_percent: float | None
    requests: int
    errors: int
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    latency_ms_p99: float | None
    #: the largest population stability index of any model's tensor
    drift: float | None


# ------------------------------------------------------------------------------------------ bundles


class BundlePublic(_Out):
    id: str
    name: str
    version: str
    profile: str
    sha256: str
    size: int
    signer: str
    created_at: float
    #: the manifest's ``metrics`` (size, host-measured latency, fidelity, accuracy before and after)
    metrics: dict[str, Any] = Field(default_factory=dict)


class BundleDetail(BundlePublic):
    manifest: dict[str, Any]


# ----------------------------------------------------------------------------------------- rollouts


class Selector(_In):
    """Devices whose labels include all of ``labels`` and, if given, run ``profile`` (or are listed)."""

    labels: dict[str, str] = Field(default_factory=dict)
    profile: str | None = None
    device_ids: list[str] | None = None


class Strategy(_In):
    canary_count: int | None = Field(None, ge=0)
    canary_share: float | None = Field(None, ge=0, le=1)
    #: the devices after the canaries are split into this many waves.
    waves: int = Field(1, ge=1)
    max_in_flight: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _one_canary(self) -> Strategy:
        if self.canary_count is not None and self.canary_share is not None:
            raise ValueError("give canary_count or canary_share, not both")
        return self


class ShadowGate(_In):
    """A shadow phase: each device runs the new version beside the active one on mirrored requests
    (``DesiredModel.shadow``) and is promoted only when its own figures pass this gate."""

    #: mirrored requests both versions answered, summed over the device's windows since it started
    min_samples: int = Field(100, ge=1)
    #: share of mirrored requests where both versions agree
    min_agreement: float = Field(0.95, ge=0, le=1)
    #: the shadow's p99 latency at most this multiple of the active version's on the same requests
    max_latency_factor: float | None = Field(1.5, gt=0)
    #: the shadow's accuracy (where labels are fed back) at most this far below the active one's
    max_accuracy_drop: float | None = Field(0.02, ge=0, le=1)
    #: mirrored requests the shadow failed on, as a share of those it was given
    max_error_rate: float = Field(0.01, ge=0, le=1)


class Gates(_In):
    #: stop when more than this share of the started devices failed.
    max_failure_share: float = Field(0.0, ge=0, le=1)
    #: stop when a device's errors/requests over its bake time pass this (needs ``min_requests``).
    max_error_rate: float | None = Field(None, ge=0, le=1)
    min_requests: int = Field(1, ge=1)
    bake_s: float = Field(0.0, ge=0)
    #: a device that has not reported the update after this long fails (None: wait forever,
    #: so a device that is offline converges when it returns).
    update_timeout_s: float | None = Field(None, gt=0)
    #: on a failed gate, roll back (True) or only pause (False).
    auto_rollback: bool = True
    #: a baking device passes only after serving at least this many requests on the new version
    #: (its wave waits for it); then the gates below are checked on its own figures since it went
    #: active. None: the bake time alone decides.
    min_served_requests: int | None = Field(None, ge=1)
    #: p99 latency (request-weighted over its windows) at most this, or at most this multiple of
    #: the latency the bundle's converter measured
    max_latency_p99_ms: float | None = Field(None, gt=0)
    max_latency_factor: float | None = Field(None, gt=0)
    #: input PSI (largest tensor) and prediction drift, request-weighted over its windows
    max_drift: float | None = Field(None, ge=0)
    #: measured accuracy (where labels are fed back) at least this, or at most this far below the
    #: accuracy the bundle's converter measured
    min_accuracy: float | None = Field(None, ge=0, le=1)
    max_accuracy_drop: float | None = Field(None, ge=0, le=1)
    #: start with a shadow phase (None: devices switch to the new version directly)
    shadow: ShadowGate | None = None


class AlertThresholds(_In):
    """Alert rules' thresholds; a field left out takes the fleet's default (``EDGEFLEET_ALERT_*``)."""

    #: drift: input PSI (largest tensor) or prediction drift above this ...
    drift_psi: float | None = Field(None, ge=0)
    #: accuracy: measured (else estimated) accuracy below the bundle's measured accuracy minus this
    accuracy_drop: float | None = Field(None, ge=0, le=1)
    #: ... or below this where the bundle has no measured accuracy
    min_accuracy: float | None = Field(None, ge=0, le=1)
    #: bias: demographic parity or equal opportunity difference above this
    bias_gap: float | None = Field(None, ge=0, le=1)
    #: latency: p99 above the bundle's measured latency times this ...
    latency_factor: float | None = Field(None, gt=0)
    #: ... or above this where the bundle has no measured latency
    max_latency_ms: float | None = Field(None, gt=0)
    #: ... for this many consecutive windows (telemetry messages) before an alert fires
    windows: int | None = Field(None, ge=1, le=1000)


class RolloutCreate(_In):
    bundle_id: str
    selector: Selector = Field(default_factory=Selector)
    strategy: Strategy = Field(default_factory=Strategy)
    gates: Gates = Field(default_factory=Gates)
    #: alert thresholds for the devices while they run this rollout's version
    alerts: AlertThresholds | None = None


class RolloutDevicePublic(_Out):
    device_id: str
    wave: int
    state: str
    revision: int | None
    started_at: float | None
    active_at: float | None
    updated_at: float
    error: str | None


class RolloutPublic(_Out):
    id: str
    bundle_id: str
    state: str
    selector: dict[str, Any]
    strategy: dict[str, Any]
    gates: dict[str, Any]
    reason: str | None
    alert_thresholds: dict[str, Any] | None = None
    created_at: float
    updated_at: float
    counts: dict[str, int] = Field(default_factory=dict)
    #: what an operator may do to the rollout in its state (``pause``, ``resume``, ``rollback``)
    actions: list[str] = Field(default_factory=list)


class RolloutDetail(RolloutPublic):
    devices: list[RolloutDevicePublic]


# ------------------------------------------------------------------------------------------- tokens


class TokenCreate(_In):
    role: str
    name: str | None = None
    #: for ``role: device``: the registered device the token belongs to (a replacement token).
    device_id: str | None = None
    #: seconds from now, or a unix time, after which the token is refused (neither: never).
    expires_in: float | None = Field(None, gt=0)
    expires_at: float | None = None

    @model_validator(mode="after")
    def _one_expiry(self) -> TokenCreate:
        if self.expires_in is not None and self.expires_at is not None:
            raise ValueError("give expires_in or expires_at, not both")
        return self


class TokenCreated(BaseModel):
    id: str
    role: str
    token: str
    device_id: str | None = None
    expires_at: float | None = None


class TokenPublic(_Out):
    """A token without its secret."""

    id: str
    role: str
    device_id: str | None
    name: str | None
    created_at: float
    expires_at: float | None
    revoked: bool
    revoked_at: float | None


# -------------------------------------------------------------------------------------------- audit


class AuditEntry(_Out):
    id: int
    time: float
    action: str
    target: str | None
    actor_token_id: str | None
    actor_role: str | None
    actor_device_id: str | None
    actor_name: str | None
    address: str | None
    detail: dict[str, Any]


class AuditPage(BaseModel):
    """Newest first; ``next_before_id`` (when set) asks for the next, older page."""

    entries: list[AuditEntry]
    next_before_id: int | None


# ------------------------------------------------------------------------------------------- alerts


class AlertSelector(_In):
    """Devices whose labels include all of ``labels``; only ``model`` if given."""

    labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    model: str | None = Field(None, max_length=128)


class AlertPolicyIn(_In):
    selector: AlertSelector = Field(default_factory=AlertSelector)
    thresholds: AlertThresholds


class AlertPolicyPublic(_Out):
    name: str
    labels: dict[str, Any]
    model: str | None
    thresholds: dict[str, Any]
    created_at: float
    updated_at: float


class AlertPublic(_Out):
    id: int
    #: drift, accuracy, bias or latency
    rule: str
    #: pending, firing or resolved, since ``since`` (unix time)
    state: str
    device_id: str
    model: str
    version: str
    value: float
    threshold: float
    detail: str | None
    since: float
    started_at: float
    updated_at: float
    #: consecutive windows in breach
    streak: int
