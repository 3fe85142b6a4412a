"""Export a PyTorch model to ONNX, or bring an ONNX model into the profile's opset range.

An ONNX model below opset 13 is raised to 13 when the profile quantizes with per-channel QDQ (its
DequantizeLinear ``axis`` is an opset 13 form). Without calibration data, an ONNX model must run on
the synthetic inputs (dynamic dims guessed unless ``--input`` fixes them), or conversion stops
here with one line saying what to pass.

Input names and example shapes come, in order of preference, from ``--input NAME:SHAPE``, the
calibration ``.npz`` (one sample), or the example inputs a ``torch.export`` program carries. The
batch axis stays dynamic.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from converter.calibration import LABELS
from converter.context import PassContext
from converter.errors import first_line, tool_failure
from converter.model import ModelArtifact
from converter.runtime import make_session
from sdk.errors import ConfigError, ConversionError

log = logging.getLogger(__name__)

PREFERRED_OPSET = 17
#: DequantizeLinear gained its per-channel ``axis`` in opset 13: onnxruntime's QDQ quantizer writes it
#: whatever the model's opset, so an opset 11/12 model gets an invalid per-channel int8 model.
PER_CHANNEL_QDQ_OPSET = 13
#: schemes whose candidates include per-channel QDQ (static int8, its int8-stored weights, QNN).
_PER_CHANNEL_QDQ_SCHEMES = ("int8-static", "int8-selective", "qdq-qnn")


@dataclass(frozen=True)
class Config:
    opset_min: int
    opset_max: int
    target_opset: int
    #: the opset an ONNX input is raised to (within the range) so the profile's quantization can run.
    quantization_opset: int = 0


def configure(ctx: PassContext) -> Config:
    lo, hi = ctx.profile.opset.min, ctx.profile.opset.max
    q = ctx.profile.quantization
    needs_axis = q.per_channel and q.scheme in _PER_CHANNEL_QDQ_SCHEMES
    return Config(
        lo, hi, min(max(PREFERRED_OPSET, lo), hi), min(PER_CHANNEL_QDQ_OPSET, hi) if needs_axis else 0
    )


def run(model: ModelArtifact, ctx: PassContext, config: Config) -> ModelArtifact:
    if model.is_onnx:
        _check_synthetic_inputs_run(model, ctx)
        return _fit_opset(model, ctx, config)
    return _export_torch(model, ctx, config)


def _check_synthetic_inputs_run(model: ModelArtifact, ctx: PassContext) -> None:
    """Without data, dynamic dims get a guessed size: fail here, clearly, if the model cannot take it.

    Otherwise the first pass to run the model (calibration, deep in onnxruntime) fails with a kernel
    message about mismatched dimensions that does not say what to do.
    """
    data = ctx.calibration
    if data is None or not data.synthetic or model.onnx_path is None:
        return
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # the failure is reported below in one line, not also by ORT's logger
    try:
        make_session(model.onnx_path, ctx.threads).run(None, data.first(), quiet)
    except Exception as exc:
        dynamic = [s.name for s in ctx.inputs if any(not isinstance(d, int) for d in s.shape[1:])]
        hint = f"; dynamic dims of {', '.join(dynamic)} were guessed" if dynamic else ""
        raise ConfigError(
            f"the model does not run on the synthetic inputs made without --calibration data"
            f" ({data.origin}{hint}): pass --input NAME:SHAPE with the shape it takes, or --calibration"
            f" DATA.npz ({first_line(exc)})"
        ) from None


def _fit_opset(model: ModelArtifact, ctx: PassContext, config: Config) -> ModelArtifact:
    import onnx
    from onnx import version_converter

    assert model.onnx_path is not None
    proto = onnx.load(str(model.onnx_path))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    floor = max(config.opset_min, config.quantization_opset)
    if opset is None or floor <= opset <= config.opset_max:
        ctx.record(
            "export",
            f"keep opset {opset}",
            f"within the profile's range {config.opset_min}-{config.opset_max}",
        )
        return model
    in_range = config.opset_min <= opset <= config.opset_max
    target = floor if opset < floor else config.opset_max
    reason = f"profile {ctx.profile.name} supports {config.opset_min}-{config.opset_max}"
    if target == config.quantization_opset and target > config.opset_min:
        reason = f"per-channel int8 QDQ needs opset {target} (DequantizeLinear axis); {reason}"
    try:
        converted = version_converter.convert_version(proto, target)
        onnx.checker.check_model(converted)
    except Exception as exc:
        if in_range:  # the source fits the profile as it is: keep it rather than fail here
            ctx.record("export", f"keep opset {opset}", f"converting to {target} failed: {first_line(exc)}")
            return model
        raise ConversionError(
            f"the model uses opset {opset}; profile {ctx.profile.name} supports {config.opset_min}-"
            f"{config.opset_max} and converting to {target} failed: {first_line(exc)}"
        ) from None
    out = ctx.path("opset.onnx")
    onnx.save_model(converted, str(out))
    ctx.record("export", f"opset {opset} -> {target}", reason)
    return model.with_onnx(out)


def _example_inputs(ctx: PassContext) -> dict[str, np.ndarray]:
    """One example per input, named, from --input shapes, the calibration file or the program."""
    if ctx.options.calibration_path is not None:
        try:
            with np.load(ctx.options.calibration_path, allow_pickle=False) as data:
                arrays = {k: np.asarray(data[k][:1]) for k in data.files if k != LABELS}
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"--calibration {ctx.options.calibration_path}: not a readable .npz ({exc})"
            ) from None
        for name, shape in ctx.options.input_shapes.items():
            if name not in arrays:
                raise ConfigError(f"--input {name}: not among the calibration arrays {sorted(arrays)}")
            if tuple(arrays[name].shape[1:]) != shape[1:]:
                raise ConfigError(
                    f"--input {name}:{shape} does not match the calibration data {arrays[name].shape}"
                )
        if arrays:
            return arrays
    if ctx.options.input_shapes:
        return {n: np.zeros(s, dtype=np.float32) for n, s in ctx.options.input_shapes.items()}
    if ctx.example_inputs:
        return {f"input_{i}": np.asarray(t.detach().cpu().numpy()) for i, t in enumerate(ctx.example_inputs)}
    raise ConfigError(
        "a PyTorch model needs example input shapes: pass --input NAME:SHAPE (e.g. x:1x3x224x224)"
        " or --calibration DATA.npz"
    )


def _export_torch(model: ModelArtifact, ctx: PassContext, config: Config) -> ModelArtifact:
    import torch

    examples = _example_inputs(ctx)
    names = list(examples)
    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in examples.values())
    module: Any = model.torch_module
    is_program = isinstance(module, torch.export.ExportedProgram)
    with torch.no_grad():
        sample = (module.module() if is_program else module)(*args)
    n_out = len(sample) if isinstance(sample, (tuple, list)) else 1
    outputs = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    out = ctx.path("export.onnx")
    # a torch.export program goes through the dynamo exporter (opset 18 at least, shapes as exported);
    # modules and TorchScript through the TorchScript exporter, with a dynamic batch axis.
    opset = max(config.target_opset, 18) if is_program else config.target_opset
    how: dict[str, Any] = (
        {"dynamo": True}
        if is_program
        else {"dynamo": False, "dynamic_axes": {n: {0: "batch"} for n in names + outputs}}
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(out), input_names=names, output_names=outputs, opset_version=opset, **how
            )
    except Exception as exc:
        raise tool_failure("ONNX export", exc) from None
    ctx.record(
        "export",
        f"ONNX opset {opset}",
        "PyTorch model exported with a dynamic batch axis",
        inputs={n: list(a.shape) for n, a in examples.items()},
    )
    return model.with_onnx(out)
