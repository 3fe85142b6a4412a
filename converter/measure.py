"""Measurements: host latency, fidelity of one model against another, and accuracy with labels.

Latency is compared side by side: candidates run in interleaved blocks on the same input, so a
burst of load from another process hits all of them alike; blocks last about a millisecond or more,
so even a microsecond model is timed over many calls, and two sessions of the source (an A/A pair)
measure the run's own noise, against which "slower" is decided.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort

from converter import memory
from converter.calibration import Dataset
from converter.runtime import run
from sdk.profiles import QuantizationSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fidelity:
    """How closely a converted model's outputs follow the reference model's on the same inputs."""

    #: share of samples whose top class matches (first output, classifiers only).
    argmax_agreement: float | None
    #: mean per-sample cosine similarity, the worst over float outputs.
    cosine: float
    max_abs_error: float
    samples: int

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)

    def meets(self, bar: QuantizationSpec) -> bool:
        """Classifiers are judged by argmax agreement, everything else by cosine."""
        if self.argmax_agreement is not None:
            return self.argmax_agreement >= bar.min_argmax_agreement
        return self.cosine >= bar.min_cosine

    def shortfall(self, bar: QuantizationSpec) -> str:
        if self.argmax_agreement is not None:
            return f"argmax agreement {self.argmax_agreement:.4f} (bar {bar.min_argmax_agreement})"
        return f"cosine {self.cosine:.5f} (bar {bar.min_cosine})"


def batch_size_for(session: ort.InferenceSession) -> int:
    """Batches of up to 16 when the batch dim is dynamic (fewer when one sample's activations are
    large: a batch's activations stay within a share of the memory room), else the model's batch."""
    dims = [i.shape[0] if i.shape else 1 for i in session.get_inputs()]
    dynamic = all(not isinstance(d, int) or d <= 0 for d in dims)
    return memory.active().batch_within(16) if dynamic else 1


def outputs_over(session: ort.InferenceSession, data: Dataset) -> list[np.ndarray]:
    """Every output of the model over every sample, concatenated along the sample axis."""
    parts: list[list[np.ndarray]] = []
    for feeds in data.batches(batch_size_for(session)):
        outs = run(session, feeds)
        if not parts:
            parts = [[] for _ in outs]
        for acc, out in zip(parts, outs, strict=True):
            acc.append(np.asarray(out))
    return [np.concatenate(p) if p[0].ndim else np.stack(p) for p in parts]


#: output names that mark class scores (argmax is meaningful); embeddings and regressions are not.
CLASSIFIER_HINTS = ("logit", "prob", "score", "class", "label", "softmax", "pred")


def is_classifier(
    outputs: list[np.ndarray], names: list[str] | None = None, has_labels: bool = False
) -> bool:
    """Class scores: [N, C] floats, and labels were given or the output's name says so."""
    first = outputs[0]
    shaped = first.dtype.kind == "f" and first.ndim == 2 and first.shape[1] > 1
    named = bool(names) and any(h in names[0].lower() for h in CLASSIFIER_HINTS)  # type: ignore[index]
    return shaped and (has_labels or named)


def judged_as_classifier(session: ort.InferenceSession, outputs: list[np.ndarray], data: Dataset) -> bool:
    return is_classifier(outputs, [o.name for o in session.get_outputs()], data.labels is not None)


#: samples compared at once in :func:`fidelity`: its float64 temporaries stay a few chunk-sized copies.
FIDELITY_CHUNK = 32


def fidelity(reference: list[np.ndarray], candidate: list[np.ndarray], classifier: bool = False) -> Fidelity:
    """Cosine and max abs error always; argmax agreement of the first output for classifiers."""
    agreement = None
    if classifier:
        agreement = float(np.mean(reference[0].argmax(axis=1) == candidate[0].argmax(axis=1)))
    cosines, max_err = [], 0.0
    for ref, got in zip(reference, candidate, strict=True):
        if ref.dtype.kind != "f":
            cosines.append(float(np.mean(ref == got)))
            continue
        r_all = ref.reshape(len(ref), -1) if ref.ndim else ref.reshape(1, -1)
        g_all = got.reshape(r_all.shape)
        per_sample = []
        for start in range(0, len(r_all), FIDELITY_CHUNK):
            r = r_all[start : start + FIDELITY_CHUNK].astype(np.float64)
            g = g_all[start : start + FIDELITY_CHUNK].astype(np.float64)
            denom = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
            per_sample.append(np.where(denom > 0, np.sum(r * g, axis=1) / np.maximum(denom, 1e-30), 1.0))
            max_err = max(max_err, float(np.max(np.abs(r - g))) if r.size else 0.0)
        cosines.append(float(np.mean(np.concatenate(per_sample))) if per_sample else 1.0)
    return Fidelity(agreement, min(cosines), max_err, len(reference[0]) if reference[0].ndim else 1)


def accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> float:
    """Top-1 accuracy of the first output against integer labels."""
    return float(np.mean(outputs[0].reshape(len(labels), -1).argmax(axis=1) == labels.reshape(-1)))


#: a timed block lasts about this long: a microsecond model is timed over many calls per block,
#: so the timer's and the scheduler's jitter average out within the block.
BLOCK_SECONDS = 0.001
#: at most this many timed calls per block (the first call of a block is never timed).
MAX_BLOCK_CALLS = 200
#: at most this many interleaved rounds (one block of every model per round).
MAX_ROUNDS = 100
#: the smallest relative difference ever called "slower": an A/A run can look perfectly quiet, yet
#: two sessions of graphs that load identically measured up to ~1% apart (memory placement).
MIN_NOISE = 0.02
#: the noise used when no A/A pair was measured.
DEFAULT_NOISE = 0.05


@dataclass(frozen=True)
class Latency:
    """Milliseconds per call of each model: one median per block, blocks interleaved round by round.

    ``aa`` names two sessions of the same model (an A/A pair): how far apart they measure is the
    noise of this run, against which "slower" is decided.
    """

    blocks: dict[str, list[float]]
    aa: tuple[str, str] | None = None

    def median(self, name: str) -> float:
        """The median of the block medians."""
        return float(np.median(self.blocks[name]))

    def quick(self, name: str) -> float:
        """The fastest block median: what the model costs when the machine is not busy with others."""
        return float(np.min(self.blocks[name]))

    def _paired(self, name: str, baseline: str) -> np.ndarray:
        """Per-round ratios: blocks of one round ran back to back, so a burst of load hits both."""
        a, b = np.asarray(self.blocks[name]), np.asarray(self.blocks[baseline])
        return a / np.maximum(b, 1e-12)

    def ratio(self, name: str, baseline: str) -> float:
        """name / baseline: the median of the per-round ratios."""
        return float(np.median(self._paired(name, baseline)))

    def _spread(self, name: str, baseline: str) -> float:
        """Two standard errors of the median per-round ratio (MAD-based, robust to bursts)."""
        r = self._paired(name, baseline)
        mad = float(np.median(np.abs(r - np.median(r))))
        return 2.0 * 1.2533 * 1.4826 * mad / np.sqrt(len(r))

    @property
    def noise(self) -> float:
        """How far apart two sessions of the same model measured: the A/A offset plus its spread."""
        if self.aa is None:
            return DEFAULT_NOISE
        a, b = self.aa
        return max(MIN_NOISE, abs(self.ratio(b, a) - 1.0) + self._spread(b, a))

    def margin(self, name: str, baseline: str) -> float:
        """The relative difference ``name`` needs to be called slower or faster than ``baseline``."""
        return max(self.noise, self._spread(name, baseline))

    def slower(self, name: str, baseline: str) -> bool:
        """Measurably slower: beyond this run's A/A noise and beyond the pair's own spread."""
        return self.ratio(name, baseline) > 1.0 + self.margin(name, baseline)


def compare_latency(
    sessions: Mapping[str, ort.InferenceSession],
    feeds: dict[str, np.ndarray],
    rounds: int = 30,
    seconds_per_model: float = 0.25,
    aa: tuple[str, str] | None = None,
    block_seconds: float = BLOCK_SECONDS,
) -> Latency:
    """Time each session on the same feeds, in blocks taken in turn (the order alternates).

    Each block lasts about ``block_seconds`` (many calls for a microsecond model, one for a slow
    one) and yields the median of its calls; the first call of each block is not counted, since it
    pays for the caches the previous model evicted, which a device serving one model does not.
    At least ``rounds`` rounds, more for fast models, up to about ``seconds_per_model`` each.
    Pass ``aa`` (two sessions of the same model, e.g. the source loaded twice) to measure the noise.
    """
    names = list(sessions)
    for name in names:  # warm-up: first calls pay for allocation and kernel selection
        for _ in range(3):
            sessions[name].run(None, feeds)
    per_call = {name: _call_seconds(sessions[name], feeds) for name in names}
    calls = {
        name: max(1, min(MAX_BLOCK_CALLS, int(block_seconds / max(t, 1e-7)))) for name, t in per_call.items()
    }
    slowest_block = max((calls[n] + 1) * per_call[n] for n in names)
    total = max(rounds, min(MAX_ROUNDS, int(seconds_per_model / max(slowest_block, 1e-6))))
    blocks: dict[str, list[float]] = {name: [] for name in names}
    times = np.empty(MAX_BLOCK_CALLS)
    for r in range(total):
        for name in names if r % 2 == 0 else names[::-1]:
            session, n = sessions[name], calls[name]
            session.run(None, feeds)  # re-warms the caches for this model
            for i in range(n):
                t0 = time.perf_counter()
                session.run(None, feeds)
                times[i] = time.perf_counter() - t0
            blocks[name].append(float(np.median(times[:n])) * 1000.0)
    return Latency(blocks, aa)


def _call_seconds(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> float:
    """The median of a few calls (one call alone can land on a scheduler hiccup)."""
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
