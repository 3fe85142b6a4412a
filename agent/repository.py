"""The models the server is running: one loaded version per model, swapped without failing requests.

When the store activates a version (install, activate, rollback, or another process changing the
pointer) :meth:`ModelRepository.reload` loads the new version beside the old one, switches new
requests to it in one assignment, and drains the old one in the background: requests already
holding it finish on it, then it is released.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agent.batching import Activity, Scheduler, SchedulingConfig
from agent.drift import DriftTracker
from agent.early import SessionParams, stamped_model_sha256
from agent.memory import release_freed_memory
from agent.metrics import AgentMetrics, VersionMetrics
from agent.monitoring.monitor import ModelMonitor, MonitorSettings, VersionMonitor
from agent.monitoring.outputs import reader_for
from agent.monitoring.shadow import ShadowRunner, ShadowSettings
from agent.preload import OpenedRuntime, open_runtime, write_hints
from agent.priority import lowest_priority
from agent.runtimes import ModelRuntime
from agent.session_cache import CachedModel, SessionCache, cache_key
from agent.stats import TelemetryBook, VersionStats
from agent.store import ModelStore
from sdk.errors import EdgeError, ModelNotFoundError
from sdk.manifest import Manifest, TensorSpec

if TYPE_CHECKING:
    from sdk.messages import ModelTelemetry

log = logging.getLogger(__name__)

_DRAIN_TIMEOUT_S = 60.0


@dataclass
class LoadedModel:
    name: str
    version: str
    manifest: Manifest
    runtime: ModelRuntime
    scheduler: Scheduler
    stats: VersionStats
    metrics: VersionMetrics
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    #: the model's monitor and this version's window; None with monitoring off or outputs it cannot read
    monitor: ModelMonitor | None = None
    window: VersionMonitor | None = None


def _batchable(manifest: Manifest) -> bool:
    specs = [*manifest.inputs, *manifest.outputs]
    return all(s.shape and s.shape[0] == -1 for s in specs)


class ModelRepository:
    def __init__(
        self,
        store: ModelStore,
        metrics: AgentMetrics,
        executor: Executor,
        scheduling: Callable[[str], SchedulingConfig] | None = None,
        threads: int | None = None,
        monitoring: MonitorSettings | None = None,
        shadowing: ShadowSettings | None = None,
        session_cache: SessionCache | None = None,
    ) -> None:
        self.store = store
        #: ONNX Runtime's optimised copies of the served models (agent.session_cache), or None
        self.session_cache = session_cache
        self._cache_lock = threading.Lock()
        self.monitoring = monitoring or MonitorSettings()
        self.shadowing = shadowing or ShadowSettings()
        self._monitors: dict[str, ModelMonitor] = {}
        #: model name -> the shadow version answering mirrored requests beside the active one
        self._shadows: dict[str, ShadowRunner] = {}
        self.metrics = metrics
        self.book = TelemetryBook()
        self._executor = executor
        #: model name -> its scheduling (batching can differ per model)
        self._scheduling = scheduling or (lambda _name: SchedulingConfig())
        self._threads = threads
        self._models: dict[str, LoadedModel] = {}
        #: requests in any model's scheduler: a model alone in the agent may run on the event loop
        self.activity = Activity()
        self._reload_lock = threading.Lock()
        store.add_listener(self.reload)

    def load_all(self, opened: Mapping[tuple[str, str], OpenedRuntime] | None = None) -> None:
        """Serve every active version; ``opened`` holds runtimes already loaded (:mod:`agent.preload`)."""
        spare = dict(opened or {})
        names = list(self.store.active_versions())
        for name in names:
            self._reload(name, spare)
        for left in spare.values():  # the store moved on while they loaded
            left.runtime.close()
        if self.store.shadow_versions():
            # Shadows answer no caller: they load after start-up, not before the agent is ready.
            threading.Thread(
                target=lambda: [self._sync_shadow(n) for n in names], name="shadow-load", daemon=True
            ).start()

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        model = self._models.get(name)
        if model is None:
            raise ModelNotFoundError(f"unknown model {name!r}")
        if version is not None and version != model.version:
            raise ModelNotFoundError(
                f"version {version!r} of model {name!r} is not being served (active: {model.version})"
            )
        return model

    def monitor(self, name: str) -> ModelMonitor:
        """The monitor of a model being served (feedback for a model not served is a 404)."""
        model = self.get(name)
        if model.monitor is None:
            raise ModelNotFoundError(
                f"model {name!r} is not monitored (monitoring is off, or its outputs are not a classifier's or a single value)"
            )
        return model.monitor

    def _ledger_path(self, name: str) -> Path:
        return self.store.data_dir / "monitoring" / f"{name}.ledger.jsonl"

    def save_monitoring(self) -> None:
        """Write every model's prediction ledger to disk (at shutdown)."""
        for name, monitor in list(self._monitors.items()):
            try:
                count = monitor.ledger.save(self._ledger_path(name))
                log.info("kept %d recent predictions of %s for labels after the restart", count, name)
            except OSError as exc:
                log.warning("cannot keep the prediction ledger of %s: %s", name, exc)

    def shadow(self, name: str) -> ShadowRunner | None:
        return self._shadows.get(name)

    def loaded(self) -> dict[str, LoadedModel]:
        return dict(self._models)

    def ready(self) -> bool:
        return set(self._models) >= set(self.store.active_versions())

    def telemetry_snapshot(self) -> list[ModelTelemetry]:
        return self.book.telemetry_snapshot()

    def reload(self, name: str) -> None:
        """Serve the store's active version of ``name``; a version that fails to load is not swapped in.
        Then follow the store's shadow of ``name`` (start, replace or stop its runner)."""
        self._reload(name, {})
        write_hints(self.store.data_dir, [m.runtime for m in list(self._models.values())])
        self._sync_shadow(name)
        # the new session's build left its parse buffers free (the old one's go after its drain)
        release_freed_memory(f"loading {name}")
        if self.session_cache is not None:
            # so that the next start (a reboot after an update) builds the new version fast too
            threading.Thread(target=self._fill_in_background, name="session-cache", daemon=True).start()

    # ------------------------------------------------------------------------- session cache

    def check_session_cache(self) -> None:
        """Re-hash the cache entries the serving sessions were built from (once, after start-up,
        beside the store's own re-hash); a damaged entry is deleted and its model loaded again
        from the verified original."""
        cache = self.session_cache
        if cache is None:
            return
        for name, model in list(self._models.items()):
            cached = getattr(model.runtime, "cached", None)
            if isinstance(cached, CachedModel) and not cache.verify(cached):
                log.error(
                    "the session cache entry of %s %s is damaged: deleted, loading the model again",
                    name,
                    model.version,
                )
                cache.discard(cached.key)
                self._reload(name, {}, rebuild=True)

    def fill_session_cache(self) -> None:
        """Cache every served ONNX Runtime session that has no entry yet; delete the entries of
        sessions no longer served. Slow (a second session build per model): call it from a thread
        at the lowest priority."""
        cache = self.session_cache
        if cache is None:
            return
        with self._cache_lock:
            keep: set[str] = set()
            built = False
            for model in list(self._models.values()):
                params = getattr(model.runtime, "params", None)
                sha256 = getattr(model.runtime, "model_sha256", None)
                if not isinstance(params, SessionParams) or not isinstance(sha256, str):
                    continue
                if not cache.cacheable(params):
                    continue
                key = cache_key(params, sha256)
                keep.add(key)
                if cache.find(params, sha256) is not None:
                    continue
                cache.discard(key)  # an entry written to since it was made is made again
                if cache.failed(key):
                    continue
                smoke = model.manifest.smoke
                probe = {n: t.to_numpy() for n, t in smoke.inputs.items()} if smoke is not None else None
                model_path = Path(params.model_path)
                cache.build(
                    params, sha256, probe, lambda p=model_path, h=sha256: stamped_model_sha256(p) == h
                )
                built = True
            cache.prune(keep)
        if built:
            release_freed_memory("building the session cache")

    def _fill_in_background(self) -> None:
        lowest_priority()
        try:
            self.fill_session_cache()
        except Exception:
            log.exception("filling the session cache failed")

    def _sync_shadow(self, name: str) -> None:
        with self._reload_lock:
            wanted = self.store.shadow_versions().get(name)
            model = self._models.get(name)
            runner = self._shadows.get(name)
            if model is None or model.window is None or wanted == model.version:
                wanted = None  # nothing to compare with, or promoted
            if (
                runner is not None
                and model is not None
                and (runner.version, runner.active_version) == (wanted, model.version)
            ):
                return
            if runner is not None:
                del self._shadows[name]
                self._stop_shadow(runner)
            if wanted is None or model is None or model.window is None:
                return
            # One intra-op thread each: ONNX Runtime then runs them on the shadow's low-priority worker.
            try:
                opened = open_runtime(self.store, name, wanted, threads=1)
            except EdgeError as exc:
                log.error("cannot load shadow %s %s: %s", name, wanted, exc)
                return
            reader = reader_for(opened.runtime.manifest)
            if reader != model.window.reader:
                opened.runtime.close()
                log.error(
                    "shadow %s %s: its outputs cannot be compared with %s's", name, wanted, model.version
                )
                return
            try:
                active = open_runtime(self.store, name, model.version, threads=1)
            except EdgeError as exc:
                opened.runtime.close()
                log.error(
                    "cannot load a second session of %s %s for its shadow: %s", name, model.version, exc
                )
                return
            counter = self.metrics.shadow
            runner = ShadowRunner(
                name,
                wanted,
                opened.runtime,
                reader,
                active.runtime,
                model.version,
                self.shadowing,
                count=lambda outcome: counter.labels(name, outcome).inc(),
            )
            self._shadows[name] = runner
            model.stats.shadow = runner.quality
            log.info("shadow %s %s runs beside %s", name, wanted, model.version)

    def _stop_shadow(self, runner: ShadowRunner) -> None:
        for stats in self.book.all():
            if stats.shadow == runner.quality:
                stats.shadow = None
        threading.Thread(target=runner.close, name=f"shadow-stop-{runner.name}", daemon=True).start()

    def _reload(self, name: str, opened: dict[tuple[str, str], OpenedRuntime], rebuild: bool = False) -> None:
        """``rebuild``: load the active version again even where it is the one serving."""
        with self._reload_lock:
            version = self.store.active_versions().get(name)
            current = self._models.get(name)
            if current is not None and current.version == version and not rebuild:
                return
            if version is None:
                if current is not None:
                    del self._models[name]
                    self._retire(current)
                return
            try:
                model = self._load(name, version, opened.pop((name, version), None))
            except EdgeError as exc:
                log.error(
                    "cannot load %s %s, %s keeps serving: %s",
                    name,
                    version,
                    current.version if current else "nothing",
                    exc,
                )
                return
            self._models[name] = model
            self.metrics.set_active(name, version, current.version if current else None)
            log.info("now serving %s %s", name, version)
        if current is not None:
            self._retire(current)

    def _load(self, name: str, version: str, opened: OpenedRuntime | None = None) -> LoadedModel:
        started = time.perf_counter()
        # A preloaded runtime was loaded before ``started``: its loading counts too.
        earlier_s = opened.seconds if opened is not None else 0.0
        scheduling = self._scheduling(name)
        if opened is None:
            opened = open_runtime(self.store, name, version, threads=self._threads, cache=self.session_cache)
        runtime, manifest = opened.runtime, opened.runtime.manifest
        drift = DriftTracker(manifest.reference)
        stats = self.book.for_version(name, version, drift)

        def run(inputs: dict[str, np.ndarray], names: list[str] | None) -> dict[str, np.ndarray]:
            outputs = runtime.run(inputs, names)
            if drift.enabled:
                drift.observe(inputs, outputs)
            return outputs

        scheduler = Scheduler(
            f"{name} {version}", run, self._executor, scheduling, _batchable(manifest), self.activity
        )
        reader = reader_for(manifest) if self.monitoring.enabled else None
        monitor = window = None
        if reader is not None:
            monitor = self._monitors.get(name)
            if monitor is None:
                monitor = self._monitors[name] = ModelMonitor(name, self.monitoring)
                # labels for predictions made before a restart still join
                monitor.ledger.load(self._ledger_path(name))
            window = stats.monitor = monitor.for_version(version, manifest, reader)
            window.serving = True  # again, where a rollback brings a retired version back
        model = LoadedModel(
            name=name,
            version=version,
            manifest=manifest,
            runtime=runtime,
            scheduler=scheduler,
            stats=stats,
            metrics=self.metrics.for_version(name, version),
            inputs={i.name: i for i in manifest.inputs},
            outputs={o.name: o for o in manifest.outputs},
            monitor=monitor,
            window=window,
        )
        self.metrics.load.labels(name, version).observe(time.perf_counter() - started + earlier_s)
        return model

    def _retire(self, model: LoadedModel) -> None:
        serving = self._models.get(model.name)
        # A version loaded again (a damaged session cache entry) shares its monitoring window with
        # the model that replaced it: that window still serves.
        if model.window is not None and (serving is None or serving.window is not model.window):
            model.window.serving = False

        def drain() -> None:
            model.scheduler.close()
            if not model.scheduler.wait_idle(_DRAIN_TIMEOUT_S):
                log.warning(
                    "%s %s still busy after %.0f s; releasing it anyway",
                    model.name,
                    model.version,
                    _DRAIN_TIMEOUT_S,
                )
            model.runtime.close()
            log.info("retired %s %s", model.name, model.version)
            release_freed_memory(f"retiring {model.name} {model.version}")

        threading.Thread(target=drain, name=f"drain-{model.name}", daemon=True).start()
