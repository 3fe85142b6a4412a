"""`edge-convert keygen | profiles | inspect`: real processes, one-line errors, clean --json."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sdk import keys
from sdk.bundle import write_bundle
from tests.sdk.conftest import make_manifest


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "converter.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        timeout=120,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edge-convert: error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_keygen_writes_private_0600_and_public(tmp_path: Path):
    path = tmp_path / "keys" / "signing"
    proc = run("keygen", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pub = keys.load_public_key(path.with_name("signing.pub"))
    assert keys.key_id(pub) == out["key_id"] == keys.key_id(keys.load_private_key(path))
    again = run("keygen", str(path))
    assert_one_line_error(again, "already exists")


def test_profiles_table_and_json():
    proc = run("profiles")
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "CLASS", "RUNTIME", "PRECISION"]
    names = {r.split()[0] for r in rows}
    assert {"jetson", "raspberry-pi", "coral", "qualcomm-npu", "x86-server"} <= names
    data = json.loads(run("profiles", "--json").stdout)
    assert {p["name"]: p["accelerator"] for p in data}["coral"] == "npu"


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, Path]:
    key = keys.generate_key()
    keys.save_keypair(key, tmp_path / "k")
    (tmp_path / "m.onnx").write_bytes(b"model bytes")
    path = write_bundle(make_manifest(), {"model.onnx": tmp_path / "m.onnx"}, key, tmp_path / "out")
    return path, tmp_path / "k.pub"


def test_inspect_verifies_and_prints(bundle):
    path, pub = bundle
    proc = run("inspect", str(path), "--trust-key", str(pub))
    assert proc.returncode == 0, proc.stderr
    assert "net 1.0.0 for x86-server" in proc.stdout and "trusted" in proc.stdout
    data = json.loads(run("inspect", str(path), "--json").stdout)
    assert data["verified"] is True and data["trusted"] is None
    assert data["manifest"]["name"] == "net" and data["manifest"]["schema"] == 1


def test_inspect_fails_on_untrusted_or_damaged_bundle(bundle, tmp_path: Path):
    path, _ = bundle
    other = tmp_path / "other"
    keys.save_keypair(keys.generate_key(), other)
    assert_one_line_error(
        run("inspect", str(path), "--trust-key", f"{other}.pub"), "not among the trusted keys"
    )
    proc = run("inspect", str(path), "--trust-key", f"{other}.pub", "--json")
    assert proc.returncode != 0 and json.loads(proc.stdout)["verified"] is False
    damaged = tmp_path / "damaged.efb"
    damaged.write_bytes(path.read_bytes()[:-20])
    assert_one_line_error(run("inspect", str(damaged)))
    notabundle = tmp_path / "x.efb"
    notabundle.write_text("hello")
    assert_one_line_error(run("inspect", str(notabundle)), "not a bundle")
    assert_one_line_error(run("inspect", str(tmp_path / "missing.efb")), "No such file")
    assert_one_line_error(
        run("inspect", str(path), "--trust-key", str(tmp_path / "nokey.pub")), "cannot read key"
    )
