"""Dynamic int8 quantization: int8 weights, activations quantized at run time (MatMulInteger).

This pays for MatMul-heavy models such as transformers; ConvInteger is usually slower than fp32
on CPUs, so Conv is left out by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converter.context import PassContext
from converter.errors import tool_failure
from converter.model import ModelArtifact
from converter.quant_data import QUANT_TYPES
from sdk.errors import ConversionError

DYNAMIC_OPS = ("MatMul", "Gemm", "Gather", "Attention", "LSTM", "GRU")


@dataclass(frozen=True)
class Config:
    op_types: tuple[str, ...] = DYNAMIC_OPS
    per_channel: bool = False
    weight_type: str = "int8"
    nodes_to_exclude: tuple[str, ...] = ()
    nodes_to_quantize: tuple[str, ...] | None = None


def configure(ctx: PassContext) -> Config:
    return Config(
        per_channel=ctx.profile.quantization.per_channel, weight_type=ctx.profile.quantization.weight_type
    )


def quantize(src: Path, out: Path, config: Config) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    try:
        quantize_dynamic(
            str(src),
            str(out),
            op_types_to_quantize=list(config.op_types),
            per_channel=config.per_channel,
            weight_type=QUANT_TYPES[config.weight_type],
            nodes_to_exclude=list(config.nodes_to_exclude),
            nodes_to_quantize=list(config.nodes_to_quantize)
            if config.nodes_to_quantize is not None
            else None,
            extra_options={"MatMulConstBOnly": True},
        )
    except Exception as exc:
        raise tool_failure("dynamic int8 quantization", exc) from None
    return out


def run(model: ModelArtifact, ctx: PassContext, config: Config) -> ModelArtifact:
    if model.onnx_path is None:
        raise ConversionError("int8-dynamic needs an ONNX model")
    out = quantize(model.onnx_path, ctx.path("int8_dynamic.onnx"), config)
    ctx.record("quantize", "dynamic int8", f"op types {', '.join(config.op_types)}")
    return model.with_onnx(out, precision="int8", session_config={})
