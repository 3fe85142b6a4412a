"""Pruning pass: the method and amount come from ``--prune``/``--prune-structured`` or the profile.

Runs on the ONNX graph (see :mod:`converter.pruning`). With ``--speedup X`` the pass is the
step-by-step pruning with recovery by distillation of :mod:`converter.speedup` instead. With labelled data, an amount whose accuracy
drop exceeds ``--max-accuracy-drop`` is halved until it fits (there is no fine-tuning here), else
pruning is dropped; every try is recorded. The quantization search then measures against the
pruned model, and the final validation against the unpruned source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from converter import pruning
from converter.calibration import Dataset
from converter.context import PassContext
from converter.measure import accuracy, outputs_over
from converter.model import ModelArtifact
from converter.runtime import make_session
from converter.speedup import run_speedup
from sdk.errors import ConversionError

log = logging.getLogger(__name__)


#: tries at halving the amount before pruning is given up.
MAX_ATTEMPTS = 4


@dataclass(frozen=True)
class Config:
    method: str
    amount: float


def configure(ctx: PassContext) -> Config:
    spec = ctx.profile.pruning
    amount = ctx.options.prune_amount if ctx.options.prune_amount is not None else spec.amount
    method = "structured" if ctx.options.prune_structured else spec.method
    if method == "none" and amount > 0:
        method = "unstructured"
    return Config(method, amount)


def run(model: ModelArtifact, ctx: PassContext, config: Config) -> ModelArtifact:
    if ctx.options.speedup is not None:
        if model.onnx_path is None:
            raise ConversionError(
                "--speedup runs on the ONNX graph: put 'export' before 'prune' in the profile"
            )
        return run_speedup(model, ctx, ctx.options.speedup)
    if config.amount <= 0 or config.method == "none":
        ctx.record("prune", "none", "no pruning asked (--prune AMOUNT) and the profile's default amount is 0")
        return model
    if model.onnx_path is None:
        raise ConversionError("prune runs on the ONNX graph: put 'export' before 'prune' in the profile")
    labelled = next(
        (d for d in (ctx.evaluation, ctx.calibration) if d is not None and d.labels is not None), None
    )
    baseline = _accuracy(model.onnx_path, labelled, ctx.threads) if labelled is not None else None
    amount = config.amount
    for attempt in range(MAX_ATTEMPTS):
        out, reason, stats = _prune(
            model.onnx_path, ctx.path(f"pruned-{attempt}.onnx"), config.method, amount
        )
        accuracy = _accuracy(out, labelled, ctx.threads) if labelled is not None else None
        measured = {
            "weights": stats.weights,
            "zeros": stats.zeros,
            "accuracy": accuracy,
            "accuracy_before": baseline,
        }
        if baseline is None or accuracy is None or baseline - accuracy <= ctx.options.max_accuracy_drop:
            ctx.record("prune", f"{config.method} {amount:g}", reason, **measured)
            return model.with_onnx(out)
        ctx.record(
            "prune",
            f"{config.method} {amount:g} rejected",
            f"{reason}; accuracy {accuracy:.4f} vs {baseline:.4f} drops more than"
            f" --max-accuracy-drop {ctx.options.max_accuracy_drop}",
            **measured,
        )
        if config.method == "semi-structured-2:4":
            break  # 2:4 has one fixed amount: nothing milder to try
        amount /= 2
    ctx.record(
        "prune", "none", "no pruning amount kept accuracy within --max-accuracy-drop (no fine-tuning here)"
    )
    return model


def _prune(src: Path, out: Path, method: str, amount: float) -> tuple[Path, str, pruning.PruneStats]:
    import onnx

    proto = onnx.load(str(src))
    if method == "unstructured":
        stats = pruning.unstructured(proto, amount)
    elif method == "semi-structured-2:4":
        stats = pruning.semi_structured_2_4(proto)
    else:
        stats = pruning.structured(proto, amount)
    onnx.save_model(proto, str(out))
    if method == "structured":
        reason = f"removed {stats.removed_channels} of {stats.weights} prunable channels (smallest L1 norm)"
    else:
        reason = f"{stats.sparsity:.1%} of {stats.weights} weights are now zero"
    return out, reason, stats


def _accuracy(path: Path, data: Dataset, threads: int) -> float:
    assert data.labels is not None
    return accuracy(outputs_over(make_session(path, threads), data), data.labels)
