"""The interface every runtime implements, and the one place that picks a runtime for a bundle.

Runtime modules import their engine lazily, so a device without LiteRT still serves ONNX models and
``edge-agent --help`` never pays for onnxruntime.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sdk.errors import InferenceError, ModelStoreError
from sdk.manifest import Manifest, TensorSpec

if TYPE_CHECKING:
    from agent.early import EarlyLoads
    from agent.session_cache import SessionCache

log = logging.getLogger(__name__)


class RuntimeLoadError(ModelStoreError):
    """A model file cannot be loaded by its runtime."""


class RuntimeClosedError(InferenceError):
    """The runtime was closed: its version was retired after a request had resolved it."""


class ModelRuntime(ABC):
    """A loaded model: named numpy tensors in, named numpy tensors out. Safe to call from many threads."""

    #: what the runtime actually runs on, e.g. ``CPUExecutionProvider``; shown in model metadata.
    backend: str = ""

    def __init__(self, model_path: Path, manifest: Manifest, *, threads: int | None = None) -> None:
        """Load ``model_path``; ``threads`` None lets the runtime choose."""
        self.manifest = manifest

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.manifest.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.manifest.outputs

    @abstractmethod
    def run(
        self, inputs: Mapping[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the model; ``output_names`` None means every output."""

    def close(self) -> None:  # noqa: B027 - optional hook, most engines free on garbage collection
        """Release engine resources early (optional)."""


def runtime_class(manifest: Manifest) -> type[ModelRuntime]:
    """The runtime class for the manifest, its engine imported (see :mod:`agent.preload` for why apart)."""
    if manifest.runtime == "onnxruntime":
        from agent.runtimes.onnx import OnnxRuntime

        return OnnxRuntime
    if manifest.runtime == "litert":
        from agent.runtimes.litert import LiteRtRuntime

        return LiteRtRuntime
    raise RuntimeLoadError(f"runtime {manifest.runtime!r} is not supported by this agent")


def load_runtime(
    directory: Path,
    manifest: Manifest,
    *,
    threads: int | None = None,
    early: EarlyLoads | None = None,
    cache: SessionCache | None = None,
) -> ModelRuntime:
    """Load the model file of an unpacked, verified bundle with the runtime its manifest names;
    ``early``: ONNX Runtime sessions started before verification (:mod:`agent.early`); ``cache``:
    ONNX Runtime's optimised copies of the models (:mod:`agent.session_cache`)."""
    cls = runtime_class(manifest)
    if manifest.runtime == "onnxruntime":
        from agent.runtimes.onnx import OnnxRuntime

        return OnnxRuntime(
            directory / manifest.model_file, manifest, threads=threads, early=early, cache=cache
        )
    return cls(directory / manifest.model_file, manifest, threads=threads)
