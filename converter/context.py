"""What every pass may read and the record it leaves: the profile, the data, the options, decisions.

A :class:`PassContext` is created once per conversion. Passes read the profile, the data and the
user's options from it, and append :class:`~sdk.manifest.Decision` entries (each choice with the
measurements behind it) and findings for the report. The model itself does not live here: it is
passed from step to step as a :class:`~converter.model.ModelArtifact`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converter.calibration import Dataset
from converter.model import InputSpec
from converter.runtime import host_threads
from sdk.manifest import Decision, Metrics
from sdk.profiles import HardwareProfile

log = logging.getLogger("converter")


@dataclass(frozen=True)
class Options:
    """The user's conversion options (the CLI flags that steer the passes)."""

    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    prune_amount: float | None = None
    prune_structured: bool = False
    max_accuracy_drop: float = 0.01
    budget_seconds: float = 60.0
    calibration_path: Path | None = None
    #: the cap on the conversion's resident memory (None: from the memory available, see converter.memory).
    max_memory_mb: float | None = None
    #: --speedup X: prune channels and distill until the host latency is 1/X of the source's.
    speedup: float | None = None
    #: seeds training (distillation) and its augmentation, so a conversion can be repeated.
    seed: int = 0


@dataclass(frozen=True)
class Alternative:
    """A measured candidate the final validation may ship instead, if the chosen one measures slower."""

    name: str
    path: Path
    precision: str
    session_config: dict[str, str]
    description: str


@dataclass
class Findings:
    """Measurements kept for the report and the manifest beyond the decisions."""

    #: one row per quantization candidate: name, latency_ms, size_bytes, fidelity, verdict.
    candidates: list[dict[str, Any]] = field(default_factory=list)
    #: node name -> fidelity loss when only that node is quantized (higher is worse).
    sensitivity: dict[str, float] = field(default_factory=dict)
    sensitivity_metric: str = ""
    calibration_origin: str = ""
    eval_origin: str = ""
    #: the validate pass's measurements of the final model against the source.
    metrics: Metrics | None = None
    #: bytes of the user's model as given (ONNX with external data, or the exported fp32 ONNX).
    source_size: int = 0
    #: --speedup: one row per pruning step (channels kept, latency vs source, fidelity before/after).
    speedup_curve: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PassContext:
    profile: HardwareProfile
    workdir: Path
    options: Options
    calibration: Dataset | None = None
    evaluation: Dataset | None = None
    #: the fp32 ONNX model as exported/loaded, before any pass changed it: the latency baseline.
    source_onnx: Path | None = None
    #: what the quantization search judges candidates against when it is not the model it starts
    #: from: the source, once --speedup trained a pruned model to follow it.
    reference_onnx: Path | None = None
    #: input specs of the fp32 ONNX model once it exists (after export).
    inputs: list[InputSpec] = field(default_factory=list)
    #: example inputs a torch.export program carries (used to export it when no data is given).
    example_inputs: tuple[Any, ...] | None = None
    decisions: list[Decision] = field(default_factory=list)
    #: the quantization search's acceptable candidates, most preferred first (the chosen one first).
    alternatives: list[Alternative] = field(default_factory=list)
    #: models an earlier pass measured at the bar that validation may ship when everything made
    #: from them misses it, before it falls back to the source graph (the --speedup step it chose).
    fallbacks: list[Alternative] = field(default_factory=list)
    findings: Findings = field(default_factory=Findings)
    started: float = field(default_factory=time.monotonic)

    @property
    def threads(self) -> int:
        return host_threads(self.profile.threads)

    def seconds_left(self) -> float:
        return self.options.budget_seconds - (time.monotonic() - self.started)

    def record(self, step: str, choice: str, reason: str, **measured: Any) -> None:
        self.decisions.append(Decision(step=step, choice=choice, reason=reason, measured=measured))
        log.info("%s: %s — %s", step, choice, reason)

    def path(self, name: str) -> Path:
        return self.workdir / name
