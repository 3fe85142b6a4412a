"""The conversion pipeline as explicit steps.

load → (profile passes: export → cleanup → prune → quantize search → validate) → reference and smoke
→ manifest → signed bundle → report.html. Data (calibration and evaluation) is attached as soon as
an ONNX model exists, since its inputs are what the data must match.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnxruntime as ort

from converter import budget as budgeting
from converter import calibration as cal
from converter import litert_alternative, memory, package, progress, report
from converter.context import Options, PassContext
from converter.errors import first_line
from converter.litert_pipeline import package_litert
from converter.loading import SourceModel, load_source, safe_name
from converter.model import ModelArtifact
from converter.passes import resolve
from converter.runtime import input_specs, make_session, run
from converter.signing import signing_key
from sdk import keys
from sdk.bundle import verify_bundle
from sdk.errors import ConfigError, ConversionError
from sdk.manifest import Manifest
from sdk.profiles import load_profile

log = logging.getLogger("converter")

#: int8 shrinks fp32 weights at most 4x: a source this far over the limit cannot fit.
MAX_SHRINK = 4.0


@dataclass(frozen=True)
class ConvertRequest:
    model: str
    profile: str
    out_dir: Path = Path(".")
    name: str | None = None
    version: str = "1"
    evaluation: Path | None = None
    sign_key: str | None = None
    options: Options = field(default_factory=Options)


@dataclass(frozen=True)
class ConvertResult:
    bundle: Path
    manifest: Manifest
    report: Path


def convert(request: ConvertRequest) -> ConvertResult:
    """Run the profile's passes within the request's time budget and memory limit."""
    limit = memory.MemoryLimit.of(request.options.max_memory_mb)
    budget = budgeting.TimeBudget(request.options.budget_seconds)
    with (
        memory.limited(limit),
        budgeting.running(budget),
        progress.tracking(progress.Progress(budget.seconds)),
    ):
        return _convert(request, limit, budget)


def _convert(
    request: ConvertRequest, limit: memory.MemoryLimit, budget: budgeting.TimeBudget
) -> ConvertResult:
    profile = load_profile(request.profile)
    if request.options.speedup is not None and "prune" not in profile.passes:
        raise ConfigError(
            f"--speedup prunes channels in the 'prune' pass, which profile {profile.name} does not list"
        )
    key = signing_key(request.sign_key)
    if profile.runtime == "litert":
        from converter.litert_pipeline import convert_litert

        with tempfile.TemporaryDirectory(prefix="edge-convert-") as tmp:
            done = convert_litert(request, profile, key, Path(tmp))
            return ConvertResult(done.bundle, done.manifest, done.report)
    passes = [resolve(name) for name in profile.passes]
    with tempfile.TemporaryDirectory(prefix="edge-convert-") as tmp:
        workdir = Path(tmp)
        progress.step("load")
        source = load_source(request.model, workdir)
        if source.format == "tflite":
            raise ConversionError(
                f"{request.model}: a TFLite model is converted only for LiteRT profiles (coral); give the"
                f" ONNX or PyTorch model for {profile.name}"
            )
        ctx = PassContext(
            profile=profile, workdir=workdir, options=request.options, example_inputs=source.example_inputs
        )
        ctx.started = budget.started
        model = source.artifact
        for step in passes:
            if model.is_onnx and ctx.source_onnx is None:
                _attach_data(model, ctx, request)
                _fit_to_limits(ctx, limit, budget)
            progress.step(step.name)
            log.info("pass %s", step.name)
            model = step.run(model, ctx, step.configure(ctx))
        if not model.is_onnx or ctx.source_onnx is None:
            raise ConversionError(f"profile {profile.name} produced no ONNX model: does it list 'export'?")
        if ctx.findings.metrics is None:
            progress.step("validate")
            model = resolve("validate").run(model, ctx, resolve("validate").configure(ctx))
        if litert_alternative.wanted(ctx, source):
            progress.step("runtime")
            chosen = litert_alternative.consider(model, source, ctx)
            if chosen is not None:
                progress.step("package")
                path, precision, names = chosen
                source_session = make_session(ctx.source_onnx, ctx.threads)
                done = package_litert(
                    path,
                    source_session,
                    names,
                    source,
                    ctx,
                    request,
                    key,
                    precision=precision,
                    any_batch=True,
                )
                return ConvertResult(done.bundle, done.manifest, done.report)
        progress.step("package")
        return _package(model, source, ctx, request, key)


def _attach_data(model: ModelArtifact, ctx: PassContext, request: ConvertRequest) -> None:
    """Fix the latency/fidelity baseline and load the data the model's inputs ask for."""
    assert model.onnx_path is not None
    ctx.source_onnx = model.onnx_path
    ctx.findings.source_size = model.onnx_path.stat().st_size
    limit = ctx.profile.max_model_mb * 2**20
    if ctx.findings.source_size > MAX_SHRINK * limit:
        raise ConversionError(
            f"the model is {ctx.findings.source_size / 2**20:.1f} MB; profile {ctx.profile.name}'s max_model_mb is"
            f" {ctx.profile.max_model_mb:g} MB and int8 shrinks weights at most {MAX_SHRINK:g}x, so it cannot fit"
        )
    ctx.inputs = input_specs(make_session(model.onnx_path, ctx.threads))
    q = ctx.profile.quantization
    limit = memory.active()
    if request.evaluation is not None:  # checked first: a bad file fails before any warning
        ctx.evaluation = cal.load_npz(request.evaluation, ctx.inputs, "eval", limit.share(DATA_MEMORY_SHARE))
    if ctx.options.calibration_path is not None:
        ctx.calibration = cal.load_npz(
            ctx.options.calibration_path, ctx.inputs, "calibration", limit.share(DATA_MEMORY_SHARE)
        )
    elif q.calibration_required:
        raise ConfigError(
            f"profile {ctx.profile.name} needs --calibration DATA.npz (full-integer quantization)"
        )
    else:
        ctx.calibration = cal.synthetic(ctx.inputs, ctx.options.input_shapes)
        log.warning(
            "no --calibration data: quantization ranges and fidelity use %s; pass --calibration DATA.npz"
            " with real inputs for trustworthy int8 ranges and numbers",
            ctx.calibration.origin,
        )
    ctx.findings.calibration_origin = ctx.calibration.origin
    ctx.findings.eval_origin = (ctx.evaluation or ctx.calibration).origin
    ctx.record(
        "data",
        "calibration: " + ctx.calibration.origin,
        "user data" if not ctx.calibration.synthetic else "no --calibration given: synthetic inputs",
        eval=ctx.findings.eval_origin,
    )


