"""Pruning on the ONNX graph, so it works the same for PyTorch (after export) and ONNX inputs.

* unstructured: global magnitude — the smallest ``amount`` of all Conv/Gemm/MatMul weights become 0
  (the bundle is gzip-compressed, so zeros shrink downloads; sparse kernels can use them).
* 2:4 semi-structured: in every group of 4 weights along the input axis, the 2 smallest become 0
  (the pattern Ampere sparse tensor cores run).
* structured: whole output channels of a Conv (or Gemm/MatMul) with the smallest L1 norm are
  removed, with the matching input channels of the one node that consumes them (through
  channel-wise ops: activations, pooling, and the ``x * f(x)`` forms exporters write hard-swish
  and SiLU in; a Conv read by a dense layer through ``Flatten`` loses the matching block of that
  layer's inputs), so weights really shrink and the graph stays valid.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

WEIGHTED = ("Conv", "Gemm", "MatMul")
#: ops that act on each element alone, so on each channel alone: channels can be pruned through them.
CHANNELWISE_UNARY = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Elu",
        "Selu",
        "Celu",
        "Gelu",
        "Mish",
        "Softplus",
        "Softsign",
        "ThresholdedRelu",
        "Erf",
        "Abs",
        "Neg",
        "Exp",
        "Sqrt",
        "Reciprocal",
        "Identity",
        # per-channel pooling keeps channels apart
        "MaxPool",
        "AveragePool",
    }
)
#: element-wise ops with more inputs: their other inputs must be scalar constants or tensors that
#: come from the same channels (hard-swish written as x * relu6(x + 3) / 6, SiLU as x * sigmoid(x)).
CHANNELWISE_NARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Clip"})


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


def structured(model: Any, amount: float, multiple: int = 1) -> PruneStats:
    """Remove output channels of producer nodes whose only consumer (via activations) is weighted.

    A Conv whose channels reach a Gemm/MatMul through ``Flatten`` is pruned too: each channel is a
    block of the flattened features. With ``multiple`` > 1, a layer keeps a multiple of that many
    channels (CPU convolution kernels work on blocks of 8 or 16 channels: 51 channels can run
    slower than 64), unless it has fewer than ``2 * multiple``.
    """
    graph = model.graph
    arrays = _arrays(graph)
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    outputs = {o.name for o in graph.output}
    position = {id(node): i for i, node in enumerate(graph.node)}
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
        found = _channelwise_region_end(chain_end, consumers, arrays, outputs, position)
        if found is None:
            continue
        tensor, nxt = found
        flattened = node.op_type == "Conv" and nxt.op_type == "Flatten" and nxt.input[0] == tensor
        if flattened:
            nxt = _flatten_consumer(nxt, consumers, outputs)
            if nxt is None:
                continue
            tensor = nxt.input[0]
        if (
            nxt.op_type not in WEIGHTED
            or nxt.input[0] != tensor
            or len(nxt.input) < 2
            or nxt.input[1] not in arrays
            or _attr(nxt, "transA", 0)
        ):
            continue
        shared = [node.input[1], nxt.input[1], *([bias[0]] if bias else [])]
        if any(len(consumers.get(name, [])) != 1 for name in shared):
            continue  # a weight that feeds other nodes too (tied weights) would break them
        if nxt.op_type == "Conv" and (_attr(nxt, "group", 1) != 1 or node.op_type != "Conv"):
            continue
        if node.op_type == "Conv" and nxt.op_type != "Conv" and not flattened:
            continue
        w, w_next = arrays[node.input[1]], arrays[nxt.input[1]]
        out_axis, in_axis = _out_axis(node), _in_axis(nxt)
        channels = w.shape[out_axis]
        if w_next.shape[in_axis] != channels and not (flattened and w_next.shape[in_axis] % channels == 0):
            continue
        block = w_next.shape[in_axis] // channels
        keep_n = _kept(channels, amount, multiple)
        norms = np.abs(np.moveaxis(w, out_axis, 0)).reshape(channels, -1).sum(axis=1)
        keep = np.sort(np.argsort(-norms)[:keep_n])
        rows = (keep[:, None] * block + np.arange(block)[None, :]).reshape(-1)
        arrays[node.input[1]] = np.take(w, keep, axis=out_axis)
        arrays[nxt.input[1]] = np.take(w_next, rows, axis=in_axis)
        _replace_shape(graph, node.input[1], arrays[node.input[1]])
        _replace_shape(graph, nxt.input[1], arrays[nxt.input[1]])
        if bias:
            b = arrays[bias[0]]
            arrays[bias[0]] = np.take(b, keep, axis=-1)
            _replace_shape(graph, bias[0], arrays[bias[0]])
        removed += channels - keep_n
        total += channels
    del graph.value_info[:]  # shapes changed: let shape inference redo them
    return PruneStats(total, removed, removed)


def untie(model: Any) -> int:
    """Give every node its own copy of each float weight it shares with other nodes; returns how
    many copies were made. Graph cleanup merges initializers of equal value (the layers of a
    model built by cloning one layer start equal), which ties them and stops structured pruning;
    once the copies are trained apart (``--speedup``) they are different weights anyway."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    seen: dict[str, int] = {}
    copies = 0
    for node in model.graph.node:
        for pos, name in enumerate(node.input):
            init = inits.get(name)
            if init is None or init.data_type not in (1, 10, 11, 16) or len(init.dims) == 0:
                continue
            seen[name] = seen.get(name, 0) + 1
            if seen[name] == 1:
                continue
            copy = f"{name}__untied{seen[name] - 1}"
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(init), copy))
            node.input[pos] = copy
            copies += 1
    return copies


