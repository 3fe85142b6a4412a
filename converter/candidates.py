"""Candidates and how they are judged: fidelity against the bar, the latency race, the ranking.

Everything that decides whether a converted model may ship lives here, once, below the passes
that make models (:mod:`converter.search`, :mod:`converter.passes.fp16`, ``qnn``, ``validate``),
which import it; nothing here imports them back.

* :class:`Candidate` is one model the converter could ship, with what was measured about it and its
  :class:`Verdict`.
* :class:`Judge` measures fidelity (and accuracy, with labels) against a reference model and
  decides whether a candidate meets the profile's bar (:func:`shortfall`).
* :func:`race` times candidates against the source, loaded twice (an A/A pair whose difference is
  the run's noise); :func:`slower_than_source` is the one "never slower than the source" rule.
* :func:`rank` orders the candidates that passed: candidates whose latencies tie within the
  measured noise are ranked by bytes, then fidelity, then name, so the same measurements always
  give the same choice, and every tie it broke is described.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converter.calibration import Dataset
from converter.measure import (
    Fidelity,
    Latency,
    accuracy,
    compare_latency,
    fidelity,
    judged_as_classifier,
    outputs_over,
)
from converter.runtime import make_session
from sdk.profiles import QuantizationSpec

if TYPE_CHECKING:
    from converter.context import PassContext

#: the source model in a race, and its second session: source vs this is the A/A pair.
SOURCE = "source"
SOURCE_AGAIN = "source (A/A)"
#: the candidate that is the source graph itself.
SOURCE_GRAPH = "source-graph"
EVAL_SAMPLES = 512
#: models above this size should come out at most half as big (when a candidate manages it).
SIZE_GOAL_MIN_BYTES = 1_000_000
#: candidates whose sizes differ by less than this share of the source's bytes are equally small.
SIZE_TIE = 0.05
#: the widest latency tie: on a busy host the A/A noise can reach 30-60%, and a 0.56x int8 model
#: must not tie with a 1.0x weight-only one there.
MAX_TIE = 0.03


class Verdict(enum.Enum):
    """What was decided about a candidate; :attr:`Candidate.reason` says why, with numbers."""

    NOT_MEASURED = "not measured"
    #: it could not be built, or ONNX Runtime could not load or run it.
    FAILED = "failed"
    #: fidelity or accuracy below the profile's bar.
    BELOW_BAR = "below the bar"
    MEETS_BAR = "meets the bar"
    #: measurably slower than the source (beyond the run's noise).
    SLOWER = "slower than the source"
    #: met the bar but was left out of the race (its session would pass --max-memory).
    NOT_RACED = "not raced"
    #: meets the bar and is not slower: ranked, a fallback for validation if not chosen.
    ELIGIBLE = "eligible"
    CHOSEN = "chosen"

    @property
    def rejected(self) -> bool:
        return self in (Verdict.FAILED, Verdict.BELOW_BAR, Verdict.SLOWER, Verdict.NOT_RACED)


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
    verdict: Verdict = Verdict.NOT_MEASURED
    reason: str = ""

    @property
    def size_bytes(self) -> int:
        """0 for a candidate whose file was never written (its maker failed)."""
        return self.path.stat().st_size if self.path.exists() else 0

    def decide(self, verdict: Verdict, reason: str = "") -> None:
        self.verdict, self.reason = verdict, reason

    @property
    def status(self) -> str:
        """``verdict`` or ``verdict: reason``, as the decisions and the report show it."""
        return f"{self.verdict.value}: {self.reason}" if self.reason else self.verdict.value

    def score(self) -> float:
        """How close to the source: argmax agreement for classifiers, else cosine; -1 if unmeasured."""
        if self.fidelity is None:
            return -1.0
        agreement = self.fidelity.argmax_agreement
        return agreement if agreement is not None else self.fidelity.cosine

    def record(self, ctx: PassContext, step: str, **measured: object) -> None:
        """One decision (``name: verdict``) and one report row for this candidate, from ``step``."""
        ctx.record(
            step,
            f"{self.name}: {self.status}",
            self.description,
            size_bytes=self.size_bytes,
            fidelity=self.fidelity.as_dict() if self.fidelity else None,
            **measured,
        )
        ctx.findings.candidates.append(self.row(step))

    def row(self, step: str) -> dict[str, object]:
        return {
            "step": step,
            "name": self.name,
            "description": self.description,
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "latency_ms": self.latency_ms,
            "latency_ratio": self.latency_ratio,
            "fidelity": self.fidelity.as_dict() if self.fidelity else None,
            "accuracy": self.accuracy,
            "excluded_nodes": list(self.excluded),
            "verdict": self.verdict.value,
            "reason": self.reason,
        }


# ---------------------------------------------------------------------------------------- judging
def shortfall(
    fid: Fidelity,
    bar: QuantizationSpec,
    accuracy_drop: float | None = None,
    max_drop: float | None = None,
) -> str | None:
    """None when ``fid`` meets the bar (and accuracy dropped at most ``max_drop``); else one line
    naming the bar that failed and by how much."""
    if not fid.meets(bar):
        if fid.argmax_agreement is not None:
            got, want, what = fid.argmax_agreement, bar.min_argmax_agreement, "argmax agreement"
        else:
            got, want, what = fid.cosine, bar.min_cosine, "cosine"
        return f"{what} {got:.4f} is below the bar {want} by {want - got:.4f}"
    if accuracy_drop is not None and max_drop is not None and accuracy_drop > max_drop:
        return f"accuracy dropped {accuracy_drop:.4f}, over the allowed {max_drop} by {accuracy_drop - max_drop:.4f}"
    return None


class Judge:
    """Fidelity and accuracy of candidates against the model they were made from, at one bar."""

    @classmethod
    def for_context(cls, ctx: PassContext, base: Path, samples: int = EVAL_SAMPLES) -> Judge:
        """Judged on the eval data (else the calibration data), at the profile's bar."""
        data = (ctx.evaluation or ctx.calibration).take(samples)  # type: ignore[union-attr]
        return cls(base, data, ctx.profile.quantization, ctx.options.max_accuracy_drop, ctx.threads)

    def __init__(
        self, base: Path, data: Dataset, bar: QuantizationSpec, max_drop: float, threads: int
    ) -> None:
        self.data, self.bar, self.max_drop, self.threads = data, bar, max_drop, threads
        session = self.session(base)
        self.reference = outputs_over(session, data)
        self.classifier = judged_as_classifier(session, self.reference, data)
        self.base_accuracy = accuracy(self.reference, data.labels) if data.labels is not None else None

    def session(self, path: Path, config: dict[str, str] | None = None) -> Any:
        """The runtime a model is judged in (ONNX Runtime here; a subclass may use another)."""
        return make_session(path, self.threads, config)

    def outputs(self, cand: Candidate) -> list[np.ndarray]:
        return outputs_over(self.session(cand.path, cand.session_config), self.data)

    def check(self, cand: Candidate, outputs: list[np.ndarray] | None = None) -> bool:
        """Measure ``cand`` (or judge its given ``outputs``); verdict MEETS_BAR or BELOW_BAR."""
        outs = self.outputs(cand) if outputs is None else outputs
        cand.fidelity = fidelity(self.reference, outs, self.classifier)
        drop = None
        if self.data.labels is not None:
            cand.accuracy = accuracy(outs, self.data.labels)
            if self.base_accuracy is not None:
                drop = self.base_accuracy - cand.accuracy
        missed = shortfall(cand.fidelity, self.bar, drop, self.max_drop)
        cand.decide(Verdict.BELOW_BAR, missed) if missed else cand.decide(Verdict.MEETS_BAR)
        return missed is None


