"""Two ``edge-fleet serve`` replicas on one PostgreSQL and one Mosquitto.

They split telemetry through an MQTT v5 shared subscription (every message handled exactly once),
and run one rollout controller at a time (a database lease that the survivor takes over).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from sdk.fleet_client import FleetClient
from tests.support.bundles import make_bundle
from tests.support.fleet_proc import admin_token, run_fleet, serve_args
from tests.support.mosquitto import Mosquitto
from tests.support.postgres import temporary_database
from tests.support.sim_devices import SimulatedFleet
from tests.support.waiting import wait_until as wait

pytestmark = [pytest.mark.postgres, pytest.mark.mqtt]


def ingested(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    m = re.search(r'^edgefleet_mqtt_messages_ingested_total\{kind="telemetry"\} ([0-9.e+]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_two_replicas_share_telemetry_and_one_controller(
    tmp_path: Path, mosquitto: Mosquitto, signing_key
) -> None:  # type: ignore[no-untyped-def]
    with temporary_database() as db:
        token = admin_token(db)
        args = serve_args(tmp_path, db, mosquitto.url, "--mqtt-protocol", "5", "--share-group", "edgefleet")
        env = {"EDGEFLEET_CONTROLLER_LEASE_S": "2"}
        with (
            run_fleet(tmp_path / "a", args, name="a", env=env) as a,
            run_fleet(tmp_path / "b", args, name="b", env=env) as b,
        ):
            api = FleetClient(a.url, token)
            ids = [f"sim-{i}" for i in range(20)]
            tokens = {d: api.register_device(d, profile="x86-server").token for d in ids}
            sim = SimulatedFleet(mosquitto.host, mosquitto.port, tokens=tokens)
            time.sleep(1.0)  # both replicas subscribed

            # telemetry: 2,000 messages, split between the replicas, none handled twice
            n = 0
            for seq in range(100):
                for d in ids:
                    sim.telemetry(d, seq)
                    n += 1
            wait(lambda: ingested(a.url) + ingested(b.url) >= n, 30, "all telemetry ingested")
            time.sleep(1.0)
            ta, tb = ingested(a.url), ingested(b.url)
            assert ta + tb == n and ta > 0 and tb > 0, (ta, tb)
            import psycopg

            with psycopg.connect(db.replace("postgresql+psycopg", "postgresql")) as conn:
                rows = conn.execute(
                    "SELECT count(*), count(DISTINCT (device_id, seq)) FROM telemetry"
                ).fetchone()
            assert rows == (n, n)

            # one controller at a time; the survivor takes over and the rollout goes on
            leaders = [
                u
                for u in (a.url, b.url)
                if FleetClient(u, token)._call("GET", "/health")["controller_leader"]
            ]
            assert len(leaders) == 1
            leader, survivor = (a, b) if leaders[0] == a.url else (b, a)
            leader.stop()
            follower = FleetClient(survivor.url, token)
            wait(lambda: follower._call("GET", "/health")["controller_leader"], 10, "the survivor to lead")
            bundle = follower.upload_bundle(make_bundle(tmp_path / "bundles", signing_key, version="1.0.0"))
            r = follower.create_rollout(bundle["id"], strategy={"canary_count": 2, "waves": 2})
            wait(lambda: follower.rollout(r["id"])["state"] == "succeeded", 30, "the rollout to finish")
            assert follower.rollout(r["id"])["counts"] == {"succeeded": 20}
            sim.close()
