"""Calibration and evaluation data: ``.npz`` files checked against the model, or a synthetic fallback.

A data file holds one array per model input, named as the input, with samples along the first
axis, plus an optional ``labels`` array. A model whose first dimension is dynamic or 1 is fed one
slice of samples at a time. Without a file the
converter makes synthetic inputs and says exactly what it made, since quantization ranges and
fidelity numbers from synthetic data are weaker evidence than the user's own data.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.model import InputSpec
from sdk.errors import ConfigError

log = logging.getLogger(__name__)

LABELS = "labels"
SYNTHETIC_SAMPLES = 64
#: dynamic dims other than the batch get this size in synthetic data unless --input fixes them.
SYNTHETIC_DYNAMIC_DIM = 16


@dataclass(frozen=True)
class Dataset:
    """Samples along axis 0 of every array; ``labels`` (optional) has one entry per sample."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    #: a human description of where the data came from, for the log, report and manifest.
    origin: str
    synthetic: bool = False

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, n: int) -> Dataset:
        return Dataset(
            {k: v[:n] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[:n],
            self.origin,
            self.synthetic,
        )

    def batches(self, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.inputs.items()}

    def first(self) -> dict[str, np.ndarray]:
        return {k: v[:1] for k, v in self.inputs.items()}


def parse_input_overrides(items: list[str]) -> dict[str, tuple[int, ...]]:
    """``--input NAME:SHAPE`` values such as ``pixel_values:1x3x224x224`` or ``ids:1,128``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, shape = item.rpartition(":")
        try:
            dims = tuple(int(d) for d in shape.replace("x", ",").split(",") if d)
        except ValueError:
            dims = ()
        if not sep or not name or not dims or any(d <= 0 for d in dims):
            raise ConfigError(f"--input {item!r}: expected NAME:SHAPE with positive dims, e.g. x:1x3x224x224")
        shapes[name] = dims
    return shapes


def load_npz(path: Path, specs: list[InputSpec], what: str) -> Dataset:
    """Read a data file and check its names, shapes and types against the model's inputs."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except FileNotFoundError:
        raise ConfigError(f"--{what} {path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"--{what} {path}: not a readable .npz file ({exc})") from None
    labels = arrays.pop(LABELS, None)
    expected = [s.name for s in specs]
    missing = [n for n in expected if n not in arrays]
    extra = [n for n in arrays if n not in expected]
    if missing or extra:
        raise ConfigError(
            f"--{what} {path}: arrays {sorted(arrays)} do not match the model inputs {expected}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {extra}; only input names and 'labels' are allowed)" if extra else "")
        )
    inputs = {s.name: _fit(arrays[s.name], s, path, what) for s in specs}
    counts = {len(v) for v in inputs.values()}
    if len(counts) != 1:
        raise ConfigError(f"--{what} {path}: inputs hold different sample counts {sorted(counts)}")
    n = counts.pop()
    if labels is not None and len(labels) != n:
        raise ConfigError(f"--{what} {path}: 'labels' has {len(labels)} entries for {n} samples")
    return Dataset(inputs, labels, f"{path.name} ({n} samples)")


def _fit(array: np.ndarray, spec: InputSpec, path: Path, what: str) -> np.ndarray:
    rank = len(spec.shape)
    if array.ndim != rank:
        raise ConfigError(
            f"--{what} {path}: {spec.name!r} has shape {list(array.shape)}, the model wants rank {rank}"
            f" {_show(spec.shape)} (samples along the first axis)"
        )
    for axis, want in enumerate(spec.shape[1:], start=1):
        if isinstance(want, int) and array.shape[axis] != want:
            raise ConfigError(
                f"--{what} {path}: {spec.name!r} has shape {list(array.shape)}, the model wants"
                f" {_show(spec.shape)}"
            )
    want_dtype = np.dtype(spec.dtype)
    if array.dtype.kind != want_dtype.kind and not (array.dtype.kind in "iu" and want_dtype.kind in "iu"):
        raise ConfigError(f"--{what} {path}: {spec.name!r} is {array.dtype}, the model wants {want_dtype}")
    return np.ascontiguousarray(array.astype(want_dtype, copy=False))


def _show(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in shape) + "]"


def synthetic(
    specs: list[InputSpec], overrides: dict[str, tuple[int, ...]], n: int = SYNTHETIC_SAMPLES, seed: int = 0
) -> Dataset:
    """Random inputs of the model's shapes: floats ~ N(0, 1), integers in {0, 1}."""
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    made = []
    for spec in specs:
        shape = overrides.get(spec.name) or tuple(
            d if isinstance(d, int) else (1 if axis == 0 else SYNTHETIC_DYNAMIC_DIM)
            for axis, d in enumerate(spec.shape)
        )
        sample_shape = (n, *shape[1:]) if shape else (n,)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            inputs[spec.name] = rng.standard_normal(sample_shape).astype(dtype)
            made.append(f"{spec.name}: normal(0,1) {list(shape)}")
        elif dtype.kind in "iub":
            inputs[spec.name] = rng.integers(0, 2, sample_shape).astype(dtype)
            made.append(f"{spec.name}: integers 0/1 {list(shape)}")
        else:
            raise ConfigError(f"input {spec.name!r} is {dtype}; give --calibration data for it")
    return Dataset(inputs, None, f"synthetic, {n} samples ({'; '.join(made)})", synthetic=True)
