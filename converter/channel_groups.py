"""Which output channels of an ONNX graph's layers must be pruned together, and pruning them.

Channels are followed forward from the layers that make them (Conv, Gemm, MatMul with weights in
initializers) to the layers that read them. Each channel of each such layer is an element; where two
tensors meet element by element (a residual ``Add``, SiLU's ``x * sigmoid(x)``) their channels are
joined (union-find), so the channels of every producer of a residual sum are kept or removed as one
class. ``Concat`` along the channel axis lays its inputs' channels side by side (each branch keeps its
own classes, the reader gets the kept channels of every branch at their offsets), and ``Split``
along it hands each output its slice (the split sizes are rewritten after pruning).

Channel-wise ops are followed (activations, pooling, nearest ``Resize``, ``BatchNormalization`` and
``Mul``/``Add`` by a per-channel constant, whose parameters are pruned with the channels, and
depthwise convolutions). Anything else that reads a channel (``Reshape``, ``Shape``, a graph output,
an op not listed here) is a barrier: every class it sees is left whole. Nothing is guessed.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: ops that act on each element alone, so on each channel alone.
UNARY = frozenset(
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
    }
)
#: ops over the spatial axes of each channel alone (only for [N, C, ...] tensors).
SPATIAL = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"})
#: element-wise ops with more inputs: each other input must be a scalar constant, a per-channel
#: constant (pruned with the channels) or a tensor with the same channels.
NARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Clip"})
FLOAT_TYPES = (1, 10, 11, 16)


@dataclass
class Layout:
    """The channels along one tensor's channel axis: one element id per channel.

    ``axis`` is negative (counted from the end: -3 for [N, C, H, W], -1 for [N, F]) and ``rank`` is
    the tensor's rank when known (a MatMul's input may be 2-D or 3-D)."""

    ids: np.ndarray
    axis: int
    rank: int | None

    def matches(self, axis: int) -> bool:
        """Is the op attribute ``axis`` this layout's channel axis?"""
        if axis < 0:
            return axis == self.axis
        return self.rank is not None and axis - self.rank == self.axis


@dataclass
class Producer:
    node: Any
    weight: str
    out_axis: int
    bias: str | None
    base: int
    channels: int


@dataclass
class Edit:
    """A cut to make once the kept classes are known: ``what`` names the kind of edit."""

    what: str  # "in" (weight input channels), "const", "bn", "depthwise", "split"
    node: Any
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pos: int = 1
    axis: int = 0
    block: int = 1
    parts: list[np.ndarray] = field(default_factory=list)


