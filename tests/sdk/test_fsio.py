"""Atomic writes: the target holds the old bytes or the new ones, never a mix, and no litter is left."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sdk.fsio import atomic_writer, write_atomic


def test_write_atomic_replaces_the_file_with_the_mode_asked(tmp_path: Path) -> None:
    target = tmp_path / "secret.json"
    target.write_bytes(b"old")
    write_atomic(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) & 0o077 == 0
    assert [p.name for p in tmp_path.iterdir()] == ["secret.json"]


def test_an_error_while_writing_keeps_the_old_bytes_and_removes_the_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "bundle.efb"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_writer(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("the writer died")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle.efb"]
