"""What every bundle storage offers: the routes and the upload path see only this."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from sdk.errors import NotFoundError

#: a storage key is one flat name (``<bundle id>-<name>-<version>-<profile>.efb``): no folders, no ``..``.
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,300}$")
#: downloads are streamed in pieces of this size, so no bundle is ever held in memory whole.
CHUNK = 1024 * 1024


def check_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise NotFoundError(f"bad storage key {key!r}")
    return key


class ByteStream(Protocol):
    """An opened object (or a byte range of it): iterate for chunks, close when done or abandoned."""

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class BundleStorage(Protocol):
    #: where the bundles are, for logs and errors (``/var/lib/edgefleet/bundles``, ``s3://b/p``).
    description: str

    def staging_path(self, name: str) -> Path:
        """A local file an upload is written to and verified in before :meth:`put` keeps it."""
        ...

    def put(self, key: str, source: Path) -> None:
        """Keep the staged file ``source`` under ``key`` (``source`` may be moved away)."""
        ...

    def open(self, key: str, start: int = 0, end: int | None = None) -> ByteStream:
        """Bytes ``start`` to ``end`` (inclusive; None: to the end) of ``key``; NotFoundError if absent."""
        ...

    def keys(self) -> list[str]:
        """Every stored key, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; removing an absent key is not an error."""
        ...

    def download_url(self, key: str, filename: str) -> str | None:
        """A URL devices may fetch ``key`` from directly instead of through the fleet, or None."""
        ...