# ---------------------------------------------------------------------------------------- the race
def race(
    source: Path,
    candidates: list[Candidate],
    threads: int,
    feeds: dict[str, np.ndarray],
    *,
    rounds: int = 30,
    seconds_per_model: float = 0.5,
) -> Latency:
    """Time the candidates against the source loaded twice (the A/A pair), interleaved."""
    sessions = {SOURCE: make_session(source, threads), SOURCE_AGAIN: make_session(source, threads)}
    sessions.update({c.name: make_session(c.path, threads, c.session_config) for c in candidates})
    return compare_latency(
        sessions, feeds, rounds=rounds, seconds_per_model=seconds_per_model, aa=(SOURCE, SOURCE_AGAIN)
    )


def slower_than_source(latency: Latency, name: str) -> str | None:
    """The one "never slower than the source" rule: None, or why ``name`` measured slower.

    Slower means beyond the run's A/A noise and beyond the pair's own spread (:meth:`Latency.slower`).
    """
    if not latency.slower(name, SOURCE):
        return None
    return (
        f"{latency.ratio(name, SOURCE):.3f}x the source's latency (noise ±{latency.margin(name, SOURCE):.3f})"
    )


def time_candidates(latency: Latency, candidates: list[Candidate], gate: bool) -> None:
    """Store each candidate's measured latency; with ``gate``, slower ones become SLOWER."""
    for c in candidates:
        c.latency_ms = latency.median(c.name)
        c.latency_ratio = latency.ratio(c.name, SOURCE)
        slower = slower_than_source(latency, c.name) if gate else None
        c.decide(Verdict.SLOWER, slower) if slower else c.decide(Verdict.ELIGIBLE)


