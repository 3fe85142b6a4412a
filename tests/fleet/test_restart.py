"""Rollout state lives in the database: a fleet process restarted mid-rollout finishes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdk.fleet_client import FleetClient
from tests.support.bundles import make_bundle
from tests.support.fleet_proc import admin_token, run_fleet, serve_args
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.sim_devices import SimulatedFleet
from tests.support.waiting import wait_until

pytestmark = pytest.mark.mqtt


def test_rollout_survives_a_fleet_restart(tmp_path: Path, mosquitto: Mosquitto, signing_key) -> None:  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    token = admin_token(db)
    args = serve_args(tmp_path, db, mosquitto.url)
    port = free_port()
    sim = SimulatedFleet(mosquitto.host, mosquitto.port, hold={"d2"})
    try:
        with run_fleet(tmp_path / "first", args, name="first", port=port) as fleet:
            api = FleetClient(fleet.url, token)
            for i in range(3):
                sim.tokens[f"d{i}"] = api.register_device(f"d{i}", profile="x86-server").token
            bundle = api.upload_bundle(make_bundle(tmp_path / "b", signing_key))
            rid = api.create_rollout(bundle["id"])["id"]
            wait_until(lambda: api.rollout(rid)["counts"].get("succeeded") == 2, 20, "two devices done")
            assert api.rollout(rid)["counts"].get("updating") == 1
        # the fleet is down; the held device applies its update meanwhile and reports it (retained)
        sim.release("d2")
        with run_fleet(tmp_path / "second", args, name="second", port=port) as fleet:
            api = FleetClient(fleet.url, token)
            wait_until(
                lambda: api.rollout(rid)["state"] == "succeeded",
                20,
                "the rollout to finish after the restart",
            )
            assert api.rollout(rid)["counts"] == {"succeeded": 3}
            assert api.device("d2")["reported_revision"] == 1
    finally:
        sim.close()
