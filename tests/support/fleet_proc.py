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
from tests.support.processes import stop_process

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
        stop_process(self.process)


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


def admin_token(db: str) -> str:
    """An admin API token, made the way an operator makes the first one: ``edge-fleet token create``."""
    out = subprocess.run(
        [str(BIN), "token", "create", "--role", "admin", "--db", db],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return out.split()[-1]


def serve_args(tmp_path: Path, db: str, broker_url: str, *extra: str) -> list[str]:
    """``edge-fleet serve`` on ``db`` and ``broker_url``, bundles under tmp/store, a fast controller.

    Trusts tmp/keys/signing.pub, the key the ``signing_key`` fixture writes; ``extra`` adds flags.
    """
    return [
        "serve",
        "--db",
        db,
        "--broker",
        broker_url,
        "--storage",
        str(tmp_path / "store"),
        "--trust-key",
        str(tmp_path / "keys" / "signing.pub"),
        "--controller-interval",
        "0.2",
        # desired states signed; devices registered with this fleet pin the key
        "--fleet-key",
        str(tmp_path / "fleet-key"),
        *extra,
    ]


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
