"""Bundle storage: where uploaded ``.efb`` files live. Local disk today; S3-compatible is planned."""

from __future__ import annotations

from fleet.storage.local import LocalStorage
from sdk.errors import ConfigError


def open_storage(spec: str) -> LocalStorage:
    """A storage backend from ``--storage``: a folder, or ``s3://bucket/prefix``."""
    if spec.startswith("s3://"):
        raise ConfigError(
            "S3 storage is not available in this build yet; use --storage DIR (a shared volume for replicas)"
        )
    return LocalStorage(spec)


__all__ = ["LocalStorage", "open_storage"]
