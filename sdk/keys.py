"""Ed25519 signing keys: generation, PEM files, signatures and key ids."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sdk.errors import KeyFileError, SignatureError

__all__ = [
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "generate_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "load_trusted_keys",
    "public_key_from_b64",
    "public_key_to_b64",
    "save_keypair",
    "sign",
    "verify",
]


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """A short, stable name for a key: the first 16 hex digits of the sha256 of its raw public bytes."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return hashlib.sha256(_raw_public(pub)).hexdigest()[:16]


def public_key_to_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(_raw_public(key)).decode("ascii")


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"the embedded public key is not a valid Ed25519 key: {exc}") from None


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600 from the first byte: a key must never exist world-readable, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def save_keypair(key: Ed25519PrivateKey, path: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write the private key to PATH (PKCS#8 PEM, mode 0600) and the public key to PATH.pub."""
    path = Path(path)
    pub_path = path.with_name(path.name + ".pub")
    if not overwrite:
        for p in (path, pub_path):
            if p.exists():
                raise KeyFileError(f"{p} already exists; refusing to overwrite a key")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(
            path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        pub_path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    except OSError as exc:
        raise KeyFileError(f"cannot write key {path}: {exc.strerror or exc}") from None
    return path, pub_path


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key {path}: {exc.strerror or exc}") from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Load a PEM public key; a private key file is accepted too (its public half is used)."""
    path = Path(path)
    data = _read(path)
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_trusted_keys(paths: Iterable[str | Path]) -> list[Ed25519PublicKey]:
    """Public keys from files, or from every ``*.pub`` / ``*.pem`` file in a folder."""
    keys: list[Ed25519PublicKey] = []
    for p in map(Path, paths):
        if p.is_dir():
            keys.extend(load_public_key(f) for f in sorted(p.iterdir()) if f.suffix in (".pub", ".pem"))
        else:
            keys.append(load_public_key(p))
    return keys


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def verify(key: Ed25519PublicKey, signature: bytes, data: bytes) -> None:
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise SignatureError(
            "the manifest signature does not verify: the manifest was changed or not signed by the key it names"
        ) from None
