"""Activation smoothing for dynamic int8 MatMuls (the SmoothQuant idea, tuned by measurement).

Dynamic int8 quantizes each MatMul's activation with one range per call, so a few outlier channels
(transformers' LayerNorm and GELU outputs carry channels 10 to 30 times larger than the rest) spend
most of the 256 levels and every other channel loses precision. For a MatMul ``X @ W`` with a
constant ``W``, ``X @ W == (X / s) @ (s * W)`` for any per-channel ``s``: dividing the activation
by ``s`` (one float Mul, cheap next to the MatMul) moves the outliers into the weights, which are
quantized per output channel and absorb them far better.

``s = amax(X) ** alpha / amax(W rows) ** (1 - alpha)``, with ``alpha`` chosen per activation (all
MatMuls reading it share one ``s``) by simulating dynamic int8 (uint8 asymmetric activations per
call, int8 symmetric per-column weights, as ONNX Runtime runs it) on calibration samples and keeping
the value with the smallest output error; an activation is left alone unless smoothing clearly
helps. The float model computes the same function; only its int8 version changes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converter import budget
from converter.calibration import Dataset
from converter.runtime import make_session

log = logging.getLogger(__name__)

#: calibration samples whose channel ranges set the scales (one call each, like a served request)...
SAMPLES = 256
#: ...or as many as fit this share of the time budget, and at least this many.
TIME_SHARE = 0.05
MIN_SAMPLES = 16
#: rows (tokens, batch items) per activation kept for the simulation, to bound time and memory.
MAX_ROWS = 1024
#: a channel's range is taken as at least this share of the median channel's: a channel that was
#: nearly silent in calibration must not get a huge 1/s that an unseen input then blows up.
MIN_RANGE_SHARE = 0.1
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
#: smooth only when the simulated error drops below this share of the unsmoothed error.
MIN_GAIN = 0.8
#: scales are clipped to this band so no channel is blown up or crushed.
SCALE_BAND = (1e-4, 1e4)


@dataclass(frozen=True)
class Group:
    """MatMuls that read the same activation through constant 2-D weights."""

    activation: str
    matmuls: list[Any]
    weights: list[str]


@dataclass(frozen=True)
class Smoothed:
    path: Path
    #: activation name -> chosen alpha, for the smoothed ones only.
    alphas: dict[str, float] = field(default_factory=dict)
    #: activation name -> simulated relative error (unsmoothed, smoothed).
    errors: dict[str, tuple[float, float]] = field(default_factory=dict)


def groups_of(model: Any) -> list[Group]:
    """Activations feeding MatMuls whose weights are fp32 2-D initializers used by nothing else."""
    from onnx import TensorProto

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    found: dict[str, Group] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        x, w = node.input
        init = inits.get(w)
        if (
            x in inits
            or init is None
            or init.data_type != TensorProto.FLOAT
            or len(init.dims) != 2
            or uses.get(w) != 1
        ):
            continue
        group = found.setdefault(x, Group(x, [], []))
        group.matmuls.append(node)
        group.weights.append(w)
    return list(found.values())


def smooth(src: Path, out: Path, data: Dataset, threads: int, workdir: Path) -> Smoothed:
    """Write the smoothed float model to ``out`` (or return ``src`` when no activation gains)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    groups = groups_of(model)
    if not groups:
        return Smoothed(src)
    inits = {i.name: i for i in model.graph.initializer}
    samples = budget.samples_within(TIME_SHARE, min(len(data), SAMPLES), MIN_SAMPLES)
    ranges, activations = _collect(src, workdir, [g.activation for g in groups], data.take(samples), threads)
    alphas: dict[str, float] = {}
    errors: dict[str, tuple[float, float]] = {}
    scales: dict[str, np.ndarray] = {}
    for group in groups:
        calls = activations.get(group.activation)
        weights = [numpy_helper.to_array(inits[w]).astype(np.float32) for w in group.weights]
        if not calls or calls[0].shape[-1] != weights[0].shape[0]:
            continue
        alpha, scale, before, after = _best_scale(calls, weights, ranges[group.activation])
        if alpha is None or after > MIN_GAIN * before:
            continue
        alphas[group.activation], errors[group.activation] = alpha, (before, after)
        scales[group.activation] = scale
    if not scales:
        return Smoothed(src)
    _apply(model, [g for g in groups if g.activation in scales], scales)
    onnx.save_model(model, str(out))
    log.info("smoothed %d of %d MatMul activations", len(scales), len(groups))
    return Smoothed(out, alphas, errors)


