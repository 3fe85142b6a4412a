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

    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.listen_host in ("0.0.0.0", "::", "") else self.listen_host
        return f"http://{host}:{self.listen_port}"
