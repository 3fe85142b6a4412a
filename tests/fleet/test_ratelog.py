"""A flood of bad messages is a few log lines: once per device and interval, and a cap over all devices."""

from __future__ import annotations

import logging

import pytest

from fleet.ratelog import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_key_and_interval_with_what_was_held_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rl = RateLimitedLog(logging.getLogger("t.ratelog"), interval_s=60, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t.ratelog"):
        assert rl.warning("bad", "dropped from %s", "bad")
        for _ in range(239):  # 4 a second for a minute
            clock.now += 0.25
            rl.warning("bad", "dropped from %s", "bad")
        assert rl.warning("other", "dropped from %s", "other")  # another device is not held back
        clock.now += 1
        assert rl.warning("bad", "dropped from %s", "bad")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "dropped from bad",
        "dropped from other",
        "dropped from bad (239 more like it held back)",
    ]


def test_many_keys_meet_the_overall_cap_and_memory_stays_bounded(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rl = RateLimitedLog(logging.getLogger("t.ratelog2"), interval_s=60, burst=5, max_keys=100, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t.ratelog2"):
        for i in range(1000):  # made-up device ids
            rl.warning(f"dev{i}", "dropped from %s", i)
    assert len(caplog.records) == 5
    assert len(rl._keys) == 100
