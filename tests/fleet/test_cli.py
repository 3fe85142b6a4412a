"""``edge-fleet`` command lines: token creation, and one clear line for bad input."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from fleet import auth
from fleet.db.session import Database
from tests.support.fleet_proc import BIN
from tests.support.s3 import isolated_aws_env


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``edge-fleet ARGS`` with this environment (or ``env``, the whole environment)."""
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=60, env=env)


def test_token_create_prints_the_token_last_and_it_works(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    r = run("token", "create", "--role", "operator", "--db", db)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip().splitlines()[-1]
    database = Database(db)
    with database.session() as s:
        assert auth.check_token(s, token).role == "operator"
    database.dispose()


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    r = run("token", "create", "--role", "device", "--db", f"sqlite:///{tmp_path / 'f.db'}")
    assert r.returncode == 1 and r.stderr.strip() == "edge-fleet: error: --role device needs --device-id"
    r = run("serve", "--db", "nonsense://x", "--storage", str(tmp_path / "s"), "--listen", "127.0.0.1:0")
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and "database URL" in r.stderr
    # no AWS credentials anywhere (and no metadata service asked): named before anything starts
    no_aws = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    r = run(
        "serve",
        "--db",
        f"sqlite:///{tmp_path / 'f.db'}",
        "--storage",
        "s3://bucket/x",
        "--listen",
        "127.0.0.1:0",
        env={**no_aws, **isolated_aws_env()},
    )
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "edge-fleet: error: no S3 credentials for s3://bucket/x/: set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    ]


def test_serve_refuses_an_endless_request_head_and_keeps_serving(tmp_path: Path) -> None:
    """One client streaming header lines must not grow the fleet's memory (uvicorn with httptools
    kept them all) and must not stop it answering others."""
    import contextlib
    import socket

    import httpx
    import psutil

    from tests.support.fleet_proc import run_fleet

    args = ["serve", "--db", f"sqlite:///{tmp_path / 'f.db'}", "--storage", str(tmp_path / "store")]
    with run_fleet(tmp_path / "fleet", args) as fleet:
        proc = psutil.Process(fleet.process.pid)
        before = proc.memory_info().rss
        host, port = fleet.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            line = b"X-Junk: " + b"a" * 65000 + b"\r\n"
            with contextlib.suppress(OSError):  # refused and closed long before 256 MiB
                for _ in range(4096):
                    s.sendall(line)
        assert proc.memory_info().rss - before < 64 * 1024 * 1024
        assert httpx.get(f"{fleet.url}/healthz", timeout=10).status_code == 200
