"""QDQ for Qualcomm's QNN execution provider: uint8 activations, symmetric int8 per-channel weights.

The quantization settings come from onnxruntime's ``get_qnn_qdq_config`` (the tensor overrides QNN's
HTP needs). When fidelity misses the bar, the most sensitive nodes stay in float (QNN then runs
them on the CPU fallback), through the quantization search's own back-off (1, 2, 4, ... nodes) with
a QNN maker; if nothing passes, the model stays fp32. Host latency does not gate: the NPU, not
this CPU, will run it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnx

from converter.calibration import Dataset
from converter.candidates import Verdict
from converter.context import PassContext
from converter.errors import tool_failure
from converter.model import ModelArtifact
from converter.quant_data import QUANT_TYPES, DatasetReader, calibration_method
from converter.search import Search
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
    base, data = model.onnx_path, ctx.calibration
    names = [n.name for n in onnx.load(str(base), load_external_data=False).graph.node if n.name]
    search = Search(ctx, base, base, gate_latency=False)
    cand = search.build(
        "qnn-qdq",
        "uint8",
        "QNN QDQ: uint8 activations, int8 per-channel weights",
        lambda: quantize(base, ctx.path("qnn.onnx"), data, config),
        (
            lambda excluded, path: quantize(base, path, data, config, excluded),
            # QNN's config takes no nodes_to_quantize: one node alone is "all the others excluded".
            lambda node, path: quantize(base, path, data, config, tuple(n for n in names if n != node)),
            None,
        ),
    )
    chosen = cand if cand.verdict is Verdict.MEETS_BAR else None
    if cand.verdict is Verdict.BELOW_BAR:
        chosen = search.back_off(cand)
        ranking = search.rankings.get(cand.name)
        if ranking is not None:
            ctx.findings.sensitivity, ctx.findings.sensitivity_metric = dict(ranking.loss), ranking.metric
    for c in search.candidates:
        c.record(ctx, "qnn", excluded=list(c.excluded))
    if chosen is not None:
        return model.with_onnx(chosen.path, precision="uint8", session_config={})
    ctx.record("qnn", "kept fp32", "no QNN QDQ variant met the fidelity bar")
    return model
