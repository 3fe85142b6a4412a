"""The embedded MQTT broker of ``edge-fleet up``: amqtt 0.12.1 in its own thread and event loop.

amqtt speaks MQTT 3.1.1 only and has no shared subscriptions; the single-node protocol needs
neither. Its auth and topic plugins ask the fleet database: a device logs in with its id as both
username and client id and the broker password it got at registration, and may publish and
subscribe only under its own ``edgefleet/v1/devices/{id}/``; the fleet itself logs in with a random
admin password.

Two things amqtt does not do by itself are done here: a login is checked *before* the broker
touches the session of the client id it names (amqtt drops or takes over that session first, so
anyone could knock a device off by connecting with its id), and a packet larger than
:data:`sdk.topics.MAX_PACKET_BYTES` closes the connection before its body is read.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.adapters import ReaderAdapter, StreamReaderAdapter, StreamWriterAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from amqtt.utils import gen_client_id

from fleet import auth
from fleet.db.models import Device
from fleet.db.session import Database
from sdk.errors import ConfigError
from sdk.topics import DEVICE_READS, MAX_PACKET_BYTES, PREFIX

log = logging.getLogger(__name__)
#: the topic kinds a device publishes; it only receives ``desired`` and ``ack``.
DEVICE_SENDS = frozenset({"reported", "status", "telemetry", "events"})
#: seconds a connected device's login is trusted before the database is asked again.
RECHECK_S = 2.0


class BrokerAuthority:
    """Who may connect and which topics they may use, decided from the fleet database."""

    def __init__(self, db: Database, admin_username: str, admin_password: str) -> None:
        self.db = db
        self.admin_username = admin_username
        self._admin_sha = auth.sha256_hex(admin_password)
        self._recheck: dict[tuple[str, str], tuple[bool, float]] = {}

    def check_login(self, username: str | None, password: str | None, client_id: str | None) -> bool:
        """A device must connect with its own id as client id: a broker keeps one connection per
        client id, so any other rule would let one device disconnect another."""
        if username and username != self.admin_username and client_id != username:
            log.warning("embedded broker refused %r: client id %r is not its username", username, client_id)
            return False
        return self.password_ok(username, password)

    def password_ok(self, username: str | None, password: str | None) -> bool:
        """The database (or the fleet's own account) accepts this username and password."""
        if not username or password is None:
            return False
        if username == self.admin_username:
            return auth.check_password(self._admin_sha, password)
        with self.db.session() as s:
            device = s.get(Device, username)
            return device is not None and auth.check_password(device.mqtt_password_hash, password)

    async def still_valid(self, username: str | None, password: str | None) -> bool:
        """Decommission on this broker: a session whose login the database no longer accepts (the
        device was deleted, or registered again with a new password) is refused every publish,
        subscribe and delivery from then on. Checked against the database at most every ``RECHECK_S``."""
        if username == self.admin_username:
            return True
        key = (username or "", password or "")
        now = time.monotonic()
        cached = self._recheck.get(key)
        if cached is not None and now - cached[1] < RECHECK_S:
            return cached[0]
        # the client id was checked at connect: a live session can only lose its password
        ok = await asyncio.to_thread(self.password_ok, username, password)
        if len(self._recheck) > 10_000:  # bounded: one entry per live login, cleared if it grows past that
            self._recheck.clear()
        self._recheck[key] = (ok, now)
        if not ok:
            log.info("embedded broker: %s is no longer a registered device; its session is refused", username)
        return ok

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
        ok = await asyncio.to_thread(
            authority.check_login, session.username, session.password, session.client_id
        )
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
        username = session.username if session else None
        if topic is None or not authority.allowed(username, topic, action):
            return False
        return await authority.still_valid(username, session.password if session else None)


class PacketTooLargeError(ConnectionError):
    """A client announced a packet above the broker's limit; its connection is closed."""


class LimitedReader(ReaderAdapter):
    """Follows MQTT framing on a connection and fails as soon as a fixed header announces a packet
    larger than ``limit``, before amqtt reads (and buffers) the body: amqtt itself has no bound."""

    def __init__(self, inner: ReaderAdapter, limit: int, peer: str) -> None:
        self._inner = inner
        self._limit = limit
        self._peer = peer
        self._body_left = 0  # bytes of the current packet's body still to come
        self._in_length = False  # reading the variable-length "remaining length" field
        self._length = 0
        self._multiplier = 1

    async def read(self, n: int = -1) -> bytes:
        data = await self._inner.read(n)
        self._track(data)
        return data

    def _track(self, data: bytes) -> None:
        i = 0
        while i < len(data):
            if self._body_left:
                step = min(self._body_left, len(data) - i)
                self._body_left -= step
                i += step
            elif self._in_length:
                byte = data[i]
                i += 1
                self._length += (byte & 0x7F) * self._multiplier
                self._multiplier *= 128
                if not byte & 0x80:
                    self._in_length = False
                    if self._length > self._limit:
                        log.warning(
                            "embedded broker closed %s: a packet of %d bytes passes the %d-byte limit",
                            self._peer,
                            self._length,
                            self._limit,
                        )
                        raise PacketTooLargeError(f"packet of {self._length} bytes from {self._peer}")
                    self._body_left = self._length
            else:  # the first byte of a fixed header: packet type and flags
                i += 1
                self._in_length, self._length, self._multiplier = True, 0, 1

    def feed_eof(self) -> None:
        self._inner.feed_eof()


class FleetBroker(Broker):
    """amqtt's broker with logins checked before sessions are touched, packets bounded in size and
    retained messages checked against the topic ACL before delivery.

    amqtt 0.12.1 sends retained messages on (re)connect for *every* subscription in the broker,
    not only the client's own, and without the RECEIVE check: a device connecting after another
    subscribed would get that device's retained ``desired`` state. Worse, it iterates over the
    live subscription table while awaiting, so a burst of connecting devices fails with
    "dictionary changed size during iteration". Here only the session's own subscriptions are
    served (returning before any await for the others), each message through the topic ACL.
    """

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        peer = writer.get_extra_info("peername")
        limited = LimitedReader(StreamReaderAdapter(reader), MAX_PACKET_BYTES, str(peer))
        await self._client_connected(listener_name, limited, StreamWriterAdapter(writer))

    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        """amqtt 0.12.1's own version, with the login checked first.

        amqtt deletes the old session of a clean-session CONNECT's client id, or copies the new
        credentials into it, and then takes over its live connection, all before it authenticates:
        a connection with a victim's client id and any password knocked the victim off.
        """
        try:
            handler, incoming = await BrokerProtocolHandler.init_from_connect(
                reader, writer, self.plugins_manager
            )
        except (AMQTTError, NoDataError) as exc:
            raise AMQTTError(exc) from exc
        except MQTTError:
            await writer.close()
            raise
        if not await self._authenticate(incoming, self.listeners_config.get("default", {})):
            connack = ConnackPacket.build(0, NOT_AUTHORIZED)
            await connack.to_stream(writer)
            await writer.close()
            raise MQTTError(f"refused login {incoming.username!r} with client id {incoming.client_id!r}")
        if incoming.clean_session:
            if incoming.client_id:
                await self._delete_session(incoming.client_id)
            else:
                incoming.client_id = gen_client_id()
            incoming.parent = 0
        elif incoming.client_id in self._sessions:
            existing, _ = self._sessions[incoming.client_id]
            for name in (
                "will_flag",
                "will_message",
                "will_topic",
                "will_qos",
                "keep_alive",
                "username",
                "password",
            ):
                setattr(existing, name, getattr(incoming, name))
            incoming = existing
            incoming.parent = 1
        else:
            incoming.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if incoming.keep_alive > 0 and isinstance(delay, int):
            incoming.keep_alive += delay
        return handler, incoming

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

    def __init__(
        self, host: str, port: int, authority: BrokerAuthority, tls: tuple[Path, Path] | None = None
    ) -> None:
        """``tls``: (certificate chain, key) files to serve mqtts instead of plain mqtt."""
        self.host, self.port = host, port
        self.authority = authority
        self.tls = tls
        self._loop = asyncio.new_event_loop()
        self._broker: Broker | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)

    def _config(self) -> dict[str, Any]:
        listener: dict[str, Any] = {
            "type": "tcp",
            "bind": f"{self.host}:{self.port}",
            "max_connections": 10000,
        }
        if self.tls is not None:
            listener.update(ssl=True, certfile=str(self.tls[0]), keyfile=str(self.tls[1]))
        return {
            "listeners": {"default": listener},
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
        log.info(
            "embedded MQTT broker (amqtt, MQTT 3.1.1%s) on %s:%d",
            ", TLS" if self.tls else "",
            self.host,
            self.port,
        )

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
