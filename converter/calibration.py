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


def load_npz(path: Path, specs: list[InputSpec], what: str, max_bytes: int | None = None) -> Dataset:
    """Read a data file and check its names, shapes and types against the model's inputs.

    With ``max_bytes``, only the first samples that fit are read (the rest never enters memory),
    and the dataset's origin says how many of how many were kept.
    """
    try:
        arrays, total = _read_npz(path, max_bytes)
    except FileNotFoundError:
        raise ConfigError(f"--{what} {path}: no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
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
    if total is not None and n < total:
        log.warning("--%s %s: only the first %d of %d samples fit the memory limit", what, path, n, total)
        return Dataset(inputs, labels, f"{path.name} (first {n} of {total} samples: memory limit)")
    return Dataset(inputs, labels, f"{path.name} ({n} samples)")


def _read_npz(path: Path, max_bytes: int | None) -> tuple[dict[str, np.ndarray], int | None]:
    """Every array of an .npz, or with ``max_bytes`` the first rows of each that fit together
    (read from the member's stream, so the rest is never held); also the sample count when cut."""
    if max_bytes is None:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}, None
    with zipfile.ZipFile(path) as archive:
        headers = {}
        for member in archive.namelist():
            with archive.open(member) as f:
                headers[member] = _npy_header(f)
        counts = {shape[0] for shape, _, _ in headers.values() if shape}
        row_bytes = sum(
            int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            for shape, _, dtype in headers.values()
            if shape
        )
        total = min(counts) if counts else 0
        keep = min(total, max(1, max_bytes // max(row_bytes, 1)))
        arrays = {}
        for member, (shape, fortran, dtype) in headers.items():
            name = member.removesuffix(".npy")
            with archive.open(member) as f:
                if not shape or fortran or dtype.hasobject or keep == total:
                    arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
                    continue
                _npy_header(f)
                rows = (keep, *shape[1:])
                count = int(np.prod(rows, dtype=np.int64))
                buffer = bytearray(f.read(count * dtype.itemsize))
                arrays[name] = np.frombuffer(buffer, dtype=dtype, count=count).reshape(rows)
    return arrays, total if keep < total else None


def _npy_header(f: object) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)  # type: ignore[arg-type]
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)  # type: ignore[arg-type,return-value]
    return np.lib.format.read_array_header_2_0(f)  # type: ignore[arg-type,return-value]


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
