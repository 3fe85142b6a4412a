"""The conversion's memory limit, and estimates of what a step will need before it runs.

``edge-convert --max-memory MB`` sets the limit for the whole process's resident memory; by default
it is the smaller of :data:`DEFAULT_LIMIT_MB` and half of what the host has available at start
(``MemAvailable``), so a conversion neither fills a small device nor a shared build machine. The
default is the conversion's own allowance: called as a library from a process that already holds
more than a fresh ``edge-convert`` (:data:`FRESH_PROCESS_MB`: a notebook, a test worker with torch
loaded), the limit rises by that excess, so the caller's memory does not starve the conversion's
data down to one sample; ``--max-memory`` is always the whole process's cap. Steps
that hold data per sample (sensitivity, fidelity, calibration) size their chunks from
:meth:`MemoryLimit.room`, the limit minus what the process already holds, and a step whose
smallest chunk would not fit is skipped and recorded rather than started.
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from sdk import host
from sdk.host import available_bytes

log = logging.getLogger(__name__)

R = TypeVar("R", bound="Raced")

MB = 2**20
#: the default limit: leaves headroom under 2 GiB for what estimates miss (ORT's arenas, allocator slack).
DEFAULT_LIMIT_MB = 1536
#: the smallest limit that still runs a conversion (the interpreter, numpy and ONNX Runtime alone take ~150 MB).
MIN_LIMIT_MB = 256
#: about what a fresh ``edge-convert`` holds before converting (interpreter, numpy, ONNX Runtime).
FRESH_PROCESS_MB = 256


def resident_bytes() -> int:
    """This process's resident memory now (peak so far where /proc is missing)."""
    now = host.resident_bytes()
    return peak_bytes() if now is None else now


def peak_bytes() -> int:
    """This process's peak resident memory so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if os.uname().sysname == "Darwin" else peak * 1024


def default_limit_mb() -> int:
    avail = available_bytes()
    half = DEFAULT_LIMIT_MB if avail is None else avail // 2 // MB
    return max(MIN_LIMIT_MB, min(DEFAULT_LIMIT_MB, half))


@dataclass
class MemoryLimit:
    """A cap on the process's resident memory, in bytes."""

    limit: int
    #: what one session of the source took when it was loaded and run once (measured, 0 until then).
    session_bytes: int = 0
    #: bytes of the source model's file, to scale ``session_bytes`` to other candidates.
    source_bytes: int = 0

    @classmethod
    def of(cls, max_memory_mb: float | None) -> MemoryLimit:
        if max_memory_mb:
            return cls(int(max_memory_mb * MB))
        # what the calling process held before the conversion is not the conversion's to spend
        held = max(0, resident_bytes() - FRESH_PROCESS_MB * MB)
        return cls(default_limit_mb() * MB + held)

    def room(self) -> int:
        """Bytes a step may still allocate: the limit minus what the process holds now (never < 0)."""
        return max(0, self.limit - resident_bytes())

    def share(self, fraction: float) -> int:
        """``fraction`` of the room left, for a step that shares it with others."""
        return int(self.room() * fraction)

    def activation_bytes(self) -> int:
        """What one call of the source on one sample needed beyond its weights (0 until measured)."""
        return max(0, self.session_bytes - 2 * self.source_bytes)

    def session_estimate(self, model_bytes: int) -> int:
        """A session of a model of ``model_bytes``: its weights (about twice the file, once loaded
        and prepacked) plus the activations one call of the source needed."""
        return self.activation_bytes() + 2 * model_bytes

    def batch_within(self, most: int, share: float = 0.25) -> int:
        """Samples per call (up to ``most``) whose activations fit ``share`` of the room."""
        per_sample = self.activation_bytes()
        if not per_sample:
            return most
        return max(1, min(most, self.share(share) // per_sample))


class Raced(Protocol):
    name: str
    verdict: str

    @property
    def size_bytes(self) -> int: ...


def fit_race(candidates: list[R], keep: str, fixed_sessions: int = 2) -> tuple[list[R], list[R]]:
    """The candidates whose sessions fit the memory room together with ``fixed_sessions`` of the
    source: ``keep`` (the fallback) first, then the smallest first. Returns (raced, left out)."""
    limit = active()
    if not limit.session_bytes:
        return candidates, []
    room = limit.room() - fixed_sessions * limit.session_estimate(limit.source_bytes)
    order = sorted(candidates, key=lambda c: (c.name != keep, c.size_bytes))
    raced: list[R] = []
    for cand in order:
        need = limit.session_estimate(cand.size_bytes)
        if raced and need > room:
            continue
        raced.append(cand)
        room -= need
    left = [c for c in candidates if c not in raced]
    return [c for c in candidates if c in raced], left


def tensor_bytes(shapes: dict[str, tuple[int, ...]], itemsize: int = 4) -> dict[str, int]:
    return {n: int(np.prod(s, dtype=np.int64)) * itemsize for n, s in shapes.items()}


def concrete_shapes(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor the model computes for these feeds, as far as ONNX shape inference
    (with constant propagation) can tell from the inputs' concrete shapes; unknown ones are left out."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for value in model.graph.input:
        if value.name in feeds:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, feeds[value.name].shape, strict=False):
                dim.ClearField("dim_param")
                dim.dim_value = int(size)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # a graph onnx cannot infer (custom domains, bad annotations): no estimates
        log.debug("shape inference failed for %s", path.name)
        return {}
    shapes: dict[str, tuple[int, ...]] = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = value.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[value.name] = tuple(d.dim_value for d in t.shape.dim)
    return shapes


def chunks_within(sizes: dict[str, int], names: list[str], limit: int, fallback: int) -> list[list[str]]:
    """Split ``names`` into consecutive groups whose summed sizes stay under ``limit``; a name with
    no estimate counts as ``fallback`` bytes; a single name over the limit gets a group of its own."""
    groups: list[list[str]] = []
    current: list[str] = []
    total = 0
    for name in names:
        size = sizes.get(name, fallback)
        if current and total + size > limit:
            groups.append(current)
            current, total = [], 0
        current.append(name)
        total += size
    if current:
        groups.append(current)
    return groups


_ACTIVE: ContextVar[MemoryLimit | None] = ContextVar("converter_memory_limit", default=None)


def active() -> MemoryLimit:
    """The limit of the conversion running in this context (the default limit outside one)."""
    return _ACTIVE.get() or MemoryLimit.of(None)


@contextmanager
def limited(limit: MemoryLimit) -> Iterator[MemoryLimit]:
    """Make ``limit`` the one :func:`active` returns while a conversion runs."""
    token = _ACTIVE.set(limit)
    try:
        yield limit
    finally:
        _ACTIVE.reset(token)
