"""Selective quantization search: build candidates, measure each, keep the best that is good enough.

Candidates, cheapest fallbacks first so the search always has something to keep when the budget
runs out: the source graph unchanged (only loading's mandatory opset/IR fixes), fp32 (the cleaned
graph), weight-only int8 (embedding tables row-gathered, or folded at load), static int8 QDQ on
every op ONNX Runtime can run in int8, static int8 on Conv/MatMul/Gemm only, and dynamic int8
(MatMulInteger), plain and on a smoothed graph. While no
candidate that meets the fidelity bar beats the source's latency, failing candidates back off, the
closest to the bar first: per-node sensitivity (a one-pass ranking, refined by quantizing the
suspects one at a time) picks nodes to keep in float, 1, 2, 4, ... of the worst, until the bar is
met; the float-kept nodes' weights are then tried as int8-stored too. A candidate ONNX Runtime
cannot build, load or run is rejected with the reason, and the search goes on. Survivors race each
other and the source in interleaved blocks, with the source loaded twice (an A/A pair) to measure
the run's noise; nothing measurably slower than the source is accepted; among candidates that halve
a model over 1 MB (if any do), the smallest (to 5% of the source's bytes) of the fastest (within
noise) wins, and the rest, in order of preference, are kept for the final validation to fall back
on. Every verdict is recorded with its numbers.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from converter import budget as budgeting
from converter import memory, progress, smoothing
from converter import sensitivity as sens
from converter.calibration import Dataset
from converter.context import Alternative, PassContext
from converter.measure import (
    Fidelity,
    accuracy,
    compare_latency,
    fidelity,
    judged_as_classifier,
    outputs_over,
)
from converter.passes import cleanup, int8_dynamic, int8_static, weight_only
from converter.runtime import make_session
from sdk.errors import ConversionError
from sdk.profiles import QuantizationSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

#: the second session of the source in a race: source vs this is the A/A pair that measures noise.
SOURCE_AGAIN = "source (A/A)"
#: the candidate that is the source graph itself.
SOURCE_GRAPH = "source-graph"

EVAL_SAMPLES = 512
#: rebuild a candidate with some nodes kept in float / with only one node quantized.
Maker = Callable[[tuple[str, ...], Path], Path]
OnlyMaker = Callable[[str, Path], Path]
#: nodes the one-pass ranking hands to the slower one-node-at-a-time refinement.
MAX_SUSPECTS = 48
#: a quick race stops the back-off only on a clear win (it has few rounds, so it is noisier).
CLEAR_WIN = 0.15
#: models above this size should come out at most half as big (when a candidate manages it).
SIZE_GOAL_MIN_BYTES = 1_000_000
#: seconds of calls per model in the final race (a fast model gets MAX_ROUNDS ~1 ms blocks sooner).
RACE_SECONDS = 0.5
#: accepted candidates this close (relative latency) to the fastest count as equally fast.
TIE = 0.03
#: candidates whose sizes differ by less than this share of the source's bytes are equally small.
SIZE_TIE = 0.05
#: a candidate this far from the bar is not worth backing off node by node.
HOPELESS = 0.9
#: share of the remaining budget one refinement may use.
REFINE_SHARE = 0.25


@dataclass
class Candidate:
    name: str
    path: Path
    precision: str
    description: str
    session_config: dict[str, str] = field(default_factory=dict)
    excluded: tuple[str, ...] = ()
    fidelity: Fidelity | None = None
    accuracy: float | None = None
    latency_ms: float | None = None
    latency_ratio: float | None = None
    verdict: str = "not measured"

    @property
    def size_bytes(self) -> int:
        """0 for a candidate whose file was never written (its maker failed)."""
        return self.path.stat().st_size if self.path.exists() else 0

    def record(self, ctx: PassContext, step: str, **measured: object) -> None:
        """One decision (``name: verdict`` with size and fidelity) and one report row for this candidate."""
        ctx.record(
            step,
            f"{self.name}: {self.verdict}",
            self.description,
            size_bytes=self.size_bytes,
            fidelity=self.fidelity.as_dict() if self.fidelity else None,
            **measured,
        )
        ctx.findings.candidates.append(self.row())

    def row(self) -> dict[str, object]:
        return {
            "name": self.name,
            "description": self.description,
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "latency_ms": self.latency_ms,
            "latency_ratio": self.latency_ratio,
            "fidelity": self.fidelity.as_dict() if self.fidelity else None,
            "accuracy": self.accuracy,
            "excluded_nodes": list(self.excluded),
            "verdict": self.verdict,
        }


class Judge:
    """Fidelity and accuracy of candidates against the float model they were made from."""

    @classmethod
    def for_context(cls, ctx: PassContext, base: Path) -> Judge:
        """Judged on the eval data (else the calibration data), at the profile's bar."""
        assert ctx.calibration is not None
        data = (ctx.evaluation or ctx.calibration).take(EVAL_SAMPLES)
        return cls(base, data, ctx.profile.quantization, ctx.options.max_accuracy_drop, ctx.threads)

    def __init__(
        self, base: Path, data: Dataset, bar: QuantizationSpec, max_drop: float, threads: int
    ) -> None:
        self.data, self.bar, self.max_drop, self.threads = data, bar, max_drop, threads
        session = make_session(base, threads)
        self.reference = outputs_over(session, data)
        self.classifier = judged_as_classifier(session, self.reference, data)
        self.base_accuracy = accuracy(self.reference, data.labels) if data.labels is not None else None

    def check(self, cand: Candidate) -> bool:
        outs = outputs_over(make_session(cand.path, self.threads, cand.session_config), self.data)
        cand.fidelity = fidelity(self.reference, outs, self.classifier)
        if self.data.labels is not None:
            cand.accuracy = accuracy(outs, self.data.labels)
        if not cand.fidelity.meets(self.bar):
            cand.verdict = f"rejected: {cand.fidelity.shortfall(self.bar)}"
            return False
        if self.base_accuracy is not None and cand.accuracy is not None:
            drop = self.base_accuracy - cand.accuracy
            if drop > self.max_drop:
                cand.verdict = f"rejected: accuracy drop {drop:.4f} > {self.max_drop}"
                return False
        cand.verdict = "fidelity ok"
        return True


