"""fp16 weights and activations with fp32 inputs and outputs (GPU profiles such as jetson).

Uses onnxruntime's own float16 converter with ``keep_io_types``: callers keep sending fp32. When
fidelity misses the bar, numerically fragile ops (normalizations, softmax, exponentials) stay fp32,
then the whole model stays fp32; each step is recorded with its numbers. Host latency is recorded
but does not gate: this host's CPU says little about a GPU's fp16 speed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from converter.candidates import Candidate, Judge
from converter.context import PassContext
from converter.errors import tool_failure
from converter.model import ModelArtifact
from sdk.errors import ConversionError

log = logging.getLogger(__name__)

FRAGILE_OPS = (
    "Softmax",
    "LayerNormalization",
    "ReduceMean",
    "Pow",
    "Exp",
    "Sqrt",
    "Erf",
    "Log",
    "InstanceNormalization",
    "ReduceSum",
    "Div",
)


@dataclass(frozen=True)
class Config:
    keep_io_fp32: bool = True
    fallback_block_ops: tuple[str, ...] = FRAGILE_OPS


def configure(ctx: PassContext) -> Config:
    return Config(keep_io_fp32=ctx.profile.quantization.keep_io_fp32)


def convert(src: Path, out: Path, keep_io: bool, block_ops: tuple[str, ...] = ()) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    try:
        half = convert_float_to_float16(
            model, keep_io_types=keep_io, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(block_ops)
        )
    except Exception as exc:
        raise tool_failure("fp16 conversion", exc) from None
    onnx.save_model(half, str(out))
    return out


def run(model: ModelArtifact, ctx: PassContext, config: Config) -> ModelArtifact:
    if model.onnx_path is None or ctx.calibration is None:
        raise ConversionError("fp16 needs an ONNX model and evaluation data")
    judge = Judge.for_context(ctx, ctx.reference_onnx or model.onnx_path)
    attempts = [("fp16", ()), ("fp16-fragile-ops-fp32", config.fallback_block_ops)]
    for name, block in attempts:
        out = convert(model.onnx_path, ctx.path(f"{name}.onnx"), config.keep_io_fp32, block)
        cand = Candidate(
            name, out, "fp16", f"fp16 weights and activations, fp32 I/O; fp32 ops: {list(block) or 'default'}"
        )
        ok = judge.check(cand)
        cand.record(ctx, "fp16")
        if ok:
            return model.with_onnx(out, precision="fp16", session_config={})
    ctx.record("fp16", "kept fp32", "no fp16 variant met the fidelity bar")
    return model
