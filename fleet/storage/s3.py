"""Bundles in S3-compatible object storage (AWS S3, MinIO, Ceph RGW, ...): ``s3://bucket/prefix``.

Endpoint, region and credentials come from the standard AWS environment variables and config
files, exactly as for the ``aws`` CLI (``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_CA_BUNDLE``, web identity in Kubernetes, ...), so
an on-prem MinIO needs only ``AWS_ENDPOINT_URL`` and a key pair.

Uploads go up from the verified staged file in parts (multipart above a threshold), downloads come
down in 1 MiB pieces: no bundle is ever held in memory whole.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.errors import StorageError
from fleet.storage.base import CHUNK, check_key
from sdk.errors import ConfigError, EdgeError, NotFoundError

log = logging.getLogger(__name__)

# S3's own limits: a part is at least 5 MiB (except the last); bucket names per the naming rules.
_MIN_PART = 5 * 1024 * 1024
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidClientTokenId",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
}
_WRONG_REGION = {"PermanentRedirect", "AuthorizationHeaderMalformed", "301"}


@dataclass(frozen=True)
class S3Location:
    bucket: str
    #: "" or a key prefix ending in "/".
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        rest = url.removeprefix("s3://")
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET_RE.match(bucket):
            raise ConfigError(
                f"{url!r}: {bucket!r} is not an S3 bucket name (3-63 lowercase letters, digits, '.', '-'); "
                "expected s3://BUCKET/PREFIX"
            )
        prefix = prefix.strip("/")
        return cls(bucket, f"{prefix}/" if prefix else "")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


class S3Body:
    """A GetObject body read piece by piece (a :class:`~fleet.storage.base.ByteStream`)."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._body.iter_chunks(CHUNK)
        finally:
            self.close()

    def close(self) -> None:
        self._body.close()


def _is_aws(endpoint: str) -> bool:
    return ".amazonaws.com" in endpoint or ".amazonaws.com.cn" in endpoint


def _user_set(scoped: dict[str, Any], env: str, key: str) -> bool:
    return bool(os.environ.get(env) or scoped.get(key))


def _make_client(*, probe: bool) -> Any:
    """An S3 client configured from the AWS environment; ``probe`` fails fast (the start-up check)."""
    try:
        import boto3
        import botocore.session
        from botocore.config import Config
    except ImportError:
        raise ConfigError("S3 storage needs boto3: pip install 'edgefleet[fleet]'") from None

    core = botocore.session.get_session()
    session = boto3.Session(botocore_session=core)
    # SigV4 also for presigned URLs (botocore would presign with the legacy SigV2 otherwise).
    config = Config(
        signature_version="s3v4", connect_timeout=5 if probe else 10, read_timeout=15 if probe else 60
    )
    if probe:
        # Two tries, not the default five with backoff: an unreachable endpoint is reported in seconds.
        config = config.merge(Config(retries={"total_max_attempts": 2, "mode": "standard"}))
    client = session.client("s3", config=config)
    endpoint = client.meta.endpoint_url
    if _is_aws(endpoint):
        return client
    # On-prem S3 (MinIO, Ceph RGW) rarely has wildcard DNS for bucket.host names, and older servers
    # reject the CRC checksums botocore adds by default; the user's own AWS config still wins.
    scoped = core.get_scoped_config()
    extra: dict[str, Any] = {}
    if "addressing_style" not in (scoped.get("s3") or {}):
        extra["s3"] = {"addressing_style": "path"}
    if not _user_set(scoped, "AWS_REQUEST_CHECKSUM_CALCULATION", "request_checksum_calculation"):
        extra["request_checksum_calculation"] = "when_required"
    if not _user_set(scoped, "AWS_RESPONSE_CHECKSUM_VALIDATION", "response_checksum_validation"):
        extra["response_checksum_validation"] = "when_required"
    return session.client("s3", config=config.merge(Config(**extra))) if extra else client


