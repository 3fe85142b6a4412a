"""`make demo`: the whole loop on one machine, with real processes.

1. train a small CNN on scikit-learn's digits and convert it (`edge-convert`, x86-server profile)
2. start the fleet (`edge-fleet up`: embedded MQTT broker, SQLite, local bundles) on free ports
3. register a device and start an agent for it (`edge-agent serve`)
4. upload the bundle and roll it out; wait until the device reports it active
5. classify held-out digits through the agent's Open Inference Protocol endpoint

Everything lives under ./demo-out (removed at the start of each run); nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
BIN = Path(sys.executable).parent
log = logging.getLogger("demo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step(text: str) -> None:
    sys.stderr.write(f"\n==> {text}\n")
    sys.stderr.flush()


def wait_for(what: str, check, timeout: float, procs: list[subprocess.Popen]) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"demo: {p.args[0]} exited with {p.returncode} while waiting for {what}")
        try:
            result = check()
        except Exception:  # the service is still starting
            result = None
        if result:
            return result
        time.sleep(0.3)
    raise SystemExit(f"demo: timed out after {timeout:.0f} s waiting for {what}")


def start(args: list[str], logfile: Path) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        stdout=open(logfile, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="    %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    sys.path.insert(0, str(ROOT))
    from scripts.demo_model import build_digits_model
    from sdk.agent_client import AgentClient
    from sdk.fleet_client import FleetClient

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    procs: list[subprocess.Popen] = []
    try:
        step("1/5 train a digits CNN and convert it for the x86-server profile")
        files = build_digits_model(OUT / "model")
        key = OUT / "keys" / "signing"
        subprocess.run([BIN / "edge-convert", "keygen", key], check=True, stdout=subprocess.DEVNULL)
        converted = subprocess.run(
            [
                BIN / "edge-convert", files["model"], "--profile", "x86-server", "--name", "digits",
                "--version", "1.0.0", "--input", "image:1,1,32,32",
                "--calibration", files["calibration"], "--eval", files["eval"],
                "--sign-key", key, "--output", OUT / "bundles", "--json",
            ],
            check=False, stdout=subprocess.PIPE,
        )  # fmt: skip
        if converted.returncode != 0:
            raise SystemExit("demo: edge-convert failed (see above)")
        result = json.loads(converted.stdout)
        bundle = Path(result["bundle"])
        metrics = result["manifest"]["metrics"]
        log.info("bundle %s", bundle.name)
        log.info("size %s -> %s bytes", metrics["size_bytes"]["source"], metrics["size_bytes"]["converted"])
        log.info(
            "latency %.3f -> %.3f ms (host-measured median)",
            metrics["latency_ms"]["source"],
            metrics["latency_ms"]["converted"],
        )
        if "accuracy" in metrics:
            acc = metrics["accuracy"]
            log.info("accuracy %.4f -> %.4f", acc["source"], acc["converted"])

        step("2/5 start the fleet (embedded MQTT broker, SQLite, local bundle storage)")
        http_port, mqtt_port = free_port(), free_port()
        fleet_url = f"http://127.0.0.1:{http_port}"
        fleet_log = OUT / "fleet.log"
        fleet = start(
            [
                str(BIN / "edge-fleet"), "up", "--listen", f"127.0.0.1:{http_port}",
                "--mqtt-listen", f"127.0.0.1:{mqtt_port}", "--data-dir", str(OUT / "fleet"),
                "--trust-key", f"{key}.pub",
            ],
            fleet_log,
        )  # fmt: skip
        procs.append(fleet)

        def admin_token() -> str | None:
            lines = fleet_log.read_text(errors="replace").splitlines()
            if "admin token:" in lines:
                i = lines.index("admin token:")
                return lines[i + 1].strip() if len(lines) > i + 1 else None
            return None

        token = str(wait_for("the fleet's admin token", admin_token, 60, procs))
        import httpx

        wait_for("the fleet API", lambda: httpx.get(f"{fleet_url}/docs").status_code == 200, 60, procs)
        log.info(
            "fleet %s (dashboard at /), MQTT on 127.0.0.1:%d; log in %s", fleet_url, mqtt_port, fleet_log
        )
        fleet_api = FleetClient(fleet_url, token)

        step("3/5 register a device and start its agent")
        creds = fleet_api.register_device("demo-device-1", labels={"site": "demo"}, profile="x86-server")
        creds_file = creds.save(OUT / "agent" / "credentials.json")
        agent_port = free_port()
        agent = start(
            [
                str(BIN / "edge-agent"), "serve", "--data-dir", str(OUT / "agent" / "data"),
                "--listen", f"127.0.0.1:{agent_port}", "--trust-key", f"{key}.pub",
                "--fleet-url", fleet_url, "--broker", creds.broker_url or f"mqtt://127.0.0.1:{mqtt_port}",
                "--device-id", creds.device_id, "--credentials", str(creds_file),
                "--telemetry-interval", "2",
            ],
            OUT / "agent.log",
        )  # fmt: skip
        procs.append(agent)
        agent_api = AgentClient(f"http://127.0.0.1:{agent_port}")
        wait_for("the agent", agent_api.live, 30, procs)
        wait_for(
            "the device to show online",
            lambda: fleet_api.device(creds.device_id).get("online"),
            30,
            procs,
        )
        log.info(
            "agent http://127.0.0.1:%d (Open Inference Protocol v2), device %s online",
            agent_port,
            creds.device_id,
        )

        step("4/5 upload the bundle and roll it out")
        uploaded = fleet_api.upload_bundle(bundle)
        rollout = fleet_api.create_rollout(uploaded["id"], selector={"labels": {"site": "demo"}})
        log.info("rollout %s of bundle %s", rollout["id"], uploaded["id"])

        def rollout_done() -> dict | None:
            r = fleet_api.rollout(rollout["id"])
            if r["state"] in ("rolled_back", "paused"):
                raise SystemExit(f"demo: the rollout ended {r['state']}: {json.dumps(r)[:500]}")
            return r if r["state"] == "succeeded" else None

        done = wait_for("the rollout to complete", rollout_done, 120, procs)
        log.info("rollout %s: %s", rollout["id"], done["state"])  # type: ignore[index]
        wait_for("the model to be ready on the agent", lambda: agent_api.model_ready("digits"), 30, procs)

        step("5/5 classify held-out digits through the agent")
        data = np.load(files["eval"])
        images, labels = data["image"], data["labels"]
        correct = 0
        served_by = set()
        started = time.perf_counter()
        for image, label in zip(images, labels):
            res = agent_api.infer("digits", {"image": image[None]}, binary=True)
            served_by.add(res.model_version)
            correct += int(np.argmax(next(iter(res.outputs.values()))) == label)
        elapsed = time.perf_counter() - started
        log.info(
            "%d/%d correct (%.1f%%) in %.2f s (%.2f ms per request), served by version %s",
            correct, len(labels), 100 * correct / len(labels), elapsed, 1000 * elapsed / len(labels),
            ", ".join(sorted(served_by)),
        )  # fmt: skip
        health = fleet_api.device(creds.device_id)
        log.info("fleet view of the device: %s", json.dumps(health, default=str)[:400])
        step("demo finished: the loop ran end to end (logs and artefacts in demo-out/)")
        return 0
    finally:
        for p in reversed(procs):
            stop(p)


if __name__ == "__main__":
    sys.exit(main())
