"""Everything one running fleet holds, built from settings by ``create_app`` (never at import)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from fleet.alerts.webhook import AlertWebhook
from fleet.api.failures import AuthFailures
from fleet.db.session import Database
from fleet.devices import BrokerAccounts, NoBrokerAccounts
from fleet.metrics import FleetMetrics
from fleet.mqtt.client import FleetMqtt
from fleet.rollout.controller import RolloutController
from fleet.rollout.desired import Publisher
from fleet.settings import FleetSettings
from fleet.storage import BundleStorage
from sdk import keys
from sdk.desired_auth import sign_desired
from sdk.messages import DesiredState
from sdk.topics import topic

log = logging.getLogger(__name__)


@dataclass
class FleetContext:
    settings: FleetSettings
    db: Database
    storage: BundleStorage
    trusted_keys: list[keys.Ed25519PublicKey]
    metrics: FleetMetrics
    publisher: Publisher | None = None
    mqtt: FleetMqtt | None = None
    controller: RolloutController | None = None
    accounts: BrokerAccounts = field(default_factory=NoBrokerAccounts)
    #: sends alert changes to ``alert_webhook_url`` (None: no webhook configured)
    webhook: AlertWebhook | None = None
    #: wrong-token guesses per client address (``deps.get_token`` answers 429 past the limit).
    auth_failures: AuthFailures = field(init=False)
    #: signs every desired state (sdk.desired_auth); devices pin its public half at registration.
    fleet_key: keys.Ed25519PrivateKey | None = None
    _published: dict[str, int] = field(default_factory=dict)
    _published_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.auth_failures = AuthFailures(
            self.settings.auth_failures_max, self.settings.auth_failures_window_s
        )

    def publish_desired(self, device_id: str, message: DesiredState) -> None:
        """Send a device its desired state (QoS 1, retained), after the database has it.

        Never an older revision after a newer one from this process: the API and the controller
        publish from different threads, and the retained message is whichever came last.
        """
        # Checked and sent under one lock (paho only queues the message, so this is quick).
        with self._published_lock:
            if message.revision < self._published.get(device_id, -1):
                return
            self._published[device_id] = message.revision
            if self.fleet_key is not None:
                message = sign_desired(
                    self.fleet_key,
                    message,
                    device_id=device_id,
                    validity_s=self.settings.desired_validity_s,
                )
            self.metrics.desired_published.inc()
            if self.publisher is not None:
                self.publisher(device_id, message)
            elif self.mqtt is not None:
                self.mqtt.publish(topic("desired", device_id), message.to_bytes(), qos=1, retain=True)
            else:
                log.info("no broker: desired revision %d for %s is stored only", message.revision, device_id)

    def forget_device(self, device_id: str) -> None:
        """After a decommission commits: clear the device's retained desired state on the broker, and
        this process's record of the revisions it sent, so a device registered again under the id
        starts clean (its revisions start at 1 again and must not be held back as older)."""
        with self._published_lock:
            self._published.pop(device_id, None)
            if self.mqtt is not None:
                # an empty retained message deletes the retained one (MQTT 3.1.1 §3.3.1.3)
                self.mqtt.publish(topic("desired", device_id), b"", qos=1, retain=True)

    def fleet_public_key(self) -> str | None:
        """What a device pins at registration: the base64 public half of the fleet key."""
        return keys.public_key_to_b64(self.fleet_key.public_key()) if self.fleet_key else None

    def publish_all(self, outbox: list[tuple[str, DesiredState]]) -> None:
        for device_id, message in outbox:
            self.publish_desired(device_id, message)
