"""Restarts: an interrupted revision resumes from the journal (and its .part file); the loop guard."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent.sync.journal import Journal, ModelRecord
from agent.sync.states import State
from sdk import keys, messages
from tests.agent.sync.support import desired_model, running, start_device_process
from tests.support.bundles import make_bundle

pytestmark = pytest.mark.mqtt


def _device(world, data_dir: Path) -> subprocess.Popen:
    config = world.config("dev-1", data_dir=data_dir, interval=5.0)
    return start_device_process(config, world.tmp / "signing.pub", world.tmp)


def test_kill_9_mid_download_resumes_with_range_after_restart(world) -> None:
    keys.save_keypair(world.key, world.tmp / "signing")
    bundle = make_bundle(world.bundles, world.key, name="net", version="1.0")
    size = bundle.stat().st_size
    world.server.throttle = (64, 0.03)  # about 2 s for the whole bundle
    world.probe.publish_desired(
        "dev-1", messages.DesiredState(revision=1, models=[desired_model(bundle, "net", "1.0")])
    )
    data_dir = world.tmp / "data"

    proc = _device(world, data_dir)
    try:
        deadline = time.monotonic() + 10
        parts: list[Path] = []
        while time.monotonic() < deadline:
            parts = [
                p for p in (data_dir / "sync" / "downloads").glob("*.part") if p.stat().st_size >= size // 3
            ]
            if parts:
                break
            time.sleep(0.02)
        assert parts, "the download never started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    kept = parts[0].stat().st_size
    journal = Journal(data_dir / "sync" / "journal.json").data
    assert journal.pending is not None and journal.pending.revision == 1
    assert journal.models["net"].state is State.DOWNLOADING

    world.server.throttle = None
    proc = _device(world, data_dir)
    try:
        reported = world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == 1)
    finally:
        proc.kill()
        proc.wait()
    assert reported["models"][0]["state"] == "active"
    ranges = [h.get("Range") for _, h in world.server.requests]
    assert ranges[-1] == f"bytes={kept}-", ranges
    download = [e.json() for e in world.probe.on("events", "dev-1") if e.json()["kind"] == "download"][-1]
    assert f"resumed at byte {kept}" in download["reason"]


def test_loop_guard_gives_up_on_a_revision_that_keeps_crashing(world) -> None:
    bundle = make_bundle(world.bundles, world.key, name="net", version="1.0")
    desired = messages.DesiredState(revision=7, models=[desired_model(bundle, "net", "1.0")])
    data_dir = world.tmp / "data"
    # as if three earlier starts had crashed while installing this revision
    journal = Journal(data_dir / "sync" / "journal.json")
    journal.data.pending = desired
    journal.data.attempts = 3
    journal.data.models = {"net": ModelRecord(name="net", version="1.0", state=State.INSTALLING)}
    journal.save()
    world.probe.publish_desired("dev-1", desired)
    store = world.store()

    with running(world.service(store, data_dir=data_dir)):
        reported = world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == 7)
        time.sleep(0.5)  # the retained desired of the same revision must not restart it

    assert store.calls == []
    (model,) = reported["models"]
    assert model["state"] == "failed" and "gave up" in model["error"]
    failure = world.probe.last("events", "dev-1")
    assert failure["kind"] == "failure" and "after 3 interrupted attempts" in failure["reason"]


def test_kills_while_downloading_do_not_count_against_the_loop_guard(world) -> None:
    """Three power cuts during one long download must not make the device give up the revision."""
    bundle = make_bundle(world.bundles, world.key, name="net", version="1.0")
    desired = messages.DesiredState(revision=7, models=[desired_model(bundle, "net", "1.0")])
    data_dir = world.tmp / "data"
    # as if three earlier starts had each been killed in the middle of the download
    journal = Journal(data_dir / "sync" / "journal.json")
    journal.data.pending = desired
    journal.data.attempts = 3
    journal.data.models = {"net": ModelRecord(name="net", version="1.0", state=State.DOWNLOADING)}
    journal.save()
    world.probe.publish_desired("dev-1", desired)
    store = world.store()

    with running(world.service(store, data_dir=data_dir)):
        reported = world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == 7)

    (model,) = reported["models"]
    assert model["state"] == "active" and store.active == {"net": "1.0"}


def test_clean_stop_mid_download_keeps_the_revision_pending_without_counting_an_attempt(world) -> None:
    bundle = make_bundle(world.bundles, world.key, name="net", version="1.0")
    world.server.throttle = (64, 0.03)
    world.probe.publish_desired(
        "dev-1", messages.DesiredState(revision=1, models=[desired_model(bundle, "net", "1.0")])
    )
    data_dir = world.tmp / "data"
    store = world.store()
    with running(world.service(store, data_dir=data_dir)):
        deadline = time.monotonic() + 10
        while not list((data_dir / "sync" / "downloads").glob("*.part")) and time.monotonic() < deadline:
            time.sleep(0.02)
    journal = Journal(data_dir / "sync" / "journal.json").data
    assert journal.pending is not None and journal.attempts == 0 and store.calls == []

    world.server.throttle = None
    with running(world.service(store, data_dir=data_dir)):
        world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == 1)
    assert store.active == {"net": "1.0"}
    assert world.server.requests[-1][1].get("Range", "").startswith("bytes=")
