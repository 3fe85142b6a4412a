"""A device's world for sync tests: Mosquitto with passwords and the per-device ACL, a bundle server,
a fleet-side probe, signed bundles, and a factory for SyncService instances."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.sync import SyncConfig, SyncService
from agent.sync.reconcile import ReconcileSettings
from agent.sync.service import Tuning
from sdk import keys
from sdk.desired_auth import sign_desired
from tests.agent.sync.support import BundleServer, FakeStore, NoStats, Probe, acl_text, write_credentials
from tests.support.mosquitto import Mosquitto, run_mosquitto

TOKEN = "device-token-1"
PASSWORDS = {"dev-1": "pw-1", "dev-2": "pw-2", "fleet": "pw-fleet"}

FAST = Tuning(
    reconnect_min_s=0.2,
    reconnect_max_s=0.5,
    keepalive_s=5,
    reconcile=ReconcileSettings(max_attempts=3, download_tries=3, retry_delay_s=0.05),
)


@dataclass
class World:
    tmp: Path
    broker: Mosquitto
    server: BundleServer
    probe: Probe
    key: keys.Ed25519PrivateKey
    #: the fleet's desired-state signing key; devices pin it with ``config(pin_fleet_key=True)``.
    fleet_key: keys.Ed25519PrivateKey = field(default_factory=keys.generate_key)
    services: list[SyncService] = field(default_factory=list)

    @property
    def bundles(self) -> Path:
        return self.server.root

    def store(self, **kwargs: Any) -> FakeStore:
        return FakeStore(trusted=[self.key.public_key()], **kwargs)

    def config(
        self,
        device_id: str = "dev-1",
        *,
        data_dir: Path | None = None,
        interval: float = 0.2,
        pin_fleet_key: bool = False,
    ) -> SyncConfig:
        pinned = keys.public_key_to_b64(self.fleet_key.public_key()) if pin_fleet_key else None
        creds = write_credentials(
            self.tmp / f"{device_id}.creds.json",
            device_id,
            PASSWORDS[device_id],
            TOKEN,
            self.broker.ca_file,
            fleet_key=pinned,
        )
        return SyncConfig(
            fleet_url=self.server.url,
            broker_url=self.broker.url,
            device_id=device_id,
            credentials_file=creds,
            data_dir=data_dir or self.tmp / f"{device_id}-data",
            telemetry_interval_s=interval,
            profile="x86-server",
        )

    def serve_command(self, device_id: str, port: int, *extra: str) -> list[str]:
        """``edge-agent serve`` for ``device_id`` on 127.0.0.1:``port``, its data in tmp/agent,
        trusting the world's signing key (saved to tmp/signing), telemetry every 0.3 s."""
        keys.save_keypair(self.key, self.tmp / "signing")
        config = self.config(device_id)
        flags = {
            "--data-dir": self.tmp / "agent",
            "--trust-key": self.tmp / "signing.pub",
            "--listen": f"127.0.0.1:{port}",
            "--fleet-url": config.fleet_url,
            "--broker": config.broker_url,
            "--device-id": device_id,
            "--credentials": config.credentials_file,
            "--telemetry-interval": "0.3",
        }
        edge_agent = str(Path(sys.executable).parent / "edge-agent")
        return [edge_agent, "serve", *(str(x) for kv in flags.items() for x in kv), *extra]

    def signed(self, desired: Any, device_id: str = "dev-1", **kwargs: Any) -> Any:
        """``desired`` signed by the fleet key for ``device_id`` (see sdk.desired_auth)."""
        return sign_desired(self.fleet_key, desired, device_id=device_id, **kwargs)

    def service(
        self, store: Any, device_id: str = "dev-1", tuning: Tuning = FAST, **kwargs: Any
    ) -> SyncService:
        service = SyncService(self.config(device_id, **kwargs), store, NoStats(), tuning)
        self.services.append(service)
        return service


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    key = keys.generate_key()
    (tmp_path / "bundles").mkdir()
    with (
        # persistence on: like a production broker, it keeps sessions and queued messages across
        # a restart, so the outage tests can tell what the device lost from what the broker lost.
        run_mosquitto(
            tmp_path / "mosquitto",
            users=PASSWORDS,
            acl=acl_text(),
            extra_config=f"persistence true\npersistence_location {tmp_path / 'mosquitto'}/\n",
        ) as broker,
        BundleServer(tmp_path / "bundles", TOKEN) as server,
        Probe(broker.host, broker.port, username="fleet", password=PASSWORDS["fleet"]) as probe,
    ):
        w = World(tmp_path, broker, server, probe, key)
        try:
            yield w
        finally:
            for service in w.services:
                service.stop(timeout_s=3)
