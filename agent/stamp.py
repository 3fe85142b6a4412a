"""The verification stamp: what a version folder looked like when it last passed a full verification.

A full verification (signature against the trusted keys, every pinned file's sha256) reads every
byte of the model. The stamp lets start-up skip that when nothing changed since: it records the
sha256 of ``manifest.json`` and ``manifest.sig`` (so the manifest read now is the one whose
signature was checked), the signer's key id (so a key removed from the trusted set since still
counts), and each pinned file's size, mtime, ctime and inode. Any write, truncation, rename over or
``touch`` of a file changes its ctime, which user space cannot set back; a copied or restored folder
gets new inodes. Damage that bypasses the file system (bit rot) keeps the stamp matching, which is
why the agent re-hashes in the background after it starts serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import stat
from pathlib import Path

from sdk.bundle import VerifiedBundle
from sdk.errors import EdgeError
from sdk.fsio import write_atomic
from sdk.keys import Ed25519PublicKey, key_id
from sdk.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest

log = logging.getLogger(__name__)

STAMP_NAME = "verified.json"
_FORMAT = 1


def _signed_digest(manifest_bytes: bytes, signature: bytes) -> str:
    h = hashlib.sha256(manifest_bytes)
    h.update(b"\0")
    h.update(signature)
    return h.hexdigest()


def _file_facts(path: Path) -> list[int] | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def write_stamp(directory: Path, verified: VerifiedBundle) -> None:
    """Record ``directory`` as fully verified just now (``verified`` is that verification's result)."""
    files = {name: _file_facts(directory / name) for name in verified.manifest.files}
    doc = {
        "format": _FORMAT,
        "signed_sha256": _signed_digest(verified.manifest_bytes, verified.signature),
        "signer": verified.signer,
        "files": files,
    }
    try:
        write_atomic(directory / STAMP_NAME, json.dumps(doc, sort_keys=True).encode("utf-8"))
    except OSError as exc:
        # Only start-up speed depends on it: without a stamp the next start verifies in full.
        log.warning("cannot write %s: %s", directory / STAMP_NAME, exc)


def read_stamped(directory: Path, trusted_keys: list[Ed25519PublicKey]) -> Manifest | None:
    """The folder's manifest when the folder still matches its stamp, else None (verify it in full)."""
    try:
        stamp = json.loads((directory / STAMP_NAME).read_bytes())
        raw = (directory / MANIFEST_NAME).read_bytes()
        signature = (directory / SIGNATURE_NAME).read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("format") != _FORMAT:
        return None
    if stamp.get("signed_sha256") != _signed_digest(raw, signature):
        return None
    if trusted_keys and stamp.get("signer") not in {key_id(k) for k in trusted_keys}:
        return None
    try:
        manifest = Manifest.from_json(raw)
    except EdgeError:
        return None
    recorded = stamp.get("files")
    if not isinstance(recorded, dict) or set(recorded) != set(manifest.files):
        return None
    for name, entry in manifest.files.items():
        facts = _file_facts(directory / name)
        if facts is None or facts != recorded[name] or facts[0] != entry.size:
            return None
    return manifest
