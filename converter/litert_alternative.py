"""LiteRT with XNNPACK instead of ONNX Runtime, for CPU profiles that allow it (``alternative_runtimes``).

After the ONNX passes have chosen and validated their model, a PyTorch source is also lowered to a
float ``.tflite`` (litert-torch) and a full-integer int8 one (ai-edge-quantizer, per-channel). Both
are judged against the source ONNX model at the profile's bar, and raced against the chosen ONNX
model and the source (an A/A pair of the source measures the run's noise), all in one interleaved run.
A LiteRT candidate ships only when it meets the bar, keeps the ranking's size rule (over 1 MB, not
more than half the source's bytes when the ONNX model manages that) and the ONNX model is measurably
slower than it (beyond the noise); either way a ``runtime`` decision records the ratios and why.

litert-torch exports a static batch of 1 (it cannot lower a dynamic batch through common reshapes),
so the bundle offers clients any batch and the agent runs a batch sample by sample.
ONNX sources are not considered: there is no ONNX to LiteRT path without TensorFlow here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from converter.candidates import SIZE_GOAL_MIN_BYTES, SOURCE, SOURCE_AGAIN, Candidate, Verdict, shortfall
from converter.context import PassContext
from converter.errors import first_line
from converter.litert_export import export_tflite
from converter.litert_quantize import Setting, quantize
from converter.litert_session import IoNames, LiteRtSession
from converter.measure import accuracy, compare_latency, fidelity, judged_as_classifier, outputs_over
from converter.model import ModelArtifact
from converter.passes import export as export_pass
from converter.passes.validate import _host as host_name
from converter.runtime import make_session
from sdk.errors import EdgeError
from sdk.manifest import AccuracyMetric, FidelityMetric, LatencyMetric, Metrics, SizeMetric

if TYPE_CHECKING:
    from converter.loading import SourceModel

log = logging.getLogger("converter")

ONNX = "onnxruntime (chosen)"


def wanted(ctx: PassContext, source: SourceModel) -> bool:
    """The profile allows LiteRT, the source is PyTorch and the tflite extra is installed."""
    if "litert" not in ctx.profile.alternative_runtimes or source.artifact.torch_module is None:
        return False
    try:
        import ai_edge_quantizer  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError:
        ctx.record(
            "runtime", "onnxruntime", "LiteRT not considered: the converter's tflite extra is not installed"
        )
        return False
    return True


def consider(model: ModelArtifact, source: SourceModel, ctx: PassContext) -> tuple[Path, str, IoNames] | None:
    """The LiteRT model to ship instead of ``model`` (path, precision, names), or None to keep ONNX."""
    assert model.onnx_path is not None and ctx.source_onnx is not None and ctx.calibration is not None
    onnx_session = make_session(model.onnx_path, ctx.threads, model.session_config)
    names = IoNames([i.name for i in onnx_session.get_inputs()], [o.name for o in onnx_session.get_outputs()])
    try:
        float_model = export_tflite(
            source.artifact.torch_module, export_pass._example_inputs(ctx), ctx.path("alt.tflite")
        )
        int8 = quantize(float_model, ctx.path("alt-int8.tflite"), ctx.calibration, Setting(per_channel=True))
    except EdgeError as exc:
        ctx.record("runtime", "onnxruntime", f"LiteRT not considered: {first_line(exc)}")
        return None
    data = (ctx.evaluation or ctx.calibration).take(512)
    source_session = make_session(ctx.source_onnx, ctx.threads)
    reference = outputs_over(source_session, data)
    classifier = judged_as_classifier(source_session, reference, data)
    base_accuracy = accuracy(reference, data.labels) if data.labels is not None else None
    cands = [
        Candidate("litert-fp32", float_model, "fp32", "LiteRT float32 with XNNPACK (litert-torch)"),
        Candidate("litert-int8", int8, "int8", "LiteRT full-integer int8 with XNNPACK (ai-edge-quantizer)"),
    ]
    sessions = {c.name: LiteRtSession(c.path, ctx.threads, names) for c in cands}
    for cand in cands:
        outs = outputs_over(sessions[cand.name], data)
        cand.fidelity = fidelity(reference, outs, classifier)
        drop = None
        if data.labels is not None and base_accuracy is not None:
            cand.accuracy = accuracy(outs, data.labels)
            drop = base_accuracy - cand.accuracy
        missed = shortfall(cand.fidelity, ctx.profile.quantization, drop, ctx.options.max_accuracy_drop)
        cand.decide(Verdict.BELOW_BAR, missed) if missed else cand.decide(Verdict.MEETS_BAR)
    race = {
        SOURCE: source_session,
        SOURCE_AGAIN: make_session(ctx.source_onnx, ctx.threads),
        ONNX: onnx_session,
        **sessions,
    }
    latency = compare_latency(race, ctx.calibration.first(), aa=(SOURCE, SOURCE_AGAIN))  # type: ignore[arg-type]
    measured = {
        name: {"ms": round(latency.median(name), 4), "vs_source": round(latency.ratio(name, SOURCE), 3)}
        for name in (ONNX, *sessions)
    }
    for cand in cands:
        cand.latency_ms, cand.latency_ratio = latency.median(cand.name), latency.ratio(cand.name, SOURCE)
    # the ranking's size rule: over 1 MB, a model that halves the source beats one that does not
    halves = (
        ctx.findings.source_size > SIZE_GOAL_MIN_BYTES
        and model.onnx_path.stat().st_size <= ctx.findings.source_size / 2
    )
    for cand in cands:
        if halves and cand.verdict is Verdict.MEETS_BAR and cand.size_bytes > ctx.findings.source_size / 2:
            cand.decide(Verdict.BELOW_BAR, "does not halve the source's bytes, as the chosen ONNX model does")
    ok = [c for c in cands if c.verdict is Verdict.MEETS_BAR]
    best = min(ok, key=lambda c: latency.median(c.name)) if ok else None
    for cand in cands:
        cand.record(ctx, "runtime")
    if best is None:
        ctx.record("runtime", "onnxruntime", "no LiteRT model meets the bar", **measured)
        return None
    if not latency.slower(ONNX, best.name):
        ctx.record(
            "runtime",
            "onnxruntime",
            f"{best.name} is not measurably faster: the ONNX model is {latency.ratio(ONNX, best.name):.3f}x its"
            f" latency (noise ±{latency.margin(ONNX, best.name):.3f})",
            **measured,
        )
        return None
    ctx.record(
        "runtime",
        f"litert ({best.name})",
        f"the chosen ONNX model is {latency.ratio(ONNX, best.name):.3f}x {best.name}'s host latency (noise"
        f" ±{latency.margin(ONNX, best.name):.3f}) and {best.name} meets the bar against the source",
        **measured,
    )
    best.decide(Verdict.CHOSEN)
    assert best.fidelity is not None
    ctx.findings.metrics = Metrics(
        size_bytes=SizeMetric(source=ctx.findings.source_size, converted=best.path.stat().st_size),
        latency_ms=LatencyMetric(
            source=round(latency.median(SOURCE), 4),
            converted=round(latency.median(best.name), 4),
            host=host_name(),
            threads=ctx.threads,
        ),
        fidelity=FidelityMetric(**best.fidelity.as_dict()),
        accuracy=(
            AccuracyMetric(metric="top1", source=base_accuracy, converted=best.accuracy)
            if base_accuracy is not None and best.accuracy is not None
            else None
        ),
    )
    return best.path, best.precision, names
