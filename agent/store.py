"""The model store on disk: versions side by side, one atomic pointer per model, rollback, pruning.

::

    <data-dir>/
      trusted-keys/*.pub              keys whose bundles may be installed (besides --trust-key)
      staging/<random>/               a bundle being unpacked; removed on failure and at start-up
      update.json                     the update journal (agent.update)
      preload.json                    the last start's session parameters, a start-up hint (agent.early)
      models/<name>/active.json       {"version": ..., "previous": ..., "newest": ...}: the pointer,
                                      replaced atomically
      models/<name>/shadow.json       {"version": ...}: a verified version installed beside the active
                                      one for shadow evaluation (never active by itself)
      models/<name>/versions/<v>/     an unpacked, verified bundle (manifest.json, manifest.sig, model)
                    verified.json     what the last full verification saw (agent.stamp)

A version becomes active only after its signature (trusted keys), hashes and smoke test pass, and
only by replacing ``active.json`` (write, fsync, rename, fsync): a crash at any moment leaves the
old pointer or the new one, and both name complete, verified folders.

Downgrade protection: the pointer also remembers the newest version ever activated (and its
manifest's ``created`` time), in the same atomic write. Installing or activating a version that is
older by :mod:`sdk.versions` is refused unless the caller passes ``allow_downgrade`` (a desired
state signed by the fleet that marks the model, or ``edge-agent install --allow-downgrade`` by the
local operator). Falling back from a version damaged on disk to the previous one is not refused:
serving the last verified version beats serving none.

Start-up need not re-hash every model file before serving (150 MB take about 0.1 s of a core, a
large share of the half second the agent may take to become ready): :meth:`ModelStore.verify_active`
with ``full=False`` accepts a version whose folder still matches the stamp its last full
verification left, and verifies anything else in full. The agent then runs the full check in the
background once it serves (see :mod:`agent.stamp` for what the quick check does and does not catch).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tarfile
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.runtimes import load_runtime
from agent.smoke import run_smoke_test
from agent.stamp import read_stamped, write_stamp
from agent.update import RESTING, Event, State, UpdateJournal
from sdk.bundle import VerifiedBundle, extract_bundle, verify_directory
from sdk.errors import EdgeError, ModelStoreError
from sdk.fsio import fsync_dir, write_atomic
from sdk.keys import Ed25519PublicKey
from sdk.manifest import Manifest, check_name
from sdk.versions import is_older

log = logging.getLogger(__name__)

Listener = Callable[[str], None]


@dataclass(frozen=True)
class InstalledModel:
    name: str
    version: str
    previous_version: str | None


@dataclass(frozen=True)
class Pointer:
    version: str
    previous: str | None = None
    #: the newest version ever activated, and its manifest's ``created`` (downgrade protection).
    newest: str | None = None
    newest_created: str | None = None


def peek_manifest(bundle_path: Path) -> Manifest | None:
    """The bundle's manifest, unverified (for naming what failed), or None if it cannot be read."""
    try:
        with tarfile.open(bundle_path, "r|gz") as tar:
            member = tar.next()
            if member is None or member.name != "manifest.json" or member.size > 8 * 1024 * 1024:
                return None
            f = tar.extractfile(member)
            return Manifest.from_json(f.read()) if f else None
    except (OSError, tarfile.TarError, EOFError, EdgeError, zlib.error):
        return None