class ChannelGroups:
    """The analysis of one graph; :meth:`prune` then cuts it."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.model = model
        graph = model.graph
        self.arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.uses: dict[str, int] = {}
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                if name:
                    self.uses[name] = self.uses.get(name, 0) + 1
                    self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}
        self.layouts: dict[str, Layout] = {}
        self.producers: list[Producer] = []
        self.edits: list[Edit] = []
        self.parent: list[int] = []
        self.frozen: set[int] = set()
        self.tags: dict[int, set[str]] = {}
        for node in graph.node:
            self._visit(node)
        # graph outputs, and tensors a subgraph (If, Loop, Scan) reads from the outer scope: the
        # walk does not see those readers, so their channels stay
        for name in self.outputs | _subgraph_reads(graph):
            self._freeze(self.layouts.get(name))

    # -- union-find over channel elements --------------------------------------------------------
    def _new(self, n: int) -> int:
        base = len(self.parent)
        self.parent.extend(range(base, base + n))
        return base

    def find(self, e: int) -> int:
        root = e
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[e] != root:
            self.parent[e], e = root, self.parent[e]
        return root

    def _union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx

    def _freeze(self, layout: Layout | None) -> None:
        if layout is not None:
            self.frozen.update(layout.ids.tolist())

    # -- the forward walk --------------------------------------------------------------------------
    def _visit(self, node: Any) -> None:
        tracked = [(pos, self.layouts[name]) for pos, name in enumerate(node.input) if name in self.layouts]
        if tracked and not self._follow(node, tracked):
            for _, layout in tracked:
                self._freeze(layout)
        self._produce(node)

    def _follow(self, node: Any, tracked: list[tuple[int, Layout]]) -> bool:
        """Record what ``node`` does with the channels it reads; False makes it a barrier."""
        op = node.op_type
        first = tracked[0][1]
        only_first = len(tracked) == 1 and tracked[0][0] == 0
        single_out = len(node.output) == 1 or all(not o for o in node.output[1:])
        if op in ("Conv", "Gemm", "MatMul"):
            return only_first and self._read_by_weights(node, first)
        if op == "Flatten":
            return only_first and self._flattened(node, first)
        if op in UNARY:
            if not (only_first and single_out) or any(i for i in node.input[1:]):
                return False
            self.layouts[node.output[0]] = first
            return True
        if op in SPATIAL or op in ("Resize", "Upsample"):
            if not (only_first and single_out and _nchw(first)):
                return False
            if op in ("Resize", "Upsample") and not self._keeps_channels(node, first):
                return False
            self.layouts[node.output[0]] = first
            return True
        if op == "BatchNormalization":
            return only_first and single_out and self._batch_norm(node, first)
        if op in NARY:
            return single_out and self._elementwise(node, tracked)
        if op == "Concat":
            return self._concat(node, tracked)
        if op == "Split":
            return only_first and self._split(node, first)
        return False

    def _read_by_weights(self, node: Any, layout: Layout) -> bool:
        """A layer reading the channels: its matching input channels go (or it is depthwise)."""
        name = node.input[1] if len(node.input) > 1 else ""
        w = self.arrays.get(name)
        if w is None or w.dtype.kind != "f":
            return False
        n = len(layout.ids)
        if node.op_type == "Conv":
            if w.ndim < 3 or layout.axis != 1 - w.ndim:
                return False
            group = _attr(node, "group", 1)
            if group == 1 and w.shape[1] == n:
                self.edits.append(Edit("in", node, layout.ids, pos=1, axis=1))
                return True
            if group == n and w.shape[0] == n and w.shape[1] == 1:  # depthwise: channel by channel
                bias = node.input[2] if len(node.input) > 2 else ""
                if bias and (bias not in self.arrays or self.arrays[bias].shape != (n,)):
                    return False
                self.edits.append(Edit("depthwise", node, layout.ids))
                self.layouts[node.output[0]] = layout
                return True
            return False
        if layout.axis != -1 or w.ndim != 2 or (node.op_type == "Gemm" and _attr(node, "transA", 0)):
            return False
        axis = _in_axis(node)
        if w.shape[axis] != n:
            return False
        self.edits.append(Edit("in", node, layout.ids, pos=1, axis=axis))
        return True

    def _flattened(self, node: Any, layout: Layout) -> bool:
        """``Flatten(axis=1)`` read by one dense layer: each channel is a block of its inputs."""
        out = node.output[0]
        users = self.consumers.get(out, [])
        if _attr(node, "axis", 1) != 1 or out in self.outputs or len(users) != 1 or layout.rank is None:
            return False
        if layout.axis != 1 - layout.rank:
            return False
        dense = users[0]
        w = self.arrays.get(dense.input[1]) if len(dense.input) > 1 else None
        if (
            dense.op_type not in ("Gemm", "MatMul")
            or dense.input[0] != out
            or w is None
            or w.ndim != 2
            or w.dtype.kind != "f"
            or (dense.op_type == "Gemm" and _attr(dense, "transA", 0))
        ):
            return False
        axis, n = _in_axis(dense), len(layout.ids)
        if w.shape[axis] % n:
            return False
        self.edits.append(Edit("in", dense, layout.ids, pos=1, axis=axis, block=w.shape[axis] // n))
        return True

    def _keeps_channels(self, node: Any, layout: Layout) -> bool:
        """A Resize/Upsample whose constant scales leave the batch and channel axes alone."""
        if node.op_type == "Resize" and len(node.input) > 3 and node.input[3]:
            return False  # target sizes name the channel count
        pos = 2 if node.op_type == "Resize" else 1
        scales = self.arrays.get(node.input[pos]) if len(node.input) > pos else None
        if scales is None or layout.rank is None or scales.shape != (layout.rank,):
            return False
        return bool(scales[0] == 1 and scales[layout.rank + layout.axis] == 1)

    def _batch_norm(self, node: Any, layout: Layout) -> bool:
        n = len(layout.ids)
        params = [self.arrays.get(name) for name in node.input[1:5]]
        if not _nchw(layout) or len(params) != 4 or any(p is None or p.shape != (n,) for p in params):
            return False
        self.edits.append(Edit("bn", node, layout.ids))
        self.layouts[node.output[0]] = layout
        return True

    def _elementwise(self, node: Any, tracked: list[tuple[int, Layout]]) -> bool:
        first = tracked[0][1]
        n = len(first.ids)
        if any(len(t.ids) != n or t.axis != first.axis for _, t in tracked):
            return False
        consts: list[Edit] = []
        for pos, name in enumerate(node.input):
            if not name or name in self.layouts:
                continue
            value = self.arrays.get(name)
            if value is None:
                return False  # a computed tensor broadcast against the channels
            if value.size == 1:
                continue
            axis = _channel_axis_of(value, first.axis, n)
            if axis is None:
                return False
            consts.append(Edit("const", node, first.ids, pos=pos, axis=axis))
        for _, t in tracked[1:]:
            self._union(first.ids, t.ids)
        self.edits.extend(consts)
        rank = next((t.rank for _, t in tracked if t.rank is not None), None)
        self.layouts[node.output[0]] = Layout(first.ids, first.axis, rank)
        return True

    def _concat(self, node: Any, tracked: list[tuple[int, Layout]]) -> bool:
        names = [i for i in node.input if i]
        if len(tracked) != len(names):
            return False  # a branch whose channels are not followed: its width is unknown here
        first = tracked[0][1]
        axis = _attr(node, "axis", 0)
        if not all(t.matches(axis) and t.axis == first.axis for _, t in tracked):
            return False
        rank = next((t.rank for _, t in tracked if t.rank is not None), None)
        ids = np.concatenate([t.ids for _, t in tracked])
        self.layouts[node.output[0]] = Layout(ids, first.axis, rank)
        return True

    def _split(self, node: Any, layout: Layout) -> bool:
        if not layout.matches(_attr(node, "axis", 0)):
            return False
        n, outs = len(layout.ids), len(node.output)
        sizes: list[int]
        if len(node.input) > 1 and node.input[1]:
            value = self.arrays.get(node.input[1])
            if value is None:
                return False
            sizes = [int(v) for v in value.reshape(-1)]
        elif any(a.name == "split" for a in node.attribute):
            sizes = [int(v) for v in next(a.ints for a in node.attribute if a.name == "split")]
        else:
            if n % outs:
                return False  # uneven default split: its rule differs between opsets
            sizes = [n // outs] * outs
        if len(sizes) != outs or sum(sizes) != n or any(s <= 0 for s in sizes):
            return False
        bounds = np.cumsum([0, *sizes])
        parts = [layout.ids[a:b] for a, b in itertools.pairwise(bounds.tolist())]
        for k, (out, part) in enumerate(zip(node.output, parts, strict=True)):
            # every output keeps some channels: its classes are pruned as a kind of their own
            for e in part.tolist():
                self.tags.setdefault(e, set()).add(f"{node.name or id(node)}:{k}")
            if out:
                self.layouts[out] = Layout(part, layout.axis, layout.rank)
        self.edits.append(Edit("split", node, parts=parts))
        return True

    def _produce(self, node: Any) -> None:
        """A weighted layer whose output channels may be pruned starts a new layout."""
        op = node.op_type
        if op not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.output[0] in self.layouts:
            return
        name = node.input[1]
        w = self.arrays.get(name)
        if w is None or w.dtype.kind != "f" or self.uses.get(name, 0) != 1:
            return  # a weight that feeds other nodes too (tied weights) would break them
        bias = node.input[2] if op != "MatMul" and len(node.input) > 2 and node.input[2] else None
        if op == "Conv":
            if _attr(node, "group", 1) != 1 or w.ndim < 3:
                return
            out_axis, axis, rank = 0, 1 - w.ndim, w.ndim
        else:
            if w.ndim != 2:
                return
            out_axis, axis, rank = 1 - _in_axis(node), -1, 2 if op == "Gemm" else None
        channels = w.shape[out_axis]
        if bias is not None:
            b = self.arrays.get(bias)
            if b is None or b.shape != (channels,) or self.uses.get(bias, 0) != 1:
                return
        base = self._new(channels)
        self.producers.append(Producer(node, name, out_axis, bias, base, channels))
        self.layouts[node.output[0]] = Layout(np.arange(base, base + channels), axis, rank)

    # -- the cut -------------------------------------------------------------------------------------
    def prune(self, amount: float, multiple: int) -> tuple[int, int]:
        """Remove ``amount`` of each kind of class (smallest summed L1 norm first); returns
        (prunable channels, channels removed)."""
        keep = self._choose(amount, multiple)
        kept = np.zeros(len(self.parent), bool)
        for e in range(len(self.parent)):
            kept[e] = keep.get(self.find(e), True)
        removed = total = 0
        for p in self.producers:
            mask = kept[p.base : p.base + p.channels]
            total += sum(1 for e in range(p.base, p.base + p.channels) if self.find(e) in keep)
            removed += int((~mask).sum())
            if mask.all():
                continue
            self._take(p.node, 1, p.out_axis, mask)
            if p.bias is not None:
                self._take(p.node, 2, 0, mask)
        for edit in self.edits:
            self._apply(edit, kept)
        # the originals of initializers copied for a reader that was cut (shared split sizes)
        inputs = {i.name for i in self.model.graph.input}
        orphans = {name for name, n in self.uses.items() if n == 0 and name not in inputs}
        if orphans:
            kept_inits = [i for i in self.model.graph.initializer if i.name not in orphans]
            del self.model.graph.initializer[:]
            self.model.graph.initializer.extend(kept_inits)
        log.debug(
            "structured pruning: %d of %d producer channels prunable, %d removed",
            total,
            sum(p.channels for p in self.producers),
            removed,
        )
        return total, removed

    def _choose(self, amount: float, multiple: int) -> dict[int, bool]:
        """root -> kept, for every class not behind a barrier."""
        frozen = {self.find(e) for e in self.frozen}
        importance: dict[int, float] = {}
        members: dict[int, set[str]] = {}
        for p in self.producers:
            w = self.arrays[p.weight]
            norms = np.abs(np.moveaxis(w, p.out_axis, 0)).reshape(p.channels, -1).sum(axis=1)
            # each layer's norms on a common scale, so a group's layers weigh alike
            norms = norms / max(float(norms.mean()), 1e-12)
            for c in range(p.channels):
                e = p.base + c
                root = self.find(e)
                if root in frozen:
                    continue
                importance[root] = importance.get(root, 0.0) + float(norms[c])
                members.setdefault(root, set()).update({f"p{p.base}", *self.tags.get(e, ())})
        for e, tags in self.tags.items():
            root = self.find(e)
            if root in members:
                members[root].update(tags)
        kinds: dict[frozenset[str], list[int]] = {}
        for root, tags in members.items():
            kinds.setdefault(frozenset(tags), []).append(root)
        keep: dict[int, bool] = {}
        for roots in kinds.values():
            n = kept_count(len(roots), amount, multiple)
            order = sorted(roots, key=lambda r: (-importance[r], r))
            keep.update({r: i < n for i, r in enumerate(order)})
        return keep

    def _apply(self, edit: Edit, kept: np.ndarray) -> None:
        node = edit.node
        if edit.what == "split":
            if not all(kept[p].all() for p in edit.parts):
                self._resize_split(node, [int(kept[p].sum()) for p in edit.parts])
            return
        mask = kept[edit.ids]
        if mask.all():
            return
        if edit.what == "in":
            rows = np.repeat(mask, edit.block)
            self._take(node, edit.pos, edit.axis, rows)
        elif edit.what == "const":
            self._take(node, edit.pos, edit.axis, mask)
        elif edit.what == "bn":
            for pos in range(1, 5):
                self._take(node, pos, 0, mask)
        elif edit.what == "depthwise":
            self._take(node, 1, 0, mask)
            if len(node.input) > 2 and node.input[2]:
                self._take(node, 2, 0, mask)
            _set_int(node, "group", int(mask.sum()))

    def _take(self, node: Any, pos: int, axis: int, mask: np.ndarray) -> None:
        """Keep ``mask`` along ``axis`` of the initializer ``node`` reads at ``pos``; a shared one
        is copied first, so the other readers keep theirs."""
        name = node.input[pos]
        value = np.compress(mask, self.arrays[name], axis=axis)
        if self.uses.get(name, 0) > 1:
            self.uses[name] -= 1
            name = _fresh(self.arrays, name)
            node.input[pos] = name
            self.uses[name] = 1
        self._store(name, value)

    def _resize_split(self, node: Any, sizes: list[int]) -> None:
        from onnx import helper

        if any(a.name == "split" for a in node.attribute):
            _set_ints(node, "split", sizes)
            return
        opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 13)
        if opset < 13:
            node.attribute.append(helper.make_attribute("split", sizes))
            return
        name = node.input[1] if len(node.input) > 1 and node.input[1] else "split"
        fresh = _fresh(self.arrays, name)
        self._store(fresh, np.array(sizes, np.int64))
        if len(node.input) > 1:
            if node.input[1]:
                self.uses[node.input[1]] -= 1
            node.input[1] = fresh
        else:
            node.input.append(fresh)
        kept = [
            a for a in node.attribute if a.name != "num_outputs"
        ]  # sizes and num_outputs exclude each other
        del node.attribute[:]
        node.attribute.extend(kept)

    def _store(self, name: str, value: np.ndarray) -> None:
        from onnx import numpy_helper

        self.arrays[name] = value
        tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
        for init in self.model.graph.initializer:
            if init.name == name:
                init.CopyFrom(tensor)
                return
        self.model.graph.initializer.append(tensor)


def kept_count(channels: int, amount: float, multiple: int) -> int:
    """How many of ``channels`` stay when ``amount`` of them go: at least one, and a multiple of
    ``multiple`` when there are at least twice that many."""
    keep_n = max(1, round(channels * (1 - amount)))
    if multiple > 1 and channels >= 2 * multiple:
        keep_n = min(channels, max(multiple, round(keep_n / multiple) * multiple))
    return keep_n


def _nchw(layout: Layout) -> bool:
    return layout.rank is not None and layout.rank >= 3 and layout.axis == 1 - layout.rank


def _channel_axis_of(value: np.ndarray, axis: int, n: int) -> int | None:
    """The axis of a constant that lines up with the channel axis when broadcast (numpy rules),
    if all its other axes have size 1 and that one has ``n``; else None."""
    pos = value.ndim + axis
    if pos < 0 or value.shape[pos] != n:
        return None
    if any(s != 1 for i, s in enumerate(value.shape) if i != pos):
        return None
    return pos


def _subgraph_reads(graph: Any) -> set[str]:
    """Names the nodes of every subgraph of ``graph`` read (at any depth)."""
    names: set[str] = set()
    for node in graph.node:
        for a in node.attribute:
            for sub in [a.g] if a.HasField("g") else list(a.graphs):
                names.update(i for n in sub.node for i in n.input)
                names |= _subgraph_reads(sub)
    return names


def _attr(node: Any, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _in_axis(node: Any) -> int:
    if node.op_type == "Gemm":
        return 1 if _attr(node, "transB", 0) else 0
    return 0  # MatMul B is [K, N]


def _set_int(node: Any, name: str, value: int) -> None:
    for a in node.attribute:
        if a.name == name:
            a.i = value
            return


def _set_ints(node: Any, name: str, values: list[int]) -> None:
    for a in node.attribute:
        if a.name == name:
            del a.ints[:]
            a.ints.extend(values)
            return


def _fresh(arrays: dict[str, np.ndarray], name: str) -> str:
    k = 1
    while f"{name}__pruned{k}" in arrays:
        k += 1
    return f"{name}__pruned{k}"
