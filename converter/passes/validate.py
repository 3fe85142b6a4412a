"""Validate the converted model against the source: size, host latency, fidelity, accuracy.

The numbers go into the manifest's ``metrics``. Latency is the median per call on this host at the
profile's thread count (capped at the host's cores), measured side by side with the source.
A model over the profile's ``max_model_mb`` is refused here, after every size-reducing pass ran.

This is the last gate, whatever passes the profile lists: no model ships below the profile's
fidelity bar (or over its accuracy drop), and on CPU profiles (which run where they are measured)
none ships measurably slower than the source (the source runs twice, an A/A pair, beside it).
When the converted model fails either, the next candidate the quantization search accepted is
judged instead, and finally the source graph itself (which always meets the bar); each switch is
recorded. If nothing that fits the profile meets the bar, the conversion stops with one line
naming the bar and by how much it was missed.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass

from converter import budget as budgeting
from converter.candidates import (
    SOURCE,
    SOURCE_GRAPH,
    Candidate,
    Judge,
    Verdict,
    race,
    slower_than_source,
)
from converter.context import Alternative, PassContext
from converter.measure import Latency
from converter.model import ModelArtifact
from sdk.errors import ConversionError
from sdk.manifest import AccuracyMetric, FidelityMetric, LatencyMetric, Metrics, SizeMetric

log = logging.getLogger(__name__)

EVAL_SAMPLES = 1024
#: how many of the search's other candidates validation may measure after the chosen one.
MAX_FALLBACKS = 3


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
    if model.onnx_path is None or ctx.source_onnx is None or ctx.calibration is None:
        raise ConversionError("validate needs the converted ONNX model, its source and data")
    size = model.onnx_path.stat().st_size
    if size > _limit(config):
        raise ConversionError(
            f"the converted model is {size / 2**20:.1f} MB, over profile {ctx.profile.name}'s max_model_mb"
            f" of {config.max_model_mb:g} MB even after conversion ({model.precision})"
        )
    judge = Judge.for_context(ctx, ctx.source_onnx, EVAL_SAMPLES)
    cand, lat = _first_acceptable(model, ctx, config, judge)
    model = model.with_onnx(cand.path, precision=cand.precision, session_config=dict(cand.session_config))
    fid = cand.fidelity
    assert fid is not None
    acc = None
    if judge.base_accuracy is not None and cand.accuracy is not None:
        acc = AccuracyMetric(metric="top1", source=judge.base_accuracy, converted=cand.accuracy)
    ctx.findings.metrics = Metrics(
        size_bytes=SizeMetric(
            source=ctx.findings.source_size or ctx.source_onnx.stat().st_size, converted=cand.size_bytes
        ),
        latency_ms=LatencyMetric(
            source=round(lat.median(SOURCE), 4),
            converted=round(lat.median(cand.name), 4),
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
    ctx.record(
        "validate",
        "measured against the source",
        f"on {judge.data.origin}; latency host-measured at {ctx.threads} threads"
        + (
            f" (profile asks {ctx.profile.threads}; this host has fewer cores)"
            if ctx.threads < ctx.profile.threads
            else ""
        ),
        latency_vs_source=round(lat.ratio(cand.name, SOURCE), 4),
        latency_noise=round(lat.noise, 4),
        fidelity=fid.as_dict(),
    )
    if judge.data.synthetic:
        log.warning(
            "fidelity was measured on synthetic inputs (%s); pass --eval DATA.npz for real numbers",
            judge.data.origin,
        )
    return model


def _first_acceptable(
    model: ModelArtifact, ctx: PassContext, config: Config, judge: Judge
) -> tuple[Candidate, Latency]:
    """The converted model if it meets the bar and is not slower, else the first fallback that is."""
    assert ctx.source_onnx is not None
    feeds = judge.data.first()
    slower_ones: list[tuple[Candidate, Latency]] = []
    tried: list[Candidate] = []
    for cand in _options(model, ctx, config):
        tried.append(cand)
        is_source = cand.path == ctx.source_onnx
        try:
            # the source graph against itself is measured for the metrics; it meets the bar by definition.
            meets = judge.check(cand) or is_source
        except ConversionError as exc:
            cand.decide(Verdict.FAILED, str(exc))
            meets = False
        lat = None
        if meets:
            lat = race(
                ctx.source_onnx,
                [cand],
                ctx.threads,
                feeds,
                rounds=config.rounds,
                seconds_per_model=config.seconds_per_model,
            )
            cand.latency_ms, cand.latency_ratio = lat.median(cand.name), lat.ratio(cand.name, SOURCE)
            # the source graph is the source: a difference between them is noise by definition.
            slower = None if is_source or not config.gate_latency else slower_than_source(lat, cand.name)
            if slower:
                cand.decide(Verdict.SLOWER, slower)
                slower_ones.append((cand, lat))
            else:
                cand.decide(Verdict.CHOSEN, "meets the bar" + ("" if is_source else ", not slower"))
        cand.record(
            ctx,
            "validate",
            latency_ms=_round(cand.latency_ms),
            latency_vs_source=_round(cand.latency_ratio),
            accuracy=cand.accuracy,
        )
        if cand.verdict is Verdict.CHOSEN:
            if len(tried) > 1:
                ctx.record(
                    "validate",
                    f"fell back from {tried[0].name} to {cand.name}",
                    "; ".join(f"{c.name}: {c.status}" for c in tried[:-1]),
                )
            assert lat is not None
            return cand, lat
    if slower_ones:  # every option that met the bar measured slower (the source graph did not fit)
        cand, lat = slower_ones[0]
        ctx.record(
            "validate",
            f"kept {cand.name} although measured slower",
            f"{cand.reason}; it meets the fidelity bar and no faster model that does fits the profile",
        )
        log.warning("the converted model measured slower than the source in validation")
        return cand, lat
    worst = tried[0]
    raise ConversionError(
        f"no model fits profile {ctx.profile.name} and meets its fidelity bar: {worst.name}: {worst.reason}"
        + ("" if any(c.path == ctx.source_onnx for c in tried) else "; the source graph is over max_model_mb")
    )


def _options(model: ModelArtifact, ctx: PassContext, config: Config) -> list[Candidate]:
    """The converted model, the search's accepted candidates after it, an earlier pass's fallbacks
    (the --speedup model), then the source graph."""
    assert model.onnx_path is not None and ctx.source_onnx is not None
    alternatives = ctx.alternatives
    paths = [a.path for a in alternatives]
    current = alternatives[paths.index(model.onnx_path)] if model.onnx_path in paths else None
    after = paths.index(model.onnx_path) + 1 if current else len(paths)
    first = current or Alternative(
        _converted_name(model, ctx),
        model.onnx_path,
        model.precision,
        dict(model.session_config),
        f"the model the profile's passes made ({model.precision})",
    )
    fitting = [a for a in alternatives[after:] if a.path.stat().st_size <= _limit(config)]
    chain = [first, *fitting[:MAX_FALLBACKS]]
    chain += [
        a
        for a in ctx.fallbacks
        if all(a.path != c.path for c in chain) and a.path.stat().st_size <= _limit(config)
    ]
    if all(a.path != ctx.source_onnx for a in chain) and ctx.source_onnx.stat().st_size <= _limit(config):
        chain.append(
            Alternative(SOURCE_GRAPH, ctx.source_onnx, "fp32", {}, "the source graph (always meets the bar)")
        )
    return [Candidate(a.name, a.path, a.precision, a.description, dict(a.session_config)) for a in chain]


def _converted_name(model: ModelArtifact, ctx: PassContext) -> str:
    if model.onnx_path == ctx.source_onnx:
        return SOURCE_GRAPH
    quantizing = [p for p in ctx.profile.passes if p not in ("export", "cleanup", "prune", "validate")]
    return quantizing[-1] if quantizing else "converted"


def _limit(config: Config) -> float:
    return config.max_model_mb * 1024 * 1024


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _host() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()} {cpu}"
