"""The one settings class of the fleet. Built by the CLI (or a test) and passed in; nothing reads it at import."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class FleetSettings(BaseSettings):
    """Every knob of ``edge-fleet serve``; environment variables ``EDGEFLEET_*`` override defaults."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="forbid")

    #: SQLAlchemy URL: ``sqlite:///path/fleet.db`` or ``postgresql+psycopg://user@host/db``.
    db_url: str = "sqlite:///fleet.db"
    #: ``mqtt://host:port`` (or ``mqtts://``); empty for an API-only replica without MQTT.
    broker_url: str = ""
    broker_username: str | None = None
    broker_password: str | None = None
    broker_ca_file: Path | None = None
    #: "5" lets replicas share telemetry with ``$share`` subscriptions; amqtt speaks only "3.1.1".
    mqtt_protocol: Literal["3.1.1", "5"] = "3.1.1"
    #: MQTT v5 share group for the consumed topics; None subscribes normally (single node).
    share_group: str | None = None
    #: how device broker accounts are provisioned: "none" (the broker is open or managed elsewhere),
    #: "dynsec" (Mosquitto dynamic security plugin, via the fleet's admin MQTT user) or "db"
    #: (the embedded broker asks the fleet database directly).
    broker_accounts: Literal["none", "dynsec", "db"] = "none"

    #: bundle storage: a folder, or ``s3://bucket/prefix`` (endpoint, region and credentials from the
    #: standard AWS environment variables and config files: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
    storage: str = "bundles"
    #: S3: uploads at least this large go up in parts of this size (S3's minimum part is 5 MiB).
    storage_multipart_mb: float = 16.0
    #: S3: 0 streams downloads through the fleet (devices need to reach only the fleet); above 0,
    #: devices are redirected to a presigned URL valid this many seconds (they must reach the S3 endpoint).
    storage_presign_s: float = 0.0
    #: S3: local folder where uploads are verified before they go to the bucket (default: system temp).
    staging_dir: Path | None = None
    #: uploads larger than this are refused while they stream in (413), before they fill the disk.
    max_bundle_mb: float = 4096.0
    #: Ed25519 public keys (files or folders of ``*.pub``) that uploaded bundles must be signed with.
    trust_keys: list[Path] = Field(default_factory=list)
    #: Ed25519 private key the fleet signs every desired state with (created on first start if
    #: missing); devices pin its public half at registration. None: desired states go unsigned.
    fleet_key_file: Path | None = None
    #: a signed desired state expires this long after it is signed; the fleet re-signs and
    #: republishes every state after half of it, so devices that hear the fleet never see one expire.
    desired_validity_s: float = Field(7 * 24 * 3600.0, gt=0)

    listen_host: str = "127.0.0.1"
    listen_port: int = 8800
    #: serve https with this certificate chain and key (``edge-fleet up --tls`` issues them).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: addresses of reverse proxies whose X-Forwarded-For the fleet believes (comma-separated, as
    #: uvicorn's ``forwarded_allow_ips``). Empty: the peer address counts, for the audit log and the
    #: wrong-token limit alike, so no client can choose the address they see.
    trusted_proxies: str = ""
    #: the CA handed to devices in their credentials (``ca_pem``) to verify https and mqtts.
    device_ca_file: Path | None = None
    #: base URL devices use to download bundles; defaults to ``http://{listen}``.
    public_url: str | None = None
    #: the broker URL handed to devices at registration; defaults to ``broker_url``.
    device_broker_url: str | None = None

    #: seconds between rollout controller passes.
    controller_interval_s: float = 0.5
    #: a replica holds the controller lease this long without renewing it.
    controller_lease_s: float = 10.0
    #: MQTT ingest: at most this many messages per database transaction, waiting at most this long.
    ingest_batch: int = 1000
    ingest_max_wait_s: float = 0.2
    #: telemetry rows older than this are deleted (0 keeps everything).
    telemetry_retention_s: float = 7 * 24 * 3600
    #: this many wrong or refused tokens from one client address within the window refuse that
    #: address for the next window (429 with Retry-After, and a WARNING naming it).
    auth_failures_max: int = Field(20, ge=1)
    auth_failures_window_s: float = Field(60.0, gt=0)

    #: MQTT ingest: a device message larger than this is dropped unread (and counted).
    mqtt_max_message_kb: float = 256.0
    #: a telemetry sample dated more than this ahead of the fleet's clock is dropped: it would stay
    #: the device's newest sample (its health) until the clock caught up.
    ingest_clock_skew_s: float = 300.0
    #: event reasons and reported errors are cut to this many characters before they are stored.
    ingest_max_text: int = 2000
    #: events older than this are deleted (0 keeps them by age) ...
    event_retention_s: float = 30 * 24 * 3600
    #: ... and each device keeps at most its newest this many (0: no limit).
    events_per_device: int = 1000
    #: HTTP: a request body (other than a bundle upload) larger than this is refused with 413.
    max_request_kb: float = 1024.0
    #: HTTP: a request whose body sends nothing for this long is answered 408 and closed, so a
    #: client announcing more than it sends cannot hold a connection (and an upload slot) forever.
    body_idle_timeout_s: float = 30.0

    #: alert rules' defaults (a rollout's ``alerts`` overrides them for its devices): drift when
    #: input PSI or prediction drift passes this ...
    alert_drift_psi: float = Field(0.25, ge=0)
    #: accuracy when measured (else estimated) accuracy is this far below the bundle's measured one,
    #: or below ``alert_min_accuracy`` where the bundle has none (None: no accuracy rule then)
    alert_accuracy_drop: float = Field(0.05, ge=0, le=1)
    alert_min_accuracy: float | None = Field(None, ge=0, le=1)
    #: bias when the demographic parity or equal opportunity difference passes this
    alert_bias_gap: float = Field(0.1, ge=0, le=1)
    #: latency when p99 passes the bundle's measured latency times this, or
    #: ``alert_max_latency_ms`` where the bundle has none (None: no latency rule then)
    alert_latency_factor: float = Field(5.0, gt=0)
    alert_max_latency_ms: float | None = Field(None, gt=0)
    #: consecutive windows in breach before an alert goes from pending to firing
    alert_windows: int = Field(2, ge=1, le=1000)
    #: resolved alerts are deleted this long after they resolved (0 keeps them)
    alert_retention_s: float = Field(7 * 24 * 3600.0, ge=0)
    #: ... and each device keeps at most its newest this many resolved alerts (0: no limit)
    alerts_per_device: int = Field(200, ge=0)
    #: POST alert changes in Alertmanager's webhook format to this URL (None: no webhook)
    alert_webhook_url: str | None = None
    alert_webhook_timeout_s: float = Field(5.0, gt=0)
    #: alert changes waiting to be sent; past this the newest are dropped (and counted)
    alert_webhook_queue: int = Field(1000, ge=1)
    #: attempts per POST (with a growing pause between them) before the batch is dropped
    alert_webhook_attempts: int = Field(5, ge=1)
    #: Prometheus: at most this many per-device series (open alerts' values) on /metrics
    alert_metrics_max_series: int = Field(500, ge=0)

    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.listen_host in ("0.0.0.0", "::", "") else self.listen_host
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls_cert else 'http'}://{host}:{self.listen_port}"

    def device_ca_pem(self) -> str | None:
        """The PEM text of :attr:`device_ca_file`, for device credentials."""
        if self.device_ca_file is None:
            return None
        return self.device_ca_file.read_text(encoding="ascii")
