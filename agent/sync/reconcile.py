"""Reconcile the device to the retained desired state, one revision at a time.

The fleet publishes *what the device should run* (desired state, not commands). For each model
of a new revision the reconciler walks the table in :mod:`agent.sync.states`:

    plan (store) -> download (resume, size cap, sha256) -> store.install (verify, smoke, activate)
                 -> or store.activate / store.rollback when the version is already installed

Each move is written to the journal before the step runs and published as ``reported``; each
step's outcome is published as an ``events`` message with its reason. A revision at or below the
applied one changes nothing. A failed step leaves the store as it was (the old version serves),
reports ``failed`` with the reason, and the revision counts as handled: the fleet decides what
happens next by publishing a new revision. A revision whose application was interrupted resumes
after a restart; the loop guard gives up after ``max_attempts`` starts (a crash loop).

A model marked ``shadow`` walks the same table with the shadow's own steps: download, then
``store.install_shadow`` (verify, smoke test, place beside the active version, never activate), or
``store.set_shadow`` when the version is installed already; it ends ``ACTIVE`` when the shadow is in
place. Its record is keyed ``<name>~shadow`` so it sits beside the record of the active version. A
shadow the applied revision no longer lists is cleared; promoting it is a plain desired version.

Before anything is offered, :meth:`Reconciler.receive` checks what the device can check
(:func:`sdk.desired_auth.verify_desired`): the fleet's signature with the key pinned at
registration, that the state is for this device and not expired, and that its revision is not
below the highest this device accepted (kept in the journal, so across restarts too). A refused
state changes nothing; it is logged and sent as a ``failure`` event with the reason. Only a
verified state can authorize a downgrade (``allow_downgrade``); the store refuses any other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.sync.download import BundleDownloader, DownloadCancelledError, DownloadError
from agent.sync.journal import Journal, ModelRecord
from agent.sync.ports import StorePort
from agent.sync.states import FINAL, REPORTED_AS, Event, State, next_state
from sdk import messages
from sdk.desired_auth import verify_desired
from sdk.errors import EdgeError, ProtocolError
from sdk.keys import Ed25519PublicKey

log = logging.getLogger(__name__)


def _replaced(previous: str | None) -> str:
    """An activation event's reason: what it replaced."""
    return f"previous version {previous}" if previous else "first version of this model on the device"


def record_key(model: messages.DesiredModel) -> str:
    """The journal key of a desired model: its name, or ``<name>~shadow`` for a shadow version."""
    return f"{model.name}~shadow" if model.shadow else model.name


@dataclass(frozen=True)
class ReconcileSettings:
    #: starts of the same revision before giving up (a crash during an install, repeated).
    max_attempts: int = 3
    #: tries of one download (network errors, 5xx) within one start; each resumes the .part file.
    download_tries: int = 4
    #: delay before the first download retry; doubled after each.
    retry_delay_s: float = 2.0
    #: at most one ``failure`` event per this many seconds for refused desired states (a flood of
    #: forged messages must not become a flood of events); every refusal is still logged.
    refusal_event_interval_s: float = 1.0


