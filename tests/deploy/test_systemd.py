"""deploy/systemd/edge-agent.service: its own user, a read-only system but for its data dir,
restarts, no new privileges; `systemd-analyze verify` accepts it where systemd is installed."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY

UNIT = DEPLOY / "systemd" / "edge-agent.service"


def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case sensitive
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_the_unit_is_sandboxed_and_restarts() -> None:
    s = service()
    assert s["User"] == "edge-agent" and s["Group"] == "edge-agent"
    assert s["ProtectSystem"] == "strict"
    assert s["NoNewPrivileges"] == "yes"
    assert s["Restart"] == "on-failure"
    data_dir = s["ExecStart"].split("--data-dir", 1)[1].split()[0]
    assert any(data_dir.startswith(path + "/") for path in s["ReadWritePaths"].split()), data_dir
    assert s["StateDirectory"] == "edge-agent" and data_dir.startswith("/var/lib/edge-agent/")
    assert s["CapabilityBoundingSet"] == ""


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # The unit runs /opt/edge-agent/bin/edge-agent (the install guide's venv); verify checks the
    # binary exists, so the copy points at this environment's edge-agent instead.
    unit = tmp_path / UNIT.name
    unit.write_text(
        UNIT.read_text().replace(
            "/opt/edge-agent/bin/edge-agent", str(Path(sys.executable).with_name("edge-agent"))
        )
    )
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