def _kept(channels: int, amount: float, multiple: int) -> int:
    keep_n = max(1, round(channels * (1 - amount)))
    if multiple > 1 and channels >= 2 * multiple:
        keep_n = min(channels, max(multiple, round(keep_n / multiple) * multiple))
    return keep_n


def _flatten_consumer(flatten: Any, consumers: dict[str, list[Any]], outputs: set[str]) -> Any:
    """The one Gemm/MatMul that reads ``Flatten(axis=1)``'s output, else None."""
    if _attr(flatten, "axis", 1) != 1 or flatten.output[0] in outputs:
        return None
    users = consumers.get(flatten.output[0], [])
    if len(users) != 1 or users[0].op_type not in ("Gemm", "MatMul"):
        return None
    return users[0]


def _channelwise_region_end(
    start: str,
    consumers: dict[str, list[Any]],
    arrays: dict[str, np.ndarray],
    outputs: set[str],
    position: dict[int, int],
) -> tuple[str, Any] | None:
    """Follow ``start`` through channel-wise ops to the one node that consumes the result.

    Returns (tensor, consumer) when every use of ``start`` and of what is computed from it stays in
    channel-wise ops except one final consumer of one tensor; ``None`` when the channels branch out
    (a residual, a graph output, a reshape, two consumers). Nodes are visited in graph order, so a
    node's inputs from the region are all known when it is judged.
    """
    region = {start}
    pending: list[tuple[int, int, Any]] = []
    seen: set[int] = set()

    def push(tensor: str) -> None:
        for user in consumers.get(tensor, []):
            if id(user) not in seen:
                seen.add(id(user))
                heapq.heappush(pending, (position[id(user)], id(user), user))

    push(start)
    exits: list[Any] = []
    while pending:
        _, _, node = heapq.heappop(pending)
        if _channelwise(node, region, arrays):
            region.update(node.output)
            push(node.output[0])
        else:
            exits.append(node)
    if len(exits) != 1 or region & outputs:
        return None
    consumer = exits[0]
    from_region = [i for i in consumer.input if i in region]
    if len(from_region) != 1:
        return None
    return from_region[0], consumer


def _channelwise(node: Any, region: set[str], arrays: dict[str, np.ndarray]) -> bool:
    """Does ``node`` act on each channel of the region's tensors alone (one output, same shape)?"""
    if len(node.output) != 1:
        return False
    if node.op_type in CHANNELWISE_UNARY:
        return len(node.input) == 1 or all(not i for i in node.input[1:])
    if node.op_type not in CHANNELWISE_NARY:
        return False
    return all(not i or i in region or (i in arrays and arrays[i].size == 1) for i in node.input)


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
