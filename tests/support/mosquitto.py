"""A real Mosquitto broker per test: free port, own config, optional passwords, ACL, TLS, dynsec.

Installed with apt-get when missing (as root); otherwise the test is skipped with the reason.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sdk.topics import MAX_PACKET_BYTES
from tests.support.processes import stop_process

DYNSEC_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "mosquitto", "mosquitto-clients"],
            check=False,
            env=env,
            capture_output=True,
        )
        found = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
        )
        if found:
            return found
    pytest.skip("mosquitto is not installed and cannot be installed here")


def _self_signed(dirpath: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost, made with cryptography."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("edgefleet-test-ca"))
        .issuer_name(name("edgefleet-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = dirpath / "ca.pem", dirpath / "server.pem", dirpath / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


@dataclass
class Mosquitto:
    """A running broker. ``url`` is ``mqtt://127.0.0.1:PORT`` (``mqtts://`` with TLS)."""

    workdir: Path
    port: int
    process: subprocess.Popen
    config: Path
    tls: bool = False
    ca_file: Path | None = None
    users: dict[str, str] = field(default_factory=dict)

    host = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def log(self) -> str:
        p = self.workdir / "mosquitto.log"
        return p.read_text() if p.exists() else ""

    def stop(self) -> None:
        stop_process(self.process, grace_s=5)

    def start(self) -> None:
        """(Re)start on the same port and config, e.g. after :meth:`stop` in an outage test."""
        self.process = _launch(self.config, self.port, self.workdir)


def _launch(config: Path, port: int, workdir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [mosquitto_binary(), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "stderr.log", "ab"),  # noqa: SIM115 - the broker keeps it open
        cwd=workdir,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mosquitto exited with {proc.returncode}: {(workdir / 'stderr.log').read_text()[-2000:]}"
                f"\n{(workdir / 'mosquitto.log').read_text()[-2000:] if (workdir / 'mosquitto.log').exists() else ''}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start listening within 10 s")


@contextmanager
def run_mosquitto(
    workdir: Path,
    *,
    users: dict[str, str] | None = None,
    acl: str | None = None,
    tls: bool = False,
    extra_config: str = "",
    dynsec_admin: tuple[str, str] | None = None,
    username_as_clientid: bool = False,
) -> Iterator[Mosquitto]:
    """Start Mosquitto with its own config in ``workdir``.

    ``users`` maps username to password (a password file, anonymous off); ``acl`` is the text of
    an ACL file; ``tls`` serves TLS with a fresh CA (``broker.ca_file``); ``dynsec_admin``
    (username, password) loads the dynamic security plugin with that admin client, anonymous off;
    ``username_as_clientid`` makes the broker use each client's username as its client id, the
    password-file way to stop one device from disconnecting another (dynsec pins client ids itself).
    Packets above :data:`sdk.topics.MAX_PACKET_BYTES` are refused, as in ``deploy/k8s/mosquitto.yaml``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    mosquitto_binary()  # install or skip before writing any config
    port = free_port()
    lines = [
        f"listener {port} 127.0.0.1",
        "persistence false",
        f"log_dest file {workdir / 'mosquitto.log'}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "max_queued_messages 100000",
        f"max_packet_size {MAX_PACKET_BYTES}",
    ]
    if username_as_clientid:
        lines.append("use_username_as_clientid true")
    if os.geteuid() == 0:
        # Started as root, Mosquitto drops to the 'mosquitto' user, who cannot read our tmp files.
        lines.append("user root")
    ca_file = None
    if tls:
        ca_file, cert, key = _self_signed(workdir)
        lines += [f"cafile {ca_file}", f"certfile {cert}", f"keyfile {key}"]
    if dynsec_admin is not None:
        state = workdir / "dynamic-security.json"
        subprocess.run(
            [
                shutil.which("mosquitto_ctrl") or "/usr/bin/mosquitto_ctrl",
                "dynsec",
                "init",
                str(state),
                *dynsec_admin,
            ],
            check=True,
            capture_output=True,
        )
        lines += [f"plugin {DYNSEC_PLUGIN}", f"plugin_opt_config_file {state}", "allow_anonymous false"]
    elif users:
        pw = workdir / "passwords"
        pw.write_text("")
        for user, password in users.items():
            subprocess.run(
                [
                    shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd",
                    "-b",
                    str(pw),
                    user,
                    password,
                ],
                check=True,
                capture_output=True,
            )
        lines += ["allow_anonymous false", f"password_file {pw}"]
    else:
        lines.append("allow_anonymous true")
    if acl is not None:
        (workdir / "acl").write_text(acl)
        lines.append(f"acl_file {workdir / 'acl'}")
    config = workdir / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n" + extra_config)
    broker = Mosquitto(
        workdir=workdir,
        port=port,
        process=_launch(config, port, workdir),
        config=config,
        tls=tls,
        ca_file=ca_file,
        users=dict(users or {}),
    )
    try:
        yield broker
    finally:
        broker.stop()
