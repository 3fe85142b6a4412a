"""Telemetry survives a broker restart without persistence and a fleet restart (issue 14, finding 10).

Real processes: Mosquitto (dynamic security, ``persistence false``: a restart forgets every
session and queued message), ``edge-fleet serve`` and ``edge-agent serve`` sending telemetry every
second. Handing a sample to the broker is not delivering it; the agent keeps each one on disk until
the fleet acknowledges that it stored it. Every sample must be in the database exactly once.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sdk.fleet_client import FleetClient
from tests.support.agent_proc import Agent, device_agent
from tests.support.delivery import (
    BROKER_ADMIN,
    FLEET_ENV,
    dynsec_serve_args,
    exactly_once_up_to,
    outbox_last_seq,
    outbox_waiting,
    stored_telemetry_seqs,
)
from tests.support.fleet_proc import FleetProcess, admin_token, run_fleet
from tests.support.mosquitto import DYNSEC_PLUGIN, Mosquitto, free_port, run_mosquitto
from tests.support.waiting import wait_until as wait

pytestmark = pytest.mark.mqtt

DEVICE = "edge-outage"


@dataclass
class Stack:
    tmp: Path
    broker: Mosquitto
    db_path: Path
    args: list[str]
    port: int
    agent: Agent
    fleet: FleetProcess

    @property
    def data_dir(self) -> Path:
        return self.tmp / DEVICE / "data"

    def stored(self):  # type: ignore[no-untyped-def]
        return stored_telemetry_seqs(self.db_path, DEVICE)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if not os.path.exists(DYNSEC_PLUGIN):
        pytest.skip("no Mosquitto dynamic security plugin")
    with run_mosquitto(tmp_path / "mosquitto", dynsec_admin=BROKER_ADMIN) as b:
        assert "persistence false" in b.config.read_text()  # a restart forgets everything
        yield b


@pytest.fixture
def stack(tmp_path: Path, broker: Mosquitto, signing_key) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    db_path = tmp_path / "fleet.db"
    db = f"sqlite:///{db_path}"
    token = admin_token(db)
    args = dynsec_serve_args(tmp_path, db, broker.url)
    port = free_port()
    with run_fleet(tmp_path / "fleet", args, env=FLEET_ENV, port=port) as fleet:
        client = FleetClient(fleet.url, token)
        creds = client.register_device(DEVICE, profile="x86-server")
        client.close()
        agent = device_agent(
            creds,
            tmp_path,
            fleet_url=fleet.url,
            broker_url=broker.url,
            trust_key=tmp_path / "keys" / "signing.pub",
        )
        agent.start()
        stack = Stack(tmp_path, broker, db_path, args, port, agent, fleet)
        try:
            yield stack
        finally:
            agent.stop()
            # shown only when the test fails (pytest does not throw a test's error into a fixture)
            sys.stderr.write(f"--- agent\n{agent.log.read_text()[-4000:]}\n--- fleet\n{fleet.log[-4000:]}\n")


def _broker_outage(stack: Stack, outage_s: float) -> None:
    wait(lambda: exactly_once_up_to(stack.stored(), 3), 60, "the first samples to be stored")
    stack.broker.stop()
    before = outbox_last_seq(stack.data_dir)
    time.sleep(outage_s)
    produced = outbox_last_seq(stack.data_dir)
    assert produced - before >= outage_s * 0.6, "the agent did not keep sampling during the outage"
    stack.broker.start()  # same port, no persistence file: sessions and queues are gone
    wait(
        lambda: exactly_once_up_to(stack.stored(), produced + 3),
        90,
        f"every sample up to {produced + 3} to be stored exactly once",
        step=0.5,
    )
    assert "session present: False" in stack.agent.log.read_text()  # the broker had forgotten it
    _acknowledged(stack)


def _acknowledged(stack: Stack) -> None:
    """The fleet's acks reach the device (through the broker's ACL): its outbox empties."""
    wait(lambda: outbox_waiting(stack.data_dir) <= 2, 30, "the agent's outbox to be acknowledged", step=0.5)


@pytest.mark.parametrize("outage_s", [12])
def test_broker_outage_without_persistence_loses_nothing(stack: Stack, outage_s: float) -> None:
    _broker_outage(stack, outage_s)


@pytest.mark.slow
def test_one_minute_broker_outage_loses_nothing(stack: Stack) -> None:
    _broker_outage(stack, 60)


def test_fleet_restart_loses_nothing(stack: Stack) -> None:
    wait(lambda: exactly_once_up_to(stack.stored(), 3), 60, "the first samples to be stored")
    # Killed hard: its in-memory ingest queue dies with it, and its MQTT session was a clean one.
    stack.fleet.process.kill()
    stack.fleet.process.wait()
    before = outbox_last_seq(stack.data_dir)
    time.sleep(8)  # the agent keeps sampling; the broker passes the samples on to nobody
    produced = outbox_last_seq(stack.data_dir)
    assert produced - before >= 4
    with run_fleet(stack.tmp / "fleet", stack.args, env=FLEET_ENV, port=stack.port, name="fleet-2"):
        wait(
            lambda: exactly_once_up_to(stack.stored(), produced + 3),
            120,
            f"every sample up to {produced + 3} to be stored exactly once",
            step=0.5,
        )
        _acknowledged(stack)
