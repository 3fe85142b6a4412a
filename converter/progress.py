"""Progress of long steps (calibration, sensitivity, benchmarks) as log lines on stderr."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("converter.progress")


def reporter(what: str, every_seconds: float = 2.0) -> Callable[[int, int], None]:
    """A callback ``(done, total)`` that logs at most every few seconds, and always at the end."""
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= every_seconds:
            last[0] = now
            log.info("%s: %d/%d (%d%%)", what, done, total, 100 * done // max(total, 1))

    return report
