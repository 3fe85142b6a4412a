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
the run's noise; nothing measurably slower than the source is accepted; the rest are ranked by
:func:`converter.candidates.rank` (latency ties within the noise go to the smaller, then the more
faithful), and kept in that order for the final validation to fall back on. Every verdict is
recorded with its numbers. The back-off is also how other passes (QNN) back off: :meth:`Search.build`
takes a maker that can keep nodes in float.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from converter import budget as budgeting
from converter import memory, progress, smoothing
from converter import sensitivity as sens
from converter.candidates import (
    SOURCE,
    SOURCE_AGAIN,
    SOURCE_GRAPH,
    Candidate,
    Judge,
    Verdict,
    rank,
    time_candidates,
)
from converter.candidates import race as race_candidates
from converter.context import Alternative, PassContext
from converter.measure import compare_latency
from converter.passes import cleanup, int8_dynamic, int8_static, weight_only
from converter.runtime import make_session
from sdk.errors import ConversionError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: rebuild a candidate with some nodes kept in float / with only one node quantized.
Maker = Callable[[tuple[str, ...], Path], Path]
OnlyMaker = Callable[[str, Path], Path]
#: how to back a candidate off: its maker, its one-node maker (None: no refinement), its op types.
BackOff = tuple[Maker, OnlyMaker | None, tuple[str, ...] | None]
#: nodes the one-pass ranking hands to the slower one-node-at-a-time refinement.
MAX_SUSPECTS = 48
#: a quick race stops the back-off only on a clear win (it has few rounds, so it is noisier).
CLEAR_WIN = 0.15
#: seconds of calls per model in the final race (a fast model gets MAX_ROUNDS ~1 ms blocks sooner).
RACE_SECONDS = 0.5
#: a candidate this far from the bar is not worth backing off node by node.
HOPELESS = 0.9
#: share of the remaining budget one refinement may use.
REFINE_SHARE = 0.25


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
        self.judge = Judge.for_context(ctx, ctx.reference_onnx or base)
        self.data = self.judge.data
        self.candidates: list[Candidate] = []
        self.rankings: dict[str, sens.Sensitivity] = {}
        self.static_config = replace(int8_static.configure(ctx), op_types=None)
        #: candidate name -> how to rebuild it with some nodes kept in float (for the back-off).
        self.makers: dict[str, BackOff] = {}
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
            cand.decide(Verdict.FAILED, str(exc))
            ok = False
        log.info("candidate %s: %s", cand.name, cand.status)
        return ok

    def _build(self, name: str, precision: str, description: str, make: Callable[[], Path]) -> Candidate:
        """Run a candidate's maker; a maker that fails gives a rejected candidate, not a failed search."""
        progress.candidate(name)
        try:
            path = make()
        except ConversionError as exc:
            cand = Candidate(name, self.ctx.path(f"cand-{name}.onnx"), precision, description)
            cand.decide(Verdict.FAILED, str(exc))
            self.candidates.append(cand)
            log.info("candidate %s: %s", name, cand.status)
            return cand
        cand = Candidate(name, path, precision, description)
        self._add(cand)
        return cand

    def build(
        self, name: str, precision: str, description: str, make: Callable[[], Path], back_off: BackOff
    ) -> Candidate:
        """A candidate from another pass's maker, judged like the search's own and able to back off."""
        self.makers[name] = back_off
        return self._build(name, precision, description, make)

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
        measured: list[str] = []
        if only is not None:
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
            measured = refined.ranked()
        # measured suspects by measured loss, then the rest in one-pass order; at most half the nodes.
        quantized = len(everyone)
        rest = everyone[MAX_SUSPECTS:] if measured else everyone
        worst = (measured + rest)[: max(1, quantized // 2)]
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
                    f"{failed.name} missed the bar ({failed.reason}); per-node sensitivity named them",
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
        sessions = {SOURCE: make_session(self.source, self.ctx.threads)}
        sessions.update({c.name: make_session(c.path, self.ctx.threads, c.session_config) for c in passing})
        rounds = budgeting.race_rounds(len(sessions), 10)
        latency = compare_latency(sessions, self.data.first(), rounds=rounds, seconds_per_model=0.1)
        return any(latency.ratio(c.name, SOURCE) < 1 - CLEAR_WIN for c in passing)

    def race(self) -> Candidate:
        """Race the candidates that met the bar against the source; rank; keep the rest as fallbacks."""
        passing = [c for c in self.candidates if c.verdict is Verdict.MEETS_BAR]
        # Only as many sessions as fit the memory room are loaded at once; the source graph always races.
        passing, left_out = memory.fit_race(passing, SOURCE_GRAPH)
        for c in left_out:
            c.decide(Verdict.NOT_RACED, "its session would pass the memory limit (--max-memory)")
        log.info("measuring host latency of %d candidates against the source", len(passing))
        latency = race_candidates(
            self.source,
            passing,
            self.ctx.threads,
            self.data.first(),
            rounds=budgeting.race_rounds(len(passing) + 2, 30),
            seconds_per_model=RACE_SECONDS,
        )
        self.ctx.record(
            "search",
            f"latency noise {latency.noise:.3f}",
            "two sessions of the source raced each other (A/A): differences below this are noise",
            source_ms=_round(latency.median(SOURCE)),
            source_again_ms=_round(latency.median(SOURCE_AGAIN)),
        )
        time_candidates(latency, passing, self.gate_latency)
        eligible = [c for c in passing if c.verdict is Verdict.ELIGIBLE]
        if not eligible and passing:  # only when even the source graph failed the bar (a pruned base)
            eligible = [min(passing, key=lambda c: c.latency_ratio or 1e9)]
        if not eligible:
            raise ConversionError("no candidate could be measured, not even the source graph")
        ranking = rank(eligible, self.source.stat().st_size, latency.noise)
        for line in ranking.ties:
            self.ctx.record("search", "tie broken", line)
        chosen = ranking.ordered[0]
        chosen.decide(Verdict.CHOSEN, "meets the bar, not slower than the source; first in the ranking")
        # what the final validation falls back on if the chosen one fails there.
        self.ctx.alternatives = [
            Alternative(c.name, c.path, c.precision, dict(c.session_config), c.description)
            for c in ranking.ordered
        ]
        self.source_latency_ms = latency.median(SOURCE)
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
    for cand in sorted(plain, key=Candidate.score, reverse=True):
        if cand.verdict is Verdict.MEETS_BAR:
            continue
        if s.faster_one_found([c for c in plain + backed if c.verdict is Verdict.MEETS_BAR]):
            break
        if cand.score() < HOPELESS:
            ctx.record("search", f"no back-off for {cand.name}", f"{cand.reason}: too far below the bar")
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


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _has_weighted_matmul(path: Path) -> bool:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return any(
        n.op_type in ("MatMul", "Gemm", "Gather") and any(i in inits for i in n.input) for n in graph.node
    )
