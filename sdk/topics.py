"""MQTT topics: every topic edgefleet uses is built by :func:`topic`, and parsed by :func:`parse_topic`.

Layout: ``edgefleet/v1/devices/{device_id}/{kind}``. Each device may publish and subscribe only
under its own ``devices/{id}/`` (enforced by the broker ACL, see :func:`acl_pattern`).
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from sdk.errors import ProtocolError

PREFIX = "edgefleet/v1/devices"
TopicKind = Literal["desired", "reported", "status", "telemetry", "events", "ack"]
KINDS: tuple[str, ...] = get_args(TopicKind)
#: the kinds the fleet sends and a device only reads; a device sends all the others.
DEVICE_READS: tuple[str, ...] = ("desired", "ack")
#: A device id is one topic level: no wildcards, no separators, no ``$`` prefix.
_DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_device_id(device_id: str) -> str:
    if not _DEVICE_ID_RE.match(device_id):
        raise ProtocolError(
            f"device id {device_id!r} must be 1-128 letters, digits or ._- and start with a letter or digit"
        )
    return device_id


def topic(kind: TopicKind, device_id: str = "+", *, share_group: str | None = None) -> str:
    """The topic for ``kind`` of one device, or a subscription filter for all (``device_id="+"``).

    ``share_group`` makes an MQTT v5 shared subscription (``$share/{group}/...``) so that several
    fleet replicas split the messages between them instead of each getting all.
    """
    if kind not in KINDS:
        raise ProtocolError(f"unknown topic kind {kind!r}; expected one of {', '.join(KINDS)}")
    if device_id != "+":
        check_device_id(device_id)
    name = f"{PREFIX}/{device_id}/{kind}"
    if share_group is not None:
        if device_id != "+":
            raise ProtocolError("a shared subscription is a filter over all devices")
        if not re.match(r"^[A-Za-z0-9._-]+$", share_group):
            raise ProtocolError(f"share group {share_group!r} must be letters, digits or ._-")
        name = f"$share/{share_group}/{name}"
    return name


def parse_topic(name: str) -> tuple[str, TopicKind]:
    """``(device_id, kind)`` of a concrete topic; raises :class:`ProtocolError` for any other."""
    parts = name.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != PREFIX or parts[4] not in KINDS:
        raise ProtocolError(f"{name!r} is not an edgefleet device topic")
    return check_device_id(parts[3]), parts[4]  # type: ignore[return-value]


def acl_pattern() -> str:
    """Mosquitto ACL lines that confine each device (``%u`` = its username = its id) to its topics.

    A device reads only its own ``desired`` and ``ack`` and writes only its own ``reported``,
    ``status``, ``telemetry`` and ``events``: it can neither forge its desired state or the fleet's
    acknowledgements nor read another device's.
    """
    lines = [f"pattern read {PREFIX}/%u/{kind}" for kind in DEVICE_READS]
    lines += [f"pattern write {PREFIX}/%u/{kind}" for kind in KINDS if kind not in DEVICE_READS]
    return "\n".join(lines)


#: The largest message payload edgefleet sends or accepts on any topic. Every legitimate message is
#: a few KiB; brokers refuse larger publishes and the fleet and agent drop them before parsing.
MAX_PAYLOAD_BYTES = 256 * 1024
#: The broker-side bound on a whole MQTT packet: the payload plus room for topic and properties.
MAX_PACKET_BYTES = MAX_PAYLOAD_BYTES + 8 * 1024