#: share of the memory room each data file (calibration, eval) may take once loaded.
DATA_MEMORY_SHARE = 0.15
#: share of the memory room the judged outputs may take: the reference's and one candidate's copy.
EVAL_MEMORY_SHARE = 0.3


def _fit_to_limits(ctx: PassContext, limit: memory.MemoryLimit, budget: budgeting.TimeBudget) -> None:
    """Time one call of the source and size what scales with it: the eval samples every candidate is
    judged on (by time and by the memory their outputs take) and the search's share of the budget."""
    assert ctx.source_onnx is not None and ctx.calibration is not None
    before = memory.resident_bytes()
    session = make_session(ctx.source_onnx, ctx.threads)
    feeds = ctx.calibration.first()
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # a model that cannot run this data fails in the passes, in one clear line
    try:
        outputs = session.run(None, feeds, quiet)  # the first call pays for allocation: not timed
    except Exception as exc:
        log.debug("not planning the budget: the source does not run on the data (%s)", first_line(exc))
        return
    limit.session_bytes = max(0, memory.resident_bytes() - before)
    limit.source_bytes = ctx.source_onnx.stat().st_size
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        run(session, feeds)
        times.append(time.perf_counter() - t0)
    budget.call_seconds = statistics.median(times)
    out_bytes = max(1, sum(o.nbytes for o in outputs))
    del session, outputs
    data = ctx.evaluation or ctx.calibration
    by_time = budgeting.plan_eval_samples(budget, len(data))
    by_memory = max(1, limit.share(EVAL_MEMORY_SHARE) // (2 * out_bytes))
    n = min(len(data), by_time, by_memory)
    budget.eval_samples = n
    if n < len(data):
        why = "memory" if by_memory < by_time else "time"
        ctx.evaluation = cal.Dataset(
            {k: v[:n] for k, v in data.inputs.items()},
            None if data.labels is None else data.labels[:n],
            f"{data.origin}, first {n}",
            data.synthetic,
        )
        ctx.findings.eval_origin = ctx.evaluation.origin
        ctx.record(
            "budget",
            f"candidates judged on {n} of {len(data)} eval samples",
            f"cut short by {why}: one call takes {budget.call_seconds * 1000:.1f} ms and one sample's outputs"
            f" {out_bytes / memory.MB:.2f} MB; judging a candidate may take"
            f" {budgeting.JUDGE_SHARE / budgeting.TYPICAL_CANDIDATES:.0%} of the {budget.seconds:.0f} s budget"
            f" and the outputs {EVAL_MEMORY_SHARE:.0%} of the {limit.limit / memory.MB:.0f} MB memory limit",
            by_time=by_time,
            by_memory=int(by_memory),
        )
    search = budget.search_seconds()
    ctx.options = replace(ctx.options, budget_seconds=search)
    ctx.record(
        "budget",
        f"{budget.seconds:.0f} s in all, memory limit {limit.limit / memory.MB:.0f} MB",
        f"the search may run until {search:.0f} s; the rest is kept for validation and packaging"
        f" (one call of the source takes {budget.call_seconds * 1000:.2f} ms)",
        call_ms=round(budget.call_seconds * 1000, 3),
        budget_seconds=budget.seconds,
        max_memory_mb=round(limit.limit / memory.MB),
    )


def _package(
    model: ModelArtifact,
    source: SourceModel,
    ctx: PassContext,
    request: ConvertRequest,
    key: keys.Ed25519PrivateKey,
) -> ConvertResult:
    bundle_request = package.BundleRequest(
        name=request.name or safe_name(source.stem), version=request.version, out_dir=request.out_dir
    )
    manifest = package.build_manifest(model, source, ctx, bundle_request)
    bundle = package.write(model, manifest, key, request.out_dir)
    signed = verify_bundle(bundle).manifest  # what a device will read, signer and file hashes included
    report_path = report.write(request.out_dir / "report.html", signed, ctx.findings)
    log.info("wrote %s and %s", bundle, report_path)
    return ConvertResult(bundle, signed, report_path)
