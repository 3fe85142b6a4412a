"""QDQ for Qualcomm's QNN execution provider: uint8 activations, symmetric int8 per-channel weights.

The quantization settings come from onnxruntime's ``get_qnn_qdq_config`` (the tensor overrides QNN's
HTP needs). When fidelity misses the bar, the most sensitive nodes stay in float (QNN then runs
them on the CPU fallback); if nothing passes, the model stays fp32. Host latency does not gate:
the NPU, not this CPU, will run it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from converter import sensitivity as sens
from converter.calibration import Dataset
from converter.context import PassContext
from converter.errors import tool_failure
from converter.model import ModelArtifact
from converter.quant_data import QUANT_TYPES, DatasetReader, calibration_method
from converter.search import Candidate, Judge
from sdk.errors import ConversionError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config:
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    calibration_method: str = "minmax"


def configure(ctx: PassContext) -> Config:
    q = ctx.profile.quantization
    return Config(
        q.activation_type if q.activation_type in QUANT_TYPES else "uint8",
        q.weight_type,
        q.per_channel,
        q.calibration_method,
    )


def quantize(src: Path, out: Path, data: Dataset, config: Config, exclude: tuple[str, ...] = ()) -> Path:
    from onnxruntime.quantization import quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    try:
        qconfig = get_qnn_qdq_config(
            str(src),
            DatasetReader(data),
            calibrate_method=calibration_method(config.calibration_method),
            activation_type=QUANT_TYPES[config.activation_type],
            weight_type=QUANT_TYPES[config.weight_type],
            per_channel=config.per_channel,
            weight_symmetric=True,
            nodes_to_exclude=list(exclude),
        )
        quantize(str(src), str(out), qconfig)
    except Exception as exc:
        raise tool_failure("QNN QDQ quantization", exc) from None
    return out


def run(model: ModelArtifact, ctx: PassContext, config: Config) -> ModelArtifact:
    if model.onnx_path is None or ctx.calibration is None:
        raise ConversionError("qnn needs an ONNX model and calibration data")
    judge = Judge.for_context(ctx, model.onnx_path)
    data = judge.data
    out = quantize(model.onnx_path, ctx.path("qnn.onnx"), ctx.calibration, config)
    cand = Candidate("qnn-qdq", out, "uint8", "QNN QDQ: uint8 activations, int8 per-channel weights")
    attempts = [cand]
    ok = judge.check(cand)
    if not ok:
        ranking = sens.measure(model.onnx_path, cand.path, ctx.workdir, data, ctx.threads)
        ctx.findings.sensitivity, ctx.findings.sensitivity_metric = dict(ranking.loss), ranking.metric
        worst = sens.worst_first(ranking)
        worst = worst[: max(1, len(worst) // 2)]
        for k in [k for k in (1, 2, 4, 8, 16, 32) if k < len(worst)] + [len(worst)]:
            if not worst or ctx.seconds_left() <= 0:
                break
            path = quantize(
                model.onnx_path, ctx.path(f"qnn-x{k}.onnx"), ctx.calibration, config, tuple(worst[:k])
            )
            cand = Candidate(
                f"qnn-qdq-float{k}",
                path,
                "uint8",
                f"QNN QDQ, {k} most sensitive nodes in float",
                excluded=tuple(worst[:k]),
            )
            attempts.append(cand)
            if ok := judge.check(cand):
                break
    for c in attempts:
        c.record(ctx, "qnn", excluded=list(c.excluded))
    if ok:
        return model.with_onnx(cand.path, precision="uint8", session_config={})
    ctx.record("qnn", "kept fp32", "no QNN QDQ variant met the fidelity bar")
    return model
