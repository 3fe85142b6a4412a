"""``edge-agent serve`` as a real subprocess for e2e tests: start, kill -9, restart, infer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

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
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

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
