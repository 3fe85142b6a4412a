"""Bundles on local disk (or a shared volume): one file per bundle, written atomically."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from fleet.storage.base import CHUNK, check_key
from sdk.errors import ConfigError, NotFoundError


class FileRange:
    """Bytes of an open file, read piece by piece (a :class:`~fleet.storage.base.ByteStream`)."""

    def __init__(self, f: BinaryIO, length: int | None) -> None:
        self._f = f
        self._left = length

    def __iter__(self) -> Iterator[bytes]:
        try:
            while self._left is None or self._left > 0:
                chunk = self._f.read(CHUNK if self._left is None else min(CHUNK, self._left))
                if not chunk:
                    break
                if self._left is not None:
                    self._left -= len(chunk)
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        self._f.close()


class LocalStorage:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.description = str(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use {self.root} for bundles: {exc.strerror or exc}") from None

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def staging_path(self, name: str) -> Path:
        """A temporary file beside the store, so :meth:`put` is a rename on the same filesystem."""
        tmp = self.root / ".incoming"
        tmp.mkdir(exist_ok=True)
        return tmp / name

    def put(self, key: str, source: Path) -> None:
        dest = self._path(key)
        try:
            os.replace(source, dest)
        except OSError:
            shutil.move(str(source), dest)

    def open(self, key: str, start: int = 0, end: int | None = None) -> FileRange:
        try:
            f = open(self._path(key), "rb")  # noqa: SIM115 - FileRange closes it
        except FileNotFoundError:
            raise NotFoundError(f"bundle file {key} is missing from storage") from None
        f.seek(start)
        return FileRange(f, None if end is None else end - start + 1)

    def keys(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_file())

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def download_url(self, key: str, filename: str) -> str | None:
        return None
