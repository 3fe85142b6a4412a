"""Requirement 5: ``edge-fleet up --tls`` makes a site CA, serves https and mqtts with it, hands it
to devices in their credentials, and an agent with those credentials updates over TLS only."""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sdk.credentials import DeviceCredentials
from sdk.fleet_client import FleetClient
from tests.support.agent_proc import device_agent
from tests.support.bundles import make_bundle
from tests.support.fleet_proc import BIN
from tests.support.mosquitto import free_port
from tests.support.processes import stop_process
from tests.support.waiting import wait_until

pytestmark = pytest.mark.mqtt


class TlsFleet:
    """``edge-fleet up --tls`` on free ports, as a real process."""

    def __init__(self, tmp: Path, data: Path) -> None:
        self.port, self.mport, self.data = free_port(), free_port(), data
        self.tmp = tmp
        self.url = f"https://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> str:
        out, err = self.tmp / "fleet.out", self.tmp / "fleet.log"
        self.process = subprocess.Popen(
            [
                *(str(BIN), "up", "--tls", "--listen", f"127.0.0.1:{self.port}"),
                *("--mqtt-listen", f"127.0.0.1:{self.mport}", "--data-dir", str(self.data)),
                *("--trust-key", str(self.tmp / "keys" / "signing.pub")),
            ],
            stdout=open(out, "wb"),  # noqa: SIM115 - the child keeps it
            stderr=open(err, "ab"),  # noqa: SIM115
            env={**os.environ, "EDGEFLEET_LOG_LEVEL": "INFO"},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, err.read_text()[-3000:]
            if (self.data / "tls" / "ca.pem").exists():
                try:
                    if httpx.get(f"{self.url}/healthz", verify=self.ca(), timeout=2).status_code == 200:
                        return out.read_text().split()[-1]
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        raise AssertionError(f"edge-fleet up --tls did not answer:\n{err.read_text()[-3000:]}")

    def ca(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.data / "tls" / "ca.pem"))

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def mqtt_connects(port: int, creds: DeviceCredentials, tls: ssl.SSLContext | None) -> bool:
    """Whether a device login over ``tls`` (None: plain MQTT) gets a CONNACK that accepts it."""
    result: dict[str, bool] = {}
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=creds.device_id, protocol=paho.MQTTv311)
    c.username_pw_set(creds.mqtt_username, creds.mqtt_password)
    if tls is not None:
        c.tls_set_context(tls)
    c.on_connect = lambda _c, _u, _f, reason, _p=None: result.setdefault("ok", not reason.is_failure)
    try:
        c.connect("127.0.0.1", port, keepalive=10)
    except (OSError, ssl.SSLError):
        return False
    deadline = time.monotonic() + 5
    while "ok" not in result and time.monotonic() < deadline:
        try:
            if c.loop(0.2) != paho.MQTT_ERR_SUCCESS:
                break
        except (OSError, ssl.SSLError):
            break
    c.disconnect()
    return result.get("ok", False)


def test_up_tls_serves_https_and_mqtts_and_an_agent_updates_over_them(tmp_path: Path, signing_key) -> None:  # type: ignore[no-untyped-def]
    fleet = TlsFleet(tmp_path, tmp_path / "data")
    token = fleet.start()
    agent = None
    try:
        ca_pem = (fleet.data / "tls" / "ca.pem").read_text()
        assert (fleet.data / "tls" / "ca.key").stat().st_mode & 0o777 == 0o600
        api = FleetClient(fleet.url, token, verify=fleet.ca())  # type: ignore[arg-type]
        creds = api.register_device("dev-tls", profile="x86-server")
        assert creds.ca_pem == ca_pem
        assert creds.fleet_url == fleet.url and creds.broker_url == f"mqtts://127.0.0.1:{fleet.mport}"

        # nobody without the site CA gets in: https, mqtts with the system CAs, plain mqtt
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{fleet.url}/healthz", timeout=5)
        assert not mqtt_connects(fleet.mport, creds, ssl.create_default_context())
        assert not mqtt_connects(fleet.mport, creds, None)
        assert mqtt_connects(fleet.mport, creds, creds.ssl_context())

        # the agent knows nothing but its credentials file: mqtts for desired state, https to download
        bundle = api.upload_bundle(make_bundle(tmp_path / "b", signing_key, version="1.0.0"))
        agent = device_agent(
            creds,
            tmp_path / "agents",
            fleet_url=creds.fleet_url or "",
            broker_url=creds.broker_url or "",
            trust_key=tmp_path / "keys" / "signing.pub",
        )
        saved = DeviceCredentials.load(tmp_path / "agents" / "dev-tls" / "credentials.json")
        assert saved.ca_pem == ca_pem
        agent.start()
        wait_until(lambda: api.device("dev-tls")["online"], 60, "the agent to come online over mqtts")
        rollout = api.create_rollout(bundle["id"], selector={"device_ids": ["dev-tls"]})
        wait_until(
            lambda: api.rollout(rollout["id"])["state"] == "succeeded",
            120,
            "the rollout over https to succeed",
        )
        assert agent.infer() is not None

        # a restart keeps the CA (devices pin it) and its key's mode
        fleet.stop()
        fleet.port = free_port()
        fleet.url = f"https://127.0.0.1:{fleet.port}"
        fleet.start()
        assert (fleet.data / "tls" / "ca.pem").read_text() == ca_pem
        assert (fleet.data / "tls" / "ca.key").stat().st_mode & 0o777 == 0o600
        assert mqtt_connects(fleet.mport, creds, creds.ssl_context())
    finally:
        if agent is not None:
            agent.stop()
        fleet.stop()
