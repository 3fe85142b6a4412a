"""Load the active models' runtimes in a background thread while the rest of the agent starts.

Building an ONNX Runtime session (read the file, optimise the graph, pack the weights) is most of
the agent's start-up, and onnxruntime does it without holding the GIL; the main thread meanwhile
imports and builds the HTTP server, the metrics and the data plane. The module stays light (no
prometheus, no HTTP server) so that it can start before those are imported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.early import HINTS_NAME, EarlyLoads, SessionParams, hints_doc, read_hints
from agent.runtimes import ModelRuntime, load_runtime, runtime_class
from agent.session_cache import SessionCache
from agent.store import ModelStore
from sdk.errors import EdgeError
from sdk.fsio import write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenedRuntime:
    runtime: ModelRuntime
    #: seconds it took to load, for the load-time metric.
    seconds: float


def open_runtime(
    store: ModelStore,
    name: str,
    version: str,
    *,
    threads: int | None,
    early: EarlyLoads | None = None,
    cache: SessionCache | None = None,
) -> OpenedRuntime:
    """Load the runtime of an installed version (not served yet) and warm it up; ``early`` may
    hold its session already (:mod:`agent.early`), ``cache`` its optimised model
    (:mod:`agent.session_cache`)."""
    started = time.perf_counter()
    runtime = load_runtime(
        store.version_dir(name, version),
        store.manifest(name, version),
        threads=threads,
        early=early,
        cache=cache,
    )
    warm_up(runtime)
    return OpenedRuntime(runtime, time.perf_counter() - started)


def warm_up(runtime: ModelRuntime) -> None:
    """Run the manifest's smoke inputs once, so the first real request does not pay for lazy
    allocations. Here, not when the version starts serving: at start-up it runs in the preload
    thread, while the HTTP side imports, instead of after it."""
    manifest = runtime.manifest
    if manifest.smoke is None:
        return
    try:
        runtime.run(
            {n: t.to_numpy() for n, t in manifest.smoke.inputs.items()}, [o.name for o in manifest.outputs]
        )
    except EdgeError as exc:
        log.warning("warm-up of %s %s failed: %s", manifest.name, manifest.version, exc)


class Preloader:
    """Opens every active version's runtime in one background thread (in parallel they only fight
    over memory bandwidth and page faults: measured no faster on 2 cores).

    With ``early`` (sessions started before the store verified anything, :mod:`agent.early`), it
    must be started after ``store.verify_active``: only versions that check accepted by their stamp
    may use an early session. It records the parameters of the sessions it built for the next start.
    """

    def __init__(
        self,
        store: ModelStore,
        threads: int | None,
        early: EarlyLoads | None = None,
        cache: SessionCache | None = None,
    ) -> None:
        self._store = store
        self._threads = threads
        self._early = early
        self._cache = cache
        self._jobs: list[tuple[str, str]] = []
        self._opened: dict[tuple[str, str], OpenedRuntime] = {}
        self._thread = threading.Thread(target=self._run, name="model-preload", daemon=True)

    def start(self) -> Preloader:
        # The engines are imported here, in the caller's thread: an import holds the GIL anyway,
        # and done in the background it would only slow down the caller's own imports and delay
        # the part that runs without the GIL.
        for name, version in self._store.active_versions().items():
            try:
                runtime_class(self._store.manifest(name, version))
                self._jobs.append((name, version))
            except EdgeError as exc:
                # The repository tries again later and reports the failure there.
                log.debug("not preloading %s %s: %s", name, version, exc)
        if self._early is not None:
            self._early.allow(self._store.stamp_accepted)
        self._thread.start()
        return self

    def take(self) -> dict[tuple[str, str], OpenedRuntime]:
        """Wait for the loads; the runtimes that loaded, by (name, version)."""
        self._thread.join()
        opened, self._opened = self._opened, {}
        return opened

    def _run(self) -> None:
        try:
            for name, version in self._jobs:
                try:
                    self._opened[(name, version)] = open_runtime(
                        self._store,
                        name,
                        version,
                        threads=self._threads,
                        early=self._early,
                        cache=self._cache,
                    )
                except EdgeError as exc:
                    log.debug("preloading %s %s failed: %s", name, version, exc)
        finally:
            if self._early is not None:
                self._early.close()
        self._write_hints()

    def _write_hints(self) -> None:
        write_hints(self._store.data_dir, [o.runtime for o in self._opened.values()])


def write_hints(data_dir: Path, runtimes: Iterable[ModelRuntime]) -> None:
    """Record the sessions of ``runtimes`` (those serving now) for :func:`agent.early.start_early`
    at the next start: after start-up, and after every swap, so that the first start after an
    update (a reboot, say) loads the new version early too."""
    params = {p for r in runtimes if isinstance(p := getattr(r, "params", None), SessionParams)}
    if set(read_hints(data_dir)) == params:
        return
    try:
        write_atomic(data_dir / HINTS_NAME, hints_doc(params))
    except OSError as exc:
        # Only start-up speed depends on it.
        log.warning("cannot write %s: %s", data_dir / HINTS_NAME, exc)
