"""Warnings that a flood cannot turn into a flood of log lines: at most one line per key and interval.

A device sending a bad message every 250 ms is one WARNING a minute, each saying how many like it
were held back; a sender cycling through made-up device ids meets the overall cap instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimitedLog:
    """``warning(key, fmt, *args)`` logs at most once per ``interval_s`` per key and ``burst`` lines overall."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = 60.0,
        burst: int = 100,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        #: key -> (when it last logged, lines held back since)
        self._keys: OrderedDict[str, tuple[float, int]] = OrderedDict()
        #: overall: lines logged in the current interval, and when that interval started
        self._window = (0.0, 0)

    def warning(self, key: str, fmt: str, *args: object) -> bool:
        """Log ``fmt % args`` unless ``key`` (or everything) was logged too recently; True if logged."""
        now = self._clock()
        with self._lock:
            last, held = self._keys.get(key, (None, 0))
            if last is not None and now - last < self.interval_s:
                self._keys[key] = (last, held + 1)
                return False
            start, lines = self._window
            if now - start >= self.interval_s:
                start, lines = now, 0
            if lines >= self.burst:
                self._window = (start, lines)
                self._keys[key] = (last if last is not None else now, held + 1)
                self._trim()
                return False
            self._window = (start, lines + 1)
            self._keys[key] = (now, 0)
            self._keys.move_to_end(key)
            self._trim()
        if held:
            self.logger.warning(fmt + " (%d more like it held back)", *args, held, stacklevel=2)
        else:
            self.logger.warning(fmt, *args, stacklevel=2)
        return True

    def _trim(self) -> None:
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
