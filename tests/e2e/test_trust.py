"""Issue 14, findings 2, 3 and 9 end to end: Mosquitto (open, as the finding had it), a real
``edge-fleet serve`` that signs desired states, and real ``edge-agent serve`` processes.

- Finding 2: one anonymous desired state with revision 2**62 naming an old, validly signed bundle
  on a foreign server is refused by the agent (the key pinned at registration did not sign it):
  nothing is fetched, the approved version keeps serving, and the next rollout still reaches it.
- Finding 3: a device that reports revision 2**62 with the target version active, before the
  rollout exists, does not get the rollout marked succeeded; its later honest reports count.
- Finding 9: a device registered without a profile is not offered the bundle.
"""

from __future__ import annotations

import http.server
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sdk import messages
from sdk.fleet_client import FleetClient
from sdk.topics import topic
from tests.agent.sync.support import desired_model
from tests.support.agent_proc import Agent, device_agent
from tests.support.bundles import make_bundle
from tests.support.fleet_proc import FleetProcess, admin_token, run_fleet, serve_args
from tests.support.mosquitto import Mosquitto
from tests.support.waiting import wait_until as wait

pytestmark = pytest.mark.mqtt


class ForeignServer:
    """A web server the attacker controls, serving an old (validly signed) bundle; counts requests."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

            def do_GET(self) -> None:
                requests.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def publish(broker: Mosquitto, name: str, payload: bytes, **login: str) -> None:
    """One message from a client of the attacker's (anonymous unless ``username``/``password``)."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"attacker-{time.monotonic_ns()}")
    if login:
        c.username_pw_set(login["username"], login["password"])
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.publish(name, payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: Mosquitto, signing_key) -> Iterator[tuple[FleetProcess, FleetClient]]:  # type: ignore[no-untyped-def]
    # signing_key first: it writes the release key the fleet trusts
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    token = admin_token(db)
    with run_fleet(tmp_path / "fleet", serve_args(tmp_path, db, mosquitto.url)) as proc:
        client = FleetClient(proc.url, token)
        try:
            yield proc, client
        finally:
            client.close()
            # shown only when the test fails (pytest does not throw a test's error into a fixture)
            sys.stderr.write(f"--- fleet\n{proc.log[-5000:]}\n")


def start_agent(
    client: FleetClient, proc: FleetProcess, broker: Mosquitto, tmp: Path, device_id: str
) -> Agent:
    creds = client.register_device(device_id, profile="x86-server")
    assert creds.fleet_key, "the fleet pins its desired-state key in the credentials"
    agent = device_agent(
        creds, tmp, fleet_url=proc.url, broker_url=broker.url, trust_key=tmp / "keys" / "signing.pub"
    )
    agent.start()
    return agent


def events(client: FleetClient, device_id: str) -> list[dict]:
    return client.device_health(device_id, window_s=3600)["recent_events"]


def test_forged_desired_state_is_refused_and_later_rollouts_still_apply(
    tmp_path: Path, mosquitto: Mosquitto, fleet, signing_key
) -> None:  # type: ignore[no-untyped-def]
    proc, client = fleet
    agent = start_agent(client, proc, mosquitto, tmp_path, "edge-0")
    try:
        wait(lambda: client.device("edge-0")["online"], 30, "the agent online")
        approved = client.upload_bundle(make_bundle(tmp_path / "b", signing_key, version="2.0.0", scale=2.0))
        r1 = client.create_rollout(approved["id"])
        wait(lambda: client.rollout(r1["id"])["state"] == "succeeded", 60, "the approved version")
        assert agent.infer() == [3.0, 3.0, 3.0, 3.0]

        # the attacker's old bundle is validly signed by the release key: only the desired state lies
        foreign_root = tmp_path / "foreign"
        old = make_bundle(foreign_root, signing_key, version="1.0.0", scale=5.0)
        foreign = ForeignServer(foreign_root)
        try:
            forged = messages.DesiredState(
                revision=2**31 - 1,
                models=[
                    desired_model(old, "tiny", "1.0.0", url=f"{foreign.url}/{old.relative_to(foreign_root)}")
                ],
            )
            publish(mosquitto, topic("desired", "edge-0"), forged.to_bytes())
            wait(
                lambda: any("desired state refused" in (e["reason"] or "") for e in events(client, "edge-0")),
                30,
                "the agent to report the refusal",
            )
            time.sleep(1.0)
            assert foreign.requests == []
            assert agent.infer() == [3.0, 3.0, 3.0, 3.0]
            assert "refused a desired state for device edge-0" in agent.log.read_text()
        finally:
            foreign.close()

        # the fleet's next rollout is not ignored
        newer = client.upload_bundle(make_bundle(tmp_path / "b", signing_key, version="3.0.0", scale=3.0))
        r2 = client.create_rollout(newer["id"])
        wait(lambda: client.rollout(r2["id"])["state"] == "succeeded", 60, "the next rollout")
        assert agent.infer() == [4.0, 4.0, 4.0, 4.0]
    except BaseException:
        sys.stderr.write(f"--- agent\n{agent.log.read_text()[-4000:]}\n")
        raise
    finally:
        agent.stop()


def test_forged_report_completes_nothing_and_honest_reports_still_count(
    tmp_path: Path, mosquitto: Mosquitto, fleet, signing_key
) -> None:  # type: ignore[no-untyped-def]
    proc, client = fleet
    creds = client.register_device("edge-1", profile="x86-server")
    client.register_device("no-profile")  # registered without a profile (finding 9)
    bundle = client.upload_bundle(make_bundle(tmp_path / "b", signing_key, version="2.0.0"))

    # before the rollout exists, the device claims revision 2**62 with the target version active
    forged = messages.ReportedState(
        revision=2**31 - 1,
        agent_version="evil",
        models=[messages.ReportedModel(name="tiny", version="2.0.0", state="active", active_version="2.0.0")],
    )
    publish(mosquitto, topic("reported", "edge-1"), forged.to_bytes())
    wait(
        lambda: "device edge-1 (unissued_revision): reports revision 2147483647" in proc.log,
        20,
        "the refusal logged",
    )
    assert client.device("edge-1")["reported_revision"] == -1

    rollout = client.create_rollout(bundle["id"])
    devices = {d["device_id"]: d for d in client.rollout(rollout["id"])["devices"]}
    assert (
        devices["no-profile"]["state"] == "skipped" and "profile is unknown" in devices["no-profile"]["error"]
    )
    time.sleep(3.0)  # many controller passes (every 0.2 s)
    assert client.rollout(rollout["id"])["state"] == "running"
    assert {d["device_id"]: d["state"] for d in client.rollout(rollout["id"])["devices"]}[
        "edge-1"
    ] == "updating"

    # the real agent of edge-1 starts: it downloads, installs and reports honestly; that counts
    agent = device_agent(
        creds,
        tmp_path,
        fleet_url=proc.url,
        broker_url=mosquitto.url,
        trust_key=tmp_path / "keys" / "signing.pub",
    )
    agent.start()
    try:
        wait(lambda: client.rollout(rollout["id"])["state"] == "succeeded", 60, "the honest report to count")
        assert client.device("edge-1")["reported_revision"] == 1
        assert client.rollout(rollout["id"])["counts"] == {"succeeded": 1, "skipped": 1}
        assert agent.infer() == [3.0, 3.0, 3.0, 3.0]
    except BaseException:
        sys.stderr.write(f"--- agent\n{agent.log.read_text()[-4000:]}\n")
        raise
    finally:
        agent.stop()
