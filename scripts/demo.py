"""`make demo`: the whole loop on one machine, with real processes, left running until Ctrl-C.

1. train a small CNN on scikit-learn's digits and convert it twice (`edge-convert`): for the
   x86-server profile and for the raspberry-pi profile
2. start the fleet (`edge-fleet up`: embedded MQTT broker, SQLite, local bundles) on free ports
3. register two devices, one per profile, and start an agent for each (`edge-agent serve`)
4. upload both bundles and roll each out to the devices of its profile
5. classify held-out digits through both agents, then keep sending a little traffic every second
   (so the dashboard's charts move) until Ctrl-C or SIGTERM; `--once` stops after the first pass

Everything lives under ./demo-out (removed at the start of each run); nothing is downloaded.
Every child runs in its own process group and is stopped (SIGTERM, then SIGKILL) and reaped on exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
BIN = Path(sys.executable).parent
#: (device id, profile): one device per profile, both fed from the same source model
DEVICES = (("demo-x86", "x86-server"), ("demo-pi", "raspberry-pi"))
#: requests per agent per second in the traffic loop: enough to move the charts, not the CPU
TRAFFIC_PER_S = 4
log = logging.getLogger("demo")


class Stop(Exception):
    """SIGINT or SIGTERM arrived: leave the loop and shut everything down."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step(text: str) -> None:
    sys.stderr.write(f"\n==> {text}\n")
    sys.stderr.flush()


def wait_for(what: str, check: Callable[[], Any], timeout: float, procs: list[subprocess.Popen]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"demo: {p.args[0]} exited with {p.returncode} while waiting for {what}")
        try:
            result = check()
        except Stop:
            raise
        except Exception:  # the service is still starting
            result = None
        if result:
            return result
        time.sleep(0.3)
    raise SystemExit(f"demo: timed out after {timeout:.0f} s waiting for {what}")


