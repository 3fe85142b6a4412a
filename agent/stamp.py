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

import json
import logging
from pathlib import Path

from agent.stampfacts import FORMAT, STAMP_NAME, file_facts, files_match, read_stamp, signed_digest
from sdk.bundle import VerifiedBundle
from sdk.errors import EdgeError
from sdk.fsio import write_atomic
from sdk.keys import Ed25519PublicKey, key_id
from sdk.manifest import Manifest

log = logging.getLogger(__name__)

__all__ = ["STAMP_NAME", "read_stamped", "write_stamp"]


def write_stamp(directory: Path, verified: VerifiedBundle) -> None:
    """Record ``directory`` as fully verified just now (``verified`` is that verification's result)."""
    files = {name: file_facts(directory / name) for name in verified.manifest.files}
    doc = {
        "format": FORMAT,
        "signed_sha256": signed_digest(verified.manifest_bytes, verified.signature),
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
    stamped = read_stamp(directory)
    if stamped is None:
        return None
    if trusted_keys and stamped.stamp.get("signer") not in {key_id(k) for k in trusted_keys}:
        return None
    try:
        manifest = Manifest.from_json(stamped.manifest_bytes)
    except EdgeError:
        return None
    if not files_match(directory, stamped.stamp, {n: e.size for n, e in manifest.files.items()}):
        return None
    return manifest