class Reconciler:
    """Runs on its own thread (:meth:`run`); :meth:`offer` and :meth:`request_report` are thread-safe."""

    def __init__(
        self,
        store: StorePort,
        journal: Journal,
        downloader: BundleDownloader,
        downloads_dir: Path,
        *,
        send_event: Callable[[messages.Event], None],
        send_reported: Callable[[messages.ReportedState], None],
        agent_version: str,
        profile: str | None,
        settings: ReconcileSettings | None = None,
        device_id: str = "",
        fleet_key: Ed25519PublicKey | None = None,
    ) -> None:
        self._store = store
        self._journal = journal
        self._downloader = downloader
        self._downloads_dir = downloads_dir
        self._send_event = send_event
        self._send_reported = send_reported
        self._agent_version = agent_version
        self._profile = profile
        self._settings = settings or ReconcileSettings()
        self._device_id = device_id
        self._fleet_key = fleet_key
        self._refused_at = 0.0
        self._lock = threading.Lock()
        self._latest: messages.DesiredState | None = None
        self._report_requested = False
        self._wake = threading.Event()
        self._stop = threading.Event()

    # ------------------------------------------------------------------------ thread-safe API

    def receive(self, payload: bytes) -> messages.DesiredState | None:
        """A ``desired`` payload from the broker: verify it, then offer it; None when refused."""
        try:
            desired = verify_desired(payload, self._fleet_key, device_id=self._device_id)
            highest = self.highest_accepted()
            if desired.revision < highest:
                raise ProtocolError(
                    f"desired revision {desired.revision} is below revision {highest}, the highest this"
                    " device accepted (a replayed or forged state)"
                )
        except ProtocolError as exc:
            self._refuse(str(exc))
            return None
        self.offer(desired)
        return desired

    def highest_accepted(self) -> int:
        """The highest revision accepted so far: applied, in progress on disk, or waiting to start."""
        data = self._journal.data
        with self._lock:
            latest = self._latest.revision if self._latest is not None else -1
        pending = data.pending.revision if data.pending is not None else -1
        return max(data.applied_revision, pending, latest)

    def _refuse(self, reason: str) -> None:
        log.warning("refused a desired state for device %s: %s", self._device_id, reason)
        now = time.monotonic()
        if now - self._refused_at >= self._settings.refusal_event_interval_s:
            self._refused_at = now
            self._send_event(
                messages.Event(kind="failure", ok=False, reason=f"desired state refused: {reason}")
            )

    def offer(self, desired: messages.DesiredState) -> None:
        """A desired state arrived; the newest revision offered wins."""
        with self._lock:
            if self._latest is None or desired.revision >= self._latest.revision:
                self._latest = desired
        self._wake.set()

    def request_report(self) -> None:
        """Publish ``reported`` again soon (after a reconnect, or when the store changed)."""
        self._report_requested = True
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # ------------------------------------------------------------------------------- the loop

    def run(self) -> None:
        self._resume()
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if self._report_requested:
                self._report_requested = False
                self.report()
            with self._lock:
                desired, self._latest = self._latest, None
            if desired is not None:
                try:
                    self.apply(desired)
                except Exception:  # keep reconciling later revisions whatever this one did
                    log.exception("applying desired revision %d failed unexpectedly", desired.revision)

    def _resume(self) -> None:
        data = self._journal.data
        if data.pending is None:
            self.report()
            return
        interrupted = {
            r.state for r in data.models.values() if r.state not in FINAL and r.state is not State.IDLE
        }
        if interrupted <= {State.DOWNLOADING} and data.attempts > 0:
            # Cut off while downloading (a power cut, a kill): plain resumable I/O that cannot be what
            # crashes the agent, so it does not count against the loop guard, which is there for a
            # bundle whose install or activation brings the agent down.
            data.attempts -= 1
        for record in data.models.values():
            if record.state in interrupted:
                record.state = next_state(record.state, Event.INTERRUPTED)
        self._journal.save()
        log.info("resuming desired revision %d after a restart", data.pending.revision)
        self.offer(data.pending)

    def _superseded(self, revision: int) -> bool:
        with self._lock:
            return self._latest is not None and self._latest.revision > revision

    # -------------------------------------------------------------------------- one revision

    def apply(self, desired: messages.DesiredState) -> None:
        data = self._journal.data
        if data.pending is None or data.pending.revision != desired.revision:
            if desired.revision <= data.applied_revision:
                log.debug(
                    "desired revision %d is not newer than %d: nothing to do",
                    desired.revision,
                    data.applied_revision,
                )
                return
            previous = data.models
            data.pending = desired
            data.attempts = 0
            data.models = {
                record_key(m): ModelRecord(
                    name=m.name,
                    version=m.version,
                    previous_version=previous[m.name].previous_version if m.name in previous else None,
                    shadow=m.shadow,
                )
                for m in desired.models
            }
        data.attempts += 1
        self._journal.save()
        log.info("applying desired revision %d (start %d)", desired.revision, data.attempts)

        if data.attempts > self._settings.max_attempts:
            reason = f"gave up on revision {desired.revision} after {self._settings.max_attempts} interrupted attempts"
            for record in data.models.values():
                if record.state not in FINAL:
                    record.state = next_state(record.state, Event.GAVE_UP)
                    record.error = reason
            self._event("failure", desired.revision, ok=False, reason=reason)
            self._finish(desired.revision)
            return

        for model in desired.models:
            if (
                self._stop.is_set()
                or self._superseded(desired.revision)
                or not self._reconcile_model(model, data.models[record_key(model)], desired.revision)
            ):
                # The journal keeps the revision pending; a later start or revision takes over.
                # A clean stop is no crash: it does not count against the loop guard.
                if self._stop.is_set():
                    data.attempts -= 1
                    self._journal.save()
                return
        self._finish(desired.revision)

    def _finish(self, revision: int) -> None:
        data = self._journal.data
        errors = [f"{r.name}: {r.error}" for r in data.models.values() if r.state is State.FAILED and r.error]
        data.applied_revision = revision
        data.pending = None
        data.attempts = 0
        data.last_error = "; ".join(errors) or None
        self._journal.save()
        self._clear_stale_shadows({r.name for r in data.models.values() if r.shadow})
        self._cleanup_downloads()
        log.info(
            "desired revision %d applied%s", revision, f" with errors: {data.last_error}" if errors else ""
        )
        self.report()

    # ----------------------------------------------------------------------------- one model

    def _reconcile_model(self, model: messages.DesiredModel, record: ModelRecord, revision: int) -> bool:
        """Walk the table to a final state; False when stopped midway (the step resumes later)."""
        if record.state is State.IDLE:
            self._move(record, self._plan(model, record))
        download_tries = 0
        while record.state not in FINAL:
            if record.state is State.DOWNLOADING:
                download_tries += 1
                event = self._download(model, record, revision, download_tries)
            elif record.state is State.INSTALLING:
                event = self._install(model, record, revision)
            else:
                event = self._switch(model, record, revision)
            if event is None:
                return False
            self._move(record, event)
        return True

    def _move(self, record: ModelRecord, event: Event) -> None:
        record.state = next_state(record.state, event)
        self._journal.save()
        self.report()

    def _clear_stale_shadows(self, wanted: set[str]) -> None:
        """Stop shadows the applied revision does not list (the fleet ended the shadow phase)."""
        for name in set(self._store.shadow_versions()) - wanted:
            try:
                self._store.clear_shadow(name)
            except Exception:  # the shadow answers no caller: a failure to clear it is only logged
                log.exception("clearing the shadow of %s failed", name)

    def _plan(self, model: messages.DesiredModel, record: ModelRecord) -> Event:
        if model.shadow:
            placed = self._store.shadow_versions().get(model.name) == model.version
            if placed or self._store.active_versions().get(model.name) == model.version:
                return Event.CURRENT  # in place, or promoted already
            return Event.INSTALLED if self._store.has_version(model.name, model.version) else Event.MISSING
        if self._store.active_versions().get(model.name) == model.version:
            return Event.CURRENT
        if not self._store.has_version(model.name, model.version):
            return Event.MISSING
        return Event.PREVIOUS if model.version == record.previous_version else Event.INSTALLED

    def _bundle_path(self, model: messages.DesiredModel) -> Path:
        return self._downloads_dir / f"{model.name}-{model.version}-{model.sha256[:16]}.efb"

    def _download(
        self, model: messages.DesiredModel, record: ModelRecord, revision: int, attempt: int
    ) -> Event | None:
        try:
            result = self._downloader.fetch(
                model.bundle_url,
                self._bundle_path(model),
                size=model.size,
                sha256=model.sha256,
                cancel=self._stop,
            )
        except DownloadCancelledError:
            return None
        except DownloadError as exc:
            if attempt >= self._settings.download_tries:
                return self._failed(model, record, revision, "download", f"{exc} (after {attempt} tries)")
            delay = self._settings.retry_delay_s * 2 ** (attempt - 1)
            self._event("download", revision, model, ok=False, reason=f"{exc}; retrying in {delay:g} s")
            return None if self._stop.wait(delay) else Event.RETRY
        except EdgeError as exc:
            return self._failed(model, record, revision, "download", str(exc))
        resumed = f", resumed at byte {result.resumed_from}" if result.resumed_from else ""
        self._event("download", revision, model, reason=f"{result.size} bytes, sha256 verified{resumed}")
        return Event.DOWNLOADED

    def _install(self, model: messages.DesiredModel, record: ModelRecord, revision: int) -> Event:
        path = self._bundle_path(model)
        if model.shadow:
            return self._install_shadow(model, record, revision, path)
        try:
            installed = self._store.install(path, allow_downgrade=model.allow_downgrade)
        except Exception as exc:  # the store may fail in ways of its own; the old version stays either way
            if not isinstance(exc, EdgeError):
                log.exception("installing %s failed unexpectedly", path)
            return self._failed(model, record, revision, "install", str(exc))
        finally:
            path.unlink(missing_ok=True)
        record.previous_version = installed.previous_version
        record.error = None
        self._event("verify", revision, model, reason="signature, hashes and smoke test passed")
        self._event("activate", revision, model, reason=_replaced(installed.previous_version))
        return Event.SUCCEEDED

    def _install_shadow(
        self, model: messages.DesiredModel, record: ModelRecord, revision: int, path: Path | None
    ) -> Event:
        """Install (``path``) or re-verify an installed version as the shadow of ``model.name``."""
        try:
            if path is not None:
                installed = self._store.install_shadow(path)
            else:
                installed = self._store.set_shadow(model.name, model.version)
        except Exception as exc:
            if not isinstance(exc, EdgeError):
                log.exception("installing shadow %s %s failed unexpectedly", model.name, model.version)
            return self._failed(model, record, revision, "shadow install", str(exc))
        finally:
            if path is not None:
                path.unlink(missing_ok=True)
        record.error = None
        self._event("verify", revision, model, reason="signature, hashes and smoke test passed")
        self._event(
            "install", revision, model, reason=f"installed as shadow beside {installed.previous_version}"
        )
        return Event.SUCCEEDED

    def _switch(self, model: messages.DesiredModel, record: ModelRecord, revision: int) -> Event:
        """Activate an installed version, or roll back to the one that was active before."""
        if model.shadow:
            return self._install_shadow(model, record, revision, None)
        rolling_back = record.state is State.ROLLING_BACK
        try:
            allow = model.allow_downgrade  # verify_desired keeps it only on a verified state
            if rolling_back:
                result = self._store.rollback(model.name, allow_downgrade=allow)
                if result.version != model.version:
                    result = self._store.activate(model.name, model.version, allow_downgrade=allow)
            else:
                result = self._store.activate(model.name, model.version, allow_downgrade=allow)
        except Exception as exc:
            if not isinstance(exc, EdgeError):
                log.exception("switching %s to %s failed unexpectedly", model.name, model.version)
            return self._failed(model, record, revision, "rollback" if rolling_back else "activate", str(exc))
        record.previous_version = result.previous_version
        record.error = None
        kind: messages.EventKind = "rollback" if rolling_back else "activate"
        self._event(kind, revision, model, reason=_replaced(result.previous_version))
        return Event.SUCCEEDED

    def _failed(
        self, model: messages.DesiredModel, record: ModelRecord, revision: int, step: str, reason: str
    ) -> Event:
        active = self._store.active_versions().get(model.name)
        record.error = f"{step} failed: {reason}"
        log.warning("%s %s: %s; active version stays %s", model.name, model.version, record.error, active)
        self._event(
            "failure", revision, model, ok=False, reason=f"{record.error}; active version stays {active}"
        )
        return Event.FAILED

    # ------------------------------------------------------------------------------- messages

    def _event(
        self,
        kind: messages.EventKind,
        revision: int,
        model: messages.DesiredModel | None = None,
        *,
        ok: bool = True,
        reason: str | None = None,
    ) -> None:
        self._send_event(
            messages.Event(
                kind=kind,
                ok=ok,
                model=model.name if model else None,
                version=model.version if model else None,
                revision=revision,
                reason=reason,
            )
        )

    def report(self) -> None:
        """Publish what the device runs now and the state of each desired model (retained)."""
        data = self._journal.data
        active = self._store.active_versions()
        models = [
            messages.ReportedModel(
                name=r.name,
                version=r.version,
                state=REPORTED_AS[r.state],
                previous_version=r.previous_version,
                error=r.error,
                active_version=active.get(r.name),
                **({"shadow": True} if r.shadow else {}),
            )
            for r in data.models.values()
        ]
        models += [
            messages.ReportedModel(name=name, version=version, state="active", active_version=version)
            for name, version in sorted(active.items())
            if name not in data.models
        ]
        self._send_reported(
            messages.ReportedState(
                revision=data.applied_revision,
                models=models,
                agent_version=self._agent_version,
                profile=self._profile or self._store.active_profile(),
                last_error=data.last_error,
                applying_revision=data.pending.revision if data.pending else None,
            )
        )

    def _cleanup_downloads(self) -> None:
        """Drop partial downloads no pending revision needs any more."""
        if self._downloads_dir.is_dir():
            for leftover in self._downloads_dir.iterdir():
                leftover.unlink(missing_ok=True)
