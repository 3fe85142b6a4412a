"""Export a PyTorch model to ONNX, or bring an ONNX model into the profile's opset range.

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

from converter.calibration import LABELS
from converter.context import PassContext
from converter.errors import first_line, tool_failure
from converter.model import ModelArtifact
from sdk.errors import ConfigError, ConversionError

log = logging.getLogger(__name__)

PREFERRED_OPSET = 17


@dataclass(frozen=True)
class Config:
    opset_min: int
    opset_max: int
    target_opset: int


def configure(ctx: PassContext) -> Config:
    lo, hi = ctx.profile.opset.min, ctx.profile.opset.max
    return Config(lo, hi, min(max(PREFERRED_OPSET, lo), hi))


def run(model: ModelArtifact, ctx: PassContext, config: Config) -> ModelArtifact:
    if model.is_onnx:
        return _fit_opset(model, ctx, config)
    return _export_torch(model, ctx, config)


def _fit_opset(model: ModelArtifact, ctx: PassContext, config: Config) -> ModelArtifact:
    import onnx
    from onnx import version_converter

    assert model.onnx_path is not None
    proto = onnx.load(str(model.onnx_path))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or config.opset_min <= opset <= config.opset_max:
        ctx.record(
            "export",
            f"keep opset {opset}",
            f"within the profile's range {config.opset_min}-{config.opset_max}",
        )
        return model
    target = config.opset_min if opset < config.opset_min else config.opset_max
    try:
        converted = version_converter.convert_version(proto, target)
        onnx.checker.check_model(converted)
    except Exception as exc:
        raise ConversionError(
            f"the model uses opset {opset}; profile {ctx.profile.name} supports {config.opset_min}-"
            f"{config.opset_max} and converting to {target} failed: {first_line(exc)}"
        ) from None
    out = ctx.path("opset.onnx")
    onnx.save_model(converted, str(out))
    ctx.record(
        "export",
        f"opset {opset} -> {target}",
        f"profile {ctx.profile.name} supports {config.opset_min}-{config.opset_max}",
    )
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
