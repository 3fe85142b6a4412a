"""The agent's one MQTT adapter: paho-mqtt is imported here and nowhere else in ``agent/``.

It keeps one persistent session (clean session off, so the broker holds QoS 1 messages for the
device while it is away), reconnects by itself with exponential backoff, announces itself with a
retained *birth* message on every connect and leaves a retained *last will* for the broker to
publish if the device dies. Subscriptions are renewed on every connect because a broker that
restarted without persistence has forgotten them.

Callbacks run on paho's network thread: they must be quick and must not block.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sdk.errors import ConfigError
from sdk.topics import MAX_PAYLOAD_BYTES

log = logging.getLogger(__name__)

#: How long the broker keeps an MQTT v5 session of a device that is away (a week).
SESSION_EXPIRY_S = 7 * 24 * 3600

ProtocolVersion = Literal["3.1.1", "5"]


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """``mqtt://host[:1883]`` or ``mqtts://host[:8883]``."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(f"broker URL {url!r} must look like mqtt://HOST:PORT or mqtts://HOST:PORT")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ConfigError(f"broker URL {url!r} has an invalid port") from None
        return cls(parts.hostname, port, tls)


@dataclass(frozen=True)
class Outgoing:
    """A message the link publishes on its own: the birth on every connect, the last will, a farewell."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


MessageHandler = Callable[[str, bytes], None]


class MqttLink:
    """One device's connection to the broker, running on paho's background thread."""

    def __init__(
        self,
        broker_url: str,
        client_id: str,
        *,
        username: str | None,
        password: str | None,
        ca_file: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        will: Outgoing | None = None,
        birth: Callable[[], Outgoing] | None = None,
        protocol: ProtocolVersion = "3.1.1",
        keepalive_s: int = 30,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 60.0,
    ) -> None:
        self.address = BrokerAddress.parse(broker_url)
        self._birth = birth
        self._keepalive_s = keepalive_s
        self._protocol = protocol
        self._subscriptions: dict[str, MessageHandler] = {}
        self._connected = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()
        #: called with the mid of each QoS 1 message the broker acknowledged.
        self.on_published: Callable[[int], None] | None = None
        #: called after every successful connect (birth sent, subscriptions renewed).
        self.on_connected: Callable[[], None] | None = None

        if protocol == "5":
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        else:
            # clean_session=False: a persistent session, so QoS 1 desired states wait for us.
            client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=paho.MQTTv311
            )
        if username is not None:
            client.username_pw_set(username, password)
        if self.address.tls:
            if tls_context is not None:  # the site CA from the credentials
                client.tls_set_context(tls_context)
            else:
                client.tls_set(ca_certs=ca_file)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        # paho doubles the delay after each failed attempt up to the maximum.
        client.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self._client = client

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect in the background; never blocks, never fails on an unreachable broker."""
        properties = None
        kwargs: dict[str, Any] = {}
        if self._protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
            kwargs["clean_start"] = False
        self._client.connect_async(
            self.address.host, self.address.port, keepalive=self._keepalive_s, properties=properties, **kwargs
        )
        self._client.loop_start()

    def stop(self, farewell: Outgoing | None = None, timeout_s: float = 5.0) -> None:
        """Publish ``farewell`` (when connected), disconnect cleanly and stop the network thread.

        A clean disconnect means the broker does not publish the last will, so the caller passes
        the offline status as ``farewell``.
        """
        if farewell is not None and self.is_connected():
            info = self._client.publish(
                farewell.topic, farewell.payload, qos=farewell.qos, retain=farewell.retain
            )
            try:
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError) as exc:
                log.warning("could not send %s before disconnecting: %s", farewell.topic, exc)
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    def is_connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    # ------------------------------------------------------------------------------ messaging

    def subscribe(self, topic: str, handler: MessageHandler) -> None:
        """Subscribe at QoS 1 now (when connected) and again after every reconnect."""
        with self._lock:
            self._subscriptions[topic] = handler
        if self.is_connected():
            self._client.subscribe(topic, qos=1)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Queue a message and return its mid; paho sends it now or after the next connect."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            # NO_CONN is fine: paho keeps QoS 1 messages and sends them once connected.
            log.warning("publish to %s not queued: %s", topic, paho.error_string(info.rc))
        return info.mid

    # ------------------------------------------------------------------------- paho callbacks

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.error("broker %s:%d refused the connection: %s", self.address.host, self.address.port, reason)
            return
        log.info(
            "connected to %s:%d (session present: %s)",
            self.address.host,
            self.address.port,
            flags.session_present,
        )
        if self._birth is not None:
            birth = self._birth()  # built now, so it carries the time of this connect
            client.publish(birth.topic, birth.payload, qos=birth.qos, retain=birth.retain)
        with self._lock:
            topics = list(self._subscriptions)
        for topic in topics:
            client.subscribe(topic, qos=1)
        self._connected.set()
        if self.on_connected is not None:
            self.on_connected()

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if self._stopping:
            log.info("disconnected from broker")
        elif self._connected.is_set():
            log.warning("disconnected from broker: %s; reconnecting in the background", reason)
        self._connected.clear()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            handler = self._subscriptions.get(message.topic)
        if handler is None:
            log.debug("ignoring message on %s", message.topic)
            return
        if len(message.payload) > MAX_PAYLOAD_BYTES:
            # Dropped before anything parses it: no legitimate desired state comes near the limit.
            log.warning(
                "dropped a %d-byte message on %s: the limit is %d bytes",
                len(message.payload),
                message.topic,
                MAX_PAYLOAD_BYTES,
            )
            return
        try:
            handler(message.topic, message.payload)
        except Exception:  # a bad message must never kill the network thread
            log.exception("handling a message on %s failed", message.topic)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if self.on_published is not None:
            self.on_published(mid)
