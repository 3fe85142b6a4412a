"""``--speedup X``: fewer channels, recovered by distillation from the source, measured step by step.

On CPUs without int8 dot-product instructions quantization shrinks a model but rarely speeds it
up; doing less work does. The steps, each recorded with its numbers:

1. **prune**: a share of every prunable layer's output channels goes (smallest L1 norm first, with
   the matching input channels of every layer that reads them; channels that meet at a residual
   ``Add`` go from all their producers at once, concatenated branches each on their own, split
   sizes follow: :func:`converter.pruning.structured`);
2. **recover**: the pruned graph, interpreted with torch (:mod:`converter.onnx_torch`), learns the
   unpruned source's outputs on the calibration inputs (:mod:`converter.kd`; labels help when
   given) for as many epochs as the step's share of the time budget allows, and the trained
   weights are written back into the ONNX file;
3. **measure**: fidelity against the source on held-out data (``--eval``, else a held-out share of
   the calibration data that training never sees, which then judges the rest of the conversion
   too), and host latency against the source in the interleaved race the search uses.

It stops when the measured speedup reaches the target, when a step misses the profile's fidelity
bar after recovery even with a smaller cut (a failed step is retried from the last good model with
half the share of channels), when nothing is left to prune, or when its time is up. The fastest step that
met the bar is what the int8 search starts from (and what it is judged against the source with);
if none did, the model is left as it was. Graphs with ops the interpreter cannot run are named in
one line, and the step is skipped.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter import kd, memory, onnx_torch, progress, pruning
from converter.calibration import Dataset
from converter.candidates import SOURCE, Candidate, Judge, race
from converter.context import Alternative, PassContext
from converter.errors import first_line
from converter.measure import batch_size_for
from converter.model import ModelArtifact
from converter.runtime import make_session, run

log = logging.getLogger(__name__)

#: share of each prunable layer's remaining channels one step removes.
STEP_FRACTION = 0.2
#: a step that misses the bar is retried with half its share, down to this share.
MIN_FRACTION = 0.05
#: steps that each gain less speed than this share, this many in a row, end the loop.
PLATEAU_GAIN = 0.03
PLATEAU_STEPS = 2
#: layers keep a multiple of this many channels: ONNX Runtime's CPU convolutions work on blocks of
#: 8 (AVX2) or 16 channels, and a layer cut to 51 of 64 channels measured slower than the whole one.
CHANNEL_MULTIPLE = 8
#: at most this many steps (0.8^8: about a sixth of the channels left).
MAX_STEPS = 8
#: samples per training batch, fewer when their activations and gradients would not fit
#: TRAIN_MEMORY_SHARE of the memory room left (the sessions and data already hold the rest).
BATCH = 32
TRAIN_MEMORY_SHARE = 0.5
#: distillation epochs a step plans (fewer when its time share is short).
EPOCHS = 12
#: share of the search's time the speedup may take; the int8 search and validation need the rest.
TIME_SHARE = 0.6
#: without --eval, this share of the calibration samples is held out to measure fidelity.
HELD_OUT_SHARE = 0.25
#: fewer held-out samples than this say too little: the speedup asks for --eval instead.
MIN_HELD_OUT = 16
#: seconds of calls per model in each step's latency race.
RACE_SECONDS = 0.3


@dataclass
class Point:
    """One step of the curve: what was kept, how fast and how faithful it measured."""

    step: int
    path: Path
    channels_kept: int
    channels_total: int
    latency_ratio: float
    fidelity_before: float
    fidelity: float
    meets: bool
    epochs: int
    seconds: float
    reason: str

    @property
    def speedup(self) -> float:
        return 1.0 / max(self.latency_ratio, 1e-9)

    def row(self) -> dict[str, Any]:
        return {
            "pruning_step": self.step,
            "channels_kept": self.channels_kept,
            "channels_total": self.channels_total,
            "latency_vs_source": round(self.latency_ratio, 4),
            "speedup": round(self.speedup, 3),
            "fidelity_after_pruning": round(self.fidelity_before, 5),
            "fidelity": round(self.fidelity, 5),
            "meets_bar": self.meets,
            "epochs": self.epochs,
            "seconds": round(self.seconds, 1),
        }


def run_speedup(model: ModelArtifact, ctx: PassContext, target: float) -> ModelArtifact:
    """The pruned and recovered model closest to ``target`` that meets the bar, or ``model``."""
    import onnx

    assert model.onnx_path is not None and ctx.source_onnx is not None and ctx.calibration is not None
    progress.step("speedup")
    if ctx.calibration.synthetic:
        ctx.record(
            "speedup",
            "skipped",
            "--speedup distills from the source on real inputs: pass --calibration DATA.npz",
        )
        return model
    proto = onnx.load(str(model.onnx_path))
    missing = onnx_torch.unsupported_ops(proto)
    if missing:
        ctx.record(
            "speedup",
            "skipped",
            f"the graph has ops the torch interpretation cannot train: {', '.join(missing)}",
            unsupported_ops=missing,
        )
        log.warning("--speedup skipped: ops the torch interpretation cannot run: %s", ", ".join(missing))
        return model
    untied = pruning.untie(proto)
    if untied:
        ctx.record(
            "speedup-data",
            f"untied {untied} shared weights",
            "layers that share an initializer (cleanup merges equal ones) get their own copy to prune and train",
        )
    train, held = _split(ctx)
    if held is None:
        return model
    judge = Judge(ctx.source_onnx, held, ctx.profile.quantization, ctx.options.max_accuracy_drop, ctx.threads)
    teacher = _teacher(ctx.source_onnx, ctx.threads)
    deadline = ctx.started + ctx.options.budget_seconds * TIME_SHARE
    loop = _Loop(ctx, judge, teacher, train, target, deadline)
    try:
        loop.run(proto)
    except (onnx_torch.UnsupportedOps, RuntimeError, ValueError) as exc:
        # an op form the interpretation has no rule for, found while running: the steps so far stand.
        loop.stopped = f"stopped: the torch interpretation failed ({first_line(exc)})"
        log.warning("--speedup %s", loop.stopped)
    points = loop.points
    ctx.findings.speedup_curve = [p.row() for p in points]
    best = max((p for p in points if p.meets), key=lambda p: p.speedup, default=None)
    summary = {"target": target, "curve": [p.row() for p in points], "held_out": held.origin}
    if best is None or best.speedup <= 1.0:
        ctx.record(
            "speedup",
            "none kept",
            f"no pruned step met the fidelity bar and ran faster than the source; {loop.stopped}",
            **summary,
        )
        return model
    reached = best.speedup >= target
    ctx.record(
        "speedup",
        f"step {best.step}: {best.speedup:.2f}x the source's speed, {best.channels_kept} of"
        f" {best.channels_total} prunable channels",
        ("reached the requested speedup" if reached else f"the requested {target:g}x was not reached")
        + f" at the fidelity bar ({judge.bar.min_argmax_agreement if judge.classifier else judge.bar.min_cosine}"
        f" {'argmax agreement' if judge.classifier else 'cosine'} on {len(held)} held-out samples); {loop.stopped}",
        reached=reached,
        **summary,
    )
    if not reached:
        log.warning(
            "--speedup %g not reached: the best step that keeps the fidelity bar is %.2fx",
            target,
            best.speedup,
        )
    # the pruned model follows the source, not itself: candidates made from it are judged against the source.
    ctx.reference_onnx = ctx.source_onnx
    # if every quantized model made from it misses the bar, validation ships this one, not the source
    ctx.fallbacks.append(
        Alternative(
            f"pruned-step-{best.step}",
            best.path,
            "fp32",
            dict(model.session_config),
            f"the --speedup step {best.step} model ({best.speedup:.2f}x, fp32)",
        )
    )
    return model.with_onnx(best.path)


def _split(ctx: PassContext) -> tuple[Dataset, Dataset | None]:
    """Training data and the held-out data fidelity is measured on (never trained on)."""
    cal = ctx.calibration
    assert cal is not None
    if ctx.evaluation is not None and not _shares(ctx.evaluation, cal):
        return cal, ctx.evaluation
    n = len(cal)
    held_n = max(MIN_HELD_OUT, round(n * HELD_OUT_SHARE))
    if n - held_n < MIN_HELD_OUT:
        ctx.record(
            "speedup",
            "skipped",
            f"{n} calibration samples are too few to train on and hold out {MIN_HELD_OUT} for fidelity;"
            " pass more, or --eval DATA.npz",
        )
        return cal, None
    order = np.random.default_rng(0).permutation(n)
    held_idx, train_idx = np.sort(order[:held_n]), np.sort(order[held_n:])

    def part(idx: np.ndarray, what: str) -> Dataset:
        return Dataset(
            {k: v[idx] for k, v in cal.inputs.items()},
            None if cal.labels is None else cal.labels[idx],
            f"{cal.origin}, {what} ({len(idx)} samples)",
            cal.synthetic,
        )

    held = part(held_idx, "held out from distillation")
    # the rest of the conversion is judged on the same unseen samples: an honest final fidelity.
    ctx.evaluation = held
    ctx.findings.eval_origin = held.origin
    ctx.record(
        "speedup-data",
        f"held out {held_n} of {n} calibration samples",
        "no --eval data: fidelity is measured on samples distillation never trained on",
    )
    return part(train_idx, "used to distill"), held


def _shares(a: Dataset, b: Dataset) -> bool:
    """Is ``a`` a cut of ``b`` (the budget's first-n cut of the calibration data when no --eval)?"""
    return any(np.shares_memory(a.inputs[k], b.inputs[k]) for k in a.inputs if k in b.inputs)


def _teacher(source: Path, threads: int) -> kd.Teacher:
    """The source in ONNX Runtime, fed in batches it accepts (one sample at a time for a fixed batch)."""
    session = make_session(source, threads)
    batch = batch_size_for(session)

    def outputs(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = len(next(iter(feeds.values())))
        step = n if batch > 1 else 1
        parts = [run(session, {k: v[i : i + step] for k, v in feeds.items()}) for i in range(0, n, step)]
        return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]

    return outputs


class _Loop:
    def __init__(
        self,
        ctx: PassContext,
        judge: Judge,
        teacher: kd.Teacher,
        train: Dataset,
        target: float,
        deadline: float,
    ) -> None:
        self.ctx, self.judge, self.teacher, self.train = ctx, judge, teacher, train
        self.target, self.deadline = target, deadline
        self.stopped = ""
        self.points: list[Point] = []
        session = make_session(ctx.source_onnx, ctx.threads)  # type: ignore[arg-type]
        self.dynamic_batch = batch_size_for(session) > 1

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, proto: Any) -> None:
        """Prune, recover, measure, step after step (into :attr:`points`); a step that misses the
        bar is tried again from the last good model with half the share, down to :data:`MIN_FRACTION`."""
        points = self.points
        total = _prunable_channels(proto)
        current, fraction = proto, STEP_FRACTION
        for step in range(1, MAX_STEPS + 1):
            if self.seconds_left() <= 0:
                self.stopped = "stopped: the speedup's share of --budget is used up"
                break
            started = time.monotonic()
            pruned = type(proto)()
            pruned.CopyFrom(current)
            stats = pruning.structured(pruned, fraction, CHANNEL_MULTIPLE)
            if stats.removed_channels == 0:
                self.stopped = (
                    f"stopped at step {step}: no layer has {fraction:.0%} of its channels left to prune"
                )
                break
            point = self._step(step, pruned, total, started, points)
            points.append(point)
            log.info(
                "speedup step %d: %d/%d channels, %.2fx faster, fidelity %.4f (%.4f before recovery)%s",
                step,
                point.channels_kept,
                point.channels_total,
                point.speedup,
                point.fidelity,
                point.fidelity_before,
                "" if point.meets else f", below the bar: {point.reason}",
            )
            measured = {k: v for k, v in point.row().items() if k != "pruning_step"}
            self.ctx.record(
                "speedup-step",
                f"step {step}: {point.speedup:.2f}x, fidelity {point.fidelity:.4f}"
                + ("" if point.meets else " (below the bar)"),
                (point.reason or "meets the bar")
                + f"; {fraction:.0%} of each prunable layer's channels removed",
                pruning_step=step,
                **measured,
            )
            if not point.meets:
                if fraction / 2 >= MIN_FRACTION:
                    fraction /= 2  # a smaller cut from the last good model may still recover
                    continue
                self.stopped = f"stopped at step {step}: fidelity could not be recovered ({point.reason})"
                break
            if point.speedup >= self.target:
                self.stopped = (
                    f"stopped at step {step}: {point.speedup:.2f}x reaches the requested {self.target:g}x"
                )
                break
            if _plateau(points):
                self.stopped = (
                    f"stopped at step {step}: the last {PLATEAU_STEPS} steps gained less than {PLATEAU_GAIN:.0%}"
                    " speed each (what is left to prune costs little; the rest of the time is the other layers')"
                )
                break
            current = pruned
        else:
            self.stopped = f"stopped after {MAX_STEPS} steps"

    def _step(self, step: int, pruned: Any, total: int, started: float, done: list[Point]) -> Point:
        import onnx

        kept = _prunable_channels(pruned)
        before = self._judged(pruned, step, "pruned").score()
        progress.candidate(f"step {step}: {kept}/{total} channels, fidelity {before:.3f} before recovery")
        module = onnx_torch.to_torch(pruned)
        batch = self._batch(module)
        # the step's share: what is left, split over the steps the target may still need.
        share = self.seconds_left() / max(1, min(3, MAX_STEPS - len(done)))
        report = progress.reporter(f"step {step} distill epoch")
        epochs = kd.train(
            module,
            self.train.inputs,
            self.train.labels,
            self.teacher,
            self.judge.classifier,
            kd.TrainConfig(epochs=EPOCHS, batch_size=batch, seed=self.ctx.options.seed + step),
            deadline=time.monotonic() + share,
            epoch_done=lambda e, n, _loss: report(e, n),
        )
        cut = type(pruned)()
        cut.CopyFrom(pruned)
        onnx_torch.write_back(module.cpu(), pruned)
        path = self.ctx.path(f"speedup-step{step}.onnx")
        onnx.save_model(pruned, str(path))
        cand = Candidate(f"speedup-step{step}", path, "fp32", f"step {step}: {kept} of {total} channels")
        meets = self.judge.check(cand)
        assert cand.fidelity is not None
        if cand.score() < before:
            # distillation made it worse (too few samples to generalise from): the cut as it was
            # stands, and the next step starts from it
            log.info("speedup step %d: distillation lowered fidelity; the untrained cut is kept", step)
            pruned.CopyFrom(cut)
            onnx.save_model(pruned, str(path))
            cand = Candidate(cand.name, path, "fp32", cand.description)
            meets = self.judge.check(cand)
        latency = race(
            self.ctx.source_onnx,  # type: ignore[arg-type]
            [cand],
            self.ctx.threads,
            self.judge.data.first(),
            rounds=10,
            seconds_per_model=RACE_SECONDS,
        )
        return Point(
            step,
            path,
            kept,
            total,
            latency.ratio(cand.name, SOURCE),
            before,
            cand.score(),
            meets,
            epochs,
            time.monotonic() - started,
            "" if meets else cand.reason,
        )

    def _batch(self, module: onnx_torch.OnnxModule) -> int:
        """Samples per training batch: up to :data:`BATCH`, as many as fit TRAIN_MEMORY_SHARE of the
        memory room (training holds every intermediate tensor and its gradient)."""
        if not self.dynamic_batch:
            return 1
        import torch

        one = {k: torch.from_numpy(v[:1]) for k, v in self.train.inputs.items()}
        per_sample = 2 * module.activation_bytes(**one)
        fit = memory.active().share(TRAIN_MEMORY_SHARE) // max(per_sample, 1)
        return max(1, min(BATCH, fit))

    def _judged(self, proto: Any, step: int, tag: str) -> Candidate:
        import onnx

        path = self.ctx.path(f"speedup-step{step}-{tag}.onnx")
        onnx.save_model(proto, str(path))
        cand = Candidate(path.stem, path, "fp32", tag)
        self.judge.check(cand)
        return cand


def _plateau(points: list[Point]) -> bool:
    """Did the last :data:`PLATEAU_STEPS` steps that met the bar each gain less than :data:`PLATEAU_GAIN`?"""
    good = [p.speedup for p in points if p.meets]
    if len(good) <= PLATEAU_STEPS:
        return False
    recent = good[-PLATEAU_STEPS - 1 :]
    return all(b < a * (1 + PLATEAU_GAIN) for a, b in itertools.pairwise(recent))


def _prunable_channels(proto: Any) -> int:
    """Output channels of the layers the structured pruner may prune (their count as it stands)."""
    probe = type(proto)()
    probe.CopyFrom(proto)
    return pruning.structured(probe, 0.0).weights