@dataclass
class SearchResult:
    chosen: Candidate
    candidates: list[Candidate]
    #: candidate name -> its per-node sensitivity, for the candidates that were ranked.
    sensitivity: dict[str, sens.Sensitivity]


class Search:
    def __init__(self, ctx: PassContext, base: Path, source: Path, gate_latency: bool = True) -> None:
        assert ctx.calibration is not None
        self.ctx, self.base, self.source, self.gate_latency = ctx, base, source, gate_latency
        self.judge = Judge.for_context(ctx, base)
        self.data = self.judge.data
        self.candidates: list[Candidate] = []
        self.rankings: dict[str, sens.Sensitivity] = {}
        self.static_config = replace(int8_static.configure(ctx), op_types=None)
        #: candidate name -> how to rebuild it with some nodes kept in float (for the back-off).
        self.makers: dict[str, tuple[Maker, OnlyMaker, tuple[str, ...] | None]] = {}
        #: candidate name -> the float model it quantizes, when that is not ``base`` (for rankings).
        self.float_models: dict[str, Path] = {}

    # ------------------------------------------------------------------ candidate makers
    def _add(self, cand: Candidate) -> bool:
        progress.candidate(cand.name)
        self.candidates.append(cand)
        try:
            if cand.path not in (self.base, self.source):
                # the quantizers annotate shapes, which make ONNX Runtime pick slower fusions.
                cleanup.drop_shape_annotations(cand.path)
            ok = self.judge.check(cand)
        except ConversionError as exc:  # ONNX Runtime cannot load or run it: one rejected candidate
            cand.verdict = f"rejected: {exc}"
            ok = False
        log.info("candidate %s: %s", cand.name, cand.verdict)
        return ok

    def _build(self, name: str, precision: str, description: str, make: Callable[[], Path]) -> Candidate:
        """Run a candidate's maker; a maker that fails gives a rejected candidate, not a failed search."""
        progress.candidate(name)
        try:
            path = make()
        except ConversionError as exc:
            cand = Candidate(name, self.ctx.path(f"cand-{name}.onnx"), precision, description)
            cand.verdict = f"rejected: {exc}"
            self.candidates.append(cand)
            log.info("candidate %s: %s", name, cand.verdict)
            return cand
        cand = Candidate(name, path, precision, description)
        self._add(cand)
        return cand

    def budget_ok(self, what: str) -> bool:
        if self.ctx.seconds_left() > budgeting.candidate_seconds():
            return True
        self.ctx.record("search", f"skipped {what}", "the --budget is used up; keeping the best found so far")
        return False

    def source_graph(self) -> None:
        """The source as loaded, so that when everything else is slower the source itself ships."""
        self._add(
            Candidate(
                SOURCE_GRAPH,
                self.source,
                "fp32",
                "the source graph unchanged (loading's opset/IR fixes only)",
            )
        )

    def fp32(self) -> None:
        if self.base != self.source:
            self._add(Candidate("fp32", self.base, "fp32", "cleaned fp32 graph"))

    def weight_only(self) -> None:
        """Weight-only int8; when it misses the bar, the worst-quantizing tensors stay fp32 (1, 2, 4, 8).

        Embedding tables are tried both ways: int8 rows scaled after the Gather (no fp32 copy of
        the table in memory, but a few more node calls per call) and DequantizeLinear folded at load
        (the loaded graph is the fp32 graph, so a model whose latency is per-call overhead keeps it).
        """
        worst = weight_only.worst_tensors(self.base, weight_only.Config())
        for k in (0, 1, 2, 4, 8):
            if k > len(worst) or (k and not self.budget_ok("weight-only back-off")):
                return
            config = weight_only.Config(skip_initializers=tuple(worst[:k]))
            result, ok = self._weight_only_variant(config, k, "")
            if result.tables:
                folded = replace(config, row_gather_tables=False)
                ok = self._weight_only_variant(folded, k, "-folded")[1] or ok
            if not result.count or ok:
                return

    def _weight_only_variant(
        self, config: weight_only.Config, k: int, tag: str
    ) -> tuple[weight_only.Quantized, bool]:
        result = weight_only.quantize(self.base, self.ctx.path(f"cand-weight-only{tag}-{k}.onnx"), config)
        if not result.count:
            return result, False
        tables = "row-gathered embeddings" if config.row_gather_tables else "embeddings folded at load"
        cand = Candidate(
            "weight-only-int8" + tag + (f"-fp32x{k}" if k else ""),
            result.path,
            "int8-weights",
            f"{result.count} weight tensors int8 (DequantizeLinear / {tables}), fp32 compute"
            + (f"; {k} worst-quantizing tensors kept fp32" if k else ""),
            dict(weight_only.SESSION_CONFIG) if result.needs_fold else {},
        )
        return result, self._add(cand)

    def static(self, name: str, config: int8_static.Config, description: str) -> Candidate:
        cache = self.ctx.path(f"calib-{name}.json")
        cand = self._build(
            name,
            "int8",
            description,
            lambda: int8_static.quantize(
                self.base, self.ctx.path(f"cand-{name}.onnx"), self.ctx.calibration, config, cache
            ),
        )
        self.makers[name] = (
            lambda excl, path: int8_static.quantize(
                self.base, path, self.ctx.calibration, replace(config, nodes_to_exclude=excl), cache
            ),
            lambda node, path: int8_static.quantize(
                self.base, path, self.ctx.calibration, replace(config, nodes_to_quantize=(node,)), cache
            ),
            config.op_types,
        )
        return cand

    def dynamic(self, *, per_tensor: bool = False) -> Candidate:
        """Dynamic int8 as the profile asks; ``per_tensor`` is the variant with one scale per weight.

        One scale per weight is coarser but cheaper: measured on a 256-1024-1024-10 MLP, per-channel
        dynamic MatMuls ran 14% slower than per-tensor ones, so both race when fidelity allows.
        """
        config = int8_dynamic.configure(self.ctx)
        name = "dynamic-int8"
        if per_tensor:
            config, name = replace(config, per_channel=False), "dynamic-int8-per-tensor"
        cand = self._build(
            name,
            "int8",
            "dynamic int8 (MatMul/Gemm/Gather weights, runtime activations)"
            + (", one scale per weight" if per_tensor else ""),
            lambda: int8_dynamic.quantize(self.base, self.ctx.path(f"cand-{name}.onnx"), config),
        )
        self.makers[cand.name] = (
            lambda excl, path: int8_dynamic.quantize(self.base, path, replace(config, nodes_to_exclude=excl)),
            lambda node, path: int8_dynamic.quantize(
                self.base, path, replace(config, nodes_to_quantize=(node,))
            ),
            config.op_types,
        )
        return cand

    def dynamic_smoothed(self) -> Candidate | None:
        """Dynamic int8 MatMuls on a smoothed graph, per-channel weights, embedding tables int8 per row.

        Outlier activation channels move into the weights (:mod:`converter.smoothing`), where only
        the MatMuls' int8 arithmetic sees them; everything else (residual adds, normalisation,
        softmax, activation functions, the attention score path) stays float. Row-gathered tables are
        stored as int8 rows with a scale each, which costs nothing per call.
        """
        smoothed = smoothing.smooth(
            self.base,
            self.ctx.path("smoothed.onnx"),
            self.ctx.calibration,
            self.ctx.threads,
            self.ctx.workdir,
        )
        if not smoothed.alphas:
            self.ctx.record(
                "search", "no smoothed candidate", "smoothing did not lower any simulated MatMul error"
            )
            return None
        self.ctx.record(
            "smoothing",
            f"{len(smoothed.alphas)} MatMul activations smoothed",
            "per-channel activation ranges moved into the weights where simulated dynamic int8 error fell",
            alphas={k: v for k, v in list(smoothed.alphas.items())[:8]},
            error_before_after={
                k: [round(a, 6), round(b, 6)] for k, (a, b) in list(smoothed.errors.items())[:8]
            },
        )
        tables = weight_only.quantize(
            smoothed.path, self.ctx.path("smoothed-tables.onnx"), weight_only.Config(op_types=("Gather",))
        )
        # row-gathered tables add no DequantizeLinear; any other int8 store would need its folding config.
        float_model = tables.path if tables.count and not tables.needs_fold else smoothed.path
        config = replace(int8_dynamic.configure(self.ctx), op_types=("MatMul", "Gemm"), per_channel=True)
        name = "dynamic-int8-smoothed"
        cand = self._build(
            name,
            "int8",
            "dynamic int8 MatMul/Gemm on smoothed activations, per-channel weights"
            + (", embedding tables int8 per row" if float_model == tables.path else ""),
            lambda: int8_dynamic.quantize(float_model, self.ctx.path(f"cand-{name}.onnx"), config),
        )
        self.float_models[name] = float_model
        self.makers[name] = (
            lambda excl, path: int8_dynamic.quantize(
                float_model, path, replace(config, nodes_to_exclude=excl)
            ),
            lambda node, path: int8_dynamic.quantize(
                float_model, path, replace(config, nodes_to_quantize=(node,))
            ),
            config.op_types,
        )
        return cand

    def back_off(self, failed: Candidate) -> Candidate | None:
        """Keep the most sensitive nodes in float, 1, 2, 4, ... of them, until fidelity is met."""
        make, only, op_types = self.makers[failed.name]
        ranking = self.ranking(failed)
        touched = sens.quantized_nodes(self.float_models.get(failed.name, self.base), failed.path)
        everyone = [n for n in sens.worst_first(ranking, op_types) if n in touched] or sens.worst_first(
            ranking, op_types
        )
        suspects = everyone[:MAX_SUSPECTS]
        refined = sens.refine(
            suspects,
            self.base,
            self.data,
            self.ctx.threads,
            self.judge.classifier,
            only,
            self.ctx.workdir,
            REFINE_SHARE * max(self.ctx.seconds_left(), 0.0),
        )
        self.ctx.record(
            "sensitivity",
            f"{failed.name}: refined {len(suspects)} suspects",
            refined.metric,
            worst=sens.loss_summary(refined),
        )
        # measured suspects by measured loss, then the rest in one-pass order; at most half the nodes.
        quantized = len(everyone)
        worst = (refined.ranked() + everyone[MAX_SUSPECTS:])[: max(1, quantized // 2)]
        steps = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k < len(worst)] + ([len(worst)] if worst else [])
        for k in steps:
            if not self.budget_ok(f"back-off of {failed.name}"):
                break
            excluded = tuple(worst[:k])
            try:
                out = make(excluded, self.ctx.path(f"cand-{failed.name}-x{k}.onnx"))
            except ConversionError as exc:
                self.ctx.record("search", f"{failed.name}: no back-off with {k} float nodes", str(exc))
                continue
            cand = Candidate(
                f"{failed.name}-float{k}",
                out,
                failed.precision,
                f"{failed.description}, {k} most sensitive nodes kept in float",
                dict(failed.session_config),
                excluded,
            )
            if self._add(cand):
                self.ctx.record(
                    "search",
                    f"{cand.name}: keeps {k} nodes in float",
                    f"{failed.name} missed the bar ({failed.verdict}); per-node sensitivity named them",
                    nodes=list(excluded),
                    fidelity=cand.fidelity.as_dict() if cand.fidelity else None,
                )
                return cand
        return None

    def ranking(self, cand: Candidate) -> sens.Sensitivity:
        """Per-node sensitivity of one quantized candidate (measured once, kept for the report)."""
        if cand.name not in self.rankings:
            log.info("per-node sensitivity of %s", cand.name)
            float_model = self.float_models.get(cand.name, self.base)
            found = sens.measure(float_model, cand.path, self.ctx.workdir, self.data, self.ctx.threads)
            self.rankings[cand.name] = found
            self.ctx.record(
                "sensitivity",
                f"{cand.name}: ranked {len(found.loss)} nodes",
                found.metric,
                worst=sens.loss_summary(found),
            )
        return self.rankings[cand.name]

    def combined(self, partial: Candidate) -> None:
        """A backed-off candidate whose float-kept weights are stored as int8 too.

        Two variants race: all such weights, and only embedding tables (Gather, int8 per row),
        which are usually most of the bytes and least of the error. Dynamic int8 runs MatMulInteger, which
        ``session.disable_quant_qdq`` leaves alone, so with it ONNX Runtime folds the extra
        DequantizeLinear nodes at load time; static QDQ needs its QDQ fusions, so there the extra
        DequantizeLinear nodes run per call — measured like everything else.
        """
        folding_ok = partial.name.startswith("dynamic")
        variants = [
            ("weights", weight_only.Config()),
            ("embeddings", weight_only.Config(op_types=("Gather",))),
        ]
        for label, config in variants:
            result = weight_only.quantize(
                partial.path, self.ctx.path(f"cand-{partial.name}-{label}.onnx"), config
            )
            if not result.count or not self.budget_ok(f"{partial.name} + int8 {label}"):
                continue
            cand = Candidate(
                f"{partial.name}+{label}",
                result.path,
                "int8",
                f"{partial.description}; their {label} int8-stored",
                dict(weight_only.SESSION_CONFIG) if result.needs_fold and folding_ok else {},
                partial.excluded,
            )
            self._add(cand)

    # ------------------------------------------------------------------ the race
    def faster_one_found(self, passing: list[Candidate]) -> bool:
        """A quick race (fewer rounds than the final one): does any of these beat the source?"""
        if not passing or not self.gate_latency:
            return bool(passing)
        sessions = {"source": make_session(self.source, self.ctx.threads)}
        sessions.update({c.name: make_session(c.path, self.ctx.threads, c.session_config) for c in passing})
        rounds = budgeting.race_rounds(len(sessions), 10)
        latency = compare_latency(sessions, self.data.first(), rounds=rounds, seconds_per_model=0.1)
        return any(latency.ratio(c.name, "source") < 1 - CLEAR_WIN for c in passing)

    def race(self) -> Candidate:
        passing = [c for c in self.candidates if c.verdict == "fidelity ok"]
        passing, left_out = memory.fit_race(passing, SOURCE_GRAPH)
        for c in left_out:
            c.verdict = "not raced: its session would pass the memory limit (--max-memory)"
        sessions = {
            "source": make_session(self.source, self.ctx.threads),
            SOURCE_AGAIN: make_session(self.source, self.ctx.threads),
        }
        sessions.update({c.name: make_session(c.path, self.ctx.threads, c.session_config) for c in passing})
        log.info("measuring host latency of %d candidates against the source", len(passing))
        latency = compare_latency(
            sessions,
            self.data.first(),
            rounds=budgeting.race_rounds(len(sessions), 30),
            seconds_per_model=RACE_SECONDS,
            aa=("source", SOURCE_AGAIN),
        )
        self.ctx.record(
            "search",
            f"latency noise {latency.noise:.3f}",
            "two sessions of the source raced each other (A/A): differences below this are noise",
            source_ms=_round(latency.median("source")),
            source_again_ms=_round(latency.median(SOURCE_AGAIN)),
        )
        for c in passing:
            c.latency_ms = latency.median(c.name)
            c.latency_ratio = latency.ratio(c.name, "source")
            if self.gate_latency and latency.slower(c.name, "source"):
                c.verdict = (
                    f"rejected: {c.latency_ratio:.3f}x the source's latency"
                    f" (noise ±{latency.margin(c.name, 'source'):.3f})"
                )
            else:
                c.verdict = "eligible"
        eligible = [c for c in passing if c.verdict == "eligible"]
        if not eligible:  # only when even the source graph failed the bar (a pruned base): the fastest
            eligible = [min(passing, key=lambda c: c.latency_ratio or 1e9)] if passing else []
        if not eligible:
            raise ConversionError("no candidate could be measured, not even the source graph")
        # a fleet downloads every update: models over 1 MB should at least halve, if any candidate can.
        source_size = self.source.stat().st_size
        halved = [
            c for c in eligible if source_size <= SIZE_GOAL_MIN_BYTES or c.size_bytes <= source_size / 2
        ]
        pool = halved or eligible
        fastest = min(c.latency_ratio or 1.0 for c in pool)
        # "as fast" when choosing among accepted candidates: the best guess is the measured ratio, so
        # a busy host's large noise must not make a 0.80x and a 0.85x candidate equal.
        margin = min(latency.noise, TIE)
        # sizes within a few percent of the source's bytes count as equal: then the faster one wins.
        size_step = max(1, int(SIZE_TIE * source_size))

        def preference(c: Candidate) -> tuple[bool, bool, int, float]:
            ratio = c.latency_ratio or 1.0
            return (c not in pool, ratio > fastest + margin, c.size_bytes // size_step, ratio)

        ranked = sorted(eligible, key=preference)
        chosen = ranked[0]
        chosen.verdict = "chosen"
        # what the final validation falls back on if the chosen one measures slower there.
        self.ctx.alternatives = [
            Alternative(c.name, c.path, c.precision, dict(c.session_config), c.description) for c in ranked
        ]
        self.source_latency_ms = latency.median("source")
        return chosen


def run_search(ctx: PassContext, base: Path, source: Path, gate_latency: bool = True) -> SearchResult:
    """The int8-selective search over the candidates the profile's scheme allows."""
    scheme = ctx.profile.quantization.scheme
    s = Search(ctx, base, source, gate_latency)
    s.source_graph()
    s.fp32()
    _guarded(ctx, "weight-only int8", s.weight_only)
    # plain int8-compute candidates first: on many models one of them already meets the bar.
    plain: list[Candidate] = []
    if scheme in ("int8-selective", "int8-static") and s.budget_ok("static int8"):
        plain.append(
            s.static(
                "static-int8",
                s.static_config,
                "static int8 QDQ on every int8-capable op, per-channel weights",
            )
        )
        if scheme == "int8-selective" and s.budget_ok("static int8 on Conv/MatMul/Gemm"):
            arith = replace(s.static_config, op_types=int8_static.INT8_ARITHMETIC_OPS)
            plain.append(s.static("static-int8-arith", arith, "static int8 QDQ on Conv/MatMul/Gemm only"))
    if (
        scheme in ("int8-selective", "int8-dynamic")
        and _has_weighted_matmul(base)
        and s.budget_ok("dynamic int8")
    ):
        plain.append(s.dynamic())
        if int8_dynamic.configure(ctx).per_channel and s.budget_ok("dynamic int8, one scale per weight"):
            plain.append(s.dynamic(per_tensor=True))
        smoothed = (
            _guarded(ctx, "smoothed dynamic int8", s.dynamic_smoothed)
            if s.budget_ok("smoothed dynamic int8")
            else None
        )
        plain += [smoothed] if smoothed else []
    # back off (sensitive nodes in float) while no int8-compute candidate that passed is faster than
    # the source; the candidate closest to the bar first, where a few float nodes can fix it.
    backed: list[Candidate] = []
    for cand in sorted(plain, key=_score, reverse=True):
        if cand.verdict == "fidelity ok":
            continue
        if s.faster_one_found([c for c in plain + backed if c.verdict == "fidelity ok"]):
            break
        if _score(cand) < HOPELESS:
            ctx.record("search", f"no back-off for {cand.name}", f"{cand.verdict}: too far below the bar")
            continue
        if s.budget_ok(f"back-off of {cand.name}"):
            found = _guarded(ctx, f"back-off of {cand.name}", functools.partial(s.back_off, cand))
            backed += [found] if found else []
    for cand in backed:
        _guarded(ctx, f"{cand.name} with int8-stored weights", functools.partial(s.combined, cand))
    chosen = s.race()
    for c in s.candidates:
        c.record(
            ctx,
            "quantize-candidate",
            latency_ms=_round(c.latency_ms),
            latency_vs_source=_round(c.latency_ratio),
            accuracy=c.accuracy,
        )
    shown = next((c for c in s.candidates if c.name in ("static-int8", "dynamic-int8")), None)
    if shown is not None and shown.fidelity is not None and s.budget_ok("sensitivity chart"):
        ranking = _guarded(ctx, "sensitivity chart", lambda: s.ranking(shown))
        if ranking is not None:
            ctx.findings.sensitivity = dict(ranking.loss)
            ctx.findings.sensitivity_metric = f"{shown.name}: {ranking.metric}"
    return SearchResult(chosen, s.candidates, s.rankings)


def _guarded(ctx: PassContext, what: str, step: Callable[[], T]) -> T | None:
    """Run one search step; if ONNX Runtime or a quantizer fails inside it, record that and go on."""
    try:
        return step()
    except ConversionError as exc:
        ctx.record("search", f"{what} failed", str(exc))
        return None


def _score(cand: Candidate) -> float:
    """How close a candidate came: argmax agreement for classifiers, else cosine."""
    if cand.fidelity is None:
        return -1.0
    return (
        cand.fidelity.argmax_agreement if cand.fidelity.argmax_agreement is not None else cand.fidelity.cosine
    )


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _has_weighted_matmul(path: Path) -> bool:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return any(
        n.op_type in ("MatMul", "Gemm", "Gather") and any(i in inits for i in n.input) for n in graph.node
    )
