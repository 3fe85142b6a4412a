"""Write, verify and unpack ``.efb`` bundles.

A bundle is a gzip-compressed tar archive whose members are, in this order: ``manifest.json``,
``manifest.sig`` (an Ed25519 signature over the exact manifest bytes), then every file the manifest
pins. Because the manifest comes first, a reader checks the signature before it reads a single model
byte, knows every member's name and size in advance, and rejects anything else while streaming:
nothing is unpacked before it is known to be wanted, and nothing is written outside the
destination folder.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import logging
import os
import re
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sdk import keys
from sdk.errors import (
    BundleError,
    BundleLayoutError,
    BundleTooLargeError,
    IntegrityError,
    NotABundleError,
    SignatureError,
    UnsafeMemberError,
    UntrustedSignerError,
)
from sdk.fsio import atomic_writer, fsync_dir
from sdk.manifest import MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest, Signer

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 8 * 1024 * 1024
MAX_SIGNATURE_BYTES = 1024
#: Hard cap on what a bundle may unpack to, whatever its manifest claims.
DEFAULT_MAX_UNPACKED_BYTES = 16 * 1024**3
#: tar headers and padding per member, plus end-of-archive blocks, with room for pax headers.
_TAR_OVERHEAD_PER_MEMBER = 4096
_TAR_OVERHEAD = 64 * 1024
_CHUNK = 1024 * 1024
_MEMBER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RESERVED = {MANIFEST_NAME, SIGNATURE_NAME}


@dataclass(frozen=True)
class VerifiedBundle:
    """What a successful verification proved."""

    manifest: Manifest
    #: the exact signed bytes of manifest.json, and their signature.
    manifest_bytes: bytes
    signature: bytes
    #: key id of the signer.
    signer: str
    #: True when checked against trusted keys, None when no trusted keys were given.
    trusted: bool | None
    #: folder the files were unpacked into, or None for a verify-only pass.
    directory: Path | None = None


def file_sha256(path: str | Path) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def check_member_name(name: str) -> str:
    """Bundle members are flat file names; anything that could escape a folder is refused."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UnsafeMemberError(f"bundle member {name!r} has an absolute path")
    parts = re.split(r"[\\/]", name)
    if ".." in parts:
        raise UnsafeMemberError(f"bundle member {name!r} climbs out of its folder with '..'")
    if len(parts) > 1 or not _MEMBER_NAME_RE.match(name):
        raise UnsafeMemberError(f"bundle member {name!r} is not a plain file name")
    return name


# --------------------------------------------------------------------------------------- writing


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0  # reproducible archives: the manifest carries the creation time
    info.uname = info.gname = ""
    return info


