"""Validate the converted model against the source: size, host latency, fidelity, accuracy.

The numbers go into the manifest's ``metrics``. Latency is the median per call on this host at the
profile's thread count (capped at the host's cores), measured side by side with the source.
A model over the profile's ``max_model_mb`` is refused here, after every size-reducing pass ran.

On CPU profiles (which run where they are measured) this is also the last gate on "never slower
than the source": the source runs twice (an A/A pair) beside the converted model, and if the
converted model is slower beyond that measured noise, the next candidate the quantization search
accepted is measured instead (the source graph itself is always among them), and the switch is
recorded.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass

import numpy as np

from converter import budget as budgeting
from converter.context import Alternative, PassContext
from converter.measure import (
    Latency,
    accuracy,
    compare_latency,
    fidelity,
    judged_as_classifier,
    outputs_over,
)
from converter.model import ModelArtifact
from converter.runtime import make_session
from sdk.errors import ConversionError
from sdk.manifest import AccuracyMetric, FidelityMetric, LatencyMetric, Metrics, SizeMetric

log = logging.getLogger(__name__)

EVAL_SAMPLES = 1024
#: how many of the search's other candidates validation may measure after the chosen one.
MAX_FALLBACKS = 3
SOURCE_AGAIN = "source (A/A)"


@dataclass(frozen=True)
class Config:
    rounds: int = 21
    seconds_per_model: float = 0.5
    max_model_mb: float = 0.0
    #: fall back to another accepted candidate when the converted model measures slower than the source.
    gate_latency: bool = True


def configure(ctx: PassContext) -> Config:
    return Config(
        rounds=budgeting.race_rounds(3, Config.rounds),
        max_model_mb=ctx.profile.max_model_mb,
        gate_latency=ctx.profile.accelerator == "cpu",
    )


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
    model, lat = _not_slower_than_source(model, ctx, config, data.first())
    size = model.onnx_path.stat().st_size  # type: ignore[union-attr]
    converted = make_session(model.onnx_path, ctx.threads, model.session_config)  # type: ignore[arg-type]
    src_out, conv_out = outputs_over(source, data), outputs_over(converted, data)
    fid = fidelity(src_out, conv_out, judged_as_classifier(source, src_out, data))
    acc = None
    if data.labels is not None:
        acc = AccuracyMetric(
            metric="top1", source=accuracy(src_out, data.labels), converted=accuracy(conv_out, data.labels)
        )
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
        latency_noise=round(lat.noise, 4),
        fidelity=fid.as_dict(),
    )
    if data.synthetic:
        log.warning(
            "fidelity was measured on synthetic inputs (%s); pass --eval DATA.npz for real numbers",
            data.origin,
        )
    return model


def _measure(model: ModelArtifact, ctx: PassContext, config: Config, feeds: dict[str, np.ndarray]) -> Latency:
    assert model.onnx_path is not None and ctx.source_onnx is not None
    sessions = {
        "source": make_session(ctx.source_onnx, ctx.threads),
        SOURCE_AGAIN: make_session(ctx.source_onnx, ctx.threads),
        "converted": make_session(model.onnx_path, ctx.threads, model.session_config),
    }
    return compare_latency(
        sessions,
        feeds,
        rounds=config.rounds,
        seconds_per_model=config.seconds_per_model,
        aa=("source", SOURCE_AGAIN),
    )


def _not_slower_than_source(
    model: ModelArtifact, ctx: PassContext, config: Config, feeds: dict[str, np.ndarray]
) -> tuple[ModelArtifact, Latency]:
    """The converted model, or the search's next accepted candidate while it measures slower."""
    lat = _measure(model, ctx, config, feeds)
    if not config.gate_latency:
        return model, lat
    for alternative in _fallbacks(model, ctx, config):
        if not lat.slower("converted", "source"):
            break
        was = _name_of(model, ctx)
        ctx.record(
            "validate",
            f"fell back from {was} to {alternative.name}",
            f"{was} measured {lat.ratio('converted', 'source'):.3f}x the source's latency in validation,"
            f" beyond the measured noise (±{lat.margin('converted', 'source'):.3f})",
            converted_ms=round(lat.median("converted"), 4),
            source_ms=round(lat.median("source"), 4),
        )
        _mark(ctx, was, f"rejected in validation: {lat.ratio('converted', 'source'):.3f}x the source")
        _mark(ctx, alternative.name, "chosen (validation fallback)")
        model = model.with_onnx(
            alternative.path, precision=alternative.precision, session_config=dict(alternative.session_config)
        )
        lat = _measure(model, ctx, config, feeds)
    if lat.slower("converted", "source"):
        ctx.record(
            "validate",
            "kept although measured slower",
            f"{lat.ratio('converted', 'source'):.3f}x the source's latency (noise ±{lat.margin('converted', 'source'):.3f})"
            " and no other accepted candidate is left to fall back on",
        )
        log.warning("the converted model measured slower than the source in validation")
    return model, lat


def _fallbacks(model: ModelArtifact, ctx: PassContext, config: Config) -> list[Alternative]:
    """The search's accepted candidates after the current one that fit the profile, best first."""
    paths = [a.path for a in ctx.alternatives]
    after = paths.index(model.onnx_path) + 1 if model.onnx_path in paths else len(paths)
    limit = config.max_model_mb * 1024 * 1024
    fitting = [a for a in ctx.alternatives[after:] if a.path.stat().st_size <= limit]
    return fitting[:MAX_FALLBACKS]


def _name_of(model: ModelArtifact, ctx: PassContext) -> str:
    return next((a.name for a in ctx.alternatives if a.path == model.onnx_path), model.precision)


def _mark(ctx: PassContext, name: str, verdict: str) -> None:
    """Update the report's candidate table with what validation decided."""
    for row in ctx.findings.candidates:
        if row.get("name") == name:
            row["verdict"] = verdict


def _host() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()} {cpu}"
