"""The agent verifies its desired state (issue 14, finding 2), against real Mosquitto and HTTP.

The probe publishes with the broker's fleet account: it is whoever can write the device's
``desired`` topic (an open broker, a compromised broker, a network attacker without TLS). The
device pins the fleet key in its credentials, so only what the fleet signed is applied.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from agent.store import ModelStore
from sdk import messages
from tests.agent.sync.conftest import FAST
from tests.agent.sync.support import desired_model, running
from tests.support.bundles import make_bundle

pytestmark = pytest.mark.mqtt

#: every refusal sent as an event (a device limits them to one a second by default)
EVERY_REFUSAL = replace(FAST, reconcile=replace(FAST.reconcile, refusal_event_interval_s=0.0))


def refusals(world, since: int = 0) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        e.json()["reason"]
        for e in world.probe.on("events", "dev-1")[since:]
        if "desired state refused" in (e.json().get("reason") or "")
    ]


def wait_refusal(world, text: str, since: int = 0) -> None:  # type: ignore[no-untyped-def]
    world.probe.wait_for(
        "events", "dev-1", lambda e: text in (e.get("reason") or "") and "refused" in e["reason"], since=since
    )


def test_a_forged_desired_state_is_refused_and_the_fleets_next_one_applies(world) -> None:
    good = make_bundle(world.bundles, world.key, name="net", version="2.0")
    old = make_bundle(world.bundles, world.key, name="net", version="1.0", scale=5.0)
    store = world.store()
    with running(world.service(store, pin_fleet_key=True)):
        forged = messages.DesiredState(
            revision=2**31 - 1, models=[desired_model(old, "net", "1.0", url="http://127.0.0.1:9/old.efb")]
        )
        world.probe.publish_desired("dev-1", forged)
        wait_refusal(world, "not signed")
        time.sleep(0.5)
        assert store.calls == [] and world.server.requests == []

        # a state signed with the right key for revision 1 is applied: the forged 2**31 - 1 counted for nothing
        world.probe.publish_desired(
            "dev-1",
            world.signed(messages.DesiredState(revision=1, models=[desired_model(good, "net", "2.0")])),
        )
        reported = world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == 1)
    assert store.active == {"net": "2.0"} and reported["models"][0]["state"] == "active"


def test_a_state_signed_by_another_key_or_for_another_device_is_refused(world) -> None:
    from sdk import keys
    from sdk.desired_auth import sign_desired

    bundle = make_bundle(world.bundles, world.key, name="net", version="1.0")
    state = messages.DesiredState(revision=1, models=[desired_model(bundle, "net", "1.0")])
    store = world.store()
    with running(world.service(store, pin_fleet_key=True, tuning=EVERY_REFUSAL)):
        world.probe.publish_desired("dev-1", sign_desired(keys.generate_key(), state, device_id="dev-1"))
        wait_refusal(world, "not by the pinned fleet key")
        # mix and match: dev-2's genuinely signed state, replayed on dev-1's topic
        world.probe.publish_desired("dev-1", world.signed(state, device_id="dev-2"))
        wait_refusal(world, "is for device dev-2")
        time.sleep(0.5)
    assert store.calls == []


def test_an_expired_state_is_not_applied(world) -> None:
    bundle = make_bundle(world.bundles, world.key, name="net", version="1.0")
    state = messages.DesiredState(revision=1, models=[desired_model(bundle, "net", "1.0")])
    store = world.store()
    with running(world.service(store, pin_fleet_key=True)):
        world.probe.publish_desired("dev-1", world.signed(state, validity_s=60, now=time.time() - 120))
        wait_refusal(world, "expired")
        time.sleep(0.5)
    assert store.calls == []


def test_a_revision_below_the_highest_accepted_is_refused_after_a_restart(world) -> None:
    v1 = make_bundle(world.bundles, world.key, name="net", version="1.0")
    v2 = make_bundle(world.bundles, world.key, name="net", version="2.0", scale=3.0)
    data_dir = world.tmp / "agent-data"
    store = ModelStore(data_dir, [world.key.public_key()])
    old = world.signed(messages.DesiredState(revision=3, models=[desired_model(v1, "net", "1.0")]))
    new = world.signed(messages.DesiredState(revision=5, models=[desired_model(v2, "net", "2.0")]))
    with running(world.service(store, data_dir=data_dir, pin_fleet_key=True)):
        world.probe.publish_desired("dev-1", new)
        world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == 5)
    assert store.active_versions() == {"net": "2.0"}

    # restarted; an attacker replays revision 3, validly signed and not yet expired
    since = len(world.probe.on("events", "dev-1"))
    with running(world.service(store, data_dir=data_dir, pin_fleet_key=True)):
        world.probe.publish_desired("dev-1", old)
        wait_refusal(world, "below revision 5", since=since)
        time.sleep(0.5)
    assert store.active_versions() == {"net": "2.0"}
    assert refusals(world, since) and all("revision 3" in r for r in refusals(world, since))
