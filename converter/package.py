"""Fill the manifest from what the pipeline measured, and write the signed bundle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converter.context import PassContext
from converter.loading import SourceModel
from converter.model import ModelArtifact
from converter.reference import reference, smoke
from converter.runtime import make_session, tensor_specs
from sdk import keys
from sdk.bundle import write_bundle
from sdk.errors import ConfigError, ConversionError
from sdk.manifest import Manifest, RuntimeOptions, SourceInfo

OPTIMIZATION_LEVEL = "all"


@dataclass(frozen=True)
class BundleRequest:
    name: str
    version: str
    out_dir: Path


def build_manifest(
    model: ModelArtifact, source: SourceModel, ctx: PassContext, request: BundleRequest
) -> Manifest:
    if model.onnx_path is None or ctx.source_onnx is None or ctx.calibration is None:
        raise ConversionError("nothing to package: no converted ONNX model")
    converted = make_session(model.onnx_path, ctx.threads, model.session_config, OPTIMIZATION_LEVEL)
    original = make_session(ctx.source_onnx, ctx.threads)
    try:
        return Manifest(
            name=request.name,
            version=request.version,
            profile=ctx.profile.name,
            runtime=ctx.profile.runtime,
            precision=model.precision,
            source=SourceInfo(format=source.format, sha256=source.sha256, filename=source.filename),
            model_file="model.onnx",
            inputs=tensor_specs(converted, "inputs"),
            outputs=tensor_specs(converted, "outputs"),
            metrics=ctx.findings.metrics or {},
            reference=reference(converted, ctx.calibration, ctx.evaluation),
            smoke=smoke(converted, original, ctx.evaluation or ctx.calibration),
            runtime_options=RuntimeOptions(
                session_config=dict(model.session_config), graph_optimization_level=OPTIMIZATION_LEVEL
            ),
            decisions=list(ctx.decisions),
        )
    except ValueError as exc:  # pydantic: a bad --name or --version
        raise ConfigError(str(exc).splitlines()[-1] if str(exc) else "invalid manifest field") from None


def write(model: ModelArtifact, manifest: Manifest, key: keys.Ed25519PrivateKey, out_dir: Path) -> Path:
    assert model.onnx_path is not None
    return write_bundle(manifest, {"model.onnx": model.onnx_path}, key, out_dir)
