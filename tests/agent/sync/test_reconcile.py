"""Desired -> download -> install -> reported/events, against real Mosquitto and a real HTTP server."""

from __future__ import annotations

import time

import pytest

from sdk import messages
from tests.agent.sync.support import desired_model, running
from tests.support.bundles import make_bundle

pytestmark = pytest.mark.mqtt


def _active(name: str, version: str):
    def check(reported: dict) -> bool:
        return any(
            m["name"] == name and m["state"] == "active" and m["active_version"] == version
            for m in reported["models"]
        )

    return check


def test_reconciles_to_retained_desired_on_connect(world) -> None:
    bundle = make_bundle(world.bundles, world.key, name="net", version="1.0")
    world.probe.publish_desired(
        "dev-1", messages.DesiredState(revision=1, models=[desired_model(bundle, "net", "1.0")])
    )
    store = world.store()

    with running(world.service(store)):
        reported = world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == 1)

    assert store.active == {"net": "1.0"}
    assert _active("net", "1.0")(reported)
    assert reported["agent_version"] and reported["profile"] == "x86-server"
    assert reported.get("last_error") is None
    events = [e.json() for e in world.probe.on("events", "dev-1")]
    assert [e["kind"] for e in events] == ["download", "verify", "activate"]
    assert events[-1]["reason"] == "first version of this model on the device"
    # the token went to the fleet with the download
    assert world.server.requests[-1][1]["Authorization"] == "Bearer device-token-1"
    status = world.probe.on("status", "dev-1")
    assert status[0].json()["state"] == "online"
    assert status[-1].json()["state"] == "offline"  # graceful stop says goodbye


def test_repeated_and_older_revisions_change_nothing(world) -> None:
    b1 = make_bundle(world.bundles, world.key, name="net", version="1.0")
    b2 = make_bundle(world.bundles, world.key, name="net", version="2.0", scale=2.0)
    store = world.store()
    with running(world.service(store)):
        world.probe.publish_desired(
            "dev-1", messages.DesiredState(revision=5, models=[desired_model(b2, "net", "2.0")])
        )
        world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == 5)
        calls, events, downloads = (
            list(store.calls),
            len(world.probe.on("events", "dev-1")),
            len(world.server.requests),
        )

        world.probe.publish_desired(
            "dev-1", messages.DesiredState(revision=5, models=[desired_model(b2, "net", "2.0")])
        )
        world.probe.publish_desired(
            "dev-1", messages.DesiredState(revision=4, models=[desired_model(b1, "net", "1.0")])
        )
        time.sleep(1.0)

        assert store.calls == calls
        # the repeat changes nothing silently; the older revision is refused with one event saying why
        (refusal,) = [e.json() for e in world.probe.on("events", "dev-1")[events:]]
        assert refusal["ok"] is False and "below revision 5" in refusal["reason"]
        assert len(world.server.requests) == downloads
        assert store.active == {"net": "2.0"}


def test_failed_install_reports_failed_with_reason_and_keeps_old_version(world) -> None:
    b1 = make_bundle(world.bundles, world.key, name="net", version="1.0")
    b2 = make_bundle(world.bundles, world.key, name="net", version="2.0", scale=2.0)
    store = world.store(broken={("net", "2.0")})
    with running(world.service(store)):
        world.probe.publish_desired(
            "dev-1", messages.DesiredState(revision=1, models=[desired_model(b1, "net", "1.0")])
        )
        world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == 1)
        world.probe.publish_desired(
            "dev-1", messages.DesiredState(revision=2, models=[desired_model(b2, "net", "2.0")])
        )
        reported = world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == 2)

    (model,) = reported["models"]
    assert model["state"] == "failed" and model["version"] == "2.0"
    assert model["active_version"] == "1.0"
    assert "smoke test" in model["error"] and "smoke test" in reported["last_error"]
    failure = [e.json() for e in world.probe.on("events", "dev-1") if e.json()["kind"] == "failure"]
    assert len(failure) == 1 and failure[0]["ok"] is False and failure[0]["revision"] == 2
    assert "smoke test" in failure[0]["reason"] and "stays 1.0" in failure[0]["reason"]
    assert store.active == {"net": "1.0"}


