"""Per-node sensitivity: how much error each node adds when the model is quantized.

One pass, whatever the model's size: the float model and a fully quantized candidate run in step
on a few samples with their intermediate tensors exposed, a chunk of tensors at a time sized to the
memory limit (:mod:`converter.memory`), keeping two running sums per tensor; and each node's *local* error is the
relative error of its output (as its consumers see it, after any QDQ pair) minus the worst
relative error of its inputs — the error that node and the quantization of its output added on
top of what reached it. Quantizers keep the names of the tensors nodes produce, so tensors match
by name. The search keeps the worst nodes in float first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converter import memory
from converter.calibration import Dataset
from converter.errors import first_line
from converter.runtime import make_session

log = logging.getLogger(__name__)

SENSITIVITY_SAMPLES = 16
REFINE_SAMPLES = 64
#: onnxruntime's QDQ quantizer names the dequantized copy of tensor X ``X_DequantizeLinear_Output``.
DQ_SUFFIX = "_DequantizeLinear_Output"
#: op types whose error is worth keeping in float (the ones quantizers touch).
QUANTIZED_OPS = (
    "Conv",
    "MatMul",
    "Gemm",
    "Gather",
    "Add",
    "Mul",
    "Softmax",
    "Relu",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Concat",
    "Transpose",
    "Reshape",
    "LayerNormalization",
    "Sigmoid",
    "Clip",
    "ConvTranspose",
    "Attention",
    "LSTM",
    "GRU",
    "Resize",
    "Split",
    "Where",
    "Pad",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "ReduceMean",
    "Erf",
    "Gelu",
    "Div",
    "Sub",
    "Pow",
    "Sqrt",
    "Tanh",
)


@dataclass(frozen=True)
class Sensitivity:
    #: node name -> error the node adds (relative, 0 = harmless).
    loss: dict[str, float]
    #: node name -> op type, to keep only the nodes a scheme actually quantizes.
    op_types: dict[str, str] = field(default_factory=dict)
    metric: str = "relative output error the node adds over its inputs, in the fully quantized model"

    def ranked(self) -> list[str]:
        """Worst first."""
        return sorted(self.loss, key=lambda n: -self.loss[n])


#: share of the memory room one chunk of exposed tensors may use: for one sample, the float model's
#: copies, the quantized model's copies and their dequantized twins, plus one difference at a time.
CHUNK_SHARE = 0.5
#: bytes per exposed tensor held at once in a chunk (float, quantized, dequantized, difference).
COPIES = 4


def _float_tensors(model: object) -> list[str]:
    """Names of the float tensors nodes produce (unknown types count as float), in graph order."""
    import onnx
    from onnx import TensorProto

    try:
        inferred = onnx.shape_inference.infer_shapes(model)  # type: ignore[arg-type]
    except Exception:
        log.debug("shape inference failed; every node output counts as float")
        inferred = model
    graph = inferred.graph  # type: ignore[attr-defined]
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.output)}
    return [
        name
        for node in graph.node
        for name in node.output
        if name and types.get(name, TensorProto.FLOAT) == TensorProto.FLOAT
    ]


class _Exposer:
    """Copies of one model whose outputs are a chosen group of its intermediate tensors."""

    def __init__(self, path: Path, workdir: Path, tag: str, threads: int) -> None:
        import onnx

        self.model = onnx.load(str(path))
        self.produced = {o for n in self.model.graph.node for o in n.output if o}
        self.originals = len(self.model.graph.output)
        self.path = workdir / f"sensitivity-{tag}.onnx"
        self.threads = threads

    def session(self, names: list[str]) -> object:
        import onnx
        from onnx import TensorProto, helper

        outputs = self.model.graph.output
        del outputs[self.originals :]
        present = {o.name for o in outputs}
        for name in names:
            if name in self.produced and name not in present:
                outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
                present.add(name)
        onnx.save_model(self.model, str(self.path))
        return make_session(self.path, self.threads, optimization_level="disable")


def _squared(x: np.ndarray) -> float:
    flat = np.asarray(x, dtype=np.float32).reshape(-1)
    return float(np.dot(flat.astype(np.float64, copy=False), flat)) if flat.size else 0.0


def _errors(
    float_path: Path, quant_path: Path, workdir: Path, data: Dataset, threads: int
) -> tuple[dict[str, float], list[str]]:
    """Relative error of every float tensor as consumers see it (after its QDQ pair, if any).

    The float and the quantized model run sample by sample in step, each exposing only a chunk of
    tensors sized to the memory room; per tensor only two running sums are kept. Returns the
    errors and the tensors skipped because one sample's copies of them alone would not fit.
    """
    floats = _Exposer(float_path, workdir, "float", threads)
    quants = _Exposer(quant_path, workdir, "quant", threads)
    names = [
        n for n in _float_tensors(floats.model) if n in quants.produced or n + DQ_SUFFIX in quants.produced
    ]
    sizes = memory.tensor_bytes(memory.concrete_shapes(float_path, data.first()))
    fallback = max(sizes.values(), default=1 * memory.MB)
    room = memory.active().share(CHUNK_SHARE)
    too_big = [n for n in names if COPIES * sizes.get(n, fallback) > room]
    fitting = [n for n in names if n not in set(too_big)]
    groups = memory.chunks_within(sizes, fitting, max(1, room // COPIES), fallback)
    log.info(
        "sensitivity: %d tensors in %d chunk(s) of at most %.0f MB per sample%s",
        len(fitting),
        len(groups),
        room / COPIES / memory.MB,
        f"; {len(too_big)} too big to compare" if too_big else "",
    )
    err2: dict[str, float] = {}
    ref2: dict[str, float] = {}
    for group in groups:
        seen = {n: n + DQ_SUFFIX if n + DQ_SUFFIX in quants.produced else n for n in group}
        ref_session = floats.session(group)
        got_session = quants.session(list(seen.values()))
        ref_names = [o.name for o in ref_session.get_outputs()]  # type: ignore[attr-defined]
        got_names = [o.name for o in got_session.get_outputs()]  # type: ignore[attr-defined]
        for feeds in data.batches(1):
            ref = dict(zip(ref_names, ref_session.run(None, feeds), strict=True))  # type: ignore[attr-defined]
            got = dict(zip(got_names, got_session.run(None, feeds), strict=True))  # type: ignore[attr-defined]
            for name in group:
                r, g = ref.get(name), got.get(seen[name])
                if r is None or g is None or np.shape(r) != np.shape(g):
                    continue
                err2[name] = err2.get(name, 0.0) + _squared(np.subtract(g, r, dtype=np.float32))
                ref2[name] = ref2.get(name, 0.0) + _squared(r)
            del ref, got
    errors = {n: float(np.sqrt(err2[n] / max(ref2[n], 1e-24))) for n in err2}
    return errors, too_big


def measure(float_path: Path, quant_path: Path, workdir: Path, data: Dataset, threads: int) -> Sensitivity:
    import onnx

    sample = data.take(SENSITIVITY_SAMPLES)
    try:
        errors, skipped = _errors(float_path, quant_path, workdir, sample, threads)
    except Exception as exc:  # an output that cannot be exposed: fall back to no ranking
        log.warning("sensitivity: cannot run %s with exposed tensors: %s", quant_path.name, first_line(exc))
        return Sensitivity({})
    if not errors:
        return Sensitivity({})

    def rel(name: str) -> float:
        return errors.get(name, 0.0)

    loss: dict[str, float] = {}
    ops: dict[str, str] = {}
    for node in onnx.load(str(float_path), load_external_data=False).graph.node:
        if not node.name or node.op_type not in QUANTIZED_OPS:
            continue
        out_err = max((rel(o) for o in node.output if o), default=0.0)
        in_err = max((rel(i) for i in node.input if i), default=0.0)
        loss[node.name] = max(0.0, out_err - in_err)
        ops[node.name] = node.op_type
    metric = Sensitivity.metric
    if skipped:
        metric += f" ({len(skipped)} tensors too big for the memory limit were not compared)"
    return Sensitivity(loss, ops, metric)


def refine(
    suspects: list[str],
    base: Path,
    data: Dataset,
    threads: int,
    classifier: bool,
    quantize_only: Callable[[str, Path], Path],
    workdir: Path,
    seconds: float,
) -> Sensitivity:
    """Re-rank suspects by the fidelity loss of quantizing each one alone (slower, more faithful).

    Stops at its time share; suspects it did not reach keep their order after the measured ones.
    """
    from converter.measure import fidelity, outputs_over

    sample = data.take(REFINE_SAMPLES)
    reference = outputs_over(make_session(base, threads), sample)
    deadline = time.monotonic() + seconds
    loss: dict[str, float] = {}
    for i, node in enumerate(suspects):
        if time.monotonic() > deadline:
            log.info("sensitivity: refined %d of %d suspects within its time share", i, len(suspects))
            break
        out = quantize_only(node, workdir / "sensitivity-one.onnx")
        fid = fidelity(reference, outputs_over(make_session(out, threads), sample), classifier)
        disagreement = 0.0 if fid.argmax_agreement is None else 1.0 - fid.argmax_agreement
        loss[node] = max(0.0, 1.0 - fid.cosine) + disagreement + 1e-9
    floor = min(loss.values(), default=1.0)
    for rank, node in enumerate(n for n in suspects if n not in loss):
        loss[node] = floor * 1e-3 / (rank + 1)  # unmeasured: after every measured node, in suspect order
    return Sensitivity(
        loss, {}, "fidelity loss (1 - cosine + argmax disagreement) with the node quantized alone"
    )


def quantized_nodes(float_path: Path, quant_path: Path) -> set[str]:
    """Nodes of the float model the quantized one changed: replaced (dynamic int8 swaps MatMul for
    MatMulInteger under a new name) or fed by a DequantizeLinear (QDQ). Keeping any other node in
    float changes nothing, so the back-off never spends a step on one."""
    import onnx

    quant = onnx.load(str(quant_path), load_external_data=False).graph
    dequantized = {o for n in quant.node if n.op_type == "DequantizeLinear" for o in n.output}
    by_name = {n.name: n for n in quant.node if n.name}
    touched = set()
    for node in onnx.load(str(float_path), load_external_data=False).graph.node:
        if not node.name or node.op_type not in QUANTIZED_OPS:
            continue
        twin = by_name.get(node.name)
        if twin is None or twin.op_type != node.op_type or any(i in dequantized for i in twin.input):
            touched.add(node.name)
    return touched


def worst_first(sensitivity: Sensitivity, op_types: tuple[str, ...] | None = None) -> list[str]:
    """Nodes (of ``op_types``, if given), worst first; those that seem harmless come last, not never:
    the one-pass measure can miss a node whose error shows only downstream."""
    return [n for n in sensitivity.ranked() if op_types is None or sensitivity.op_types.get(n) in op_types]


def loss_summary(sensitivity: Sensitivity, top: int = 5) -> dict[str, float]:
    return {n: round(sensitivity.loss[n], 6) for n in sensitivity.ranked()[:top]}
