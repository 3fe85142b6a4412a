"""Static int8 QDQ quantization with calibration (per-channel weights; MinMax, Entropy or Percentile).

Only the op types in ``op_types`` are quantized (by default those where int8 arithmetic pays on a
CPU: Conv, MatMul, Gemm); ``nodes_to_exclude`` keeps chosen nodes in float. A calibration cache
lets the sensitivity pass quantize one node at a time without re-running calibration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from converter.calibration import Dataset
from converter.context import PassContext
from converter.errors import tool_failure
from converter.model import ModelArtifact
from converter.quant_data import QUANT_TYPES, DatasetReader, calibration_method
from sdk.errors import ConversionError

log = logging.getLogger(__name__)

INT8_ARITHMETIC_OPS = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class Config:
    op_types: tuple[str, ...] | None = INT8_ARITHMETIC_OPS
    per_channel: bool = True
    activation_type: str = "uint8"
    weight_type: str = "int8"
    calibration_method: str = "minmax"
    activation_symmetric: bool = False
    nodes_to_exclude: tuple[str, ...] = ()
    nodes_to_quantize: tuple[str, ...] | None = None
    extra: dict[str, object] = field(default_factory=dict)


def configure(ctx: PassContext) -> Config:
    q = ctx.profile.quantization
    return Config(
        per_channel=q.per_channel,
        activation_type=q.activation_type if q.activation_type in QUANT_TYPES else "uint8",
        weight_type=q.weight_type,
        calibration_method=q.calibration_method,
    )


def quantize(src: Path, out: Path, data: Dataset, config: Config, cache: Path | None = None) -> Path:
    """Write the QDQ model to ``out``; ``cache`` (JSON) holds the calibrated ranges for reuse."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    extra: dict[str, object] = {"ActivationSymmetric": config.activation_symmetric, **config.extra}
    try:
        quantize_static(
            str(src),
            str(out),
            calibration_data_reader=None if cache and cache.is_file() else DatasetReader(data),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(config.op_types) if config.op_types else None,
            per_channel=config.per_channel,
            activation_type=QUANT_TYPES[config.activation_type],
            weight_type=QUANT_TYPES[config.weight_type],
            nodes_to_quantize=list(config.nodes_to_quantize)
            if config.nodes_to_quantize is not None
            else None,
            nodes_to_exclude=list(config.nodes_to_exclude),
            calibrate_method=calibration_method(config.calibration_method),
            extra_options=extra,
            calibration_cache_path=cache,
        )
    except Exception as exc:
        raise tool_failure("static int8 quantization", exc) from None
    return out


def run(model: ModelArtifact, ctx: PassContext, config: Config) -> ModelArtifact:
    if model.onnx_path is None or ctx.calibration is None:
        raise ConversionError("int8-static needs an ONNX model and calibration data")
    out = quantize(model.onnx_path, ctx.path("int8_static.onnx"), ctx.calibration, config)
    ctx.record(
        "quantize", "static int8 QDQ", f"calibration {config.calibration_method} on {ctx.calibration.origin}"
    )
    return model.with_onnx(out, precision="int8", session_config={})
