"""Recent predictions by request id, so that labels fed back later can be joined to them.

Bounded: at most ``capacity`` entries (the oldest go first) and none older than ``max_age_s``
(answered as expired). Kept in memory while the agent runs, and written to one file per model
when it stops (:meth:`PredictionLedger.save`, at most ``capacity`` lines) so labels that arrive
after a restart still join; a crash loses what the file does not hold. An entry holds the
prediction summary (a class or value per row), never an input or an output tensor.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from agent.monitoring.outputs import Prediction
from sdk.fsio import write_atomic

log = logging.getLogger(__name__)

#: request ids longer than this are not tracked (the OIP leaves the length to the server).
MAX_ID_LENGTH = 256


@dataclass(slots=True)
class Entry:
    time: float
    version: str
    group: str | None
    prediction: Prediction
    #: filled by the shadow worker when this request was mirrored and the shadow answered
    shadow: Prediction | None = None
    shadow_version: str | None = None


class PredictionLedger:
    def __init__(self, capacity: int, max_age_s: float) -> None:
        self.capacity = capacity
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, request_id: str, entry: Entry) -> None:
        if len(request_id) > MAX_ID_LENGTH:
            return
        with self._lock:
            # A repeated id replaces the earlier prediction: the label is for the latest answer.
            self._entries.pop(request_id, None)
            self._entries[request_id] = entry
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
                self.evicted += 1

    def get(self, request_id: str) -> Entry | None:
        with self._lock:
            return self._entries.get(request_id)

    def take(self, request_id: str, now: float | None = None) -> tuple[Entry | None, bool]:
        """Remove and return the entry (a second label for the same id is unknown); the flag says it
        was there but too old."""
        now = time.time() if now is None else now
        with self._lock:
            entry = self._entries.pop(request_id, None)
        if entry is None:
            return None, False
        if now - entry.time > self.max_age_s:
            return None, True
        return entry, False

    # ------------------------------------------------------------------------------ on disk

    def save(self, path: Path) -> int:
        """Write the entries (oldest first, one JSON line each) atomically; returns how many."""
        with self._lock:
            items = list(self._entries.items())
        lines = [
            json.dumps(
                [rid, e.time, e.version, e.group, list(e.prediction.values), e.prediction.confidence],
                separators=(",", ":"),
            )
            for rid, e in items
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        # request ids may name patients or customers: readable by the agent's user only
        write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8") if lines else b"", mode=0o600)
        return len(lines)

    def load(self, path: Path) -> int:
        """Read what :meth:`save` wrote (the newest ``capacity`` entries, none expired); a damaged
        line is skipped. Returns how many were taken."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("cannot read the prediction ledger %s: %s", path, exc)
            return 0
        now, taken = time.time(), 0
        for line in text.splitlines()[-self.capacity :]:
            try:
                rid, t, version, group, values, confidence = json.loads(line)
                prediction = Prediction(tuple(values), tuple(confidence) if confidence is not None else None)
                entry = Entry(float(t), str(version), group if group is None else str(group), prediction)
            except (ValueError, TypeError):
                continue
            if isinstance(rid, str) and now - entry.time <= self.max_age_s:
                self.add(rid, entry)
                taken += 1
        return taken
