"""Pruning on the ONNX graph, so it works the same for PyTorch (after export) and ONNX inputs.

* unstructured: global magnitude — the smallest ``amount`` of all Conv/Gemm/MatMul weights become 0
  (the bundle is gzip-compressed, so zeros shrink downloads; sparse kernels can use them).
* 2:4 semi-structured: in every group of 4 weights along the input axis, the 2 smallest become 0
  (the pattern Ampere sparse tensor cores run).
* structured: whole output channels of a Conv (or Gemm/MatMul) with the smallest L1 norm are
  removed, with the matching input channels of the one node that consumes them (through
  elementwise activations), so weights really shrink and the graph stays valid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

WEIGHTED = ("Conv", "Gemm", "MatMul")
ELEMENTWISE = (
    "Relu",
    "LeakyRelu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Elu",
    "Selu",
    "Gelu",
    "Softplus",
    "PRelu",
    # per-channel pooling keeps channels apart, so channels can be pruned through it
    "MaxPool",
    "AveragePool",
)


@dataclass(frozen=True)
class PruneStats:
    weights: int
    zeros: int
    removed_channels: int = 0

    @property
    def sparsity(self) -> float:
        return self.zeros / max(self.weights, 1)


def _weights(graph: Any) -> dict[str, tuple[Any, int]]:
    """Initializer name -> (consumer node, input axis) for the weights of Conv/Gemm/MatMul."""
    inits = {i.name for i in graph.initializer}
    found: dict[str, tuple[Any, int]] = {}
    for node in graph.node:
        if node.op_type in WEIGHTED and len(node.input) > 1 and node.input[1] in inits:
            found[node.input[1]] = (node, _in_axis(node))
    return found


def _attr(node: Any, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _in_axis(node: Any) -> int:
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 1 if _attr(node, "transB", 0) else 0
    return 0  # MatMul B is [K, N]


def _out_axis(node: Any) -> int:
    return 1 - _in_axis(node) if node.op_type != "Conv" else 0


def _arrays(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def _replace(graph: Any, name: str, array: np.ndarray) -> None:
    from onnx import numpy_helper

    for i, init in enumerate(graph.initializer):
        if init.name == name:
            graph.initializer[i].CopyFrom(
                numpy_helper.from_array(array.astype(numpy_helper.to_array(init).dtype), name)
            )
            return


def unstructured(model: Any, amount: float) -> PruneStats:
    graph = model.graph
    arrays = _arrays(graph)
    names = [n for n in _weights(graph) if arrays[n].dtype.kind == "f"]
    if not names:
        return PruneStats(0, 0)
    magnitudes = np.concatenate([np.abs(arrays[n]).reshape(-1) for n in names])
    threshold = float(np.quantile(magnitudes, amount))
    zeros = 0
    for n in names:
        pruned = np.where(np.abs(arrays[n]) <= threshold, 0, arrays[n])
        zeros += int(np.sum(pruned == 0))
        _replace(graph, n, pruned)
    return PruneStats(int(magnitudes.size), zeros)


def semi_structured_2_4(model: Any) -> PruneStats:
    graph = model.graph
    arrays = _arrays(graph)
    total = zeros = 0
    for name, (_node, axis) in _weights(graph).items():
        w = arrays[name]
        if w.dtype.kind != "f" or w.ndim < 2 or w.shape[axis] % 4:
            continue
        moved = np.moveaxis(w, axis, -1)
        groups = moved.reshape(-1, 4)
        order = np.argsort(np.abs(groups), axis=1)
        mask = np.ones_like(groups, dtype=bool)
        np.put_along_axis(mask, order[:, :2], False, axis=1)
        pruned = np.moveaxis((groups * mask).reshape(moved.shape), -1, axis)
        total += w.size
        zeros += int(np.sum(pruned == 0))
        _replace(graph, name, pruned)
    return PruneStats(total, zeros)


def structured(model: Any, amount: float) -> PruneStats:
    """Remove output channels of producer nodes whose only consumer (via activations) is weighted."""
    graph = model.graph
    arrays = _arrays(graph)
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    outputs = {o.name for o in graph.output}
    removed = total = 0
    for node in list(graph.node):
        if node.op_type not in WEIGHTED or len(node.input) < 2 or node.input[1] not in arrays:
            continue
        if node.op_type == "Conv" and _attr(node, "group", 1) != 1:
            continue
        bias = _bias(node, graph, consumers, arrays)
        if bias is False:
            continue
        chain_end = bias[1] if bias else node.output[0]
        tensor = chain_end
        while True:  # walk through elementwise activations to the one weighted consumer
            users = consumers.get(tensor, [])
            if tensor in outputs or len(users) != 1:
                break
            user = users[0]
            if user.op_type in ELEMENTWISE and (
                user.op_type != "PRelu" or arrays.get(user.input[1], np.ones(1)).size == 1
            ):
                tensor = user.output[0]
                continue
            break
        users = consumers.get(tensor, [])
        if len(users) != 1 or tensor in outputs:
            continue
        nxt = users[0]
        if (
            nxt.op_type not in WEIGHTED
            or nxt.input[0] != tensor
            or len(nxt.input) < 2
            or nxt.input[1] not in arrays
        ):
            continue
        if nxt.op_type == "Conv" and (_attr(nxt, "group", 1) != 1 or node.op_type != "Conv"):
            continue
        if node.op_type == "Conv" and nxt.op_type != "Conv":
            continue
        w, w_next = arrays[node.input[1]], arrays[nxt.input[1]]
        out_axis, in_axis = _out_axis(node), _in_axis(nxt)
        channels = w.shape[out_axis]
        if w_next.shape[in_axis] != channels:
            continue
        keep_n = max(1, round(channels * (1 - amount)))
        norms = np.abs(np.moveaxis(w, out_axis, 0)).reshape(channels, -1).sum(axis=1)
        keep = np.sort(np.argsort(-norms)[:keep_n])
        _replace_shape(graph, node.input[1], np.take(w, keep, axis=out_axis))
        _replace_shape(graph, nxt.input[1], np.take(w_next, keep, axis=in_axis))
        arrays[node.input[1]] = np.take(w, keep, axis=out_axis)
        arrays[nxt.input[1]] = np.take(w_next, keep, axis=in_axis)
        if bias:
            b = arrays[bias[0]]
            arrays[bias[0]] = np.take(b, keep, axis=-1)
            _replace_shape(graph, bias[0], arrays[bias[0]])
        removed += channels - keep_n
        total += channels
    del graph.value_info[:]  # shapes changed: let shape inference redo them
    return PruneStats(total, removed, removed)


def _bias(node: Any, graph: Any, consumers: dict[str, list[Any]], arrays: dict[str, np.ndarray]) -> Any:
    """(bias initializer, tensor after bias) to prune with the channels, None if none, False if unsafe."""
    if node.op_type in ("Conv", "Gemm"):
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in arrays or arrays[node.input[2]].ndim != 1:
                return False
            return (node.input[2], node.output[0])
        return None
    users = consumers.get(node.output[0], [])  # MatMul followed by Add(bias)
    if len(users) == 1 and users[0].op_type == "Add":
        other = [i for i in users[0].input if i != node.output[0]]
        if other and other[0] in arrays and arrays[other[0]].ndim == 1:
            return (other[0], users[0].output[0])
        return False
    return None


def _replace_shape(graph: Any, name: str, array: np.ndarray) -> None:
    from onnx import numpy_helper

    for i, init in enumerate(graph.initializer):
        if init.name == name:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), name))
            return
