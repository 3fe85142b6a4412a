"""Weight-only int8: weights stored as int8 initializers feeding DequantizeLinear, compute stays fp32.

Run with the session config entry ``session.disable_quant_qdq=1``, ONNX Runtime folds each
DequantizeLinear of a constant back into an fp32 initializer when it loads the model, so the model
keeps fp32 latency and fidelity while its file (and every fleet download) is about a quarter of
the bytes. Weights are quantized symmetrically per output channel (per tensor below opset 13).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from converter.context import PassContext
from converter.model import ModelArtifact
from sdk.errors import ConversionError

log = logging.getLogger(__name__)

SESSION_CONFIG = {"session.disable_quant_qdq": "1"}
SCALE_SUFFIX = "_wscale"
#: (op type, input index of the weight) -> axis of the output channel, given the weight's rank.
_WEIGHT_INPUTS: dict[str, int] = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "Gather": 0}


@dataclass(frozen=True)
class Config:
    #: initializers smaller than this stay fp32 (scales would cost more than they save).
    min_elements: int = 256
    skip_initializers: tuple[str, ...] = ()
    #: which consumers' weights to store as int8.
    op_types: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather")
    #: row-gathered tables smaller than this stay fp32: they save little, and a table of few rows
    #: (token types, positions of short inputs) is read by every token, so its rounding error
    #: becomes a bias on everything (measured: 0.0005 of cosine on a sentence-embedding model).
    min_table_elements: int = 16384
    #: row-gathered tables as int8 rows scaled after the Gather (nothing materialized at load, but
    #: three more node calls per call); False: DequantizeLinear like other weights, folded at load,
    #: so the loaded graph is the fp32 one (what a model dominated by per-call overhead needs).
    row_gather_tables: bool = True


def configure(ctx: PassContext) -> Config:
    return Config()


def _channel_axis(node: object, rank: int) -> int | None:
    op = node.op_type  # type: ignore[attr-defined]
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)  # type: ignore[attr-defined]
        return 0 if trans_b else 1
    if op == "MatMul" and rank == 2:
        return 1
    if op == "Gather":
        return 0
    return None


class Quantized(NamedTuple):
    path: Path
    #: how many weight tensors are now int8.
    count: int
    #: True when DequantizeLinear nodes were added: run with SESSION_CONFIG so they fold at load.
    needs_fold: bool
    #: how many of them are row-gathered tables (int8 whichever way they are stored).
    tables: int = 0


def _per_channel_error(weights: np.ndarray, axis: int | None) -> float:
    """Relative error of symmetric int8 quantization of a tensor (per channel along ``axis``)."""
    moved = (
        weights.reshape(1, -1)
        if axis is None
        else np.moveaxis(weights, axis, 0).reshape(weights.shape[axis], -1)
    )
    scale = np.maximum(np.abs(moved).max(axis=1, keepdims=True), 1e-12) / 127.0
    error = np.linalg.norm(np.round(moved / scale) * scale - moved)
    return float(error / max(np.linalg.norm(moved), 1e-12))


def worst_tensors(src: Path, config: Config) -> list[str]:
    """Weight tensors this pass would quantize, largest relative quantization error first."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    errors = {}
    axes = _weight_axes(model, config)
    tables = _row_gathered(model.graph, set(axes))
    for name, axis in axes.items():
        weights = numpy_helper.to_array(inits[name]).astype(np.float32)
        small_table = name in tables and weights.size < config.min_table_elements
        if weights.size >= config.min_elements and not small_table:
            errors[name] = _per_channel_error(weights, axis)
    return sorted(errors, key=lambda n: -errors[n])


def _weight_axes(model: Any, config: Config) -> dict[str, int | None]:
    """fp32 weight initializers to quantize -> their output-channel axis (None: one scale)."""
    from onnx import TensorProto

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    inits = {i.name: i for i in graph.initializer}
    axes: dict[str, int | None] = {}
    for node in graph.node:
        index = _WEIGHT_INPUTS.get(node.op_type)
        if index is None or node.op_type not in config.op_types or len(node.input) <= index:
            continue
        name = node.input[index]
        init = inits.get(name)
        if (
            init is None
            or init.data_type != TensorProto.FLOAT
            or name in config.skip_initializers
            or name.endswith(SCALE_SUFFIX)  # this pass's own per-row scales, already tiny
        ):
            continue
        axis = _channel_axis(node, len(init.dims)) if opset >= 13 else None
        if name in axes and axes[name] != axis:
            axis = None  # consumers disagree on the channel axis: one scale for the whole tensor
        axes[name] = axis
    return axes


