"""Simulated devices on one paho connection: they answer every desired state with a matching report.

Good enough for the fleet's side of the protocol (tests and the bench); the real agent is exercised
by the e2e tests. A device whose token is known (``tokens``) downloads every bundle its desired
state names before it reports it active, as an agent does: the fleet believes an "active" report
only from a device that fetched the bundle.
"""

from __future__ import annotations

import threading
import time

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from sdk.messages import (
    DesiredState,
    ModelTelemetry,
    ReportedModel,
    ReportedState,
    Status,
    Telemetry,
    parse_message,
)
from sdk.topics import parse_topic, topic


class SimulatedFleet:
    """Answers ``desired`` for any device with ``reported`` (all models active); can send telemetry."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        fail: set[str] | None = None,
        hold: set[str] | None = None,
        v5: bool = True,
        tokens: dict[str, str] | None = None,
    ) -> None:
        self.fail = fail or set()
        #: device id -> its API token; such devices download their bundles before reporting.
        self.tokens = dict(tokens or {})
        #: devices that receive desired states but do not answer until :meth:`release`.
        self.hold = set(hold or ())
        self.pending: dict[str, DesiredState] = {}
        self.applied: dict[str, int] = {}
        self.lock = threading.Lock()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
        self.c.max_inflight_messages_set(1000)
        self.c.on_connect = lambda c, *_: c.subscribe(topic("desired"), 1)
        self.c.on_message = self._desired
        self.c.connect(host, port)
        self.c.loop_start()

    def _desired(self, client: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        if not msg.payload:
            return
        device_id, _ = parse_topic(msg.topic)
        desired = parse_message(DesiredState, msg.payload)
        if device_id in self.hold:
            self.pending[device_id] = desired
            return
        self._answer(client, device_id, desired)

    def release(self, device_id: str) -> None:
        self.hold.discard(device_id)
        if device_id in self.pending:
            self._answer(self.c, device_id, self.pending.pop(device_id))

    def _answer(self, client: paho.Client, device_id: str, desired: DesiredState) -> None:
        if device_id in self.tokens and device_id not in self.fail:
            # off paho's thread: a download must not hold up every other device's messages
            threading.Thread(
                target=self._fetch_then_report, args=(client, device_id, desired), daemon=True
            ).start()
            return
        self._report(client, device_id, desired)

    def _fetch_then_report(self, client: paho.Client, device_id: str, desired: DesiredState) -> None:
        headers = {"Authorization": f"Bearer {self.tokens[device_id]}"}
        for m in desired.models:
            for _attempt in range(60):  # like an agent, retry while the fleet is away (a restart)
                try:
                    with httpx.stream("GET", m.bundle_url, headers=headers, timeout=30) as r:
                        r.raise_for_status()
                        for _chunk in r.iter_bytes():
                            pass
                    break
                except httpx.HTTPError:
                    time.sleep(0.5)
        self._report(client, device_id, desired)

    def _report(self, client: paho.Client, device_id: str, desired: DesiredState) -> None:
        failed = device_id in self.fail
        report = ReportedState(
            revision=desired.revision,
            agent_version="sim",
            models=[
                ReportedModel(
                    name=m.name,
                    version=m.version,
                    state="failed" if failed else "active",
                    error="simulated failure" if failed else None,
                )
                for m in desired.models
            ],
        )
        client.publish(topic("reported", device_id), report.to_bytes(), qos=1, retain=True)
        with self.lock:
            self.applied[device_id] = desired.revision

    def online(self, device_ids: list[str]) -> None:
        for d in device_ids:
            self.c.publish(topic("status", d), Status(state="online").to_bytes(), qos=1, retain=True)

    def telemetry(self, device_id: str, seq: int, requests: int = 10, errors: int = 0) -> None:
        msg = Telemetry(
            seq=seq,
            interval_s=10,
            cpu_percent=12.5,
            models=[ModelTelemetry(name="tiny", version="1", requests=requests, errors=errors)],
        )
        self.c.publish(topic("telemetry", device_id), msg.to_bytes(), qos=1)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
