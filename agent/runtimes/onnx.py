"""ONNX Runtime: the hardware profile's execution providers in order, the manifest's session options.

A provider the profile asks for but this device cannot use (not built into this onnxruntime, or
failing to initialise, e.g. TensorRT without a GPU) is skipped with a logged reason, so a ``jetson``
bundle still serves on a CPU-only machine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from agent.early import EarlyLoads, SessionBuildError, SessionParams, create_session
from agent.runtimes.base import ModelRuntime, RuntimeClosedError, RuntimeLoadError
from agent.session_cache import CachedModel, SessionCache
from sdk.errors import EdgeError
from sdk.manifest import Manifest
from sdk.profiles import load_profile
from sdk.runtime_options import session_settings, thread_cap

log = logging.getLogger(__name__)

_CPU = "CPUExecutionProvider"


def _profile_settings(manifest: Manifest) -> tuple[list[str], int]:
    """Execution providers and thread count of the manifest's profile (CPU defaults if unknown)."""
    try:
        profile = load_profile(manifest.profile)
    except EdgeError as exc:
        log.warning(
            "%s: profile %r not found on this device (%s); using the CPU",
            manifest.name,
            manifest.profile,
            exc,
        )
        return [_CPU], os.cpu_count() or 1
    return list(profile.execution_providers), profile.threads


def choose_providers(wanted: list[str], available: list[str]) -> list[str]:
    """The wanted providers this onnxruntime has, in order, always ending with the CPU."""
    chosen = []
    for provider in wanted:
        if provider in available:
            chosen.append(provider)
        else:
            log.warning(
                "execution provider %s is not available in this onnxruntime build; falling back", provider
            )
    if _CPU not in chosen:
        chosen.append(_CPU)
    return chosen


def session_options(manifest: Manifest, threads: int) -> ort.SessionOptions:
    """The manifest's runtime options (with the quiet-thread defaults) as ONNX Runtime options."""
    settings = session_settings(manifest.runtime_options, threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, settings.optimization_level)
    for key, value in settings.config_entries.items():
        options.add_session_config_entry(key, value)
    return options


def session_params(model_path: Path, manifest: Manifest, threads: int, providers: list[str]) -> SessionParams:
    """The session :func:`agent.early.create_session` builds for this manifest (``session_options``'s
    settings, as data that :mod:`agent.early` can store and compare)."""
    settings = session_settings(manifest.runtime_options, threads)
    return SessionParams(
        model_path=str(model_path),
        providers=tuple(providers),
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        optimization_level=settings.optimization_level,
        config_entries=tuple(settings.config_entries.items()),
    )


class OnnxRuntime(ModelRuntime):
    #: what the session was built from (the preloader records it for the next start's early load).
    params: SessionParams

    def __init__(
        self,
        model_path: Path,
        manifest: Manifest,
        *,
        threads: int | None = None,
        early: EarlyLoads | None = None,
        cache: SessionCache | None = None,
    ) -> None:
        """``early``: sessions built before start-up verified anything; one is used only when built
        with exactly the parameters this verified manifest asks for (see :mod:`agent.early`).
        ``cache``: build from its optimised copy of the model when it has one
        (:mod:`agent.session_cache`)."""
        super().__init__(model_path, manifest)
        wanted, profile_threads = _profile_settings(manifest)
        # Measured on 2 cores: one intra-op thread per run (runs x threads = cores) lost at
        # concurrency 1 (mid model p50 1.23 vs 0.96 ms) and won nothing at 16; keep the profile's.
        threads = threads or thread_cap(profile_threads)
        providers = choose_providers(wanted, ort.get_available_providers())
        # The parameters asked for, not the providers that started: the next start's early load
        # (agent.early) is keyed by them and falls back through the providers the same way.
        self.params = session_params(model_path, manifest, threads, providers)
        #: the model's sha256, as the verified manifest pins it (the session cache's key has it).
        self.model_sha256 = (
            manifest.files[manifest.model_file].sha256 if manifest.model_file in manifest.files else None
        )
        #: the session cache entry the session was built from, if any (re-hashed after start-up).
        self.cached: CachedModel | None = None
        taken = early.take(self.params) if early is not None else None
        if taken is not None:
            session, self.cached = taken
            log.info("%s %s: using the session loaded early", manifest.name, manifest.version)
        else:
            session = self._build(cache)
        self.session: ort.InferenceSession | None = session
        for p in providers:
            if p not in session.get_providers():
                log.warning(
                    "onnxruntime did not enable execution provider %s on this device; running on %s",
                    p,
                    session.get_providers()[0],
                )
        log.info(
            "%s %s loaded on %s with %d threads%s",
            manifest.name,
            manifest.version,
            session.get_providers()[0],
            threads,
            " from the session cache" if self.cached is not None else "",
        )
        self.backend = session.get_providers()[0]
        self._string_inputs = {i.name for i in session.get_inputs() if i.type == "tensor(string)"}
        self._all_outputs = [o.name for o in session.get_outputs()]

    def _build(self, cache: SessionCache | None) -> ort.InferenceSession:
        """The session, from ``cache``'s entry of this model where it has a sound one."""
        cached = cache.find(self.params, self.model_sha256) if cache and self.model_sha256 else None
        if cache is not None and cached is not None:
            try:
                session = create_session(self.params, source=cached.path)
            except SessionBuildError as exc:
                log.warning("session cache entry %s does not load (%s); deleting it", cached.key, exc)
                cache.discard(cached.key)
            else:
                self.cached = cached
                return session
        try:
            return create_session(self.params)
        except SessionBuildError as exc:
            raise RuntimeLoadError(
                f"onnxruntime cannot load {Path(self.params.model_path).name}: {exc}"
            ) from None

    def run(
        self, inputs: Mapping[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        session = self.session
        if session is None:
            raise RuntimeClosedError(f"{self.manifest.name} {self.manifest.version} was retired")
        feed = {name: self._to_ort(name, value) for name, value in inputs.items()}
        names = output_names or self._all_outputs
        try:
            results = session.run(names, feed)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            from sdk.errors import InferenceError

            raise InferenceError(f"onnxruntime failed: {str(exc).splitlines()[0]}") from None
        return dict(zip(names, results, strict=True))

    def close(self) -> None:
        """Drop the session (its weights go with it, once a run still in progress returns)."""
        self.session = None

    def _to_ort(self, name: str, value: np.ndarray) -> np.ndarray:
        if name in self._string_inputs:
            # onnxruntime's string tensors take str objects; the wire gives bytes.
            return np.vectorize(
                lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b), otypes=[object]
            )(value)
        return value
