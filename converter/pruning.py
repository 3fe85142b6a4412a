"""Pruning on the ONNX graph, so it works the same for PyTorch (after export) and ONNX inputs.

* unstructured: global magnitude — the smallest ``amount`` of all Conv/Gemm/MatMul weights become 0
  (the bundle is gzip-compressed, so zeros shrink downloads; sparse kernels can use them).
* 2:4 semi-structured: in every group of 4 weights along the input axis, the 2 smallest become 0
  (the pattern Ampere sparse tensor cores run).
* structured: whole output channels of Conv/Gemm/MatMul layers with the smallest L1 norm are
  removed, with the matching input channels of every layer that reads them, through channel-wise
  ops, residual sums (pruned as one group), concatenations and splits
  (:mod:`converter.channel_groups`), so weights really shrink and the graph stays valid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

WEIGHTED = ("Conv", "Gemm", "MatMul")


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
    """Remove ``amount`` of the output channels of Conv/Gemm/MatMul layers, with everything that
    reads them, so weights really shrink and the graph stays valid.

    Channels that meet element by element (a residual ``Add``) go as one group from every layer
    that makes them (:mod:`converter.channel_groups`); concatenated branches are pruned each on its
    own and split sizes follow. Channels that reach an op the pruner does not follow are kept. With
    ``multiple`` > 1, a kind of channel keeps a multiple of that many (CPU convolution kernels work
    on blocks of 8 or 16 channels: 51 channels can run slower than 64), unless it has fewer than
    ``2 * multiple``.
    """
    from converter.channel_groups import ChannelGroups

    groups = ChannelGroups(model)
    total, removed = groups.prune(amount, multiple)
    del model.graph.value_info[:]  # shapes changed: let shape inference redo them
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