def start(args: list[str], logfile: Path) -> subprocess.Popen:
    # Own process group: a Ctrl-C in the terminal reaches only the demo, which stops the children
    # in order (agents before the fleet) instead of all of them dying at once.
    with open(logfile, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


@dataclass
class Running:
    """One device: its profile, bundle, agent client."""

    device_id: str
    profile: str
    bundle: Path
    agent: Any = None
    url: str = ""


def convert(files: dict[str, Path], key: Path, profile: str) -> Path:
    converted = subprocess.run(
        [
            BIN / "edge-convert", files["model"], "--profile", profile, "--name", "digits",
            "--version", "1.0.0", "--input", "image:1,1,32,32",
            "--calibration", files["calibration"], "--eval", files["eval"],
            "--sign-key", key, "--output", OUT / "bundles", "--json",
        ],
        check=False, stdout=subprocess.PIPE,
    )  # fmt: skip
    if converted.returncode != 0:
        raise SystemExit(f"demo: edge-convert --profile {profile} failed (see above)")
    result = json.loads(converted.stdout)
    metrics = result["manifest"]["metrics"]
    log.info("%s: bundle %s", profile, Path(result["bundle"]).name)
    log.info(
        "%s: size %s -> %s bytes, latency %.3f -> %.3f ms (host-measured median)",
        profile,
        metrics["size_bytes"]["source"],
        metrics["size_bytes"]["converted"],
        metrics["latency_ms"]["source"],
        metrics["latency_ms"]["converted"],
    )
    if "accuracy" in metrics:
        log.info(
            "%s: accuracy %.4f -> %.4f",
            profile,
            metrics["accuracy"]["source"],
            metrics["accuracy"]["converted"],
        )
    return Path(result["bundle"])


def classify(device: Running, images: np.ndarray, labels: np.ndarray) -> tuple[int, float]:
    correct = 0
    started = time.perf_counter()
    for image, label in zip(images, labels):
        res = device.agent.infer("digits", {"image": image[None]}, binary=True)
        correct += int(np.argmax(next(iter(res.outputs.values()))) == label)
    return correct, time.perf_counter() - started


def traffic(devices: list[Running], images: np.ndarray, labels: np.ndarray, once: bool) -> None:
    """A few requests per agent every second until Stop; a status line every 30 s."""
    i, sent, failed, next_report = 0, 0, 0, time.monotonic() + 30
    while True:
        tick = time.monotonic()
        for device in devices:
            for _ in range(TRAFFIC_PER_S):
                i = (i + 1) % len(images)
                try:
                    device.agent.infer("digits", {"image": images[i][None]}, binary=True)
                    sent += 1
                except Exception as exc:  # an agent being updated or stopped: count it, keep going
                    failed += 1
                    log.debug("request to %s failed: %s", device.device_id, exc)
        if once:
            log.info("traffic: %d requests sent, %d failed", sent, failed)
            return
        if tick >= next_report:
            log.info("traffic: %d requests sent, %d failed so far (Ctrl-C stops the demo)", sent, failed)
            next_report = tick + 30
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="run the loop once and exit (CI)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="    %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    sys.path.insert(0, str(ROOT))
    import httpx

    from scripts.demo_model import build_digits_model
    from sdk.agent_client import AgentClient
    from sdk.fleet_client import FleetClient

    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    procs: list[subprocess.Popen] = []
    try:
        step("1/5 train a digits CNN and convert it for the x86-server and raspberry-pi profiles")
        files = build_digits_model(OUT / "model")
        key = OUT / "keys" / "signing"
        subprocess.run([BIN / "edge-convert", "keygen", key], check=True, stdout=subprocess.DEVNULL)
        devices = [Running(d, p, convert(files, key, p)) for d, p in DEVICES]

        step("2/5 start the fleet (embedded MQTT broker, SQLite, local bundle storage)")
        http_port, mqtt_port = free_port(), free_port()
        fleet_url = f"http://127.0.0.1:{http_port}"
        fleet_log = OUT / "fleet.log"
        fleet_args = [
            str(BIN / "edge-fleet"), "up", "--listen", f"127.0.0.1:{http_port}",
            "--mqtt-listen", f"127.0.0.1:{mqtt_port}", "--data-dir", str(OUT / "fleet"),
            "--trust-key", f"{key}.pub",
        ]  # fmt: skip
        procs.append(start(fleet_args, fleet_log))

        def admin_token() -> str | None:
            lines = fleet_log.read_text(errors="replace").splitlines()
            if "admin token:" in lines:
                i = lines.index("admin token:")
                return lines[i + 1].strip() if len(lines) > i + 1 else None
            return None

        token = str(wait_for("the fleet's admin token", admin_token, 60, procs))
        wait_for("the fleet API", lambda: httpx.get(f"{fleet_url}/healthz").status_code == 200, 60, procs)
        log.info("fleet %s, MQTT on 127.0.0.1:%d; log in %s", fleet_url, mqtt_port, fleet_log)
        fleet_api = FleetClient(fleet_url, token)

        step("3/5 register two devices (one per profile) and start their agents")
        for device in devices:
            creds = fleet_api.register_device(
                device.device_id, labels={"site": "demo", "hw": device.profile}, profile=device.profile
            )
            home = OUT / "agents" / device.device_id
            creds_file = creds.save(home / "credentials.json")
            port = free_port()
            agent_args = [
                str(BIN / "edge-agent"), "serve", "--data-dir", str(home / "data"),
                "--listen", f"127.0.0.1:{port}", "--trust-key", f"{key}.pub", "--fleet-url", fleet_url,
                "--broker", creds.broker_url or f"mqtt://127.0.0.1:{mqtt_port}",
                "--device-id", creds.device_id, "--credentials", str(creds_file),
                "--telemetry-interval", "2",
            ]  # fmt: skip
            procs.append(start(agent_args, OUT / "agents" / f"{device.device_id}.log"))
            device.url = f"http://127.0.0.1:{port}"
            device.agent = AgentClient(device.url)
        for device in devices:
            wait_for(f"the agent of {device.device_id}", device.agent.live, 30, procs)
            wait_for(
                f"{device.device_id} to show online",
                lambda d=device: fleet_api.device(d.device_id).get("online"),
                30,
                procs,
            )
            log.info("agent %s (Open Inference Protocol v2) for %s online", device.url, device.device_id)

        step("4/5 upload both bundles and roll each out to the devices of its profile")
        rollouts = []
        for device in devices:
            uploaded = fleet_api.upload_bundle(device.bundle)
            rollout = fleet_api.create_rollout(
                uploaded["id"], selector={"labels": {"site": "demo"}, "profile": device.profile}
            )
            log.info("rollout %s of bundle %s (%s)", rollout["id"], uploaded["id"], device.profile)
            rollouts.append(rollout["id"])

        def rollouts_done() -> bool:
            for rollout_id in rollouts:
                r = fleet_api.rollout(rollout_id)
                if r["state"] in ("rolled_back", "paused"):
                    raise SystemExit(f"demo: rollout {rollout_id} ended {r['state']}: {r.get('reason')}")
                if r["state"] != "succeeded":
                    return False
            return True

        wait_for("the rollouts to complete", rollouts_done, 180, procs)
        for device in devices:
            wait_for(
                f"the model on {device.device_id}", lambda d=device: d.agent.model_ready("digits"), 30, procs
            )
        log.info("both rollouts succeeded")

        step("5/5 classify held-out digits through both agents")
        data = np.load(files["eval"])
        images, labels = data["image"], data["labels"]
        for device in devices:
            correct, elapsed = classify(device, images, labels)
            log.info(
                "%s (%s): %d/%d correct (%.1f%%), %.2f ms per request",
                device.device_id, device.profile, correct, len(labels), 100 * correct / len(labels),
                1000 * elapsed / len(labels),
            )  # fmt: skip

        sys.stderr.write(
            "\n==> the fleet is up"
            + (" (--once: it stops after one round of traffic)" if args.once else "")
            + ". Open the dashboard and paste the admin token:\n\n"
            f"    dashboard:   {fleet_url}/\n"
            f"    admin token: {token}\n"
            f"    (or open {fleet_url}/#token={token})\n\n"
            f"    agents: {', '.join(f'{d.device_id} {d.url}' for d in devices)}\n"
            f"    logs and artefacts in {OUT}\n\n"
        )
        if not args.once:
            sys.stderr.write(
                f"    sending {TRAFFIC_PER_S} requests per agent per second; Ctrl-C stops everything\n"
            )
        sys.stderr.flush()
        traffic(devices, images, labels, once=args.once)
        step("demo finished: the loop ran end to end")
        return 0
    except Stop as stopped:
        step(f"{stopped}: stopping the agents and the fleet")
        return 0
    finally:
        # Signals now would interrupt the cleanup itself: ignore them until every child is reaped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for p in reversed(procs):
            stop(p)
        log.info("stopped %d processes", len(procs))


if __name__ == "__main__":
    sys.exit(main())
