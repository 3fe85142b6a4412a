"""The standard-library half of :mod:`agent.stamp`: read a version's stamp and compare file facts.

Apart so that :mod:`agent.early` can check stamps before numpy, pydantic or cryptography are
imported; :func:`agent.stamp.read_stamped` builds on the same functions, so both compare the same
facts the same way.
"""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAMP_NAME = "verified.json"
MANIFEST_NAME = "manifest.json"  # the same names as sdk.manifest's (not imported: pydantic)
SIGNATURE_NAME = "manifest.sig"
FORMAT = 1


def signed_digest(manifest_bytes: bytes, signature: bytes) -> str:
    h = hashlib.sha256(manifest_bytes)
    h.update(b"\0")
    h.update(signature)
    return h.hexdigest()


def file_facts(path: Path) -> list[int] | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


@dataclass(frozen=True)
class Stamped:
    """A version folder whose manifest and signature are the ones its stamp recorded."""

    stamp: dict[str, Any]
    manifest_bytes: bytes


def read_stamp(directory: Path) -> Stamped | None:
    """The folder's stamp, if it is readable and was made for the manifest and signature there now."""
    try:
        stamp = json.loads((directory / STAMP_NAME).read_bytes())
        raw = (directory / MANIFEST_NAME).read_bytes()
        signature = (directory / SIGNATURE_NAME).read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("format") != FORMAT:
        return None
    if stamp.get("signed_sha256") != signed_digest(raw, signature):
        return None
    return Stamped(stamp, raw)


def files_match(directory: Path, stamp: Mapping[str, Any], sizes: Mapping[str, int]) -> bool:
    """Whether the files the manifest pins (name -> size) are exactly those the stamp recorded,
    unchanged since (size, mtime, ctime, inode)."""
    recorded = stamp.get("files")
    if not isinstance(recorded, dict) or set(recorded) != set(sizes):
        return False
    for name, size in sizes.items():
        facts = file_facts(directory / name)
        if facts is None or facts != recorded[name] or facts[0] != size:
            return False
    return True
