"""The fleet's one paho-mqtt adapter: connect, subscribe to the device topics, publish desired state.

Received messages go onto a queue as ``(topic, payload, received_at)``; the ingest thread drains it
in batches, so the network thread never waits for the database.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sdk.errors import ConfigError
from sdk.topics import MAX_PAYLOAD_BYTES, TopicKind, topic

log = logging.getLogger(__name__)

Inbound = tuple[str, bytes, float]
CONSUMED: tuple[TopicKind, ...] = ("reported", "status", "telemetry", "events")
#: Streams that replicas split between them (each message stored once). ``reported`` and ``status``
#: are retained state: every replica takes all of them, so a restarted replica gets the current
#: state of every device from the broker, and applying one twice changes nothing (a report never
#: moves a device back to an older revision).
SHARED: frozenset[str] = frozenset({"telemetry", "events"})


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
        raise ConfigError(f"bad broker URL {url!r}; expected mqtt://HOST:PORT or mqtts://HOST:PORT")
    tls = parts.scheme in ("mqtts", "ssl")
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


class FleetMqtt:
    """One connection to the broker for this fleet process."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        protocol: str = "3.1.1",
        share_group: str | None = None,
        client_id: str | None = None,
        on_connect: Callable[[], None] | None = None,
        max_queue: int = 200_000,
        control_topics: tuple[str, ...] = (),
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self.host, self.port, tls = parse_broker_url(url)
        self.v5 = protocol == "5"
        self.share_group = share_group
        if share_group and not self.v5:
            raise ConfigError("shared subscriptions need MQTT v5 (--mqtt-protocol 5)")
        self.inbox: queue.Queue[Inbound] = queue.Queue(maxsize=max_queue)
        self.connected = threading.Event()
        self._on_connect_hook = on_connect
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edge-fleet-{uuid.uuid4().hex[:10]}",
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
            **({} if self.v5 else {"clean_session": True}),
        )
        if username:
            self._client.username_pw_set(username, password)
        if tls:
            self._client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(0.2, 5)
        self._client.on_connect = self._connected
        self._client.on_disconnect = self._disconnected
        self._client.on_message = self._message
        self.dropped = 0
        #: told the reason ("oversize", "queue_full") of every message dropped before ingest sees it
        self._on_drop = on_drop
        #: messages dropped unread because they passed MAX_PAYLOAD_BYTES (a broker without a limit).
        self.oversized = 0
        #: broker control answers (e.g. ``$CONTROL/dynamic-security/v1/response``) go here, not to ingest.
        self.control_topics = control_topics
        self.control: queue.Queue[bytes] = queue.Queue()
        self._subscribed = threading.Event()
        self._client.on_subscribe = lambda *_a: self._subscribed.set()

    # ------------------------------------------------------------------------------- lifecycle

    def start(self, wait_s: float = 10.0) -> None:
        try:
            self._client.connect_async(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise ConfigError(f"cannot reach the broker at {self.host}:{self.port}: {exc}") from None
        self._client.loop_start()
        if wait_s and not self.connected.wait(wait_s):
            log.warning("broker %s:%d not reachable yet; retrying in the background", self.host, self.port)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # ------------------------------------------------------------------------------- callbacks

    def _connected(
        self, client: paho.Client, _userdata: object, _flags: object, reason: object, _props: object = None
    ) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the fleet's connection: %s", reason)
            return
        subs = self._subscriptions()
        subs += [(name, 1) for name in self.control_topics]
        client.subscribe(subs)
        self.connected.set()
        log.info(
            "connected to broker %s:%d; subscribed to %s", self.host, self.port, ", ".join(s for s, _ in subs)
        )
        if self._on_connect_hook is not None:
            # Desired states are republished from the database: a broker restarted without
            # persistence has lost its retained messages.
            threading.Thread(target=self._on_connect_hook, name="republish", daemon=True).start()

    def _disconnected(
        self, _client: paho.Client, _userdata: object, _flags: object, reason: object, _props: object = None
    ) -> None:
        self.connected.clear()
        log.warning("disconnected from broker: %s", reason)

    def _message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        if msg.topic in self.control_topics:
            self.control.put(msg.payload)
            return
        if len(msg.payload) > MAX_PAYLOAD_BYTES:
            # Dropped before anything parses it: the broker should have refused it already.
            self.oversized += 1
            self._dropped("oversize")
            log.warning(
                "dropped a %d-byte message on %s: the limit is %d bytes",
                len(msg.payload),
                msg.topic,
                MAX_PAYLOAD_BYTES,
            )
            return
        try:
            self.inbox.put_nowait((msg.topic, msg.payload, time.time()))
        except queue.Full:
            # ingest is behind by max_queue messages: drop (the agents resend what is not acked)
            self.dropped += 1
            self._dropped("queue_full")

    def _dropped(self, reason: str) -> None:
        if self._on_drop is not None:
            self._on_drop(reason)

    # --------------------------------------------------------------------------------- publish

    def publish(self, name: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        props = None
        if self.v5:
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = "application/json"
        info = self._client.publish(name, payload, qos=qos, retain=retain, properties=props)
        if info.rc != paho.MQTT_ERR_SUCCESS and info.rc != paho.MQTT_ERR_NO_CONN:
            log.warning("publish to %s failed: %s", name, paho.error_string(info.rc))

    def _subscriptions(self) -> list[tuple[str, int]]:
        return [
            (topic(kind, share_group=self.share_group if kind in SHARED else None), 1) for kind in CONSUMED
        ]

    def resubscribe(self) -> None:
        """Subscribe again (after the broker granted this client new rights)."""
        self._client.subscribe(self._subscriptions())

    def wait_subscribed(self, timeout: float) -> bool:
        return self._subscribed.wait(timeout)

    def publish_and_wait(
        self, name: str, payload: bytes, *, qos: int = 1, retain: bool = False, timeout: float = 5.0
    ) -> bool:
        info = self._client.publish(name, payload, qos=qos, retain=retain)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()
