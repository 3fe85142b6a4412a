"""A site's own certificate authority: made with ``cryptography``, no openssl command needed.

``edge-fleet up --tls`` keeps one CA per data dir (``tls/ca.pem``, key ``tls/ca.key`` mode 0600) and
issues from it the server certificate its https and mqtts listeners present; devices get the CA in
their credentials and trust nothing else for the fleet. The same helpers issue client certificates
for an agent that wants mutual TLS (``edge-agent serve --tls-client-ca``).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sdk.errors import ConfigError
from sdk.fsio import write_atomic

log = logging.getLogger(__name__)

CA_DAYS = 3650
#: under the 398 days browsers accept for a server certificate.
CERT_DAYS = 397
#: a certificate this close to its end is issued anew on the next start.
RENEW_DAYS = 30
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(path, pem, mode=0o600)


def _load(pair: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the certificate {pair.cert} or its key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{pair.key} is not an EC private key")
    return cert, key


def ensure_ca(folder: Path, common_name: str = "edgefleet site CA") -> CertPair:
    """The CA in ``folder`` (``ca.pem``, ``ca.key``), made on first use and reused after."""
    pair = CertPair(folder / "ca.pem", folder / "ca.key")
    if pair.cert.exists() and pair.key.exists():
        _load(pair)  # a damaged CA is an error, never silently replaced: devices pin it
        if pair.key.stat().st_mode & 0o077:
            os.chmod(pair.key, 0o600)
        return pair
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(pair.key, key)
    write_atomic(pair.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    log.info("created a site CA in %s", folder)
    return pair


def server_names(hosts: list[str]) -> list[str]:
    """The names a server certificate for listeners on ``hosts`` should carry.

    A wildcard address (``0.0.0.0``) stands for every address of the machine: the certificate then
    names this host's name, localhost and the loopback addresses; other names come from the caller.
    """
    names: list[str] = []
    for host in hosts:
        if host in _WILDCARD_HOSTS:
            names += [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
        else:
            names.append(host)
    if any(n in ("127.0.0.1", "localhost") for n in names):
        names += ["localhost", "127.0.0.1"]
    return list(dict.fromkeys(n for n in names if n))


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def _current(pair: CertPair, ca_cert: x509.Certificate, names: list[str], client: bool) -> bool:
    if not (pair.cert.exists() and pair.key.exists()):
        return False
    try:
        cert, _ = _load(pair)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ConfigError, x509.ExtensionNotFound):
        return False
    return (
        cert.issuer == ca_cert.subject
        and set(san) == set(_san(names))
        and cert.not_valid_after_utc - _now() > datetime.timedelta(days=RENEW_DAYS)
        and client == (cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME) != [])
    )


def issue(ca: CertPair, out: CertPair, names: list[str], *, client: bool = False) -> CertPair:
    """A certificate for ``names`` (first one is the common name) signed by ``ca``, written to ``out``.

    Kept when the one already there names the same hosts, comes from this CA and is not near its
    end. ``client`` issues a TLS client certificate instead of a server one.
    """
    if not names:
        raise ConfigError("a certificate needs at least one name")
    ca_cert, ca_key = _load(ca)
    if _current(out, ca_cert, names, client):
        return out
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]
    if client:
        subject.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "client"))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=CERT_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    out.cert.parent.mkdir(parents=True, exist_ok=True)
    _write_key(out.key, key)
    write_atomic(out.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    log.info("issued a %s certificate for %s", "client" if client else "server", ", ".join(names))
    return out
