"""Crash-safe file writing: a reader sees the old bytes or the new ones, never a mix or nothing.

Write a temporary file beside the target, fsync it, rename it over the target, fsync the folder
(so the rename itself survives a power cut). The agent's pointers and journals, the bundle writer
and the device credentials all write this way. Standard library only: the agent imports it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: str | Path) -> None:
    """Make the folder's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: str | Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only when the ``with`` block ends without an error.

    ``mode`` is the new file's permission (before the umask), set from its creation on: a secret
    written with ``0o600`` is never readable by others, even briefly. On an error the temporary
    file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    # pid and thread in the name: two writers of the same file never share a temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see :func:`atomic_writer`)."""
    with atomic_writer(path, mode=mode) as f:
        f.write(data)
