"""The conversion's time budget, and how the steps that scale with it are sized.

``edge-convert --budget SECONDS`` bounds the whole conversion (default :data:`DEFAULT_SECONDS`).
Before the passes run, one call of the source model is timed; from that the budget plans what can
afford it: how many samples judge a candidate (:func:`plan_eval_samples`), how many rounds the
latency races get (:meth:`TimeBudget.race_rounds`), and how much time the search itself has, after
keeping a reserve for validation and packaging (:meth:`TimeBudget.search_seconds`). Every step that
is cut short or skipped says so in the manifest's decisions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from converter import progress

#: a model up to ~20 MB converts in about a minute on 2 cores: the default budget.
DEFAULT_SECONDS = 60.0
#: loading, signing and writing the bundle and report take about this long.
PACKAGE_SECONDS = 2.0
#: share of the budget that judging all candidates may take (each candidate runs every eval sample).
JUDGE_SHARE = 0.35
#: candidates a search typically judges (source, fp32, weight-only, static, dynamic, smoothed, back-offs).
TYPICAL_CANDIDATES = 12
#: fewer eval samples than this say too little about fidelity: below it the budget is overrun instead.
MIN_EVAL_SAMPLES = 16
#: a candidate costs about this many times its calls (quantizer and session set-up on top).
CANDIDATE_OVERHEAD = 2.0
#: share of the budget the final latency race may take; the rounds shrink to fit it.
RACE_SHARE = 0.12
#: the latency races' fewest and most rounds.
MIN_RACE_ROUNDS = 10
MAX_RACE_ROUNDS = 30


@dataclass
class TimeBudget:
    seconds: float
    started: float = field(default_factory=time.monotonic)
    #: seconds of one call of the source on one sample (measured once the ONNX model exists).
    call_seconds: float = 0.0
    #: samples each candidate is judged on (planned with the call time).
    eval_samples: int = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def race_seconds(self, models: int) -> float:
        """A race: warm-up and per-call probes (8 calls), then its rounds of ~2 calls per model."""
        return models * (8 + 2 * self.race_rounds(models)) * self.call_seconds

    def reserve_seconds(self) -> float:
        """What the search's final race (the source twice and ~4 candidates) runs after the search's
        last new candidate, then validation (a 3-model race and two passes over the eval data) and
        packaging: all run whatever the clock says, so the search stops early enough for them."""
        validate = self.race_seconds(3) + 2 * self.eval_samples * self.call_seconds
        return PACKAGE_SECONDS + self.race_seconds(6) + validate

    def search_seconds(self) -> float:
        """The budget the search may spend, counted from the conversion's start (at least 1 s)."""
        return max(1.0, self.seconds - self.reserve_seconds())

    def race_rounds(self, models: int) -> int:
        """Rounds of a latency race of ``models`` sessions that fit its share (a block is ~2 calls)."""
        per_round = max(1e-6, models * 2 * max(self.call_seconds, 0.001))
        fit = int(RACE_SHARE * self.seconds / per_round)
        return max(MIN_RACE_ROUNDS, min(MAX_RACE_ROUNDS, fit))


def plan_eval_samples(budget: TimeBudget, available: int) -> int:
    """Eval samples a candidate's judgement can afford within the budget's share (at least a few)."""
    per_candidate = JUDGE_SHARE * budget.seconds / TYPICAL_CANDIDATES
    fit = int(per_candidate / max(budget.call_seconds, 1e-6))
    return min(available, max(MIN_EVAL_SAMPLES, fit))


_ACTIVE: ContextVar[TimeBudget | None] = ContextVar("converter_time_budget", default=None)


def active() -> TimeBudget | None:
    """The budget of the conversion running in this context, if any."""
    return _ACTIVE.get()


@contextmanager
def running(budget: TimeBudget) -> Iterator[TimeBudget]:
    token = _ACTIVE.set(budget)
    try:
        yield budget
    finally:
        _ACTIVE.reset(token)


def candidate_seconds() -> float:
    """About what one more candidate costs (calibration or build, then judging): the search starts
    one only while at least this much of its budget is left. Planned from the call time, and never
    less than the longest candidate so far took (quantizers' own work does not scale with calls)."""
    budget = active()
    if budget is None:
        return 0.0
    planned = CANDIDATE_OVERHEAD * budget.call_seconds * (budget.eval_samples + MIN_EVAL_SAMPLES)
    tracker = progress.active()
    return max(planned, tracker.longest_candidate if tracker is not None else 0.0)


def race_rounds(models: int, default: int) -> int:
    """Rounds for a latency race of ``models`` sessions: ``default``, fewer when the budget is tight."""
    budget = active()
    return default if budget is None or not budget.call_seconds else min(default, budget.race_rounds(models))


def samples_within(share: float, available: int, least: int) -> int:
    """Samples (one call each) a step may run within ``share`` of the budget: at least ``least``."""
    budget = active()
    if budget is None or not budget.call_seconds:
        return available
    return min(available, max(least, int(share * budget.seconds / budget.call_seconds)))