def test_rollback_to_previous_and_activate_installed_without_download(world) -> None:
    b1 = make_bundle(world.bundles, world.key, name="net", version="1.0")
    b2 = make_bundle(world.bundles, world.key, name="net", version="2.0", scale=2.0)
    store = world.store()
    with running(world.service(store)):
        for rev, (b, v) in enumerate([(b1, "1.0"), (b2, "2.0")], start=1):
            world.probe.publish_desired(
                "dev-1", messages.DesiredState(revision=rev, models=[desired_model(b, "net", v)])
            )
            world.probe.wait_for("reported", "dev-1", lambda r, rev=rev: r["revision"] == rev)
        downloads = len(world.server.requests)
        world.probe.publish_desired(
            "dev-1", messages.DesiredState(revision=3, models=[desired_model(b1, "net", "1.0")])
        )
        reported = world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == 3)

    assert _active("net", "1.0")(reported)
    assert len(world.server.requests) == downloads  # already installed: no download
    assert store.calls[-1] == ("rollback", "net", "1.0")
    assert world.probe.last("events", "dev-1")["kind"] == "rollback"


def test_offline_device_converges_when_it_returns(world) -> None:
    b1 = make_bundle(world.bundles, world.key, name="net", version="1.0")
    b2 = make_bundle(world.bundles, world.key, name="net", version="2.0", scale=2.0)
    store = world.store()
    data_dir = world.tmp / "dev-1-data"
    with running(world.service(store, data_dir=data_dir)):
        world.probe.publish_desired(
            "dev-1", messages.DesiredState(revision=1, models=[desired_model(b1, "net", "1.0")])
        )
        world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == 1)
    world.probe.wait_for("status", "dev-1", lambda s: s["state"] == "offline")

    # while the device is away, the fleet moves on twice; only the last revision matters
    world.probe.publish_desired(
        "dev-1", messages.DesiredState(revision=2, models=[desired_model(b1, "net", "1.0")])
    )
    world.probe.publish_desired(
        "dev-1", messages.DesiredState(revision=3, models=[desired_model(b2, "net", "2.0")])
    )

    with running(world.service(store, data_dir=data_dir)):
        reported = world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == 3)
    assert _active("net", "2.0")(reported)
    assert store.active == {"net": "2.0"}


def test_cut_download_is_retried_and_resumed(world) -> None:
    bundle = make_bundle(world.bundles, world.key, name="net", version="1.0")
    world.server.cut_after[bundle.name] = bundle.stat().st_size // 2
    store = world.store()
    with running(world.service(store)):
        world.probe.publish_desired(
            "dev-1", messages.DesiredState(revision=1, models=[desired_model(bundle, "net", "1.0")])
        )
        world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == 1)
    downloads = [e.json() for e in world.probe.on("events", "dev-1") if e.json()["kind"] == "download"]
    assert [d["ok"] for d in downloads] == [False, True]
    assert "retrying" in downloads[0]["reason"]
    assert f"resumed at byte {bundle.stat().st_size // 2}" in downloads[1]["reason"]
    assert store.active == {"net": "1.0"}


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda m: m.model_copy(update={"sha256": "0" * 64}), "does not match"),
        (lambda m: m.model_copy(update={"size": m.size - 10}), "allows"),
    ],
    ids=["hash-mismatch", "size-cap"],
)
def test_bad_download_is_rejected_and_nothing_installed(world, tamper, message: str) -> None:
    bundle = make_bundle(world.bundles, world.key, name="net", version="1.0")
    store = world.store()
    with running(world.service(store)):
        model = tamper(desired_model(bundle, "net", "1.0"))
        world.probe.publish_desired("dev-1", messages.DesiredState(revision=1, models=[model]))
        reported = world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == 1)
    assert reported["models"][0]["state"] == "failed" and message in reported["models"][0]["error"]
    assert store.calls == [] and store.active == {}
    assert world.probe.last("events", "dev-1")["kind"] == "failure"
    assert not list((world.tmp / "dev-1-data" / "sync" / "downloads").glob("*"))
