"""``edge-agent serve`` as a real subprocess for e2e tests: start, kill -9, restart, infer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from sdk.credentials import DeviceCredentials
from tests.support.mosquitto import free_port
from tests.support.processes import stop_process

AGENT_BIN = Path(sys.executable).with_name("edge-agent")


@dataclass
class Agent:
    device_id: str
    args: list[str]
    port: int
    log: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(AGENT_BIN), "serve", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),  # noqa: SIM115 - the child keeps it
            env={**os.environ, "EDGEFLEET_LOG_LEVEL": "INFO"},
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def infer(self) -> list[float] | None:
        try:
            r = httpx.post(
                f"http://127.0.0.1:{self.port}/v2/models/tiny/infer",
                json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]},
                timeout=5,
            )
        except httpx.HTTPError:
            return None
        return r.json()["outputs"][0]["data"] if r.status_code == 200 else None


def device_agent(
    creds: DeviceCredentials, workdir: Path, *, fleet_url: str, broker_url: str, trust_key: Path
) -> Agent:
    """An agent (not started yet) for a device the fleet registered, as an operator would run it.

    Its credentials file and data folder go under ``workdir/<device id>/``, its log to
    ``workdir/<device id>.log``; it sends telemetry every second so tests see it soon.
    """
    home = workdir / creds.device_id
    cred_file = creds.save(home / "credentials.json")
    port = free_port()
    args = [
        "--data-dir", str(home / "data"), "--trust-key", str(trust_key),
        "--listen", f"127.0.0.1:{port}", "--fleet-url", fleet_url, "--broker", broker_url,
        "--device-id", creds.device_id, "--credentials", str(cred_file), "--telemetry-interval", "1",
    ]  # fmt: skip
    return Agent(creds.device_id, args, port, workdir / f"{creds.device_id}.log")
