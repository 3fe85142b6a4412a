"""Shadow evaluation: a new version installed beside the active one answers mirrored requests off the
request path, and telemetry says how it compares (sdk.messages.ShadowQuality).

The request path only offers a finished request (after its response is sent): a sampled share, up
to ``max_bytes`` of inputs, into a bounded queue; a full queue drops the request (counted). One
worker thread, at the lowest CPU priority, runs the shadow on each mirrored request, and on one in
``TIMED_EVERY`` also a second session of the active version (both with one intra-op thread, so
ONNX Runtime runs them on the worker itself), in alternating order: both latencies are measured
the same way, on the same inputs, under the same load. What the shadow costs the callers grows
with ``share`` (bench/agent.py --monitoring: a 2-thread, normal-priority worker running both on
every one of 25 % of requests added 0.3-1.7 ms to the callers' p50 on 2 cores). The worker is also
busy at most ``max_busy`` (10 %) of the time: after each mirrored request it rests nine times as
long as its runs took, because even at the lowest priority a run shares memory bandwidth and caches
with the callers' (the 96 MB bench model's p50 moved by +0.5-0.9 ms with a shadow before this, at
10 % mirrored; +0.21-0.23 ms with a 20 % cap). Mirrored requests offered meanwhile wait in the
queue or are dropped (counted). Agreement compares the shadow's prediction with the answer the
caller got.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from agent.monitoring.ledger import Entry
from agent.monitoring.outputs import OutputReader, Prediction
from agent.priority import lowest_priority
from agent.runtimes import ModelRuntime

if TYPE_CHECKING:
    from sdk.messages import ShadowQuality

log = logging.getLogger(__name__)

#: one mirrored request in this many is also run on the active version, for the latency pair
TIMED_EVERY = 4


@dataclass(frozen=True)
class ShadowSettings:
    #: share of live requests mirrored to the shadow
    share: float = 0.1
    #: mirrored requests waiting for the worker; more are dropped
    queue: int = 16
    #: requests with more input bytes than this are not mirrored (the queue holds their inputs)
    max_bytes: int = 1024 * 1024
    #: the worker runs at most this share of the time and rests in between (see ShadowRunner._work)
    max_busy: float = 0.1
    min_samples: int = 20
    window_s: float = 3600.0
    window_rows: int = 20_000


def agree(active: Prediction, shadow: Prediction) -> bool:
    """Same class per row, or values within 1 % (plus a small absolute slack) for regression."""
    if len(active.values) != len(shadow.values):
        return False
    if active.confidence is not None:
        return active.values == shadow.values
    return all(abs(a - s) <= 1e-3 + 1e-2 * abs(a) for a, s in zip(active.values, shadow.values, strict=True))


class ShadowRunner:
    """One shadow version of one model; :meth:`close` stops its worker and releases its runtime."""

    def __init__(
        self,
        name: str,
        version: str,
        runtime: ModelRuntime,
        reader: OutputReader,
        active: ModelRuntime,
        active_version: str,
        settings: ShadowSettings,
        count: Callable[[str], None] | None = None,
    ) -> None:
        """``runtime`` (the shadow) and ``active`` (a second session of the active version) belong
        to the runner: :meth:`close` releases both."""
        self.name = name
        self.version = version
        self.runtime = runtime
        self.reader = reader
        self.active = active
        self.active_version = active_version
        #: called with "mirrored" or "dropped" per offered request (Prometheus)
        self._count = count or (lambda _outcome: None)
        self._dropped_since = 0
        self.settings = settings
        self._queue: queue.Queue[tuple[dict[str, np.ndarray], Prediction, Entry | None] | None] = queue.Queue(
            settings.queue
        )
        self._lock = threading.Lock()
        # (time, agreed, shadow ms, active ms) per mirrored request
        self._runs: deque[tuple[float, bool, float, float]] = deque(maxlen=settings.window_rows)
        # (time, shadow right, active right) per labelled row of a mirrored request
        self._labels: deque[tuple[float, bool, bool]] = deque(maxlen=settings.window_rows)
        self.mirrored = self.dropped = self.errors = 0
        self._touched = False
        self._flip = False
        self._count_runs = 0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._work, name=f"shadow-{name}", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------- the request side

    def offer(self, inputs: Mapping[str, np.ndarray], prediction: Prediction, entry: Entry | None) -> None:
        """Maybe mirror one answered request; never blocks."""
        if random.random() >= self.settings.share:
            return
        if sum(v.nbytes for v in inputs.values()) > self.settings.max_bytes:
            return
        try:
            self._queue.put_nowait((dict(inputs), prediction, entry))
            self.mirrored += 1
            self._count("mirrored")
        except queue.Full:
            self.dropped += 1
            self._count("dropped")
            with self._lock:
                self._dropped_since += 1
                self._touched = True

    def label(self, entry: Entry, labels: tuple[float | int, ...]) -> None:
        """A label for a mirrored request: both versions' answers are scored against it."""
        shadow = entry.shadow
        if shadow is None or entry.shadow_version != self.version or len(shadow.values) != len(labels):
            return
        now = time.time()
        with self._lock:
            for s, a, true in zip(shadow.values, entry.prediction.values, labels, strict=True):
                self._labels.append((now, _right(s, true, self.reader), _right(a, true, self.reader)))
            self._touched = True

    # ------------------------------------------------------------------------------ the worker

    def _work(self) -> None:
        lowest_priority()  # the callers' requests go first
        while True:
            item = self._queue.get()
            if item is None:
                return
            started = time.perf_counter()
            self._evaluate(*item)
            # Rest in proportion to the time the runs took (wall time: a run stretched by the
            # callers' requests rests longer): the worker is busy at most ``max_busy`` of the time,
            # so most callers' requests never overlap a shadow run (memory bandwidth and caches
            # are shared even when the CPU is not). Offers made meanwhile queue, then drop.
            busy = time.perf_counter() - started
            if self._closing.wait(busy * (1 - self.settings.max_busy) / self.settings.max_busy):
                return

    def _evaluate(
        self, inputs: dict[str, np.ndarray], active_prediction: Prediction, entry: Entry | None
    ) -> None:
        try:
            shadow_out, shadow_s, active_s = self._run_both(inputs)
            prediction = self.reader.read(shadow_out)
        except Exception as exc:  # a failing shadow is a finding, not an agent failure
            log.debug("shadow %s %s failed: %s", self.name, self.version, exc)
            with self._lock:
                self.errors += 1
                self._touched = True
            return
        if prediction is None:
            with self._lock:
                self.errors += 1
            return
        if entry is not None:
            entry.shadow, entry.shadow_version = prediction, self.version
        with self._lock:
            self._runs.append(
                (time.time(), agree(active_prediction, prediction), shadow_s * 1e3, active_s * 1e3)
            )
            self._touched = True

    def _run_both(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, float]:
        """The shadow's outputs and seconds, and on every ``TIMED_EVERY``-th request the active
        version's seconds on the same inputs (else NaN): the latency pair costs one more run."""
        self._count_runs += 1
        if self._count_runs % TIMED_EVERY:
            started = time.perf_counter()
            outputs = self.runtime.run(inputs, [self.reader.output])
            return outputs, time.perf_counter() - started, math.nan
        self._flip = not self._flip  # alternate who runs first: caches favour neither
        order = (self.runtime, self.active) if self._flip else (self.active, self.runtime)
        timings: dict[int, float] = {}
        outputs: dict[str, np.ndarray] = {}
        for runtime in order:
            started = time.perf_counter()
            out = runtime.run(inputs, [self.reader.output])
            timings[id(runtime)] = time.perf_counter() - started
            if runtime is self.runtime:
                outputs = out
        return outputs, timings[id(self.runtime)], timings[id(self.active)]

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=5)
        self._thread.join(timeout=10)
        self.runtime.close()
        self.active.close()

    # -------------------------------------------------------------------------------- telemetry

    def quality(self) -> ShadowQuality | None:
        """The comparison over the window; None when nothing happened since the previous call."""
        from sdk.messages import ShadowQuality

        cutoff = time.time() - self.settings.window_s
        with self._lock:
            if not self._touched:
                return None
            self._touched = False
            for window in (self._runs, self._labels):
                while window and window[0][0] < cutoff:
                    window.popleft()
            runs, labels, errors, dropped = (
                list(self._runs),
                list(self._labels),
                self.errors,
                self._dropped_since,
            )
            self.errors = self._dropped_since = 0
        k = self.settings.min_samples
        q = ShadowQuality(version=self.version, samples=len(runs), errors=errors, dropped=dropped)
        if len(runs) >= k:
            q.agreement = round(float(np.mean([r[1] for r in runs])), 6)
        # latencies over the requests both versions ran, one after the other, on the same inputs
        paired = np.asarray([(r[2], r[3]) for r in runs if not math.isnan(r[3])], dtype=np.float64)
        if len(paired) >= max(1, k // TIMED_EVERY):
            q.latency_ms_p50, q.latency_ms_p99 = (
                round(float(v), 4) for v in np.percentile(paired[:, 0], [50, 99])
            )
            q.active_latency_ms_p50, q.active_latency_ms_p99 = (
                round(float(v), 4) for v in np.percentile(paired[:, 1], [50, 99])
            )
        if len(labels) >= k:
            q.accuracy = round(float(np.mean([r[1] for r in labels])), 6)
            q.active_accuracy = round(float(np.mean([r[2] for r in labels])), 6)
        return q


def _right(predicted: float | int, true: float | int, reader: OutputReader) -> bool:
    if reader.kind == "classifier":
        return predicted == true
    return math.isclose(float(predicted), float(true), rel_tol=1e-2, abs_tol=1e-3)
