"""A small filesystem of its own for a test: a tmpfs of a fixed size, to fill a disk on purpose."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. ``512k``, ``40m``) at ``mount_point`` for the block's time.

    Needs root and ``mount``; the test is skipped with the reason where either is missing.
    """
    mount_point.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path, chunk: int = 1 << 20) -> Path:
    """Write zeros into ``disk`` until it is full, as something else on a device would; returns the
    file holding them (delete it to give the room back)."""
    ballast = disk / "ballast"
    with open(ballast, "wb", buffering=0) as f:  # unbuffered: closing has nothing left to fail on
        try:
            while f.write(bytes(chunk)):
                pass
        except OSError:
            pass
    return ballast