def describe_failure(exc: BaseException, location: S3Location, endpoint: str) -> str:
    """One line saying what went wrong talking to S3, and what to change."""
    from botocore import exceptions as bx

    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return (
            f"no S3 credentials for {location}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE)"
        )
    if isinstance(exc, bx.SSLError):
        return f"TLS to the S3 endpoint {endpoint} failed ({exc}); set AWS_CA_BUNDLE to your CA certificate"
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ConnectionClosedError)):
        return f"cannot reach the S3 endpoint {endpoint}; check AWS_ENDPOINT_URL and the network"
    if isinstance(exc, bx.ReadTimeoutError):
        return f"the S3 endpoint {endpoint} did not answer in time"
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "?"))
        if code in ("NoSuchBucket", "404") and exc.operation_name in ("ListObjectsV2", "HeadBucket"):
            return f"the S3 bucket {location.bucket} does not exist at {endpoint}; create it first"
        if code in _BAD_CREDENTIALS:
            return (
                f"the S3 endpoint {endpoint} refused the credentials ({code}); "
                "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            return (
                f"S3 denied access to {location} ({code}); the credentials need s3:ListBucket, "
                "s3:GetObject, s3:PutObject and s3:DeleteObject there"
            )
        if code in _WRONG_REGION:
            return f"the S3 bucket {location.bucket} is in another region; set AWS_REGION"
        return f"S3 {exc.operation_name} on {location} failed: {code} {error.get('Message', '')}".rstrip()
    return f"S3 at {endpoint}: {exc}"


class S3Storage:
    def __init__(
        self,
        url: str,
        *,
        multipart_mb: float = 16.0,
        staging_dir: Path | None = None,
        presign_s: float = 0.0,
    ) -> None:
        self.location = S3Location.parse(url)
        self.client = _make_client(probe=False)
        from botocore.exceptions import BotoCoreError, ClientError

        #: what the S3 client raises; each becomes one line (ConfigError at start, StorageError later)
        self._errors: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
        self._probe = _make_client(probe=True)
        self.endpoint: str = self.client.meta.endpoint_url
        self.description = f"{self.location} at {self.endpoint}"
        self.presign_s = presign_s
        part = max(_MIN_PART, int(multipart_mb * 1024 * 1024))
        from boto3.s3.transfer import TransferConfig

        self._transfer = TransferConfig(
            multipart_threshold=part, multipart_chunksize=part, max_concurrency=4, use_threads=True
        )
        self.staging_dir = staging_dir or Path(tempfile.gettempdir()) / "edgefleet-incoming"
        try:
            self.staging_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot use {self.staging_dir} for staged uploads: {exc.strerror or exc}"
            ) from None

    def check(self) -> None:
        """At start-up: the endpoint answers, the credentials work, the bucket exists and can be listed."""
        try:
            self._probe.list_objects_v2(Bucket=self.location.bucket, Prefix=self.location.prefix, MaxKeys=1)
        except self._errors as exc:
            raise ConfigError(describe_failure(exc, self.location, self.endpoint)) from None
        log.info("bundle storage: %s", self.description)

    def _fail(self, exc: BaseException) -> EdgeError:
        return StorageError(describe_failure(exc, self.location, self.endpoint))

    def _key(self, key: str) -> str:
        return self.location.prefix + check_key(key)

    def staging_path(self, name: str) -> Path:
        return self.staging_dir / name

    def put(self, key: str, source: Path) -> None:
        from boto3.s3.transfer import create_transfer_manager

        try:
            with create_transfer_manager(self.client, self._transfer) as manager:
                manager.upload(
                    str(source),
                    self.location.bucket,
                    self._key(key),
                    extra_args={"ContentType": "application/octet-stream"},
                ).result()
        except self._errors as exc:
            raise self._fail(exc) from None
        source.unlink(missing_ok=True)

    def open(self, key: str, start: int = 0, end: int | None = None) -> S3Body:
        args: dict[str, Any] = {"Bucket": self.location.bucket, "Key": self._key(key)}
        if start or end is not None:
            args["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            return S3Body(self.client.get_object(**args)["Body"])
        except self.client.exceptions.NoSuchKey:
            raise NotFoundError(f"bundle file {key} is missing from {self.location}") from None
        except self._errors as exc:
            raise self._fail(exc) from None

    def keys(self) -> list[str]:
        found: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=self.location.prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.location.prefix) :]
                    if "/" not in name:  # deeper "folders" are not ours
                        found.append(name)
        except self._errors as exc:
            raise self._fail(exc) from None
        return sorted(found)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.location.bucket, Key=self._key(key))
        except self._errors as exc:
            raise self._fail(exc) from None

    def download_url(self, key: str, filename: str) -> str | None:
        if self.presign_s <= 0:
            return None
        try:
            return str(
                self.client.generate_presigned_url(
                    "get_object",
                    Params={
                        "Bucket": self.location.bucket,
                        "Key": self._key(key),
                        "ResponseContentDisposition": f'attachment; filename="{filename}"',
                    },
                    ExpiresIn=int(self.presign_s),
                )
            )
        except self._errors as exc:
            raise self._fail(exc) from None
