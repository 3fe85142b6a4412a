"""The model as it moves through the pipeline: an ONNX file on disk, or a PyTorch module before export.

Every pass takes a :class:`ModelArtifact` and returns a new one; nothing is changed in place, so
each step's input stays available for comparison (the quantization search measures candidates
against the fp32 model it started from).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, numpy dtype name and shape (``None`` or a string for a dynamic dim)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    @property
    def fixed_shape(self) -> tuple[int, ...] | None:
        if all(isinstance(d, int) and d > 0 for d in self.shape):
            return tuple(int(d) for d in self.shape)  # type: ignore[arg-type]
        return None


@dataclass(frozen=True)
class ModelArtifact:
    """An ONNX file (``onnx_path``) or, before export, a PyTorch module (``torch_module``)."""

    onnx_path: Path | None = None
    torch_module: Any = None
    #: the session config entries this model must run with (set by weight-only int8).
    session_config: dict[str, str] = field(default_factory=dict)
    #: short precision label of what the passes made, e.g. ``fp32``, ``int8``, ``fp16``.
    precision: str = "fp32"

    @property
    def is_onnx(self) -> bool:
        return self.onnx_path is not None

    def with_onnx(self, path: Path, **changes: Any) -> ModelArtifact:
        return replace(self, onnx_path=path, torch_module=None, **changes)
