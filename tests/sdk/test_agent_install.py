"""`pip install '.[agent]'` in a fresh venv pulls no torch, onnx, sqlalchemy or fleet-only packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "torch",
    "onnx",
    "onnxscript",
    "sqlalchemy",
    "fastapi",
    "alembic",
    "psycopg",
    "amqtt",
    "starlette",
}


@pytest.mark.timeout(900)
def test_agent_extra_installs_without_heavy_packages(tmp_path: Path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # A regular (not editable) install from a copy, as a device would get it.
    # Build from a copy of the tracked sources so the checkout gets no build/ or egg-info litter.
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(".venv*", ".git", "build", "*.egg-info", "__pycache__", "demo-out"),
    )
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", f"{src}[agent]"],
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        timeout=840,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run(
        [str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout
    installed = {line.split("==")[0].lower().replace("_", "-") for line in listed.splitlines()}
    assert not (installed & FORBIDDEN), f"the agent extra pulled {sorted(installed & FORBIDDEN)}"
    assert {"onnxruntime", "paho-mqtt", "edgefleet"} <= installed

    # The agent and its profiles work from the installed copy, outside the source tree.
    probe = subprocess.run(
        [
            str(py),
            "-c",
            "import sys, sdk, agent; from sdk.profiles import load_profile; "
            "assert 'site-packages' in sdk.__file__, sdk.__file__; "
            "print(load_profile('raspberry-pi').name); "
            "assert not {'torch', 'onnx', 'sqlalchemy', 'fastapi'} & set(sys.modules)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "raspberry-pi"
    helped = subprocess.run([str(env_dir / "bin" / "edge-agent"), "--help"], capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr
    assert "serve" in helped.stdout