def write_bundle(
    manifest: Manifest,
    files: Mapping[str, str | Path],
    key: keys.Ed25519PrivateKey,
    out_dir: str | Path,
    *,
    compresslevel: int = 6,
) -> Path:
    """Pin ``files`` in the manifest, sign it and write ``<name>-<version>-<profile>.efb`` atomically.

    ``files`` maps member names (flat file names such as ``model.onnx``) to paths on disk. The
    manifest's ``files`` and ``signer`` are filled in here; everything else is the caller's.
    Returns the bundle's path.
    """
    if manifest.model_file not in files:
        raise BundleError(f"the model file {manifest.model_file!r} is not among the bundle's files")
    entries: dict[str, FileEntry] = {}
    for name, path in files.items():
        check_member_name(name)
        if name in _RESERVED:
            raise BundleError(f"{name!r} is reserved for the bundle itself")
        digest, size = file_sha256(path)
        entries[name] = FileEntry(sha256=digest, size=size)
    manifest = manifest.model_copy(
        update={
            "files": entries,
            "signer": Signer(key_id=keys.key_id(key), public_key=keys.public_key_to_b64(key.public_key())),
        }
    )
    raw = manifest.to_json()
    signature = keys.sign(key, raw)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / manifest.filename
    try:
        with (
            atomic_writer(out) as f,
            gzip.GzipFile(fileobj=f, mode="wb", mtime=0, compresslevel=compresslevel) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            tar.addfile(_tarinfo(MANIFEST_NAME, len(raw)), io.BytesIO(raw))
            tar.addfile(_tarinfo(SIGNATURE_NAME, len(signature)), io.BytesIO(signature))
            for name in sorted(files):
                with open(files[name], "rb") as src:
                    tar.addfile(_tarinfo(name, entries[name].size), src)
    except OSError as exc:
        raise BundleError(f"cannot write bundle {out}: {exc.strerror or exc}") from None
    log.info("wrote %s (%d bytes)", out, out.stat().st_size)
    return out


# --------------------------------------------------------------------------------------- reading


class _CappedReader(io.RawIOBase):
    """Counts decompressed bytes and stops a decompression bomb at ``limit``."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self._raw = raw
        self.limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = self.limit - self.count + 1 if size is None or size < 0 else size
        data = self._raw.read(min(want, self.limit - self.count + 1))
        self.count += len(data)
        if self.count > self.limit:
            raise BundleTooLargeError(
                f"bundle unpacks to more than {self.limit} bytes, more than its manifest allows "
                "(a decompression bomb or a corrupt archive)"
            )
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _check_member_type(member: tarfile.TarInfo) -> None:
    if member.issym() or member.islnk():
        raise UnsafeMemberError(f"bundle member {member.name!r} is a link (to {member.linkname!r})")
    if member.ischr() or member.isblk() or member.isfifo():
        raise UnsafeMemberError(f"bundle member {member.name!r} is a device or FIFO")
    if not member.isreg():
        raise UnsafeMemberError(f"bundle member {member.name!r} is not a regular file")


def _next(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except BundleError:
        raise
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise NotABundleError(f"the archive is truncated or corrupt: {exc}") from None


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, limit: int) -> bytes:
    _check_member_type(member)
    if member.name != name:
        raise BundleLayoutError(f"expected {name} as the next bundle member, found {member.name!r}")
    if member.size > limit:
        raise BundleLayoutError(f"{name} is {member.size} bytes, more than the {limit} allowed")
    f = tar.extractfile(member)
    assert f is not None  # a regular file always has a reader
    try:
        data = f.read()
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise NotABundleError(f"the archive is truncated or corrupt in {name}: {exc}") from None
    if len(data) != member.size:
        raise NotABundleError(f"the archive is truncated inside {name}")
    return data


def _check_signature(
    raw: bytes, signature: bytes, trusted_keys: Iterable[keys.Ed25519PublicKey] | None
) -> tuple[Manifest, str, bool | None]:
    manifest = Manifest.from_json(raw)
    if manifest.signer is None:
        raise SignatureError("the manifest names no signer")
    public = keys.public_key_from_b64(manifest.signer.public_key)
    signer = keys.key_id(public)
    if signer != manifest.signer.key_id:
        raise SignatureError(f"the manifest's signer key id {manifest.signer.key_id} does not match its key")
    keys.verify(public, signature, raw)
    trusted: bool | None = None
    if trusted_keys is not None:
        trusted_ids = {keys.key_id(k) for k in trusted_keys}
        if signer not in trusted_ids:
            raise UntrustedSignerError(
                f"the bundle is signed by key {signer}, which is not among the trusted keys"
                f" ({', '.join(sorted(trusted_ids)) or 'none configured'})"
            )
        trusted = True
    for name in manifest.files:
        check_member_name(name)
        if name in _RESERVED:
            raise BundleLayoutError(f"the manifest pins {name!r}, a name reserved for the bundle itself")
    return manifest, signer, trusted


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, sink: BinaryIO | None) -> tuple[str, int]:
    f = tar.extractfile(member)
    assert f is not None
    h = hashlib.sha256()
    size = 0
    try:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            if sink is not None:
                sink.write(chunk)
    except BundleError:
        raise
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise NotABundleError(f"the archive is truncated or corrupt in {member.name}: {exc}") from None
    return h.hexdigest(), size


def _open_bundle(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise NotABundleError(f"cannot open bundle {path}: {exc.strerror or exc}") from None


def _open_stream(capped: _CappedReader, path: Path) -> tarfile.TarFile:
    """A forward-only tar reader: members are checked as they stream, never seeked back to."""
    try:
        return tarfile.open(fileobj=capped, mode="r|")  # type: ignore[call-overload]
    except BundleError:
        raise
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise NotABundleError(f"{path} is not a bundle: {exc}") from None


def _scan(
    path: Path,
    trusted_keys: Iterable[keys.Ed25519PublicKey] | None,
    dest: Path | None,
    max_unpacked: int,
) -> VerifiedBundle:
    with _open_bundle(path) as fh:
        if fh.read(2) != b"\x1f\x8b":
            raise NotABundleError(f"{path} is not a bundle (not a gzip-compressed tar archive)")
        fh.seek(0)
        capped = _CappedReader(gzip.GzipFile(fileobj=fh, mode="rb"), MAX_MANIFEST_BYTES + _TAR_OVERHEAD)
        with _open_stream(capped, path) as tar:
            first = _next(tar)
            if first is None:
                raise BundleLayoutError("the bundle is empty; manifest.json is missing")
            raw = _read_small(tar, first, MANIFEST_NAME, MAX_MANIFEST_BYTES)
            second = _next(tar)
            if second is None:
                raise BundleLayoutError("manifest.sig is missing")
            signature = _read_small(tar, second, SIGNATURE_NAME, MAX_SIGNATURE_BYTES)
            manifest, signer, trusted = _check_signature(raw, signature, trusted_keys)

            # From here the manifest is authentic, so its sizes bound what may be unpacked.
            expected = sum(e.size for e in manifest.files.values())
            capped.limit = min(
                max_unpacked,
                capped.count + expected + _TAR_OVERHEAD + _TAR_OVERHEAD_PER_MEMBER * len(manifest.files),
            )
            if expected > max_unpacked:
                raise BundleTooLargeError(
                    f"the manifest pins {expected} bytes of files, more than the {max_unpacked} allowed"
                )
            seen: set[str] = set()
            while (member := _next(tar)) is not None:
                check_member_name(member.name)
                _check_member_type(member)
                entry = manifest.files.get(member.name)
                if entry is None:
                    raise BundleLayoutError(f"bundle member {member.name!r} is not in the manifest")
                if member.name in seen:
                    raise BundleLayoutError(f"bundle member {member.name!r} appears twice")
                seen.add(member.name)
                if member.size != entry.size:
                    raise BundleLayoutError(
                        f"bundle member {member.name!r} is {member.size} bytes, the manifest says {entry.size}"
                    )
                sink = None
                if dest is not None:
                    # O_EXCL | O_NOFOLLOW: never write through a link or over a file already there.
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                    try:
                        sink = os.fdopen(os.open(dest / member.name, flags, 0o644), "wb")
                    except OSError as exc:
                        raise BundleError(
                            f"cannot unpack {member.name} into {dest}: {exc.strerror or exc}"
                        ) from None
                try:
                    digest, size = _copy_member(tar, member, sink)
                    if sink is not None:
                        sink.flush()
                        os.fsync(sink.fileno())
                finally:
                    if sink is not None:
                        sink.close()
                if size != entry.size:
                    raise NotABundleError(f"the archive is truncated inside {member.name!r}")
                if digest != entry.sha256:
                    raise IntegrityError(
                        f"{member.name} does not match the manifest: sha256 {digest[:12]}…,"
                        f" expected {entry.sha256[:12]}…"
                    )
            missing = sorted(set(manifest.files) - seen)
            if missing:
                raise BundleLayoutError(f"the bundle lacks {', '.join(missing)}, which the manifest pins")
            # Read to the end so the gzip CRC and length trailer are checked too.
            try:
                while capped.read(_CHUNK):
                    pass
            except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
                raise NotABundleError(f"the archive is truncated or corrupt at its end: {exc}") from None
    return VerifiedBundle(
        manifest=manifest, manifest_bytes=raw, signature=signature, signer=signer, trusted=trusted
    )


def verify_bundle(
    path: str | Path,
    trusted_keys: Iterable[keys.Ed25519PublicKey] | None = None,
    *,
    max_unpacked: int = DEFAULT_MAX_UNPACKED_BYTES,
) -> VerifiedBundle:
    """Check a bundle's signature, layout, sizes and hashes without writing anything.

    With ``trusted_keys`` the signer must be one of them (:class:`UntrustedSignerError`); with
    ``None`` the signature is checked against the key the manifest names and ``trusted`` is None.
    """
    return _scan(Path(path), None if trusted_keys is None else list(trusted_keys), None, max_unpacked)


def extract_bundle(
    path: str | Path,
    dest: str | Path,
    trusted_keys: Iterable[keys.Ed25519PublicKey] | None = None,
    *,
    max_unpacked: int = DEFAULT_MAX_UNPACKED_BYTES,
) -> VerifiedBundle:
    """Verify a bundle and unpack it into ``dest``, a folder that must not exist yet.

    Members are written only into ``dest`` and only after the signature checks; on any failure
    ``dest`` is removed again, so a caller sees either a complete verified folder or nothing.
    ``manifest.json`` and ``manifest.sig`` are written too, last, so the folder verifies on its own.
    """
    dest = Path(dest)
    try:
        dest.mkdir(mode=0o755)
    except FileExistsError:
        raise BundleError(f"cannot unpack into {dest}: it already exists") from None
    except OSError as exc:
        raise BundleError(f"cannot unpack into {dest}: {exc.strerror or exc}") from None
    try:
        result = _scan(Path(path), None if trusted_keys is None else list(trusted_keys), dest, max_unpacked)
        with open(dest / SIGNATURE_NAME, "wb") as f:
            f.write(result.signature)
        with open(dest / MANIFEST_NAME, "wb") as f:
            f.write(result.manifest_bytes)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(dest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dataclasses.replace(result, directory=dest)


def verify_directory(
    directory: str | Path, trusted_keys: Iterable[keys.Ed25519PublicKey] | None = None
) -> VerifiedBundle:
    """Re-verify an unpacked bundle folder (as :func:`extract_bundle` leaves it) in place.

    Used by the agent at start-up and before activation: a folder damaged on disk (a power cut,
    a bad sector, a hand edit) is caught before it serves.
    """
    directory = Path(directory)
    try:
        raw = (directory / MANIFEST_NAME).read_bytes()
        signature = (directory / SIGNATURE_NAME).read_bytes()
    except OSError as exc:
        raise BundleLayoutError(f"{directory} is not an unpacked bundle: {exc.strerror or exc}") from None
    manifest, signer, trusted = _check_signature(
        raw, signature, None if trusted_keys is None else list(trusted_keys)
    )
    for name, entry in manifest.files.items():
        p = directory / name
        try:
            st = p.lstat()
        except OSError:
            raise BundleLayoutError(f"{directory} lacks {name}, which the manifest pins") from None
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeMemberError(f"{p} is not a regular file")
        digest, size = file_sha256(p)
        if size != entry.size or digest != entry.sha256:
            raise IntegrityError(f"{p} does not match the manifest (sha256 or size changed)")
    return VerifiedBundle(
        manifest=manifest,
        manifest_bytes=raw,
        signature=signature,
        signer=signer,
        trusted=trusted,
        directory=directory,
    )
