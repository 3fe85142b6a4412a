"""Download a bundle from the fleet: resumable, capped at the expected size, checked by sha256.

Bytes go to ``<dest>.part`` and are fsynced as they arrive, so a cut connection, a crash or a
reboot leaves a prefix that the next attempt resumes with an HTTP ``Range`` request. Only a file
whose size and sha256 match the desired state is renamed to ``dest``.
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from agent.sync.reserve import is_no_room
from sdk.bundle import file_sha256
from sdk.errors import (
    AuthError,
    BundleTooLargeError,
    EdgeError,
    FleetError,
    IntegrityError,
    ModelStoreError,
    NotFoundError,
)
from sdk.fsio import fsync_dir

log = logging.getLogger(__name__)


class DownloadError(FleetError):
    """A transient download failure (network, 5xx): the ``.part`` file is kept for a resume."""


class DownloadCancelledError(DownloadError):
    """The service is stopping; the ``.part`` file is kept."""


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    #: bytes that were already on disk from an earlier attempt.
    resumed_from: int


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


class BundleDownloader:
    """Fetches bundles with the device token; the token goes only to the fleet's own origin."""

    def __init__(
        self,
        fleet_url: str,
        token: str,
        *,
        ca_file: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        min_rate_bytes_s: float = 1024.0,
        rate_window_s: float = 60.0,
    ) -> None:
        self.fleet_url = fleet_url.rstrip("/") + "/"
        #: slow retrieval: a server that trickles bytes (each within ``timeout_s``) would hold an
        #: update forever; below this average over each window the download is abandoned (and
        #: retried, resuming the .part file).
        self.min_rate_bytes_s = min_rate_bytes_s
        self.rate_window_s = rate_window_s
        self._token = token
        self._client = httpx.Client(
            verify=tls_context or (ssl.create_default_context(cafile=ca_file) if ca_file else True),
            timeout=timeout_s,
            transport=transport,
            follow_redirects=True,
        )

    def close(self) -> None:
        self._client.close()

    def resolve(self, bundle_url: str) -> str:
        """``bundle_url`` may be absolute or relative to the fleet URL."""
        return urljoin(self.fleet_url, bundle_url)

    def _headers(self, url: str, offset: int) -> dict[str, str]:
        # identity: a Range counts bytes of the file itself, not of a compressed transfer.
        headers: dict[str, str] = {"Accept-Encoding": "identity"}
        # A bundle may live elsewhere (object storage): never hand the device token to another host.
        if _origin(url) == _origin(self.fleet_url):
            headers["Authorization"] = f"Bearer {self._token}"
        if offset:
            headers["Range"] = f"bytes={offset}-"
        return headers

    def fetch(
        self,
        bundle_url: str,
        dest: Path,
        *,
        size: int,
        sha256: str,
        cancel: threading.Event | None = None,
    ) -> DownloadResult:
        """Download to ``dest``; raises DownloadError (retry), IntegrityError or BundleTooLargeError."""
        url = self.resolve(bundle_url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():  # downloaded before a crash interrupted the install
            try:
                self._check(dest, size, sha256)
                return DownloadResult(path=dest, size=size, resumed_from=size)
            except EdgeError:
                dest.unlink()
        part = dest.with_name(dest.name + ".part")
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:
            log.warning("discarding %s: %d bytes is more than the expected %d", part, offset, size)
            part.unlink()
            offset = 0
        resumed_from = offset
        if offset < size:
            self._check_room(part, size - offset)
            self._stream(url, part, offset, size, cancel)
        try:
            self._check(part, size, sha256)
        except IntegrityError:
            part.unlink(missing_ok=True)
            if resumed_from == 0:
                raise
            # The kept prefix may have been damaged (a power cut): fetch the whole file once more.
            log.warning("resumed download of %s did not verify; downloading it again from the start", url)
            resumed_from = 0
            self._stream(url, part, 0, size, cancel)
            try:
                self._check(part, size, sha256)
            except IntegrityError:
                part.unlink(missing_ok=True)
                raise
        os.replace(part, dest)
        fsync_dir(dest.parent)
        log.info("downloaded %s (%d bytes, resumed from %d)", url, size, resumed_from)
        return DownloadResult(path=dest, size=size, resumed_from=resumed_from)

    def _stream(self, url: str, part: Path, offset: int, size: int, cancel: threading.Event | None) -> None:
        try:
            with self._client.stream("GET", url, headers=self._headers(url, offset)) as response:
                offset = self._accept(response, url, part, offset, size)
                with open(part, "ab" if offset else "wb") as f:
                    window_start, window_bytes = time.monotonic(), 0
                    try:
                        for chunk in response.iter_raw():  # raw: byte offsets must match the file
                            if cancel is not None and cancel.is_set():
                                raise DownloadCancelledError(f"download of {url} cancelled")
                            window_bytes += len(chunk)
                            elapsed = time.monotonic() - window_start
                            if elapsed >= self.rate_window_s:
                                if window_bytes < self.min_rate_bytes_s * elapsed:
                                    raise DownloadError(
                                        f"download of {url} is too slow ({window_bytes / elapsed:.0f} B/s"
                                        f" over {elapsed:.0f} s, below {self.min_rate_bytes_s:g} B/s);"
                                        " abandoned, to resume on the next try"
                                    )
                                window_start, window_bytes = time.monotonic(), 0
                            if f.tell() + len(chunk) > size:
                                f.close()
                                part.unlink(missing_ok=True)
                                raise BundleTooLargeError(
                                    f"{url} sent more than the {size} bytes the desired state allows"
                                )
                            f.write(chunk)
                            f.flush()  # to the kernel: a killed process keeps what it received
                    finally:
                        if not f.closed:
                            f.flush()
                            os.fsync(f.fileno())
        except httpx.HTTPError as exc:
            raise DownloadError(f"download of {url} failed: {exc}") from None
        except OSError as exc:
            if not is_no_room(exc):  # not worth retrying soon, and the partial file goes
                raise
            # The disk filled up while we wrote (something else took the room): give it back, so
            # the serving version, its logs and its telemetry keep working, and fail this update.
            part.unlink(missing_ok=True)
            raise ModelStoreError(f"no room on disk for {url}: {exc.strerror}") from None

    @staticmethod
    def _check_room(part: Path, needed: int) -> None:
        """Refuse a download the disk cannot hold before writing a byte of it."""
        try:
            free = shutil.disk_usage(part.parent).free
        except OSError:
            return
        if free < needed:
            part.unlink(missing_ok=True)
            raise ModelStoreError(
                f"no room on disk for the bundle: it needs {needed} more bytes, {free} are free in {part.parent}"
            )

    @staticmethod
    def _accept(response: httpx.Response, url: str, part: Path, offset: int, size: int) -> int:
        """Check the response status and length; return the offset the body starts at."""
        status = response.status_code
        if status in (401, 403):
            raise AuthError(f"the fleet refused the device token for {url} ({status})")
        if status == 404:
            raise NotFoundError(f"{url} does not exist (404)")
        if status == 416 or (status >= 500):
            if status == 416:
                # Our prefix does not fit the file the server has now: start over next time.
                part.unlink(missing_ok=True)
            raise DownloadError(f"download of {url} failed with HTTP {status}")
        if status == 206:
            start = _content_range_start(response.headers.get("content-range", ""))
            if start != offset:
                part.unlink(missing_ok=True)
                raise DownloadError(f"{url} answered a range from {start}, not {offset}; restarting")
        elif status == 200:
            offset = 0  # the server ignored Range: the body is the whole file
        else:
            raise DownloadError(f"download of {url} failed with HTTP {status}")
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and offset + int(length) > size:
            raise BundleTooLargeError(
                f"{url} is {offset + int(length)} bytes; the desired state allows {size}"
            )
        return offset

    @staticmethod
    def _check(part: Path, size: int, sha256: str) -> None:
        digest, actual = file_sha256(part)
        if actual < size:
            # The connection ended early without an error: keep the prefix and resume later.
            raise DownloadError(f"download stopped at {actual} of {size} bytes")
        if actual != size:
            raise IntegrityError(f"downloaded {actual} bytes, expected {size}")
        if digest != sha256:
            raise IntegrityError(
                f"downloaded bundle sha256 {digest[:12]}… does not match the desired {sha256[:12]}…"
            )


def _content_range_start(value: str) -> int | None:
    # "bytes 100-199/200"
    try:
        unit, rest = value.split(" ", 1)
        return int(rest.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None
