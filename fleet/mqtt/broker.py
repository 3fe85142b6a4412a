"""The embedded MQTT broker of ``edge-fleet up``: amqtt 0.12.1 in its own thread and event loop.

amqtt speaks MQTT 3.1.1 only and has no shared subscriptions; the single-node protocol needs
neither. Its auth and topic plugins ask the fleet database: a device logs in with its id and the
broker password it got at registration, and may publish and subscribe only under its own
``edgefleet/v1/devices/{id}/``; the fleet itself logs in with a random admin password.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from fleet import auth
from fleet.db.models import Device
from fleet.db.session import Database
from sdk.errors import ConfigError
from sdk.topics import DEVICE_READS, PREFIX

log = logging.getLogger(__name__)
#: the topic kinds a device publishes; it only receives ``desired`` and ``ack``.
DEVICE_SENDS = frozenset({"reported", "status", "telemetry", "events"})


class BrokerAuthority:
    """Who may connect and which topics they may use, decided from the fleet database."""

    def __init__(self, db: Database, admin_username: str, admin_password: str) -> None:
        self.db = db
        self.admin_username = admin_username
        self._admin_sha = auth.sha256_hex(admin_password)

    def check_login(self, username: str | None, password: str | None) -> bool:
        if not username or password is None:
            return False
        if username == self.admin_username:
            return auth.check_password(self._admin_sha, password)
        with self.db.session() as s:
            device = s.get(Device, username)
            return device is not None and auth.check_password(device.mqtt_password_hash, password)

    def allowed(self, username: str | None, topic: str, action: Action | None = None) -> bool:
        """As ``sdk.topics.acl_pattern``: a device reads only its own ``desired`` and ``ack`` and
        writes only its own ``reported``, ``status``, ``telemetry`` and ``events``."""
        if username == self.admin_username:
            return True
        if not username or not topic.startswith(f"{PREFIX}/{username}/"):
            return False
        kind = topic[len(PREFIX) + len(username) + 2 :]
        return kind in DEVICE_SENDS if action == Action.PUBLISH else kind in DEVICE_READS


class FleetAuthPlugin(BaseAuthPlugin):
    @dataclass
    class Config:
        authority: Any = None

    async def authenticate(self, *, session: Session) -> bool | None:
        authority: BrokerAuthority = self.config.authority
        ok = await asyncio.to_thread(authority.check_login, session.username, session.password)
        if not ok:
            log.info("embedded broker refused login %r", session.username)
        return ok


class FleetTopicPlugin(BaseTopicPlugin):
    @dataclass
    class Config:
        authority: Any = None

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool | None:
        authority: BrokerAuthority = self.config.authority
        return topic is not None and authority.allowed(session.username if session else None, topic, action)


class FleetBroker(Broker):
    """amqtt's broker with retained messages checked against the topic ACL before delivery.

    amqtt 0.12.1 sends retained messages on (re)connect for *every* subscription in the broker,
    not only the client's own, and without the RECEIVE check: a device connecting after another
    subscribed would get that device's retained ``desired`` state. Worse, it iterates over the
    live subscription table while awaiting, so a burst of connecting devices fails with
    "dictionary changed size during iteration". Here only the session's own subscriptions are
    served (returning before any await for the others), each message through the topic ACL.
    """

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter, qos = subscription
        if not any(s is session for s, _ in self._subscriptions.get(topic_filter, ())):
            return
        handler = self._get_handler(session)
        if handler is None:
            return
        tasks = []
        for name, retained in list(self._retained_messages.items()):
            if not self._matches(name, topic_filter):
                continue
            if not await self._topic_filtering(session, topic=name, action=Action.RECEIVE):
                continue
            tasks.append(
                asyncio.ensure_future(
                    handler.mqtt_publish(
                        retained.topic, retained.data, min(qos, retained.qos or qos), retain=True
                    )
                )
            )
        if tasks:
            await asyncio.wait(tasks)


class EmbeddedBroker:
    """Runs amqtt on ``host:port`` until :meth:`stop`."""

    def __init__(self, host: str, port: int, authority: BrokerAuthority) -> None:
        self.host, self.port = host, port
        self.authority = authority
        self._loop = asyncio.new_event_loop()
        self._broker: Broker | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 10000}
            },
            "plugins": {
                "fleet.mqtt.broker.FleetAuthPlugin": {"authority": self.authority},
                "fleet.mqtt.broker.FleetTopicPlugin": {"authority": self.authority},
            },
        }

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._broker = FleetBroker(self._config(), loop=self._loop)
            await self._broker.start()

        try:
            self._loop.run_until_complete(start())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def start(self, timeout: float = 15.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ConfigError(f"the embedded MQTT broker did not start on {self.host}:{self.port}")
        if self._error is not None:
            raise ConfigError(
                f"the embedded MQTT broker cannot listen on {self.host}:{self.port}: {self._error}"
            )
        log.info("embedded MQTT broker (amqtt, MQTT 3.1.1) on %s:%d", self.host, self.port)

    def stop(self) -> None:
        if self._broker is None or not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        try:
            fut.result(timeout=10)
        except Exception:
            log.warning("embedded broker did not shut down cleanly", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
