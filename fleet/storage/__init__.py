"""Bundle storage: where uploaded ``.efb`` files live. A local folder (or shared volume), or S3."""

from __future__ import annotations

from pathlib import Path

from fleet.storage.base import BundleStorage, ByteStream
from fleet.storage.local import LocalStorage


def open_storage(
    spec: str, *, multipart_mb: float = 16.0, staging_dir: Path | None = None, presign_s: float = 0.0
) -> BundleStorage:
    """The backend for ``--storage``: a folder, or ``s3://bucket/prefix`` (checked here, at start-up)."""
    if spec.startswith("s3://"):
        from fleet.storage.s3 import S3Storage

        s3 = S3Storage(spec, multipart_mb=multipart_mb, staging_dir=staging_dir, presign_s=presign_s)
        s3.check()
        return s3
    return LocalStorage(spec)


__all__ = ["BundleStorage", "ByteStream", "LocalStorage", "open_storage"]
