"""The conversion pipeline for LiteRT profiles (coral): explicit steps, like the ONNX one.

load → float ``.tflite`` (litert-torch for PyTorch, the file itself for ``.tflite``) → data → full
integer (ai-edge-quantizer search; a model that is already full integer is kept as it is) →
measure (size, host latency with the LiteRT interpreter, fidelity and accuracy against the float
model) → Edge TPU op audit → reference and smoke → manifest → signed bundle → report.html.

ONNX input is interpreted as a torch module and exported the same way (:mod:`converter.onnx_litert`);
what cannot be interpreted or traced is refused in one line.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converter import calibration as cal
from converter import edgetpu, memory, progress, report
from converter.candidates import SOURCE, SOURCE_AGAIN, Candidate, Verdict
from converter.context import PassContext
from converter.litert_export import export_tflite, litert_available
from converter.litert_quantize import LiteRtJudge, fidelity_line, search
from converter.litert_session import IoNames, LiteRtSession, interpreter, tensor_specs
from converter.loading import SourceModel, load_source, safe_name
from converter.measure import compare_latency
from converter.model import InputSpec
from converter.onnx_litert import onnx_to_tflite
from converter.passes import export as export_pass
from converter.passes import tflite
from converter.passes.validate import _host as host_name
from converter.reference import reference, smoke
from sdk import keys
from sdk.bundle import verify_bundle, write_bundle
from sdk.errors import ConfigError, ConversionError
from sdk.manifest import (
    AccuracyMetric,
    FidelityMetric,
    LatencyMetric,
    LiteRtInfo,
    Manifest,
    Metrics,
    SizeMetric,
    SourceInfo,
)
from sdk.profiles import HardwareProfile

if TYPE_CHECKING:
    from converter.pipeline import ConvertRequest

log = logging.getLogger("converter")

MODEL_FILE = "model.tflite"


@dataclass(frozen=True)
class LiteRtResult:
    """Like :class:`converter.pipeline.ConvertResult` (which imports this module lazily)."""

    bundle: Path
    manifest: Manifest
    report: Path


def convert_litert(
    request: ConvertRequest, profile: HardwareProfile, key: keys.Ed25519PrivateKey, workdir: Path
) -> LiteRtResult:
    litert_available()
    config = tflite.configure_profile(profile)
    progress.step("load")
    source = load_source(request.model, workdir)
    ctx = PassContext(
        profile=profile, workdir=workdir, options=request.options, example_inputs=source.example_inputs
    )
    if source.format != "tflite":  # a .tflite may already be full integer: it needs no data
        _require_calibration(profile, request.options.calibration_path)  # before the export's work
    progress.step("tflite")
    float_model, names = _float_tflite(source, ctx, request)
    base = LiteRtSession(float_model, ctx.threads, names)
    ctx.inputs = [InputSpec(i.name, i.dtype.name, tuple(_dim(d) for d in i.shape)) for i in base.get_inputs()]
    del base
    _load_data(ctx, request)
    ctx.findings.source_size = float_model.stat().st_size
    before = edgetpu.audit(float_model)
    progress.step("quantize")
    if before.fully_integer:
        converted = float_model
        ctx.record("quantize", "keep the model as given", "it is already full integer (every op int8/uint8)")
    else:
        converted = _quantize(float_model, ctx, names, config.per_channel)
    progress.step("validate")
    _measure(float_model, converted, ctx, names, before.fully_integer)
    after = edgetpu.audit(converted)
    ctx.record(
        "edgetpu",
        "full integer" if after.fully_integer else "not full integer",
        "Edge TPU compile not run: edgetpu_compiler is not installable here; a real pipeline runs"
        " `edgetpu_compiler -s model.tflite` on this model before bundling",
        **after.as_dict(),
    )
    progress.step("package")
    source_session = LiteRtSession(float_model, ctx.threads, names)
    return package_litert(converted, source_session, names, source, ctx, request, key, precision="int8")


def package_litert(
    converted: Path,
    source_session: Any,
    names: IoNames,
    source: SourceModel,
    ctx: PassContext,
    request: ConvertRequest,
    key: keys.Ed25519PrivateKey,
    *,
    precision: str,
    any_batch: bool = False,
) -> LiteRtResult:
    """Manifest (metrics from ``ctx.findings``, reference, smoke against ``source_session``, the op
    audit), signed bundle and report for the LiteRT model ``converted``. ``any_batch`` offers clients
    any batch size for a batch-1 model (the agent runs it sample by sample)."""
    assert ctx.calibration is not None and ctx.findings.metrics is not None
    data = ctx.evaluation or ctx.calibration
    audit = edgetpu.audit(converted)
    session = LiteRtSession(converted, ctx.threads, names)
    inputs, outputs = tensor_specs(session.get_inputs()), tensor_specs(session.get_outputs())
    if any_batch:
        for spec in (*inputs, *outputs):
            spec.shape = [-1, *spec.shape[1:]] if spec.shape else spec.shape
    manifest = Manifest(
        name=request.name or safe_name(source.stem),
        version=request.version,
        profile=ctx.profile.name,
        runtime="litert",
        precision=precision if audit.fully_integer or precision == "fp32" else f"{precision}-mixed",
        source=SourceInfo(format=source.format, sha256=source.sha256, filename=source.filename),
        model_file=MODEL_FILE,
        inputs=inputs,
        outputs=outputs,
        metrics=ctx.findings.metrics,
        reference=reference(session, ctx.calibration),  # type: ignore[arg-type]
        smoke=smoke(session, source_session, data),
        decisions=list(ctx.decisions),
        litert=LiteRtInfo(
            fully_integer=audit.fully_integer,
            edgetpu_unsupported_ops=audit.unsupported,
            edgetpu_compiled=False,
        ),
    )
    staged = ctx.workdir / MODEL_FILE
    if converted != staged:
        shutil.copyfile(converted, staged)
    bundle = write_bundle(manifest, {MODEL_FILE: staged}, key, request.out_dir)
    signed = verify_bundle(bundle).manifest
    report_path = report.write(request.out_dir / "report.html", signed, ctx.findings)
    log.info("wrote %s and %s", bundle, report_path)
    return LiteRtResult(bundle, signed, report_path)


def _float_tflite(source: SourceModel, ctx: PassContext, request: ConvertRequest) -> tuple[Path, IoNames]:
    """The float (or already quantized) ``.tflite``, its inputs named as the data names them and its
    outputs as the ONNX export names them (``output``, ``output_<i>``) or as its signature does."""
    out = ctx.path("source.tflite")
    if source.format == "tflite":
        shutil.copyfile(request.model, out)
        it = interpreter(out, 1, ops=True)
        ctx.record(
            "load", "LiteRT model", f"{len(it._get_ops_details())} ops, loaded and allocated by LiteRT"
        )
        return out, IoNames(_data_names(_signature_names(it, "inputs"), ctx), _signature_names(it, "outputs"))
    examples = export_pass._example_inputs(ctx)
    if source.format == "onnx":
        assert source.artifact.onnx_path is not None
        names, error = onnx_to_tflite(source.artifact.onnx_path, examples, out, ctx.threads)
        ctx.record(
            "export",
            "float .tflite (ONNX graph interpreted in torch, litert-torch)",
            "no ONNX to LiteRT converter runs without TensorFlow; each ONNX node runs as torch ops,"
            " traced with torch.export at batch 1 (static shapes, as the Edge TPU needs)",
            onnx_runtime_max_error=round(error, 6),
        )
        return out, names
    export_tflite(source.artifact.torch_module, examples, out)
    ctx.record(
        "export",
        "float .tflite (litert-torch)",
        "PyTorch traced with torch.export at batch 1 (static shapes, as the Edge TPU needs) and lowered"
        " to LiteRT without TensorFlow",
        inputs={n: [1, *a.shape[1:]] for n, a in examples.items()},
    )
    n_out = len(interpreter(out, 1).get_output_details())
    return out, IoNames(list(examples), ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)])


def _signature_names(it: object, which: str) -> list[str]:
    """The signature's names (``input_1``) in the model's tensor order, else the tensor names."""
    details = it.get_input_details() if which == "inputs" else it.get_output_details()  # type: ignore[attr-defined]
    signatures = it.get_signature_list()  # type: ignore[attr-defined]
    if len(signatures) == 1:
        runner = it.get_signature_runner(next(iter(signatures)))  # type: ignore[attr-defined]
        sig = runner.get_input_details() if which == "inputs" else runner.get_output_details()
        by_index = {d["index"]: n for n, d in sig.items()}
        if all(d["index"] in by_index for d in details):
            return [by_index[d["index"]] for d in details]
    return [d["name"] for d in details]


def _data_names(names: list[str], ctx: PassContext) -> list[str]:
    """A one-input model takes its one data array whatever the array's name: converters name LiteRT
    inputs (``args_0``, ``serving_default_input_1:0``) in ways the user does not choose."""
    path = ctx.options.calibration_path
    if len(names) != 1 or path is None:
        return names
    arrays = [k for k in export_pass._example_inputs(ctx) if k != cal.LABELS]
    if len(arrays) == 1 and arrays != names:
        ctx.record(
            "load",
            f"input {names[0]!r} is served as {arrays[0]!r}",
            "the data's one array names the one input",
        )
        return arrays
    return names


def _dim(d: int | str) -> int | None:
    return d if isinstance(d, int) else None


def _require_calibration(profile: HardwareProfile, calibration_path: Path | None) -> None:
    if calibration_path is None:
        raise ConfigError(f"profile {profile.name} needs --calibration DATA.npz (full-integer quantization)")


def _load_data(ctx: PassContext, request: ConvertRequest) -> None:
    share = memory.active().share(0.15)
    if request.evaluation is not None:
        ctx.evaluation = cal.load_npz(request.evaluation, ctx.inputs, "eval", share)
    _require_calibration(ctx.profile, ctx.options.calibration_path)
    ctx.calibration = cal.load_npz(ctx.options.calibration_path, ctx.inputs, "calibration", share)
    ctx.findings.calibration_origin = ctx.calibration.origin
    ctx.findings.eval_origin = (ctx.evaluation or ctx.calibration).origin
    ctx.record("data", "calibration: " + ctx.calibration.origin, "user data", eval=ctx.findings.eval_origin)


def _judge(ctx: PassContext, base: Path, names: IoNames) -> LiteRtJudge:
    data = (ctx.evaluation or ctx.calibration).take(512)  # type: ignore[union-attr]
    return LiteRtJudge(
        base, data, ctx.profile.quantization, ctx.options.max_accuracy_drop, ctx.threads, names
    )


def _quantize(float_model: Path, ctx: PassContext, names: IoNames, per_channel: bool) -> Path:
    if not edgetpu.is_float(float_model):
        raise ConversionError(
            f"{float_model.name}: the model is partly quantized (dynamic-range or mixed); ai-edge-quantizer"
            " makes full integer only from the float model: pass the float .tflite or the PyTorch model"
        )
    assert ctx.calibration is not None
    judge = _judge(ctx, float_model, names)
    chosen, tried = search(float_model, ctx.workdir, ctx.calibration, judge, per_channel, ctx.seconds_left)
    for cand in tried:
        if cand is chosen:
            cand.decide(Verdict.CHOSEN, fidelity_line(cand.fidelity) if cand.fidelity else "")
        cand.record(ctx, "quantize")
    if chosen.excluded:
        ctx.record(
            "quantize",
            f"left in float: {', '.join(chosen.excluded)}",
            "these op types could not be quantized without breaking fidelity (the full-integer candidates"
            " above missed the bar); the model is not full integer, an Edge TPU runs it only up to the first",
            op_types=list(chosen.excluded),
        )
        log.warning("%s left in float: not full integer", ", ".join(chosen.excluded))
    return chosen.path


def _measure(
    float_model: Path, converted: Path, ctx: PassContext, names: IoNames, unchanged: bool
) -> Metrics:
    """Size, host latency (LiteRT, the profile's threads), fidelity and accuracy vs the float model."""
    assert ctx.calibration is not None
    sessions = {
        SOURCE: LiteRtSession(float_model, ctx.threads, names),
        SOURCE_AGAIN: LiteRtSession(float_model, ctx.threads, names),
        "converted": LiteRtSession(converted, ctx.threads, names),
    }
    latency = compare_latency(sessions, ctx.calibration.first(), aa=(SOURCE, SOURCE_AGAIN))  # type: ignore[arg-type]
    ratio = latency.ratio("converted", SOURCE)
    if latency.slower("converted", SOURCE) and not unchanged:
        ctx.record(
            "validate",
            "ship the full-integer model though it is slower on this host",
            f"{ratio:.3f}x the float model's host latency (noise ±{latency.margin('converted', SOURCE):.3f});"
            f" profile {ctx.profile.name}'s accelerator runs only full-integer models, the float one not at all",
        )
    cand = Candidate("converted", converted, "int8", "the bundled model")
    judge = _judge(ctx, float_model, names)
    judge.check(cand)
    assert cand.fidelity is not None
    metrics = Metrics(
        size_bytes=SizeMetric(source=float_model.stat().st_size, converted=converted.stat().st_size),
        latency_ms=LatencyMetric(
            source=latency.median(SOURCE),
            converted=latency.median("converted"),
            host=host_name(),
            threads=ctx.threads,
        ),
        fidelity=FidelityMetric(**cand.fidelity.as_dict()),
    )
    if judge.base_accuracy is not None and cand.accuracy is not None:
        metrics.accuracy = AccuracyMetric(metric="top1", source=judge.base_accuracy, converted=cand.accuracy)
    ctx.findings.metrics = metrics
    ctx.record(
        "validate",
        f"{fidelity_line(cand.fidelity)} against the float model",
        cand.status,
        latency_ratio=round(ratio, 3),
        size_ratio=round(converted.stat().st_size / max(1, float_model.stat().st_size), 3),
    )
    if cand.verdict is Verdict.BELOW_BAR and not unchanged:
        raise ConversionError(f"the full-integer model misses the bar: {cand.reason}")
    return metrics
