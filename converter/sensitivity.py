"""Per-node sensitivity: how much error each node adds when the model is quantized.

One pass, whatever the model's size: the float model and a fully quantized candidate both run
on a few samples with every intermediate tensor exposed, and each node's *local* error is the
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


def _expose_all(path: Path, out: Path) -> list[str]:
    """Save a copy whose outputs include every float tensor a node produces; returns their names."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        log.debug("shape inference failed for %s", path.name)
    types = {
        v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.output)
    }
    existing = {o.name for o in model.graph.output}
    names = []
    for node in model.graph.node:
        for name in node.output:
            if name and name not in existing and types.get(name, TensorProto.FLOAT) == TensorProto.FLOAT:
                model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
                names.append(name)
    onnx.save_model(model, str(out))
    return names


def _activations(path: Path, workdir: Path, tag: str, data: Dataset, threads: int) -> dict[str, np.ndarray]:
    exposed = workdir / f"sensitivity-{tag}.onnx"
    _expose_all(path, exposed)
    session = make_session(exposed, threads, optimization_level="disable")
    names = [o.name for o in session.get_outputs()]
    collected: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feeds in data.batches(1):
        try:
            outs = session.run(None, feeds)
        except Exception as exc:  # an output that cannot be exposed: fall back to no ranking
            log.warning("sensitivity: cannot run %s with exposed tensors: %s", path.name, first_line(exc))
            return {}
        for n, o in zip(names, outs, strict=True):
            collected[n].append(np.asarray(o, dtype=np.float64).reshape(-1))
    return {n: np.concatenate(v) for n, v in collected.items() if v}


def measure(float_path: Path, quant_path: Path, workdir: Path, data: Dataset, threads: int) -> Sensitivity:
    import onnx

    sample = data.take(SENSITIVITY_SAMPLES)
    ref = _activations(float_path, workdir, "float", sample, threads)
    got = _activations(quant_path, workdir, "quant", sample, threads)
    if not ref or not got:
        return Sensitivity({})

    def rel(name: str) -> float:
        """Relative error of a tensor as consumers see it (after its QDQ pair, if it has one)."""
        seen = name + DQ_SUFFIX if name + DQ_SUFFIX in got else name
        if name not in ref or seen not in got or ref[name].shape != got[seen].shape:
            return 0.0
        return float(np.linalg.norm(got[seen] - ref[name]) / max(np.linalg.norm(ref[name]), 1e-12))

    loss: dict[str, float] = {}
    ops: dict[str, str] = {}
    for node in onnx.load(str(float_path), load_external_data=False).graph.node:
        if not node.name or node.op_type not in QUANTIZED_OPS:
            continue
        out_err = max((rel(o) for o in node.output if o), default=0.0)
        in_err = max((rel(i) for i in node.input if i), default=0.0)
        loss[node.name] = max(0.0, out_err - in_err)
        ops[node.name] = node.op_type
    return Sensitivity(loss, ops)


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
