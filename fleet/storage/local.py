"""Bundles on local disk (or a shared volume): one file per bundle, written atomically."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from sdk.errors import ConfigError, NotFoundError

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,300}$")


class LocalStorage:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use {self.root} for bundles: {exc.strerror or exc}") from None

    def _path(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            raise NotFoundError(f"bad storage key {key!r}")
        return self.root / key

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

    def path(self, key: str) -> Path:
        p = self._path(key)
        if not p.is_file():
            raise NotFoundError(f"bundle file {key} is missing from storage")
        return p

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