# ---------------------------------------------------------------------------------------- ranking
@dataclass(frozen=True)
class Ranking:
    #: most preferred first.
    ordered: list[Candidate]
    #: one line per tie the ranking broke, naming the candidates and what decided.
    ties: list[str]


def rank(eligible: list[Candidate], source_size: int, noise: float) -> Ranking:
    """Order candidates that met the bar and were not slower; deterministic for given measurements.

    1. For a model over 1 MB, candidates that at least halve it come first (if any do): a fleet
       downloads every update.
    2. Among those, the fastest and every candidate within the measured noise (at most
       :data:`MAX_TIE`) of it tie on speed; slower ones follow, by measured latency.
    3. Tied candidates are ranked by bytes (sizes within 5% of the source's bytes are equal), then
       by fidelity, then by bytes exactly, then by name: never by a latency difference the run
       cannot tell from noise.
    """
    if not eligible:
        return Ranking([], [])
    halved = [c for c in eligible if source_size <= SIZE_GOAL_MIN_BYTES or c.size_bytes <= source_size / 2]
    pool = halved or eligible
    fastest = min(_ratio(c) for c in pool)
    tie = min(max(noise, 0.0), MAX_TIE)
    size_step = max(1, int(SIZE_TIE * source_size))

    def tied(c: Candidate) -> bool:
        return c in pool and _ratio(c) <= fastest + tie

    def key(c: Candidate) -> tuple[object, ...]:
        if tied(c):
            return (0, 0, c.size_bytes // size_step, -round(c.score(), 6), c.size_bytes, c.name)
        return (0 if c in pool else 1, 1, _ratio(c), c.size_bytes, c.name)

    ordered = sorted(eligible, key=key)
    group = [c for c in ordered if tied(c)]
    ties = []
    if len(group) > 1:
        first, second = group[0], group[1]
        if first.size_bytes // size_step != second.size_bytes // size_step:
            how = f"by bytes ({first.size_bytes} < {second.size_bytes})"
        elif round(first.score(), 6) != round(second.score(), 6):
            how = f"by fidelity ({first.score():.5f} > {second.score():.5f}; sizes within {SIZE_TIE:.0%})"
        else:
            how = "by bytes, then name (same size band and fidelity)"
        ties.append(
            f"{', '.join(c.name for c in group)} tie on latency (within ±{tie:.3f} of the fastest,"
            f" {fastest:.3f}x the source): {first.name} first {how}"
        )
    return Ranking(ordered, ties)


def _ratio(c: Candidate) -> float:
    return c.latency_ratio if c.latency_ratio is not None else 1.0