def quantize(src: Path, out: Path, config: Config) -> Quantized:
    """Write the weight-only model (or return ``src`` unchanged when nothing qualifies)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    inits = {i.name: i for i in graph.initializer}
    axes = _weight_axes(model, config)
    count = 0
    new_nodes = []
    tables = _row_gathered(graph, set(axes))
    for name, axis in axes.items():
        weights = numpy_helper.to_array(inits[name]).astype(np.float32)
        if weights.size < config.min_elements:
            continue
        if name in tables and weights.size < config.min_table_elements:
            continue
        if name in tables and config.row_gather_tables:
            _gather_then_scale(graph, inits[name], weights, tables[name])
            count += 1
            continue
        if axis is None:
            scale = np.array(max(float(np.abs(weights).max()), 1e-12) / 127.0, dtype=np.float32)
            q = np.clip(np.round(weights / scale), -127, 127).astype(np.int8)
            zero = np.array(0, dtype=np.int8)
        else:
            moved = np.moveaxis(weights, axis, 0).reshape(weights.shape[axis], -1)
            scale = (np.maximum(np.abs(moved).max(axis=1), 1e-12) / 127.0).astype(np.float32)
            shape = [1] * weights.ndim
            shape[axis] = -1
            q = np.clip(np.round(weights / scale.reshape(shape)), -127, 127).astype(np.int8)
            zero = np.zeros(scale.shape, dtype=np.int8)
        graph.initializer.remove(inits[name])
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, f"{name}_wq"),
                numpy_helper.from_array(scale, f"{name}{SCALE_SUFFIX}"),
                numpy_helper.from_array(zero, f"{name}_wzero"),
            ]
        )
        attrs = {} if axis is None else {"axis": axis}
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}_wq", f"{name}{SCALE_SUFFIX}", f"{name}_wzero"],
                [name],
                name=f"{name}_DequantizeLinear",
                **attrs,
            )
        )
        count += 1
    if not count:
        return Quantized(src, 0, False)
    # DequantizeLinear nodes go first: the graph stays topologically sorted.
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + nodes)
    if new_nodes and opset < 10:
        raise ConversionError(f"weight-only int8 needs opset 10 or later (model has {opset})")
    onnx.save_model(model, str(out))
    stored = sum(1 for name in tables if name in axes and inits[name] not in graph.initializer)
    return Quantized(out, count, bool(new_nodes), stored)


def _row_gathered(graph: Any, names: set[str]) -> dict[str, list[Any]]:
    """Tables read only by row (Gather on axis 0): name -> their Gather nodes."""
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in names:
                by_row = (
                    node.op_type == "Gather"
                    and i == 0
                    and all(a.i == 0 for a in node.attribute if a.name == "axis")
                )
                users.setdefault(name, []).append(node if by_row else None)
    return {name: nodes for name, nodes in users.items() if all(n is not None for n in nodes)}


def _gather_then_scale(graph: Any, init: Any, weights: np.ndarray, gathers: list[Any]) -> None:
    """Embedding tables: gather int8 rows, then scale them, so only the rows used are dequantized."""
    from onnx import TensorProto, helper, numpy_helper

    name = init.name
    rows = weights.reshape(len(weights), -1)
    scale = (np.maximum(np.abs(rows).max(axis=1), 1e-12) / 127.0).astype(np.float32)
    q = np.clip(np.round(rows / scale[:, None]), -127, 127).astype(np.int8).reshape(weights.shape)
    graph.initializer.remove(init)
    graph.initializer.extend(
        [
            numpy_helper.from_array(q, f"{name}_wq"),
            numpy_helper.from_array(
                scale.reshape((-1,) + (1,) * (weights.ndim - 1)), f"{name}{SCALE_SUFFIX}"
            ),
        ]
    )
    for k, node in enumerate(gathers):
        ids, out = node.input[1], node.output[0]
        at = list(graph.node).index(node)
        graph.node.remove(node)
        tag = f"{name}_g{k}"
        for offset, new in enumerate(
            [
                helper.make_node("Gather", [f"{name}_wq", ids], [f"{tag}_q"], name=f"{tag}_Gather"),
                helper.make_node(
                    "Cast", [f"{tag}_q"], [f"{tag}_f"], name=f"{tag}_Cast", to=TensorProto.FLOAT
                ),
                helper.make_node(
                    "Gather", [f"{name}{SCALE_SUFFIX}", ids], [f"{tag}_s"], name=f"{tag}_GatherScale"
                ),
                helper.make_node("Mul", [f"{tag}_f", f"{tag}_s"], [out], name=f"{tag}_Scale"),
            ]
        ):
            graph.node.insert(at + offset, new)


def run(model: ModelArtifact, ctx: PassContext, config: Config) -> ModelArtifact:
    if model.onnx_path is None:
        raise ConversionError("int8-weight-only needs an ONNX model")
    result = quantize(model.onnx_path, ctx.path("int8_weight_only.onnx"), config)
    ctx.record("quantize", "weight-only int8", f"{result.count} weight tensors stored as int8")
    session_config = dict(SESSION_CONFIG) if result.needs_fold else {}
    return model.with_onnx(result.path, precision="int8-weights", session_config=session_config)
