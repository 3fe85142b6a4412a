"""``edge-fleet`` as a real subprocess for integration and e2e tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.mosquitto import free_port

BIN = Path(sys.executable).with_name("edge-fleet")


@dataclass
class FleetProcess:
    process: subprocess.Popen
    url: str
    log_path: Path
    stdout_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"edge-fleet exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"edge-fleet did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


@contextmanager
def run_fleet(
    workdir: Path,
    args: list[str],
    *,
    name: str = "fleet",
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Iterator[FleetProcess]:
    """``edge-fleet serve|up ... --listen 127.0.0.1:PORT``; stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path, out_path = workdir / f"{name}.log", workdir / f"{name}.out"
    proc = subprocess.Popen(
        [str(BIN), *args, "--listen", f"127.0.0.1:{port}"],
        stdout=open(out_path, "wb"),  # noqa: SIM115 - the child keeps it
        stderr=open(log_path, "wb"),  # noqa: SIM115
        env={**os.environ, "EDGEFLEET_LOG_LEVEL": "INFO", **(env or {})},
    )
    fp = FleetProcess(proc, f"http://127.0.0.1:{port}", log_path, out_path)
    try:
        wait_http(fp.url, proc, log_path)
        yield fp
    finally:
        fp.stop()
