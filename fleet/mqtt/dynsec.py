"""Device broker accounts on Mosquitto through its dynamic security plugin.

The fleet's own MQTT user must be a dynsec admin (``mosquitto_ctrl dynsec init FILE USER``).
Each device gets a client (username = device id, client id pinned to the device id) and its own
role whose ACLs name only its own ``edgefleet/v1/devices/{id}/#`` topics, so no ``%u``
substitution is needed from the plugin. The pinned client id stops one device from disconnecting
another by connecting with the other's client id: the broker refuses such a login before it drops
the existing connection.
The fleet grants itself a role for all device topics once, at the first use.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from typing import Any

from fleet.mqtt.client import FleetMqtt
from sdk.errors import FleetError
from sdk.topics import DEVICE_READS, PREFIX

log = logging.getLogger(__name__)
CONTROL = "$CONTROL/dynamic-security/v1"
RESPONSE = f"{CONTROL}/response"
FLEET_ROLE = "edgefleet-fleet"
_TOLERATED = ("already exists", "already in", "not found")


def _acls(prefix: str) -> list[dict[str, Any]]:
    return [
        {"acltype": acltype, "topic": f"{prefix}/#", "priority": 0, "allow": True}
        for acltype in ("publishClientSend", "publishClientReceive", "subscribePattern", "unsubscribePattern")
    ]


def _device_acls(device_id: str) -> list[dict[str, Any]]:
    """As ``sdk.topics.acl_pattern``: read only its own ``desired`` and ``ack``; send only its own
    ``reported``, ``status``, ``telemetry`` and ``events``."""
    prefix = f"{PREFIX}/{device_id}"
    read = [
        {"acltype": acltype, "topic": f"{prefix}/{kind}", "priority": 0, "allow": True}
        for kind in DEVICE_READS
        for acltype in ("publishClientReceive", "subscribeLiteral", "unsubscribeLiteral")
    ]
    send = [
        {"acltype": "publishClientSend", "topic": f"{prefix}/{kind}", "priority": 0, "allow": True}
        for kind in ("reported", "status", "telemetry", "events")
    ]
    return read + send


class DynamicSecurity:
    def __init__(self, mqtt: FleetMqtt, admin_username: str | None = None, timeout: float = 10.0) -> None:
        self.mqtt = mqtt
        self.admin_username = admin_username
        self.timeout = timeout
        self._lock = threading.Lock()
        self._ensure_lock = threading.Lock()
        self._fleet_role_ready = False

    def _run(self, commands: list[dict[str, Any]], *, tolerate: bool = False) -> list[dict[str, Any]]:
        # correlationData is echoed in each response: answers to an earlier (timed out, or cut by
        # a reconnect) request are recognised and skipped.
        tag = uuid.uuid4().hex
        commands = [{**c, "correlationData": f"{tag}-{i}"} for i, c in enumerate(commands)]
        with self._lock:
            if not self.mqtt.connected.wait(self.timeout) or not self.mqtt.wait_subscribed(self.timeout):
                raise FleetError("cannot manage broker accounts: the broker is not connected")
            self.mqtt.publish(CONTROL, json.dumps({"commands": commands}).encode(), qos=1)
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    answer = json.loads(self.mqtt.control.get(timeout=max(deadline - time.monotonic(), 0.01)))
                except queue.Empty:
                    raise FleetError("the broker's dynamic security plugin did not answer") from None
                responses = answer.get("responses", [])
                if responses and str(responses[0].get("correlationData", "")).startswith(tag):
                    break
        errors = [r.get("error") for r in responses if r.get("error")]
        if tolerate:
            errors = [e for e in errors if not any(t in e.lower() for t in _TOLERATED)]
        if errors:
            names = ", ".join(c["command"] for c in commands)
            raise FleetError(f"dynamic security refused ({names}): {'; '.join(errors)}")
        return responses

    def ensure_fleet_role(self) -> None:
        with self._ensure_lock:
            if not self._fleet_role_ready:
                self._ensure_fleet_role()

    def _ensure_fleet_role(self) -> None:
        commands: list[dict[str, Any]] = [{"command": "createRole", "rolename": FLEET_ROLE}]
        commands += [{"command": "addRoleACL", "rolename": FLEET_ROLE, **acl} for acl in _acls(PREFIX)]
        commands += [
            {"command": "addRoleACL", "rolename": FLEET_ROLE, **acl} for acl in _acls(f"$share/+/{PREFIX}")
        ]
        self._run(commands, tolerate=True)
        if self.admin_username:
            answer = self._run([{"command": "getClient", "username": self.admin_username}])
            roles = answer[0].get("data", {}).get("client", {}).get("roles", [])
            if FLEET_ROLE not in {r.get("rolename") for r in roles}:
                # The broker disconnects a client whose roles change; the reconnect runs this again.
                log.info("granting the fleet's MQTT user %s the %s role", self.admin_username, FLEET_ROLE)
                grant = {"command": "addClientRole", "username": self.admin_username, "rolename": FLEET_ROLE}
                self.mqtt.publish(CONTROL, json.dumps({"commands": [grant]}).encode(), qos=1)
                return
        self._fleet_role_ready = True

    def add_device(self, device_id: str, password: str) -> None:
        self.ensure_fleet_role()
        role = f"edgefleet-device-{device_id}"
        commands: list[dict[str, Any]] = [{"command": "createRole", "rolename": role}]
        commands += [{"command": "addRoleACL", "rolename": role, **acl} for acl in _device_acls(device_id)]
        commands.append(
            {
                "command": "createClient",
                "username": device_id,
                "password": password,
                "clientid": device_id,
                "roles": [{"rolename": role}],
            }
        )
        self._run(commands)
        log.info("created broker account for %s", device_id)

    def remove_device(self, device_id: str) -> None:
        self._run(
            [
                {"command": "deleteClient", "username": device_id},
                {"command": "deleteRole", "rolename": f"edgefleet-device-{device_id}"},
            ],
            tolerate=True,
        )
