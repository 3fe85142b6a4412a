"""A torch interpretation of an ONNX graph: :func:`to_torch` turns an ``onnx.ModelProto`` into an
``nn.Module`` that runs the graph's nodes in order with torch ops, its float initializers trainable
``nn.Parameter`` s; :func:`write_back` puts trained values back into the ONNX initializers.

It exists so that a model given only as an ONNX file can be trained in place (distillation after
pruning, :mod:`converter.speedup`) and later handed to torch-based exporters, without a converter
that rebuilds PyTorch layers (onnx2torch needs torchvision; onnx2pytorch fails on Expand
broadcasting and on Conv weights that are not initializers). Every node stays the ONNX node it was,
so writing back is a copy of values, never a re-export. Results follow ONNX Runtime within float
tolerance, not bit for bit. Ops it has no rule for are named by :func:`unsupported_ops`, and
:func:`to_torch` refuses such a graph with :class:`UnsupportedOps`.

Under ``torch.export`` (static shapes) the graph's shape arithmetic (Shape, Gather, Concat, ...
on shapes and integer constants) runs on real tensors outside the tracer, so that Reshape, Expand
and the like read plain integers instead of data-dependent symbols; see :func:`_static_nodes`.

Nothing here depends on the conversion pipeline: input a ModelProto, output a module.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes

log = logging.getLogger(__name__)

Tensor = torch.Tensor
Node = Any
Rule = Callable[["_Node", list[Any]], list[Any]]


class UnsupportedOps(Exception):
    """The graph has ops (or op forms) this interpreter has no rule for."""


# ------------------------------------------------------------------------------------ helpers
_DTYPES: dict[int, torch.dtype] = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    16: torch.bfloat16,
}


class _Node:
    """An ONNX node with its attributes decoded once."""

    def __init__(self, node: Node, opset: int) -> None:
        from onnx import helper

        self.op = node.op_type
        self.name = node.name or f"{node.op_type}:{node.output[0]}"
        self.inputs = list(node.input)
        self.outputs = list(node.output)
        self.opset = opset
        self.attrs: dict[str, Any] = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def attr(self, name: str, default: Any = None) -> Any:
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value


def _ints(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, Tensor):
        return [int(v) for v in _values(value)]
    return [int(v) for v in value]


def _values(t: Tensor) -> list[Any]:
    """A tensor's values as Python numbers. Read outside the tracer: under ``torch.export`` a
    constant (see :func:`_static_nodes`) is a real tensor, and reading it through the tracer would
    make a data-dependent symbol of each value."""
    with _disable_current_modes():
        return t.detach().reshape(-1).tolist()


def _opt(args: list[Any], i: int) -> Any:
    return args[i] if len(args) > i else None


def _pads_for(
    x: Tensor, node: _Node, kernel: list[int], strides: list[int], dilations: list[int]
) -> list[int]:
    """ONNX pads [begin..., end...] with auto_pad resolved."""
    auto = node.attr("auto_pad", "NOTSET")
    n = len(kernel)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads_b, pads_e = [], []
        for i in range(n):
            size = x.shape[2 + i]
            out = math.ceil(size / strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
            small, big = total // 2, total - total // 2
            pads_b.append(small if auto == "SAME_UPPER" else big)
            pads_e.append(big if auto == "SAME_UPPER" else small)
        return pads_b + pads_e
    if auto == "VALID":
        return [0] * (2 * n)
    return _ints(node.attr("pads")) or [0] * (2 * n)


def _symmetric(x: Tensor, pads: list[int], value: float = 0.0) -> tuple[Tensor, list[int]]:
    """(input padded where begin != end, the symmetric padding left for the op)."""
    n = len(pads) // 2
    begin, end = pads[:n], pads[n:]
    if begin == end:
        return x, begin
    flat: list[int] = []
    for i in reversed(range(n)):  # F.pad takes the last dim first
        flat += [begin[i], end[i]]
    return F.pad(x, flat, value=value), [0] * n


# ------------------------------------------------------------------------------------ op rules
def _conv(node: _Node, a: list[Any]) -> list[Any]:
    x, w, b = a[0], a[1], _opt(a, 2)
    n = w.dim() - 2
    strides = _ints(node.attr("strides")) or [1] * n
    dilations = _ints(node.attr("dilations")) or [1] * n
    pads = _pads_for(x, node, list(w.shape[2:]), strides, dilations)
    x, pad = _symmetric(x, pads)
    fn = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    return [fn(x, w, b, strides, pad, dilations, node.attr("group", 1))]


def _conv_transpose(node: _Node, a: list[Any]) -> list[Any]:
    x, w, b = a[0], a[1], _opt(a, 2)
    n = w.dim() - 2
    if node.attr("output_shape") is not None or node.attr("auto_pad", "NOTSET") != "NOTSET":
        raise UnsupportedOps("ConvTranspose with output_shape or auto_pad")
    strides = _ints(node.attr("strides")) or [1] * n
    dilations = _ints(node.attr("dilations")) or [1] * n
    pads = _ints(node.attr("pads")) or [0] * (2 * n)
    out_pad = _ints(node.attr("output_padding")) or [0] * n
    begin, end = pads[:n], pads[n:]
    # asymmetric pads: pad the smaller amount, crop the rest from the end
    pad = [min(p, q) for p, q in zip(begin, end, strict=True)]
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    y = fn(x, w, b, strides, pad, out_pad, node.attr("group", 1), dilations)
    for i in range(n):
        extra_b, extra_e = begin[i] - pad[i], end[i] - pad[i]
        if extra_b or extra_e:
            y = y.narrow(2 + i, extra_b, y.shape[2 + i] - extra_b - extra_e)
    return [y]


def _gemm(node: _Node, a: list[Any]) -> list[Any]:
    x, w, c = a[0], a[1], _opt(a, 2)
    x = x.t() if node.attr("transA", 0) else x
    w = w.t() if node.attr("transB", 0) else w
    y = node.attr("alpha", 1.0) * (x @ w)
    if c is not None:
        y = y + node.attr("beta", 1.0) * c
    return [y]


def _div(node: _Node, a: list[Any]) -> list[Any]:
    x, y = a
    if not x.is_floating_point():
        return [torch.div(x, y, rounding_mode="trunc")]
    return [x / y]


def _clip(node: _Node, a: list[Any]) -> list[Any]:
    lo = _opt(a, 1) if len(a) > 1 else node.attr("min")
    hi = _opt(a, 2) if len(a) > 2 else node.attr("max")
    x = a[0]
    if lo is not None:
        x = torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype, device=x.device))
    if hi is not None:
        x = torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype, device=x.device))
    return [x]


def _softmax(fn: Callable[..., Tensor]) -> Rule:
    def rule(node: _Node, a: list[Any]) -> list[Any]:
        x = a[0]
        if node.opset >= 13:
            return [fn(x, dim=node.attr("axis", -1))]
        axis = node.attr("axis", 1) % x.dim()  # before opset 13: coerced to 2-D at axis
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        return [fn(flat, dim=1).reshape(x.shape)]

    return rule


def _pool(kind: str) -> Rule:
    def rule(node: _Node, a: list[Any]) -> list[Any]:
        if len(node.outputs) > 1 and node.outputs[1]:
            raise UnsupportedOps(f"{node.op} with an indices output")
        x = a[0]
        kernel = _ints(node.attr("kernel_shape"))
        n = len(kernel)
        strides = _ints(node.attr("strides")) or [1] * n
        dilations = _ints(node.attr("dilations")) or [1] * n
        pads = _pads_for(x, node, kernel, strides, dilations)
        ceil = bool(node.attr("ceil_mode", 0))
        if kind == "max":
            x, pad = _symmetric(x, pads, -math.inf)
            fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
            return [fn(x, kernel, strides, pad, dilations, ceil)]
        if any(d != 1 for d in dilations):
            raise UnsupportedOps("AveragePool with dilations")
        include = bool(node.attr("count_include_pad", 0))
        if pads[:n] != pads[n:]:
            if not include:
                raise UnsupportedOps("AveragePool with asymmetric pads not counted")
            x, pad = _symmetric(x, pads)
        else:
            pad = pads[:n]
        fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
        return [fn(x, kernel, strides, pad, ceil, include)]

    return rule


def _global(kind: str) -> Rule:
    def rule(node: _Node, a: list[Any]) -> list[Any]:
        dims = tuple(range(2, a[0].dim()))
        if kind == "avg":
            return [a[0].mean(dim=dims, keepdim=True)]
        return [a[0].amax(dim=dims, keepdim=True)]

    return rule


def _batch_norm(node: _Node, a: list[Any]) -> list[Any]:
    x, scale, bias, mean, var = a[:5]
    return [F.batch_norm(x, mean, var, scale, bias, False, 0.0, node.attr("epsilon", 1e-5))]


def _instance_norm(node: _Node, a: list[Any]) -> list[Any]:
    return [F.instance_norm(a[0], weight=a[1], bias=a[2], eps=node.attr("epsilon", 1e-5))]


def _layer_norm(node: _Node, a: list[Any]) -> list[Any]:
    if len(node.outputs) > 1 and any(node.outputs[1:]):
        raise UnsupportedOps("LayerNormalization with mean/inv_std outputs")
    x, scale, bias = a[0], a[1], _opt(a, 2)
    axis = node.attr("axis", -1) % x.dim()
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + node.attr("epsilon", 1e-5)) * scale
    return [y + bias if bias is not None else y]


def _concat(node: _Node, a: list[Any]) -> list[Any]:
    parts = [t for t in a if t is not None and t.numel() > 0] or [t for t in a if t is not None][:1]
    return [torch.cat(parts, dim=node.attr("axis"))]


def _split(node: _Node, a: list[Any]) -> list[Any]:
    x = a[0]
    axis = node.attr("axis", 0)
    sizes = _ints(_opt(a, 1)) or _ints(node.attr("split"))
    if not sizes:
        parts = node.attr("num_outputs", len(node.outputs))
        size = x.shape[axis]
        each = math.ceil(size / parts)
        sizes = [min(each, size - i * each) for i in range(parts)]
    return list(torch.split(x, sizes, dim=axis))


def _slice(node: _Node, a: list[Any]) -> list[Any]:
    x = a[0]
    if len(a) > 1:
        starts, ends = _ints(a[1]), _ints(a[2])
        axes = _ints(_opt(a, 3)) or list(range(len(starts)))
        steps = _ints(_opt(a, 4)) or [1] * len(starts)
    else:  # opset < 10: attributes
        starts, ends = _ints(node.attr("starts")), _ints(node.attr("ends"))
        axes = _ints(node.attr("axes")) or list(range(len(starts)))
        steps = [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= x.dim()
        size = x.shape[axis]
        if step > 0:
            s = min(max(start + size if start < 0 else start, 0), size)
            e = min(max(end + size if end < 0 else end, 0), size)
            x = x.narrow(axis, s, max(0, e - s)) if step == 1 else _stepped(x, axis, s, e, step)
        else:
            s = min(max(start + size if start < 0 else start, -1), size - 1)
            e = min(max(end + size if end < 0 else end, -1), size - 1)
            index = torch.arange(s, e, step, device=x.device)
            x = x.index_select(axis, index)
    return [x]


def _stepped(x: Tensor, axis: int, start: int, end: int, step: int) -> Tensor:
    index = torch.arange(start, end, step, device=x.device)
    return x.index_select(axis, index)


def _reshape(node: _Node, a: list[Any]) -> list[Any]:
    x, shape = a[0], _ints(a[1])
    if not node.attr("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


def _flatten(node: _Node, a: list[Any]) -> list[Any]:
    x = a[0]
    axis = node.attr("axis", 1) % (x.dim() + 1) if x.dim() else 0
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


def _transpose(node: _Node, a: list[Any]) -> list[Any]:
    perm = _ints(node.attr("perm")) or list(reversed(range(a[0].dim())))
    return [a[0].permute(perm)]


def _axes(node: _Node, a: list[Any]) -> list[int]:
    return _ints(_opt(a, 1)) if len(a) > 1 and a[1] is not None else _ints(node.attr("axes"))


def _squeeze(node: _Node, a: list[Any]) -> list[Any]:
    x, axes = a[0], _axes(node, a)
    if not axes:
        return [x.squeeze()]
    return [x.squeeze(tuple(ax % x.dim() for ax in axes))]


def _unsqueeze(node: _Node, a: list[Any]) -> list[Any]:
    x, axes = a[0], _axes(node, a)
    rank = x.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return [x]


def _shape(node: _Node, a: list[Any]) -> list[Any]:
    shape = list(a[0].shape)
    start, end = node.attr("start", 0), node.attr("end", len(shape))
    return [torch.tensor(shape[start:end], dtype=torch.int64, device=a[0].device)]


def _gather(node: _Node, a: list[Any]) -> list[Any]:
    x, idx = a
    axis = node.attr("axis", 0) % x.dim()
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    picked = x.index_select(axis, idx.reshape(-1))
    return [picked.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))]


def _gather_elements(node: _Node, a: list[Any]) -> list[Any]:
    x, idx = a
    axis = node.attr("axis", 0) % x.dim()
    idx = idx.long()
    return [torch.gather(x, axis, torch.where(idx < 0, idx + x.shape[axis], idx))]


def _expand(node: _Node, a: list[Any]) -> list[Any]:
    x, shape = a[0], _ints(a[1])
    return [x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(shape)))]


def _tile(node: _Node, a: list[Any]) -> list[Any]:
    return [a[0].repeat(_ints(a[1]))]


def _reduce(kind: str) -> Rule:
    def rule(node: _Node, a: list[Any]) -> list[Any]:
        x = a[0]
        axes = _axes(node, a)
        keep = bool(node.attr("keepdims", 1))
        if not axes:
            if node.attr("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        dims = tuple(ax % x.dim() for ax in axes)
        if kind == "mean":
            return [x.mean(dim=dims, keepdim=keep)]
        if kind == "sum":
            return [x.sum(dim=dims, keepdim=keep)]
        if kind == "max":
            return [x.amax(dim=dims, keepdim=keep)]
        if kind == "min":
            return [x.amin(dim=dims, keepdim=keep)]
        if kind == "prod":
            for d in sorted(dims, reverse=True):
                x = x.prod(dim=d, keepdim=keep)
            return [x]
        if kind == "l2":
            return [torch.sqrt((x * x).sum(dim=dims, keepdim=keep))]
        return [(x * x).sum(dim=dims, keepdim=keep)]  # sumsquare

    return rule


def _arg(kind: str) -> Rule:
    def rule(node: _Node, a: list[Any]) -> list[Any]:
        if node.attr("select_last_index", 0):
            raise UnsupportedOps(f"{node.op} with select_last_index")
        fn = torch.argmax if kind == "max" else torch.argmin
        return [fn(a[0], dim=node.attr("axis", 0), keepdim=bool(node.attr("keepdims", 1)))]

    return rule


def _resize(node: _Node, a: list[Any]) -> list[Any]:
    x = a[0]
    if node.op == "Upsample":
        scales = _opt(a, 1) if len(a) > 1 else node.attr("scales")
        sizes = None
    else:
        scales = a[2] if len(a) > 2 and a[2] is not None and a[2].numel() else None
        sizes = a[3] if len(a) > 3 and a[3] is not None and a[3].numel() else None
    if sizes is not None:
        out = _ints(sizes)[2:]
    else:
        factors = [float(s) for s in (_values(scales) if isinstance(scales, Tensor) else scales)]
        if factors[:2] != [1.0, 1.0]:
            raise UnsupportedOps("Resize over the batch or channel axis")
        out = [math.floor(d * f) for d, f in zip(x.shape[2:], factors[2:], strict=True)]
    mode = node.attr("mode", "nearest")
    coord = node.attr("coordinate_transformation_mode", "half_pixel" if node.op == "Resize" else "asymmetric")
    if mode == "nearest":
        nearest = node.attr("nearest_mode", "round_prefer_floor")
        if coord == "asymmetric" and (nearest == "floor" or node.op == "Upsample"):
            return [F.interpolate(x, size=out, mode="nearest")]
        if coord in ("half_pixel", "pytorch_half_pixel") and nearest == "round_prefer_ceil":
            return [F.interpolate(x, size=out, mode="nearest-exact")]
        if _integer_upscale(x, out) and coord in ("asymmetric", "half_pixel", "pytorch_half_pixel"):
            # an integer upscale picks the same source pixels under these rules
            return [F.interpolate(x, size=out, mode="nearest")]
        raise UnsupportedOps(f"Resize nearest with {coord}/{nearest}")
    if mode == "linear" and x.dim() in (3, 4, 5):
        kind = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
        if coord == "align_corners":
            return [F.interpolate(x, size=out, mode=kind, align_corners=True)]
        if coord in ("half_pixel", "pytorch_half_pixel"):
            return [F.interpolate(x, size=out, mode=kind, align_corners=False)]
    raise UnsupportedOps(f"Resize mode {mode} with {coord}")


def _integer_upscale(x: Tensor, out: list[int]) -> bool:
    return all(o % s == 0 and o >= s for o, s in zip(out, x.shape[2:], strict=True))


def _pad(node: _Node, a: list[Any]) -> list[Any]:
    x = a[0]
    pads = _ints(_opt(a, 1)) if len(a) > 1 else _ints(node.attr("pads"))
    value = a[2] if len(a) > 2 and a[2] is not None else node.attr("value", 0.0)
    if len(a) > 3 and a[3] is not None:
        raise UnsupportedOps("Pad with axes")
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(
        node.attr("mode", "constant")
    )
    if mode is None:
        raise UnsupportedOps(f"Pad mode {node.attr('mode')}")
    n = x.dim()
    begin, end = pads[:n], pads[n:]
    flat: list[int] = []
    for i in reversed(range(n)):
        flat += [begin[i], end[i]]
    while len(flat) > 2 and flat[-2:] == [0, 0]:  # torch pads at most the trailing dims it is given
        flat = flat[:-2]
    if mode == "constant":
        fill = float(_values(value)[0]) if isinstance(value, Tensor) else float(value)
        return [F.pad(x, flat, value=fill)]
    return [F.pad(x, flat, mode=mode)]


def _constant(node: _Node, a: list[Any]) -> list[Any]:
    from onnx import numpy_helper

    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            value = node.attrs[key]
            if key == "value":
                return [torch.from_numpy(numpy_helper.to_array(value).copy())]
            dtype = torch.float32 if "float" in key else torch.int64
            return [torch.tensor(value, dtype=dtype)]
    raise UnsupportedOps("Constant without a tensor, float or int value")


def _constant_of_shape(node: _Node, a: list[Any]) -> list[Any]:
    from onnx import numpy_helper

    value = node.attrs.get("value")
    fill = numpy_helper.to_array(value).reshape(-1) if value is not None else np.zeros(1, np.float32)
    t = torch.from_numpy(fill.copy())
    return [t.expand(*_ints(a[0])).clone() if _ints(a[0]) else t.reshape(())]


def _cast(node: _Node, a: list[Any]) -> list[Any]:
    to = node.attr("to")
    if to not in _DTYPES:
        raise UnsupportedOps(f"Cast to ONNX type {to}")
    return [a[0].to(_DTYPES[to])]


def _where(node: _Node, a: list[Any]) -> list[Any]:
    return [torch.where(a[0].bool(), a[1], a[2])]


def _range(node: _Node, a: list[Any]) -> list[Any]:
    start, limit, delta = (_values(t)[0] for t in a)
    return [torch.arange(start, limit, delta, dtype=a[0].dtype, device=a[0].device)]


def _hard_sigmoid(node: _Node, a: list[Any]) -> list[Any]:
    return [torch.clamp(node.attr("alpha", 0.2) * a[0] + node.attr("beta", 0.5), 0.0, 1.0)]


def _gelu(node: _Node, a: list[Any]) -> list[Any]:
    return [F.gelu(a[0], approximate=node.attr("approximate", "none"))]


def _matmul(node: _Node, a: list[Any]) -> list[Any]:
    return [torch.matmul(a[0], a[1])]


def _einsum(node: _Node, a: list[Any]) -> list[Any]:
    return [torch.einsum(node.attr("equation"), *a)]


def _cumsum(node: _Node, a: list[Any]) -> list[Any]:
    if node.attr("exclusive", 0) or node.attr("reverse", 0):
        raise UnsupportedOps("CumSum exclusive/reverse")
    return [torch.cumsum(a[0], dim=int(_values(a[1])[0]))]


def _mod(node: _Node, a: list[Any]) -> list[Any]:
    return [torch.fmod(a[0], a[1]) if node.attr("fmod", 0) else torch.remainder(a[0], a[1])]


def _unary(fn: Callable[[Tensor], Tensor]) -> Rule:
    return lambda node, a: [fn(a[0])]


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Rule:
    return lambda node, a: [fn(a[0], a[1])]


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> Rule:
    def rule(node: _Node, a: list[Any]) -> list[Any]:
        out = a[0]
        for t in a[1:]:
            out = fn(out, t)
        return [out]

    return rule


def _alpha(fn: Callable[..., Tensor], default: float) -> Rule:
    return lambda node, a: [fn(a[0], node.attr("alpha", default))]


RULES: dict[str, Rule] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Einsum": _einsum,
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _div,
    "Pow": _binary(torch.pow),
    "Mod": _mod,
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "Sqrt": _unary(torch.sqrt),
    "Reciprocal": _unary(torch.reciprocal),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil),
    "Sin": _unary(torch.sin),
    "Cos": _unary(torch.cos),
    "Relu": _unary(torch.relu),
    "Sigmoid": _unary(torch.sigmoid),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _unary(F.hardswish),
    "Clip": _clip,
    "LeakyRelu": _alpha(F.leaky_relu, 0.01),
    "Elu": _alpha(F.elu, 1.0),
    "Tanh": _unary(torch.tanh),
    "Erf": _unary(torch.erf),
    "Gelu": _gelu,
    "Softplus": _unary(F.softplus),
    "Mish": _unary(F.mish),
    "PRelu": _binary(lambda x, s: torch.where(x >= 0, x, x * s)),
    "Softmax": _softmax(torch.softmax),
    "LogSoftmax": _softmax(torch.log_softmax),
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": _global("avg"),
    "GlobalMaxPool": _global("max"),
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": _instance_norm,
    "LayerNormalization": _layer_norm,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Shape": _shape,
    "Size": lambda node, a: [torch.tensor(a[0].numel(), dtype=torch.int64)],
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "Expand": _expand,
    "Tile": _tile,
    "ReduceMean": _reduce("mean"),
    "ReduceSum": _reduce("sum"),
    "ReduceMax": _reduce("max"),
    "ReduceMin": _reduce("min"),
    "ReduceProd": _reduce("prod"),
    "ReduceL2": _reduce("l2"),
    "ReduceSumSquare": _reduce("sumsquare"),
    "ArgMax": _arg("max"),
    "ArgMin": _arg("min"),
    "Resize": _resize,
    "Upsample": _resize,
    "Pad": _pad,
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Cast": _cast,
    "Identity": lambda node, a: [a[0]],
    "Dropout": lambda node, a: [a[0]],
    "Where": _where,
    "Equal": _binary(torch.eq),
    "Greater": _binary(torch.gt),
    "GreaterOrEqual": _binary(torch.ge),
    "Less": _binary(torch.lt),
    "LessOrEqual": _binary(torch.le),
    "Not": _unary(torch.logical_not),
    "And": _binary(torch.logical_and),
    "Or": _binary(torch.logical_or),
    "Range": _range,
    "CumSum": _cumsum,
}

#: ops whose outputs are made from attributes on the CPU: moved to the inputs' device (a GPU).
_MADE_ON_CPU = frozenset({"Constant", "ConstantOfShape", "Size"})

#: (op, input position) of float initializers that are settings, not weights: never trained.
_FIXED_INPUTS: dict[str, Sequence[int]] = {
    "BatchNormalization": (3, 4),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
    "Clip": (1, 2),
    "Pad": (1, 2, 3),
    "Pow": (1,),
    "Range": (0, 1, 2),
    "ConstantOfShape": (0,),
}


def unsupported_ops(model: Any) -> list[str]:
    """Op types in the graph this interpreter has no rule for (sorted; empty when all are covered)."""
    missing = {
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        for n in model.graph.node
        if n.domain not in ("", "ai.onnx") or n.op_type not in RULES
    }
    return sorted(missing)


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


class OnnxModule(nn.Module):
    """The graph's nodes run in order with torch ops. ``forward`` takes the graph inputs in order
    (or by name) and returns a tuple of its outputs. Float initializers with more than one value
    are parameters (trainable unless they are settings such as BatchNorm statistics or Resize
    scales); the rest are buffers."""

    def __init__(self, model: Any, trainable: bool = True) -> None:
        super().__init__()
        from onnx import numpy_helper

        missing = unsupported_ops(model)
        if missing:
            raise UnsupportedOps(", ".join(missing))
        graph = model.graph
        opset = _opset(model)
        self.nodes = [_Node(n, opset) for n in graph.node]
        fixed = _fixed_initializers(graph)
        self.weights = nn.ParameterList()
        self._slots: dict[str, tuple[str, int]] = {}
        buffers = 0
        for init in graph.initializer:
            array = numpy_helper.to_array(init)
            tensor = torch.from_numpy(np.array(array, copy=True))
            if array.dtype.kind == "f" and array.size > 1 and init.name not in fixed:
                self.weights.append(nn.Parameter(tensor, requires_grad=trainable))
                self._slots[init.name] = ("param", len(self.weights) - 1)
            else:
                self.register_buffer(f"const_{buffers}", tensor, persistent=False)
                self._slots[init.name] = ("buffer", buffers)
                buffers += 1
        self._constants = self._real_constants()
        self._static = _static_nodes(self.nodes, set(self._constants))
        inits = {i.name for i in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in inits]
        self.output_names = [o.name for o in graph.output]

    def _real_constants(self) -> dict[str, Tensor]:
        """Initializer name -> its buffer, held outside the module's state: under ``torch.export``
        the registered buffers are fake tensors, these stay real."""
        return {
            name: getattr(self, f"const_{i}") for name, (kind, i) in self._slots.items() if kind == "buffer"
        }

    def _apply(self, fn: Any, recurse: bool = True) -> OnnxModule:
        # .to(device) and the like replace the buffers; the real copies must follow them
        out = super()._apply(fn, recurse)
        self._constants = self._real_constants()
        return out

    def parameter_names(self) -> dict[str, nn.Parameter]:
        """Initializer name -> its parameter."""
        return {name: self.weights[i] for name, (kind, i) in self._slots.items() if kind == "param"}

    def _value(self, name: str) -> Tensor:
        kind, i = self._slots[name]
        return self.weights[i] if kind == "param" else getattr(self, f"const_{i}")

    def activation_bytes(self, *inputs: Tensor, **named: Tensor) -> int:
        """Bytes of every tensor one call computes: what training holds for the backward pass
        (gradients take about as much again)."""
        sizes: list[int] = []
        with torch.no_grad():
            self._run(inputs, named, sizes)
        return sum(sizes)

    def forward(self, *inputs: Tensor, **named: Tensor) -> tuple[Tensor, ...]:
        return self._run(inputs, named, None)

    def _run(
        self, inputs: Sequence[Tensor], named: dict[str, Tensor], sizes: list[int] | None
    ) -> tuple[Tensor, ...]:
        env: dict[str, Any] = dict(zip(self.input_names, inputs, strict=False))
        env.update(named)
        missing = [n for n in self.input_names if n not in env]
        if missing:
            raise ValueError(f"missing graph inputs: {', '.join(missing)}")
        device = next((t.device for t in env.values() if isinstance(t, Tensor)), None)
        exporting = torch.compiler.is_exporting()
        for i, node in enumerate(self.nodes):
            static = exporting and i in self._static
            args = [self._lookup(env, name, exporting) for name in node.inputs]
            try:
                if static:
                    with _disable_current_modes():  # real tensors: values known at export time
                        results = RULES[node.op](node, args)
                else:
                    results = RULES[node.op](node, args)
            except UnsupportedOps:
                raise
            except Exception as exc:
                raise RuntimeError(f"node {node.name} ({node.op}): {exc}") from exc
            if node.op in _MADE_ON_CPU and device is not None:
                results = [r.to(device) for r in results]
            for name, value in zip(node.outputs, results, strict=False):
                if name:
                    env[name] = value
                    if sizes is not None and isinstance(value, Tensor):
                        sizes.append(value.numel() * value.element_size())
        return tuple(env[name] if name in env else self._value(name) for name in self.output_names)

    def _lookup(self, env: dict[str, Any], name: str, real: bool = False) -> Any:
        """``real``: a constant as its real tensor (under ``torch.export`` the buffer is fake, and
        an axes or shape read from it would be data-dependent); the export lifts it as a constant."""
        if not name:
            return None
        if name in env:
            return env[name]
        if real and name in self._constants:
            return self._constants[name]
        return self._value(name)


#: ops whose output depends on the input's shape only, never on its values.
_SHAPE_OPS = frozenset({"Shape", "Size"})


def _static_nodes(nodes: Sequence[_Node], constants: set[str]) -> frozenset[int]:
    """Positions of nodes whose outputs are known once the input shapes are: Shape and Size, and
    every node fed only by constants (buffers, not trainable parameters) and such nodes. Exported
    at static shapes they are constants; traced as tensors, a Reshape of their values would be
    data-dependent (``.tolist()`` of a traced tensor), which ``torch.export`` refuses."""
    known = set(constants)
    static: set[int] = set()
    for i, node in enumerate(nodes):
        if node.op in _SHAPE_OPS or all(not name or name in known for name in node.inputs):
            static.add(i)
            known.update(n for n in node.outputs if n)
    return frozenset(static)


def _fixed_initializers(graph: Any) -> set[str]:
    fixed: set[str] = set()
    for node in graph.node:
        for pos in _FIXED_INPUTS.get(node.op_type, ()):
            if pos < len(node.input) and node.input[pos]:
                fixed.add(node.input[pos])
    return fixed


def to_torch(model: Any, trainable: bool = True) -> OnnxModule:
    """The graph as an ``nn.Module`` (raises :class:`UnsupportedOps` naming the ops it cannot run)."""
    return OnnxModule(model, trainable)


def write_back(module: OnnxModule, model: Any) -> Any:
    """Copy the module's parameter values into ``model``'s initializers (in place; returns it)."""
    from onnx import numpy_helper

    params = module.parameter_names()
    for i, init in enumerate(model.graph.initializer):
        if init.name in params:
            dtype = numpy_helper.to_array(init).dtype
            value = params[init.name].detach().cpu().numpy().astype(dtype)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, init.name))
    return model
