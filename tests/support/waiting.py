"""Polling for a condition in integration tests, with a message that says what never happened."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    pred: Callable[[], object], timeout: float = 10.0, what: str = "the condition", step: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