def _collect(
    src: Path, workdir: Path, names: list[str], data: Dataset, threads: int
) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]]]:
    """Per-channel max |x| of each named activation over all calls, and the first calls' values
    flattened to [rows, channels] (up to ``MAX_ROWS``) for the simulation."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    existing = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    for name in names:
        if name not in existing:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    exposed = workdir / "smoothing-exposed.onnx"
    onnx.save_model(model, str(exposed))
    session = make_session(exposed, threads)
    outputs = [o.name for o in session.get_outputs()]
    wanted = set(names)
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    ranges: dict[str, np.ndarray] = {}
    rows: dict[str, int] = dict.fromkeys(names, 0)
    for feeds in data.batches(1):
        values = dict(zip(outputs, session.run(None, feeds), strict=True))
        values.update({k: v for k, v in feeds.items() if k in wanted})
        for name in names:
            value = values.get(name)
            if value is None or value.ndim < 1 or value.dtype.kind != "f" or not value.size:
                continue
            flat = np.asarray(value, dtype=np.float32).reshape(-1, value.shape[-1])
            top = np.abs(flat).max(axis=0)
            ranges[name] = np.maximum(ranges[name], top) if name in ranges else top
            if rows[name] < MAX_ROWS:
                got[name].append(flat)
                rows[name] += len(flat)
    return ranges, got


def _best_scale(
    calls: list[np.ndarray], weights: list[np.ndarray], ranges: np.ndarray
) -> tuple[float | None, np.ndarray, float, float]:
    """The alpha (and its scale) with the smallest simulated error; also the unsmoothed error."""
    amax = np.maximum(ranges, max(MIN_RANGE_SHARE * float(np.median(ranges)), 1e-5))
    wmax = np.maximum(np.max([np.abs(w).max(axis=1) for w in weights], axis=0), 1e-5)
    references = [[c @ w for w in weights] for c in calls]
    ones = np.ones_like(amax)
    before = _error(calls, weights, references, ones)
    best: tuple[float | None, np.ndarray, float] = (None, ones, before)
    for alpha in ALPHAS:
        scale = np.clip(amax**alpha / wmax ** (1 - alpha), *SCALE_BAND).astype(np.float32)
        err = _error(calls, weights, references, scale)
        if err < best[2]:
            best = (alpha, scale, err)
    return best[0], best[1], before, best[2]


def _error(
    calls: list[np.ndarray], weights: list[np.ndarray], references: list[list[np.ndarray]], scale: np.ndarray
) -> float:
    """Relative squared error of dynamic int8 ``(X / s) @ (s * W)`` against ``X @ W``."""
    quantized = [_fake_quant_weight(w * scale[:, None]) for w in weights]
    num = den = 0.0
    for call, refs in zip(calls, references, strict=True):
        x = _fake_quant_activation(call / scale)
        for q, ref in zip(quantized, refs, strict=True):
            num += float(np.sum((x @ q - ref) ** 2))
            den += float(np.sum(ref**2))
    return num / max(den, 1e-30)


def _fake_quant_activation(x: np.ndarray) -> np.ndarray:
    """ONNX DynamicQuantizeLinear: uint8, asymmetric, the range always includes 0."""
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (hi - lo) / 255.0 or 1.0
    zero = np.clip(np.round(-lo / scale), 0, 255)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _fake_quant_weight(w: np.ndarray) -> np.ndarray:
    """int8 symmetric, one scale per output column."""
    scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
    return np.clip(np.round(w / scale), -127, 127) * scale


def _apply(model: Any, groups: list[Group], scales: dict[str, np.ndarray]) -> None:
    """Insert ``X * (1 / s)`` after each activation's producer and fold ``s`` into the weights."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    pending: dict[str, Any] = {}
    for group in groups:
        scale = scales[group.activation]
        tag = f"{group.activation}_smooth"
        graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{tag}_inv"))
        pending[group.activation] = helper.make_node(
            "Mul", [group.activation, f"{tag}_inv"], [f"{tag}ed"], name=f"{tag}_Mul"
        )
        for node, name in zip(group.matmuls, group.weights, strict=True):
            weights = numpy_helper.to_array(inits[name]).astype(np.float32)
            inits[name].CopyFrom(numpy_helper.from_array(weights * scale[:, None], name))
            node.input[0] = f"{tag}ed"
    # each Mul goes right after its activation's producer (graph inputs: first), keeping the order valid.
    order = [pending.pop(i.name) for i in graph.input if i.name in pending]
    for node in list(graph.node):
        order.append(node)
        order.extend(pending.pop(o) for o in node.output if o in pending)
    del graph.node[:]
    graph.node.extend(order)
