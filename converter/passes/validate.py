"""Validate the converted model against the source: size, host latency, fidelity, accuracy.

The numbers go into the manifest's ``metrics``. Latency is the median per call on this host at the
profile's thread count (capped at the host's cores), measured side by side with the source.
A model over the profile's ``max_model_mb`` is refused here, after every size-reducing pass ran.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass

from converter.context import PassContext
from converter.measure import accuracy, compare_latency, fidelity, judged_as_classifier, outputs_over
from converter.model import ModelArtifact
from converter.runtime import make_session
from sdk.errors import ConversionError
from sdk.manifest import AccuracyMetric, FidelityMetric, LatencyMetric, Metrics, SizeMetric

log = logging.getLogger(__name__)

EVAL_SAMPLES = 1024


@dataclass(frozen=True)
class Config:
    rounds: int = 21
    max_model_mb: float = 0.0


def configure(ctx: PassContext) -> Config:
    return Config(max_model_mb=ctx.profile.max_model_mb)


def run(model: ModelArtifact, ctx: PassContext, config: Config) -> ModelArtifact:
    if model.onnx_path is None or ctx.source_onnx is None:
        raise ConversionError("validate needs the converted ONNX model and its source")
    size = model.onnx_path.stat().st_size
    if size > config.max_model_mb * 1024 * 1024:
        raise ConversionError(
            f"the converted model is {size / 2**20:.1f} MB, over profile {ctx.profile.name}'s max_model_mb"
            f" of {config.max_model_mb:g} MB even after conversion ({model.precision})"
        )
    data = (ctx.evaluation or ctx.calibration).take(EVAL_SAMPLES)  # type: ignore[union-attr]
    source = make_session(ctx.source_onnx, ctx.threads)
    converted = make_session(model.onnx_path, ctx.threads, model.session_config)
    src_out, conv_out = outputs_over(source, data), outputs_over(converted, data)
    fid = fidelity(src_out, conv_out, judged_as_classifier(source, src_out, data))
    acc = None
    if data.labels is not None:
        acc = AccuracyMetric(
            metric="top1", source=accuracy(src_out, data.labels), converted=accuracy(conv_out, data.labels)
        )
    lat = compare_latency({"source": source, "converted": converted}, data.first(), rounds=config.rounds)
    metrics = Metrics(
        size_bytes=SizeMetric(
            source=ctx.findings.source_size or ctx.source_onnx.stat().st_size, converted=size
        ),
        latency_ms=LatencyMetric(
            source=round(lat.median("source"), 4),
            converted=round(lat.median("converted"), 4),
            statistic="median",
            host_measured=True,
            host=_host(),
            threads=ctx.threads,
        ),
        fidelity=FidelityMetric(
            argmax_agreement=fid.argmax_agreement,
            cosine=round(fid.cosine, 6),
            max_abs_error=float(fid.max_abs_error),
            samples=fid.samples,
        ),
        accuracy=acc,
    )
    ctx.findings.metrics = metrics
    ratio = lat.ratio("converted", "source")
    ctx.record(
        "validate",
        "measured against the source",
        f"on {data.origin}; latency host-measured at {ctx.threads} threads"
        + (
            f" (profile asks {ctx.profile.threads}; this host has fewer cores)"
            if ctx.threads < ctx.profile.threads
            else ""
        ),
        latency_vs_source=round(ratio, 4),
        fidelity=fid.as_dict(),
    )
    if data.synthetic:
        log.warning(
            "fidelity was measured on synthetic inputs (%s); pass --eval DATA.npz for real numbers",
            data.origin,
        )
    return model


def _host() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()} {cpu}"
