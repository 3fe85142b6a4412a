"""edge-agent install / serve / status as a user runs them, and what the agent may import."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "onnx", "fastapi", "sqlalchemy", "converter", "fleet", "starlette")


def edge_agent(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from agent.cli import build_parser\n"
        "try:\n    build_parser().parse_args(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('numpy', 'pydantic', 'onnxruntime', 'uvicorn', 'sdk') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


def test_serving_path_imports_no_converter_or_fleet_dependencies() -> None:
    code = (
        "import sys, pkgutil, importlib, agent\n"
        "for m in pkgutil.walk_packages(agent.__path__, 'agent.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print('BAD', bad)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "BAD []" in proc.stdout, proc.stdout + proc.stderr


def test_install_and_status(make_affine: Callable[..., Path], data_dir: Path, pub_path: Path) -> None:
    ok = edge_agent("install", make_affine("1"), "--data-dir", data_dir, "--trust-key", pub_path, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"name": "affine", "version": "1", "previous_version": None}

    bad = edge_agent(
        "install", make_affine("2", wrong_smoke=True), "--data-dir", data_dir, "--trust-key", pub_path
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("edge-agent: error: smoke test of affine 2")

    untrusted = edge_agent("install", make_affine("3"), "--data-dir", data_dir)
    assert untrusted.returncode == 1 and "no trusted keys" in untrusted.stderr

    status = edge_agent("status", "--data-dir", data_dir)
    assert status.returncode == 0
    assert "affine: active 1, previous -, installed 1" in status.stdout
    assert "last update failed" in status.stdout
    as_json = json.loads(edge_agent("status", "--data-dir", data_dir, "--json").stdout)
    assert as_json["models"]["affine"]["active"] == "1"
    assert "no trusted keys" in as_json["models"]["affine"]["last_error"]


def test_trusted_keys_from_the_data_dir(
    make_affine: Callable[..., Path], data_dir: Path, pub_path: Path
) -> None:
    (data_dir / "trusted-keys").mkdir(parents=True)
    (data_dir / "trusted-keys" / "ops.pub").write_bytes(pub_path.read_bytes())
    ok = edge_agent("install", make_affine("1"), "--data-dir", data_dir)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "installed affine 1 (previous: none)"


def test_bad_input_is_one_line() -> None:
    missing = edge_agent(
        "install",
        "/nonexistent.efb",
        "--data-dir",
        "/tmp/edge-agent-test-nowhere",
        "--trust-key",
        "/nonexistent.pub",
    )
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "cannot read key" in missing.stderr
    status = edge_agent("status", "--data-dir", "/tmp/edge-agent-test-nowhere")
    assert status.returncode == 1 and "not an agent data dir" in status.stderr
    partial = edge_agent("serve", "--data-dir", "/tmp/x", "--broker", "mqtt://127.0.0.1:1")
    assert partial.returncode == 1 and "missing --fleet-url" in partial.stderr


def test_serve_answers_and_stops_on_sigterm(
    make_affine: Callable[..., Path], data_dir: Path, pub_path: Path
) -> None:
    assert (
        edge_agent("install", make_affine("1"), "--data-dir", data_dir, "--trust-key", pub_path).returncode
        == 0
    )
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "serve",
            "--data-dir",
            str(data_dir),
            "--trust-key",
            str(pub_path),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EDGEFLEET_LOG_LEVEL": "INFO"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stderr.read() if proc.stderr else ""
            )
            time.sleep(0.05)
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3]}]}
        r = httpx.post(f"http://127.0.0.1:{port}/v2/models/affine/infer", json=body)
        assert r.json()["outputs"][0]["data"] == [1.0, 3.0, 5.0, 7.0]
        taken = edge_agent(
            "serve", "--data-dir", data_dir, "--trust-key", pub_path, "--listen", f"127.0.0.1:{port}"
        )
        assert taken.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "serving affine 1" in err
