"""Deploy-file tests: a real fleet's and a real agent's /metrics, shared by the tests that check names."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from sdk import keys
from tests.support.agent_proc import AGENT_BIN, Agent
from tests.support.bundles import make_bundle
from tests.support.fleet_proc import run_fleet
from tests.support.mosquitto import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
_TYPE = re.compile(r"^# TYPE (\S+) (\w+)$")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]")
#: the series a family of each type is exposed as (prometheus_client's text format)
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created", ""),
    "gauge": ("",),
    "info": ("_info",),
}


def exposed_names(text: str) -> set[str]:
    """Every series name ``text`` (Prometheus exposition) can carry, samples or not yet."""
    names: set[str] = set()
    for line in text.splitlines():
        if m := _TYPE.match(line):
            family, kind = m.groups()
            names.update(family + s for s in _SUFFIXES.get(kind, ("",)))
            names.add(family)
        elif m := _SAMPLE.match(line):
            names.add(m.group(1))
    return names


@dataclass(frozen=True)
class Exposed:
    fleet: set[str]
    agent: set[str]


@pytest.fixture(scope="session")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exposed]:
    """``edge-fleet serve`` (SQLite, API only) and ``edge-agent serve`` with a model that served a request."""
    tmp = tmp_path_factory.mktemp("metrics")
    key = keys.generate_key()
    keys.save_keypair(key, tmp / "keys" / "signing")
    bundle = make_bundle(tmp / "bundles", key)
    data, pub = tmp / "agent", tmp / "keys" / "signing.pub"
    subprocess.run(
        [str(AGENT_BIN), "install", str(bundle), "--data-dir", str(data), "--trust-key", str(pub)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    agent = Agent(
        "metrics",
        ["--data-dir", str(data), "--trust-key", str(pub), "--listen", f"127.0.0.1:{port}"],
        port,
        tmp / "agent.log",
    )
    agent.start()  # starts while the fleet starts
    try:
        with run_fleet(
            tmp, ["serve", "--db", f"sqlite:///{tmp / 'fleet.db'}", "--storage", str(tmp / "store")]
        ) as fleet:
            deadline = time.monotonic() + 30
            while agent.infer() is None:
                assert time.monotonic() < deadline, agent.log.read_text()[-2000:]
                time.sleep(0.2)
            yield Exposed(
                fleet=exposed_names(httpx.get(f"{fleet.url}/metrics").text),
                agent=exposed_names(httpx.get(f"http://127.0.0.1:{port}/metrics").text),
            )
    finally:
        agent.stop()
