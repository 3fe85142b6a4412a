"""The site CA and certificates (sdk.tls) and the CA in device credentials (sdk.credentials)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509

from sdk import tls
from sdk.credentials import DeviceCredentials
from sdk.errors import ConfigError


def _san(pair: tls.CertPair) -> set[str]:
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    return {str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value}


def test_the_ca_is_made_once_and_reused_with_a_private_key(tmp_path: Path) -> None:
    ca = tls.ensure_ca(tmp_path / "tls")
    first = ca.cert.read_bytes()
    assert ca.key.stat().st_mode & 0o777 == 0o600
    ca.key.chmod(0o644)
    again = tls.ensure_ca(tmp_path / "tls")
    assert again.cert.read_bytes() == first and again.key.stat().st_mode & 0o777 == 0o600
    ca.cert.write_text("damaged")
    with pytest.raises(ConfigError):  # never silently replaced: devices pin it
        tls.ensure_ca(tmp_path / "tls")


def test_a_server_certificate_is_kept_until_its_names_change(tmp_path: Path) -> None:
    ca = tls.ensure_ca(tmp_path / "tls")
    out = tls.CertPair(tmp_path / "tls" / "server.pem", tmp_path / "tls" / "server.key")
    tls.issue(ca, out, tls.server_names(["127.0.0.1"]))
    pem = out.cert.read_bytes()
    assert _san(out) == {"127.0.0.1", "localhost"}
    tls.issue(ca, out, tls.server_names(["127.0.0.1"]))
    assert out.cert.read_bytes() == pem
    tls.issue(ca, out, tls.server_names(["0.0.0.0", "fleet.example"]))
    assert out.cert.read_bytes() != pem
    assert {"fleet.example", "localhost", "127.0.0.1", "::1"} <= _san(out)
    # a client that trusts the CA accepts it for those names, and refuses it for others
    handshake(ca, out, "fleet.example")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ca, out, "elsewhere.example")


def handshake(ca: tls.CertPair, server_pair: tls.CertPair, name: str) -> None:
    """A TLS handshake in memory between a client trusting ``ca`` and a server showing ``server_pair``."""
    client_ctx = ssl.create_default_context(cafile=str(ca.cert))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(server_pair.cert), str(server_pair.key))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, obj in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


def test_credentials_carry_the_ca_inline_or_beside_them(tmp_path: Path) -> None:
    ca = tls.ensure_ca(tmp_path / "tls")
    base = {"device_id": "d1", "token": "t", "mqtt_username": "d1", "mqtt_password": "p"}
    assert DeviceCredentials(**base).ssl_context() is None  # the system's CAs

    inline = DeviceCredentials(**base, ca_pem=ca.cert.read_text()).save(tmp_path / "a" / "creds.json")
    ctx = DeviceCredentials.load(inline).ssl_context()
    assert ctx is not None and len(ctx.get_ca_certs()) == 1

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "site-ca.pem").write_bytes(ca.cert.read_bytes())
    beside = DeviceCredentials(**base, ca_file="site-ca.pem").save(tmp_path / "b" / "creds.json")
    ctx = DeviceCredentials.load(beside).ssl_context()
    assert ctx is not None and len(ctx.get_ca_certs()) == 1

    with pytest.raises(ConfigError, match="CA"):
        DeviceCredentials(**base, ca_pem="not a certificate").ssl_context()
