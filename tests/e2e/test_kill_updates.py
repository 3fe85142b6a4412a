"""SIGKILLs of the agent at random points of fleet-driven updates (issue 14, requirement 6).

Real processes: Mosquitto (dynamic security), ``edge-fleet serve``, ``edge-agent serve``; bundles
padded to tens of MB and downloaded through a throttled proxy, so a kill can land in each step:
download, install (unpack), verify (hashes, signature, smoke test) and activate. After every kill
the version the pointer names verifies on disk, and after every restart a verified model answers
inference; each rollout still succeeds. Every update event reaches the fleet exactly once.

A full disk during a download fails the update cleanly: the old version keeps serving.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sdk import keys
from sdk.bundle import verify_directory
from sdk.fleet_client import FleetClient
from tests.support.agent_proc import Agent, device_agent
from tests.support.bundles import make_bundle
from tests.support.delivery import (
    BROKER_ADMIN,
    FLEET_ENV,
    dynsec_serve_args,
    exactly_once_up_to,
    outbox_last_seq,
    stored_event_seqs,
)
from tests.support.disk import fill, small_tmpfs
from tests.support.fleet_proc import admin_token, run_fleet
from tests.support.mosquitto import DYNSEC_PLUGIN, free_port, run_mosquitto
from tests.support.throttle import ThrottledProxy
from tests.support.update_phases import PHASES, active_version, update_phase
from tests.support.waiting import wait_until as wait

pytestmark = pytest.mark.mqtt

DEVICE = "edge-kill"
MODEL = "tiny"
PAD_BYTES = 16 * 1024 * 1024
RATE_BYTES_S = 8 * 1024 * 1024
#: the agent gives up on a revision started this many times (its loop guard): kill it fewer.
KILLS_PER_REVISION = (1, 2)


def answer(version: int) -> list[float]:
    """What version ``1.<version>.0`` answers for x = 1: its scale is version + 1, its bias 1."""
    return [float(version + 2)] * 4


@dataclass
class Stack:
    tmp: Path
    client: FleetClient
    agent: Agent
    key: keys.Ed25519PrivateKey
    db_path: Path
    pub: Path
    proxy: ThrottledProxy

    @property
    def data_dir(self) -> Path:
        return self.tmp / DEVICE / "data"

    def release(self, version: int, pad_bytes: int = PAD_BYTES) -> str:
        """Build, upload and roll out version ``1.<version>.0``; returns the rollout id."""
        path = make_bundle(
            self.tmp / "bundles", self.key, version=f"1.{version}.0", scale=version + 1.0, pad_bytes=pad_bytes
        )
        bundle = self.client.upload_bundle(path)
        path.unlink()
        return self.client.create_rollout(bundle["id"], selector={"labels": {"site": "kill"}})["id"]

    def rollout_state(self, rollout_id: str) -> str:
        return self.client.rollout(rollout_id)["state"]


@pytest.fixture
def stack(tmp_path: Path, signing_key) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    if not os.path.exists(DYNSEC_PLUGIN):
        pytest.skip("no Mosquitto dynamic security plugin")
    db_path = tmp_path / "fleet.db"
    db = f"sqlite:///{db_path}"
    token = admin_token(db)
    port = free_port()
    with (
        run_mosquitto(tmp_path / "mosquitto", dynsec_admin=BROKER_ADMIN) as broker,
        ThrottledProxy(f"http://127.0.0.1:{port}", RATE_BYTES_S) as proxy,
    ):
        args = dynsec_serve_args(tmp_path, db, broker.url, "--public-url", proxy.url)
        with run_fleet(tmp_path / "fleet", args, env=FLEET_ENV, port=port) as fleet:
            client = FleetClient(fleet.url, token)
            creds = client.register_device(DEVICE, labels={"site": "kill"}, profile="x86-server")
            pub = tmp_path / "keys" / "signing.pub"
            agent = device_agent(creds, tmp_path, fleet_url=proxy.url, broker_url=broker.url, trust_key=pub)
            stack = Stack(tmp_path, client, agent, signing_key, db_path, pub, proxy)
            agent.start()
            try:
                yield stack
            finally:
                agent.stop()
                client.close()
                # pytest shows a test's captured stderr only when it fails (it does not throw the
                # test's error into its fixtures, so an ``except`` here would never run)
                sys.stderr.write(
                    f"--- agent\n{agent.log.read_text()[-5000:]}\n--- fleet\n{fleet.log[-3000:]}\n"
                )


def _verified_on_disk(stack: Stack) -> str:
    """The version the pointer names, checked (signature, every file's hash) as start-up would."""
    version = active_version(stack.data_dir, MODEL)
    assert version is not None, "no version is active"
    verify_directory(
        stack.data_dir / "models" / MODEL / "versions" / version, [keys.load_public_key(stack.pub)]
    )
    return version


def _wait_for_phase(stack: Stack, target: str, version: int, rollout_id: str, timeout: float = 90) -> bool:
    """Poll (1 ms) until the update to ``version`` is in ``target``; False when it finished first."""
    deadline = time.monotonic() + timeout
    last_api = 0.0
    while time.monotonic() < deadline:
        if update_phase(stack.data_dir, MODEL, f"1.{version}.0") == target:
            return True
        now = time.monotonic()
        if now - last_api > 0.5:
            last_api = now
            if stack.rollout_state(rollout_id) in ("succeeded", "failed", "rolled_back"):
                return False
        time.sleep(0.001)
    raise AssertionError(f"the update to 1.{version}.0 never reached {target} within {timeout} s")


def _kill_during_updates(stack: Stack, kills: int, seed: int) -> Counter[str]:
    rng = random.Random(seed)
    landed: Counter[str] = Counter()
    version = 1
    first = stack.release(version, pad_bytes=1024)
    wait(lambda: stack.rollout_state(first) == "succeeded", 120, "the first rollout")
    assert stack.agent.infer() == answer(version)
    targets = [PHASES[i % len(PHASES)] for i in range(kills)]
    rng.shuffle(targets)
    while targets:
        version += 1
        rollout = stack.release(version)
        for _ in range(rng.choice(KILLS_PER_REVISION)):
            if not targets or not _wait_for_phase(stack, targets[-1], version, rollout):
                break
            target = targets.pop()
            # a moment into the step: downloads last seconds, the other steps milliseconds
            time.sleep(rng.uniform(0, 1.5) if target == "download" else rng.uniform(0, 0.004))
            stack.agent.kill()
            landed[update_phase(stack.data_dir, MODEL, f"1.{version}.0")] += 1
            on_disk = _verified_on_disk(stack)
            assert on_disk in (f"1.{version - 1}.0", f"1.{version}.0")
            stack.agent.start()
            allowed = (answer(version - 1), answer(version))
            wait(
                lambda a=allowed: stack.agent.infer() in a, 60, "a verified model to answer after the restart"
            )
        wait(lambda r=rollout: stack.rollout_state(r) == "succeeded", 180, f"the rollout of 1.{version}.0")
        assert stack.agent.infer() == answer(version)
        assert _verified_on_disk(stack) == f"1.{version}.0"
    # every update event reached the fleet, once, across all the kills
    last_event = outbox_last_seq(stack.data_dir, "last_seq_events")
    wait(
        lambda: exactly_once_up_to(stored_event_seqs(stack.db_path, DEVICE), last_event),
        60,
        f"events 0..{last_event} stored exactly once",
        step=0.5,
    )
    sys.stderr.write(f"kills by step: {dict(landed)} over {version - 1} rollouts\n")
    return landed


def test_kills_during_updates_leave_a_verified_model_serving(stack: Stack) -> None:
    landed = _kill_during_updates(stack, kills=12, seed=14)
    assert sum(landed.values()) == 12
    assert set(PHASES) <= set(landed), landed


@pytest.mark.slow
@pytest.mark.timeout(3600)  # ~31 min measured on 2 shared cores (9 s a kill, restarts included)
def test_200_kills_during_updates(stack: Stack) -> None:
    kills = int(os.environ.get("EDGEFLEET_KILLS", "200"))
    landed = _kill_during_updates(stack, kills=kills, seed=int(os.environ.get("EDGEFLEET_KILL_SEED", "200")))
    assert sum(landed.values()) == kills
    assert set(PHASES) <= set(landed), landed


# ------------------------------------------------------------------------------------- full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 40 MiB tmpfs for the agent's data folder (needs root and mount; skipped with the reason)."""
    with small_tmpfs(tmp_path / "edge-kill", "40m") as mount_point:
        yield mount_point


@pytest.mark.parametrize("fills", ["during the download", "before the download"])
def test_full_disk_during_download_fails_cleanly(small_disk: Path, stack: Stack, fills: str) -> None:
    first = stack.release(1, pad_bytes=1024)
    wait(lambda: stack.rollout_state(first) == "succeeded", 120, "the first rollout")
    assert stack.data_dir.is_relative_to(small_disk)
    if fills == "before the download":
        # Nothing of the download is on disk to give back: only the agent's reserve lets it save
        # its journal and record the failure (a clean-clone CI run once stalled here for good).
        ballast = fill(small_disk)
        rollout = stack.release(2, pad_bytes=PAD_BYTES)
    else:
        # Fill the disk while the download of 1.2.0 runs: the room it counted on is gone. The proxy
        # holds the body half way, so the disk fills before the download can finish however slowly
        # this test runs (in CI, on a loaded machine, the download once won that race).
        stack.proxy.hold(PAD_BYTES // 2)
        rollout = stack.release(2, pad_bytes=PAD_BYTES)
        assert _wait_for_phase(stack, "download", 2, rollout)
        ballast = fill(small_disk)
    stack.proxy.release()
    wait(lambda: stack.rollout_state(rollout) in ("rolled_back", "failed"), 120, "the rollout to fail")
    assert stack.agent.infer() == answer(1)
    assert active_version(stack.data_dir, MODEL) == "1.1.0"
    assert not list((stack.data_dir / "sync" / "downloads").glob("*.part")), "the partial download stayed"
    log = stack.agent.log.read_text()
    assert "no room on disk" in log
    assert "Traceback" not in log
    ballast.unlink()
    # The disk has room again: the next release installs.
    rollout = stack.release(3, pad_bytes=1024)
    wait(lambda: stack.rollout_state(rollout) == "succeeded", 120, "the next rollout")
    assert stack.agent.infer() == answer(3)
    reserve = stack.data_dir / "sync" / "reserve"
    wait(lambda: reserve.exists() and reserve.stat().st_size > 0, 60, "the disk reserve to be written again")
