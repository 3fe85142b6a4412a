"""Real third-party ONNX exporters (tf2onnx, Paddle2ONNX), each in its own cached virtualenv.

TensorFlow and PaddlePaddle cannot share edgefleet's venv (they pin their own numpy, protobuf and
onnx), so each exporter gets ``.venv-exporters/<name>``, built once from PyPI and reused
while its requirement list is unchanged. The export scripts in ``tests/support/exporter_scripts``
run inside those venvs: they train a small model on data the test hands them and export it with
the real exporter, the way their users do.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: under the repo, ignored by git through its ``.venv*/`` rule.
VENV_ROOT = REPO / ".venv-exporters"
SCRIPTS = Path(__file__).resolve().parent / "exporter_scripts"
#: pip takes about a minute per exporter on a fresh machine; far beyond this something is wrong.
INSTALL_TIMEOUT_S = 900
EXPORT_TIMEOUT_S = 600

#: exporter -> its pinned requirements (what the exporter scripts were written against).
EXPORTERS: dict[str, tuple[str, ...]] = {
    "tf2onnx": ("tensorflow-cpu==2.21.0", "tf2onnx==1.17.0"),
    # paddle2onnx's optimizer (polygraphy) pip-installs sympy and onnxruntime at run time if missing.
    "paddle2onnx": ("paddlepaddle==3.3.1", "paddle2onnx==2.1.0", "sympy", "onnxruntime"),
}


def exporter_python(name: str) -> Path:
    """The Python of the exporter's venv, created (and its requirements installed) on first use.

    Skips the test when PyPI cannot be reached or the packages do not install on this Python.
    """
    requirements = EXPORTERS[name]
    home = VENV_ROOT / name
    python = home / "bin" / "python"
    stamp = home / ".requirements.json"
    VENV_ROOT.mkdir(parents=True, exist_ok=True)
    with open(VENV_ROOT / f".{name}.lock", "w") as lock:  # concurrent test runs build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and json.loads(stamp.read_text()) == list(requirements) and python.is_file():
            return python
        venv.EnvBuilder(clear=True, with_pip=True).create(home)
        try:
            done = subprocess.run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    *requirements,
                ],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"{name}: pip install {' '.join(requirements)} took over {INSTALL_TIMEOUT_S} s")
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            pytest.skip(
                f"{name}: cannot install {' '.join(requirements)} for Python {sys.version_info[:2]}: {tail}"
            )
        stamp.write_text(json.dumps(list(requirements)))
    return python


def run_export(name: str, script: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``exporter_scripts/<script>`` in the exporter's venv; a failure fails the test with its log."""
    python = exporter_python(name)
    done = subprocess.run(
        [str(python), str(SCRIPTS / script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=EXPORT_TIMEOUT_S,
        env={"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(cwd), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    if done.returncode != 0:
        pytest.fail(f"{script} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done
