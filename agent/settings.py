"""The agent's settings, one typed object built by the CLI (or a test) and passed in.

A plain pydantic model rather than pydantic-settings: the agent's install stays free of the
fleet's dependencies, and every value comes from the command line anyway.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from sdk.errors import ConfigError

if TYPE_CHECKING:
    # Imported where they are built: serve reads these settings before it starts loading the
    # models, and asyncio (batching) and the monitoring modules can import while those load.
    from agent.batching import SchedulingConfig
    from agent.monitoring.monitor import MonitorSettings
    from agent.monitoring.shadow import ShadowSettings


class SyncSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    fleet_url: str
    broker_url: str
    device_id: str
    credentials_file: Path
    telemetry_interval_s: float = Field(10.0, gt=0)


class ServerTLS(BaseModel):
    """HTTPS for the inference API; with ``client_ca``, only clients with a certificate it signed get in."""

    model_config = ConfigDict(frozen=True)

    cert: Path
    key: Path
    client_ca: Path | None = None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AgentSettings(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    data_dir: Path
    trust_keys: list[Path] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(8700, ge=0, le=65535)
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0)
    #: JSON (the request without binary tensors, or the JSON header before them) is capped lower:
    #: parsed, it takes 10-20 times its size in memory. Larger tensors go in the binary extension.
    max_json_bytes: int = Field(8 * 1024 * 1024, gt=0)
    #: every endpoint but ``/v2/health/*`` then needs ``Authorization: Bearer <token>``.
    api_token: SecretStr | None = None
    tls: ServerTLS | None = None
    #: 4, not 2: with 2 cores, 4 runs in flight served a memory-bound 100 MB model 10-15% faster
    #: at concurrency 4 and 16 (bench/agent.py), same latency at concurrency 1.
    max_concurrency: int = Field(4, ge=1)
    max_queue: int = Field(64, ge=0)
    max_batch_size: int = Field(0, ge=0)
    max_queue_delay_ms: float = Field(2.0, ge=0)
    #: models whose executions average under this run on the event loop (no thread hop).
    inline_below_ms: float = Field(0.3, ge=0)
    #: intra-op threads per model; None: the hardware profile's count, capped at the CPU count.
    threads: int | None = Field(None, ge=1)
    #: keep ONNX Runtime's optimised, prepacked copy of each served model under
    #: ``<data-dir>/cache/onnxruntime`` and build sessions from it (agent.session_cache)
    session_cache: bool = True
    #: how often to look for versions another process activated (``edge-agent install`` beside serve).
    poll_interval_s: float = Field(2.0, gt=0)
    sync: SyncSettings | None = None
    #: model monitoring (issue 9): feedback, rolling-window performance, bias, data quality
    monitoring: bool = True
    #: k: the smallest number of samples any monitoring figure leaving the device is computed over
    monitor_min_samples: int = Field(20, ge=1)
    monitor_window_s: float = Field(3600.0, gt=0, le=30 * 86_400)
    #: recent predictions kept for joining labels fed back later, and for how long
    monitor_ledger_size: int = Field(20_000, ge=0)
    monitor_ledger_max_age_s: float = Field(7 * 86_400.0, gt=0)
    #: the class the bias figures compare (fairlearn's pos_label)
    monitor_positive_class: int = Field(1, ge=0)
    #: shadow evaluation: the share of live requests mirrored to a shadow version, and its queue
    shadow_share: float = Field(0.1, ge=0, le=1)
    shadow_queue: int = Field(16, ge=1, le=10_000)

    #: per model batching that overrides the defaults above: name -> (max batch size, max queue delay ms).
    model_batching: dict[str, tuple[int, float]] = Field(default_factory=dict)

    def check_exposure(self) -> None:
        """A listener other than loopback needs a token or client certificates: an inference API
        open to the network would let anyone use (and probe) the models."""
        if is_loopback(self.host) or self.api_token is not None:
            return
        if self.tls is not None and self.tls.client_ca is not None:
            return
        raise ConfigError(
            f"refusing to listen on {self.host} without authentication; pass --api-token "
            "(or EDGE_AGENT_API_TOKEN) or TLS client certificates (--tls-cert, --tls-key, --tls-client-ca), "
            "or listen on 127.0.0.1"
        )

    def scheduling(self, model: str) -> SchedulingConfig:
        from agent.batching import SchedulingConfig

        size, delay = self.model_batching.get(model, (self.max_batch_size, self.max_queue_delay_ms))
        return SchedulingConfig(
            max_concurrency=self.max_concurrency,
            max_queue=self.max_queue,
            max_batch_size=size,
            max_queue_delay_ms=delay,
            inline_below_ms=self.inline_below_ms,
        )

    def monitor_settings(self) -> MonitorSettings:
        from agent.monitoring.monitor import MonitorSettings

        return MonitorSettings(
            enabled=self.monitoring,
            min_samples=self.monitor_min_samples,
            window_s=self.monitor_window_s,
            ledger_size=self.monitor_ledger_size,
            ledger_max_age_s=self.monitor_ledger_max_age_s,
            positive_class=self.monitor_positive_class,
        )

    def shadow_settings(self) -> ShadowSettings:
        from agent.monitoring.shadow import ShadowSettings

        return ShadowSettings(
            share=self.shadow_share,
            queue=self.shadow_queue,
            min_samples=self.monitor_min_samples,
            window_s=self.monitor_window_s,
        )

    def trusted_key_paths(self) -> list[Path]:
        """``--trust-key`` files plus ``<data-dir>/trusted-keys/`` when it holds any key."""
        paths = list(self.trust_keys)
        folder = self.data_dir / "trusted-keys"
        if folder.is_dir() and any(f.suffix in (".pub", ".pem") for f in folder.iterdir()):
            paths.append(folder)
        return paths
