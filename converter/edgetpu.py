"""Which ops of a ``.tflite`` an Edge TPU can run, and whether the model is fully integer.

The Edge TPU compiler (``edgetpu_compiler``) is a Debian package for x86-64 Linux from Google's Coral
apt repository, which is not reachable here (and not on PyPI): the converter does not compile.
In a real pipeline the compile step runs on the full-integer ``model.tflite`` after quantization and
before bundling (``edgetpu_compiler -s model.tflite`` writes ``model_edgetpu.tflite``, whose
``edgetpu-custom-op`` the agent would run through the ``libedgetpu`` delegate). What the compiler
would map is predicted here from its published rules so the report can name each op it would leave
on the CPU:

* only ops in :data:`EDGETPU_OPS` run on the Edge TPU, and only with int8/uint8 tensors (int32 biases);
* the compiler maps one segment from the graph's start: from the first op it cannot run, every later
  op runs on the CPU too.

Source: https://coral.ai/docs/edgetpu/models-intro/#supported-operations (compiler 16).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converter.litert_session import interpreter

#: LiteRT builtin op names the Edge TPU compiler maps (as the interpreter names them).
EDGETPU_OPS = frozenset(
    {
        "ADD",
        "AVERAGE_POOL_2D",
        "CONCATENATION",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "EXPAND_DIMS",
        "FULLY_CONNECTED",
        "L2_NORMALIZATION",
        "LOGISTIC",
        "LSTM",
        "MAX_POOL_2D",
        "MAXIMUM",
        "MEAN",
        "MINIMUM",
        "MUL",
        "PACK",
        "PAD",
        "PRELU",
        "QUANTIZE",
        "REDUCE_MAX",
        "REDUCE_MIN",
        "RELU",
        "RELU6",
        "RELU_N1_TO_1",
        "RESHAPE",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "RSQRT",
        "SLICE",
        "SOFTMAX",
        "SPACE_TO_DEPTH",
        "SPLIT",
        "SQUARED_DIFFERENCE",
        "SQUEEZE",
        "STRIDED_SLICE",
        "SUB",
        "SUM",
        "TANH",
        "TRANSPOSE",
        "TRANSPOSE_CONV",
    }
)
#: integer tensor types the Edge TPU computes in (int32 only as biases and shapes).
_INTEGER_KINDS = {np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int32)}


@dataclass
class OpAudit:
    """Per op type: how many, and why the Edge TPU compiler would leave them on the CPU."""

    fully_integer: bool
    #: op type -> count of ops the Edge TPU cannot run, with the reason.
    unsupported: dict[str, dict[str, object]] = field(default_factory=dict)
    #: ops after the first unsupported one (the compiler maps only the leading segment).
    on_cpu_after_first: int = 0
    total_ops: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "fully_integer": self.fully_integer,
            "edgetpu_unsupported_ops": self.unsupported,
            "ops_on_cpu_after_first_unsupported": self.on_cpu_after_first,
            "total_ops": self.total_ops,
            "edgetpu_compiled": False,
        }


def audit(model: Path) -> OpAudit:
    """Read the ops of ``model`` and predict the Edge TPU compiler's mapping."""
    it = interpreter(model, 1, ops=True)
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in it.get_tensor_details()}
    counts: Counter[str] = Counter()
    reasons: dict[str, str] = {}
    first_bad: int | None = None
    ops = it._get_ops_details()  # the only op listing LiteRT's Python API has
    all_integer = True
    for i, op in enumerate(ops):
        tensors = [t for t in (*op["inputs"], *op["outputs"]) if t >= 0]
        floats = [t for t in tensors if dtypes.get(t) not in _INTEGER_KINDS]
        name = op["op_name"]
        if floats:
            all_integer = False
        reason = None
        if name not in EDGETPU_OPS:
            reason = "not in the Edge TPU op set"
        elif floats:
            reason = "float tensors (not quantized)"
        if reason is not None:
            counts[name] += 1
            reasons.setdefault(name, reason)
            first_bad = i if first_bad is None else first_bad
    unsupported = {n: {"count": c, "reason": reasons[n]} for n, c in sorted(counts.items())}
    after = 0 if first_bad is None else len(ops) - first_bad - sum(counts.values())
    return OpAudit(all_integer, unsupported, max(0, after), len(ops))


def is_float(model: Path) -> bool:
    """No tensor carries quantization parameters: what ai-edge-quantizer quantizes from."""
    it = interpreter(model, 1)
    return not any(len(t["quantization_parameters"]["scales"]) for t in it.get_tensor_details())