class ModelStore:
    def __init__(self, data_dir: Path, trusted_keys: list[Ed25519PublicKey], *, recover: bool = True) -> None:
        """Open (or create) the store; ``recover=False`` only reads, for ``status`` beside a running agent."""
        self.data_dir = Path(data_dir)
        self.trusted_keys = list(trusted_keys)
        self.models_dir = self.data_dir / "models"
        self.staging_dir = self.data_dir / "staging"
        for d in (self.data_dir, self.models_dir, self.staging_dir, self.data_dir / "trusted-keys"):
            d.mkdir(parents=True, exist_ok=True)
        self._thread_lock = threading.RLock()
        self._listeners: list[Listener] = []
        self._seen: dict[str, str] = {}
        self._seen_shadows: dict[str, str] = {}
        #: version folders the last ``verify_active(full=False)`` accepted by their stamp alone.
        self.stamp_accepted: set[Path] = set()
        self.journal = UpdateJournal(self.data_dir / "update.json")
        if recover:
            self.recover()
        self._seen = self.active_versions()
        self._seen_shadows = self.shadow_versions()

    # ------------------------------------------------------------------------------------ queries

    def version_dir(self, name: str, version: str) -> Path:
        return self.models_dir / check_name(name) / "versions" / check_name(version, "version")

    def has_version(self, name: str, version: str) -> bool:
        return (self.version_dir(name, version) / "manifest.json").is_file()

    def installed_versions(self, name: str) -> list[str]:
        versions = self.models_dir / name / "versions"
        return sorted(p.name for p in versions.iterdir() if p.is_dir()) if versions.is_dir() else []

    def pointer(self, name: str) -> Pointer | None:
        try:
            data = json.loads((self.models_dir / name / "active.json").read_text(encoding="utf-8"))
            return Pointer(
                version=data["version"],
                previous=data.get("previous"),
                newest=data.get("newest"),
                newest_created=data.get("newest_created"),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            log.error("active pointer of %s is unreadable: %s", name, exc)
            return None

    def active_versions(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for d in sorted(self.models_dir.iterdir()):
            if d.is_dir() and (p := self.pointer(d.name)) is not None:
                out[d.name] = p.version
        return out

    def shadow_versions(self) -> dict[str, str]:
        """Model name -> the version installed beside the active one for shadow evaluation."""
        out: dict[str, str] = {}
        for d in sorted(self.models_dir.iterdir()):
            try:
                version = json.loads((d / "shadow.json").read_text(encoding="utf-8"))["version"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if isinstance(version, str) and self.has_version(d.name, version):
                out[d.name] = version
        return out

    def active_profile(self) -> str | None:
        """The hardware profile the active bundles were built for, if they name exactly one."""
        profiles = set()
        for name, version in self.active_versions().items():
            try:
                profiles.add(self.manifest(name, version).profile)
            except (OSError, EdgeError):
                continue
        return profiles.pop() if len(profiles) == 1 else None

    def manifest(self, name: str, version: str) -> Manifest:
        raw = (self.version_dir(name, version) / "manifest.json").read_bytes()
        return Manifest.from_json(raw)

    def status(self) -> dict[str, object]:
        """Everything ``edge-agent status`` shows: per model its versions and last failure."""
        rec = self.journal.reload()
        models = {}
        shadows = self.shadow_versions()
        for d in sorted(self.models_dir.iterdir()):
            if not d.is_dir():
                continue
            p = self.pointer(d.name)
            models[d.name] = {
                "active": p.version if p else None,
                "previous": p.previous if p else None,
                "installed": self.installed_versions(d.name),
                "shadow": shadows.get(d.name),
                "last_error": rec.errors.get(d.name),
            }
        for name, error in rec.errors.items():
            models.setdefault(name, {"active": None, "previous": None, "installed": [], "last_error": error})
        return {
            "data_dir": str(self.data_dir),
            "models": models,
            "update": {
                "state": rec.state.value,
                "model": rec.model,
                "version": rec.version,
                "error": rec.error,
                "updated": rec.updated,
            },
        }

    # ------------------------------------------------------------------------------------ changes

    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def install(
        self, bundle_path: Path, *, force: bool = False, allow_downgrade: bool = False
    ) -> InstalledModel:
        """Verify, unpack, smoke test and activate a bundle; on failure the active version stays.

        ``force`` skips the loop guard (an operator installing by hand); ``allow_downgrade``
        permits a version older than the newest this device has activated (an authorized rollback).
        """
        with self._locked():
            result = self._install(Path(bundle_path), force=force, allow_downgrade=allow_downgrade)
        self._notify(result.name)
        return result

    def install_shadow(self, bundle_path: Path) -> InstalledModel:
        """Verify, unpack and smoke test a bundle and keep it beside the active version as its shadow;
        the active pointer stays as it is. Steps: unpack (signature, hashes) -> check (hashes again,
        smoke test) -> place the folder (rename) -> write shadow.json (atomic). A crash between steps
        leaves no shadow or a complete one; the update journal is not involved (nothing activates)."""
        with self._locked():
            self._require_resting()
            staging = self.staging_dir / uuid.uuid4().hex
            try:
                manifest = self._unpack(Path(bundle_path), staging)
                name, version = manifest.name, manifest.version
                self._check_shadowable(name, version)
                self._place(staging, name, version, self._check(staging))
                self._write_shadow(name, version)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            log.info("installed %s %s as shadow of %s", name, version, self._active(name))
            result = InstalledModel(name, version, self._active(name))
        self._notify(name)
        return result

    def set_shadow(self, name: str, version: str) -> InstalledModel:
        """Make an installed version the shadow (verified and smoke tested again first)."""
        with self._locked():
            self._require_resting()
            if not self.has_version(name, version):
                raise ModelStoreError(f"{name} {version} is not installed")
            self._check_shadowable(name, version)
            directory = self.version_dir(name, version)
            write_stamp(directory, self._check(directory))
            self._write_shadow(name, version)
            result = InstalledModel(name, version, self._active(name))
        self._notify(name)
        return result

    def clear_shadow(self, name: str) -> None:
        """Stop shadowing ``name``; the shadow's folder goes unless it is the active or previous one."""
        with self._locked():
            path = self.models_dir / check_name(name) / "shadow.json"
            if not path.exists():
                return
            path.unlink()
            fsync_dir(path.parent)
            self._prune(name)
        self._notify(name)

    def _check_shadowable(self, name: str, version: str) -> None:
        active = self._active(name)
        if active is None:
            raise ModelStoreError(f"{name} has no active version for {version} to shadow")
        if active == version:
            raise ModelStoreError(f"{name} {version} is the active version; it cannot be its own shadow")

    def _write_shadow(self, name: str, version: str) -> None:
        write_atomic(self.models_dir / name / "shadow.json", json.dumps({"version": version}).encode("utf-8"))

    def activate(self, name: str, version: str, *, allow_downgrade: bool = False) -> InstalledModel:
        with self._locked():
            self._require_resting()
            self.journal.post(
                Event.ACTIVATE, model=name, version=version, previous=self._active(name), error=None
            )
            try:
                if not self.has_version(name, version):
                    raise ModelStoreError(f"{name} {version} is not installed")
                self._check_not_older(self.manifest(name, version), allow_downgrade)
                self.journal.check_loop_guard(name, version)
                directory = self.version_dir(name, version)
                write_stamp(directory, self._check(directory))
                self.journal.post(Event.SMOKE_PASSED)
                result = self._switch(name, version)
            except EdgeError as exc:
                self._fail(exc)
                raise
            self.journal.post(Event.ACTIVATED)
        self._notify(name)
        return result

    def rollback(self, name: str, *, allow_downgrade: bool = False) -> InstalledModel:
        """Activate the previous version again; refused when it is older than the newest activated
        one unless ``allow_downgrade`` (the sync service passes what the signed desired state says)."""
        with self._locked():
            self._require_resting()
            p = self.pointer(name)
            if p is None:
                raise ModelStoreError(f"{name} is not installed")
            if p.previous is None or not self.has_version(name, p.previous):
                raise ModelStoreError(f"{name} has no previous version to roll back to")
            self.journal.post(Event.ROLLBACK, model=name, version=p.previous, previous=p.version, error=None)
            try:
                self._check_not_older(self.manifest(name, p.previous), allow_downgrade)
                self._verify(self.version_dir(name, p.previous), self._trusted())
                # The version rolled back from stays installed as "previous" so an operator can return.
                self._write_pointer(name, Pointer(version=p.previous, previous=p.version))
            except EdgeError as exc:
                self._fail(exc)
                raise
            self.journal.note_rollback_from(name, p.version)
            self.journal.post(Event.ROLLED_BACK)
            log.info("rolled %s back from %s to %s", name, p.version, p.previous)
            result = InstalledModel(name, p.previous, p.version)
        self._notify(name)
        return result

    def poll_changes(self) -> list[str]:
        """Tell listeners about pointers another process changed (``edge-agent install`` next to serve)."""
        current = self.active_versions()
        changed = [n for n in {*current, *self._seen} if self._seen.get(n) != current.get(n)]
        shadows = self.shadow_versions()
        changed += [
            n
            for n in {*shadows, *self._seen_shadows}
            if self._seen_shadows.get(n) != shadows.get(n) and n not in changed
        ]
        for name in sorted(changed):
            self._notify(name)
        return changed

    def recover(self) -> None:
        """Finish what a crash interrupted: drop half-unpacked bundles, settle the journal, check pointers."""
        with self._locked():
            for leftover in self.staging_dir.iterdir():
                log.warning("removing %s left by an interrupted install", leftover)
                shutil.rmtree(leftover, ignore_errors=True)
            rec = self.journal.reload()
            if rec.state not in RESTING:
                pointer = self.pointer(rec.model) if rec.model else None
                done = pointer is not None and pointer.version == rec.version
                if rec.state is State.ACTIVATING and done:
                    self.journal.post(Event.ACTIVATED)
                elif rec.state is State.ROLLING_BACK and done:
                    self.journal.post(Event.ROLLED_BACK)
                else:
                    log.warning(
                        "%s of %s %s was interrupted by a restart; %s keeps serving",
                        rec.state.value,
                        rec.model,
                        rec.version,
                        rec.previous or "nothing",
                    )
                    self.journal.post(Event.FAILED, error=f"{rec.state.value} was interrupted by a restart")
            for tmp in self.models_dir.glob("*/.active.json.*.tmp"):
                tmp.unlink(missing_ok=True)

    def verify_active(self, *, full: bool = True) -> dict[str, str]:
        """Re-verify every active version (start-up); fall back to the previous one if it was damaged,
        or stop serving the model (its pointer is kept as ``damaged.json``) if none is left.

        Without trusted keys (a server started without --trust-key) the signature is still checked
        against the key the manifest names, and every hash: what was trusted at install stays intact.
        ``full=False`` accepts a folder unchanged since its last full verification (:mod:`agent.stamp`)
        without reading the model files; anything else is verified in full.
        """
        keys = self.trusted_keys or None
        with self._locked():
            self.stamp_accepted = set()
            for name, version in list(self.active_versions().items()):
                directory = self.version_dir(name, version)
                if not full and read_stamped(directory, self.trusted_keys) is not None:
                    self.stamp_accepted.add(directory)
                    continue
                try:
                    self._verify(directory, keys)
                    continue
                except EdgeError as exc:
                    log.error("%s %s failed verification at start-up: %s", name, version, exc)
                    error = exc
                p = self.pointer(name)
                if p and p.previous and self.has_version(name, p.previous):
                    try:
                        self._verify(self.version_dir(name, p.previous), keys)
                    except EdgeError as exc2:
                        log.error("previous version %s of %s is damaged too: %s", p.previous, name, exc2)
                    else:
                        self._write_pointer(name, Pointer(version=p.previous, previous=None))
                        log.error("%s: fell back to %s", name, p.previous)
                        self.journal.note_error(name, f"{version} failed verification: {error}")
                        continue
                # Nothing verified to fall back to: serving a damaged model is worse than serving none.
                os.replace(self.models_dir / name / "active.json", self.models_dir / name / "damaged.json")
                fsync_dir(self.models_dir / name)
                log.error("%s is not served: no verified version is left", name)
                self.journal.note_error(
                    name, f"{version} failed verification and nothing verified is left: {error}"
                )
        return self.active_versions()

    # ---------------------------------------------------------------------------------- the steps

    def _install(self, bundle_path: Path, *, force: bool, allow_downgrade: bool) -> InstalledModel:
        self._require_resting()
        # Named from the not-yet-verified manifest only so a failure is reported against its model.
        claimed = peek_manifest(bundle_path)
        name = claimed.name if claimed else None
        self.journal.post(
            Event.INSTALL,
            model=name,
            version=claimed.version if claimed else None,
            previous=self._active(name) if name else None,
            error=None,
        )
        staging = self.staging_dir / uuid.uuid4().hex
        try:
            manifest = self._unpack(bundle_path, staging)
            name, version = manifest.name, manifest.version
            self.journal.post(Event.UNPACKED, model=name, version=version, previous=self._active(name))
            self._check_not_older(manifest, allow_downgrade)
            if force:
                self.journal.clear_failures(name, version)
            self.journal.check_loop_guard(name, version)
            verified = self._check(staging)
            self.journal.post(Event.SMOKE_PASSED)
            self._place(staging, name, version, verified)
            result = self._switch(name, version)
        except EdgeError as exc:
            self._fail(exc)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.journal.post(Event.ACTIVATED)
        log.info("installed %s %s (previous: %s)", result.name, result.version, result.previous_version)
        return result

    def _unpack(self, bundle_path: Path, staging: Path) -> Manifest:
        verified = extract_bundle(bundle_path, staging, self._trusted())
        return verified.manifest

    def _check(self, directory: Path) -> VerifiedBundle:
        """Hashes and signature again (the folder may have rotted on disk), then the smoke test."""
        verified = verify_directory(directory, self._trusted())
        runtime = load_runtime(directory, verified.manifest, threads=1)
        try:
            run_smoke_test(runtime)
        finally:
            runtime.close()
        return verified

    @staticmethod
    def _verify(directory: Path, keys: list[Ed25519PublicKey] | None) -> VerifiedBundle:
        """Full verification; a folder that passes is stamped so the next start-up can trust it."""
        verified = verify_directory(directory, keys)
        write_stamp(directory, verified)
        return verified

    def _place(self, staging: Path, name: str, version: str, verified: VerifiedBundle) -> None:
        target = self.version_dir(name, version)
        if target.exists():
            # Versions are immutable: the same version again must be the same bundle.
            old = (target / "manifest.json").read_bytes() if (target / "manifest.json").exists() else b""
            if old != (staging / "manifest.json").read_bytes():
                raise ModelStoreError(
                    f"{name} {version} is already installed with different content; give the new bundle"
                    " a new version"
                )
            # The files kept are not the ones just verified: check them before they serve again.
            try:
                self._verify(target, self._trusted())
                return
            except EdgeError as exc:
                log.warning(
                    "%s %s on disk is damaged (%s); replacing it with the bundle's files", name, version, exc
                )
            # Renamed away before it is deleted: a crash leaves no half-deleted folder, at worst a
            # pointer to a missing one, which start-up treats as damaged (it falls back).
            damaged = self.staging_dir / f"damaged-{uuid.uuid4().hex}"
            os.rename(target, damaged)
            shutil.rmtree(damaged, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Renaming the folder leaves its files' inodes and times alone, so the stamp stays true.
        write_stamp(staging, verified)
        os.rename(staging, target)
        fsync_dir(target.parent)

    def _switch(self, name: str, version: str) -> InstalledModel:
        current = self._active(name)
        previous = current if current != version else (self.pointer(name) or Pointer(version)).previous
        self._write_pointer(name, Pointer(version=version, previous=previous))
        if self.shadow_versions().get(name) == version:  # promoted: it serves now, shadows nothing
            (self.models_dir / name / "shadow.json").unlink(missing_ok=True)
        self._prune(name)
        return InstalledModel(name, version, previous)

    def _newest(self, name: str) -> tuple[str, str | None] | None:
        """The newest version this device activated for ``name`` and its ``created`` time."""
        p = self.pointer(name)
        if p is None:
            return None
        if p.newest is not None:
            return p.newest, p.newest_created
        # A store from before the pointer remembered it: the active version is the floor.
        try:
            return p.version, self.manifest(name, p.version).created
        except (OSError, EdgeError):
            return p.version, None

    def _check_not_older(self, manifest: Manifest, allow_downgrade: bool) -> None:
        newest = self._newest(manifest.name)
        if newest is None or allow_downgrade:
            return
        if is_older(manifest.version, manifest.created, *newest):
            raise ModelStoreError(
                f"refusing to activate {manifest.name} {manifest.version}: it is older than {newest[0]},"
                " the newest version this device has activated (a rollback must be authorized: a signed"
                " desired state marked allow_downgrade, or `edge-agent install --allow-downgrade`)"
            )

    def _write_pointer(self, name: str, pointer: Pointer) -> None:
        """Replace the pointer; the newest version seen is carried over or raised, never lowered."""
        newest = self._newest(name)
        try:
            created: str | None = self.manifest(name, pointer.version).created
        except (OSError, EdgeError):
            created = None
        if newest is None or is_older(newest[0], newest[1], pointer.version, created):
            newest = (pointer.version, created)
        data = {
            "version": pointer.version,
            "previous": pointer.previous,
            "newest": newest[0],
            "newest_created": newest[1],
        }
        write_atomic(self.models_dir / name / "active.json", json.dumps(data).encode("utf-8"))

    def _prune(self, name: str) -> None:
        p = self.pointer(name)
        keep: set[str | None] = {p.version, p.previous} if p else set()
        keep.add(self.shadow_versions().get(name))
        for version in self.installed_versions(name):
            if version not in keep:
                log.info("pruning %s %s", name, version)
                shutil.rmtree(self.version_dir(name, version), ignore_errors=True)

    def _fail(self, exc: EdgeError) -> None:
        rec = self.journal.record
        log.error(
            "update of %s %s failed, %s keeps serving: %s",
            rec.model or "bundle",
            rec.version or "",
            rec.previous or "nothing",
            exc,
        )
        self.journal.post(Event.FAILED, error=str(exc))

    # ---------------------------------------------------------------------------------- plumbing

    def _active(self, name: str) -> str | None:
        p = self.pointer(name)
        return p.version if p else None

    def _trusted(self) -> list[Ed25519PublicKey]:
        if not self.trusted_keys:
            raise ModelStoreError(
                f"no trusted keys: pass --trust-key or put public keys into {self.data_dir / 'trusted-keys'}"
            )
        return self.trusted_keys

    def _require_resting(self) -> None:
        if self.journal.record.state not in RESTING:
            raise ModelStoreError(f"another update is in progress ({self.journal.record.state.value})")

    def _notify(self, name: str) -> None:
        self._seen = self.active_versions()
        self._seen_shadows = self.shadow_versions()
        for fn in list(self._listeners):
            try:
                fn(name)
            except Exception:
                log.exception("model store listener failed for %s", name)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One update at a time, across threads and across processes (install next to serve)."""
        with self._thread_lock:
            fd = os.open(self.data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self.journal.reload()
                yield
            finally:
                os.close(fd)
