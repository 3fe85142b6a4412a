"""int8 for CPU profiles, chosen per node by measurement (see :mod:`converter.search`)."""

from __future__ import annotations

from dataclasses import dataclass

from converter.context import PassContext
from converter.model import ModelArtifact
from converter.search import run_search
from sdk.errors import ConversionError


@dataclass(frozen=True)
class Config:
    #: reject candidates slower than the source on this host (CPU profiles run where they are measured).
    gate_latency: bool = True


def configure(ctx: PassContext) -> Config:
    return Config(gate_latency=ctx.profile.accelerator == "cpu")


def run(model: ModelArtifact, ctx: PassContext, config: Config) -> ModelArtifact:
    if model.onnx_path is None or ctx.calibration is None:
        raise ConversionError("the int8 pass needs an ONNX model and calibration data")
    result = run_search(ctx, model.onnx_path, ctx.source_onnx or model.onnx_path, config.gate_latency)
    c = result.chosen
    ctx.record(
        "quantize",
        c.name,
        f"{c.description}: meets the fidelity bar, not slower than the source; first in the ranking"
        " (latency ties within the noise go to fewer bytes, then higher fidelity)",
        size_bytes=c.size_bytes,
        latency_vs_source=round(c.latency_ratio or 1.0, 4),
        fidelity=c.fidelity.as_dict() if c.fidelity else None,
    )
    return model.with_onnx(c.path, precision=c.precision, session_config=dict(c.session_config))
