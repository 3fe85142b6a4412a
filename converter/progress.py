"""Progress of a conversion: a bar on a terminal, plain lines otherwise, both on stderr.

The pipeline opens a :class:`Progress` for the whole conversion (:func:`tracking`); steps report
through the module functions :func:`step`, :func:`candidate` and :func:`reporter`, which do nothing
outside a conversion. On a terminal one line is redrawn in place (step, candidate, a bar of the
time budget spent and the time left); log lines clear it first so the two never mix. Elsewhere
(a pipe, a CI log) each new step or candidate is one plain line, and long loops log at most every
few seconds.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO

log = logging.getLogger("converter.progress")

BAR_WIDTH = 24
#: a terminal bar is redrawn at most this often (seconds).
REDRAW_SECONDS = 0.2


class Progress:
    """What the conversion is doing now, against its time budget."""

    def __init__(self, budget_seconds: float, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.budget = budget_seconds
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = time.monotonic()
        self.step_name = ""
        self.candidate_name = ""
        self.detail = ""
        self._drawn = False
        self._last_draw = 0.0
        self._candidate_started = self.started
        #: the longest a candidate took so far (build and judge), for the budget's next-step check.
        self.longest_candidate = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def eta(self) -> float:
        """Seconds left: the budget bounds the conversion, so what is left of it is the estimate."""
        return max(0.0, self.budget - self.elapsed())

    def step(self, name: str) -> None:
        if self.candidate_name:
            self.longest_candidate = max(self.longest_candidate, time.monotonic() - self._candidate_started)
        self.step_name, self.candidate_name, self.detail = name, "", ""
        self._show(new=True)

    def candidate(self, name: str) -> None:
        if name == self.candidate_name:
            return
        now = time.monotonic()
        if self.candidate_name:  # the previous candidate ran from its start until now
            self.longest_candidate = max(self.longest_candidate, now - self._candidate_started)
        self._candidate_started = now
        self.candidate_name, self.detail = name, ""
        self._show(new=True)

    def advance(self, what: str, done: int, total: int) -> None:
        fresh = not self.detail.startswith(what) or done == total
        self.detail = f"{what} {done}/{total}"
        self._show(new=fresh)

    def line(self) -> str:
        parts = [f"step {self.step_name or '-'}"]
        if self.candidate_name:
            parts.append(f"candidate {self.candidate_name}")
        if self.detail:
            parts.append(self.detail)
        parts.append(f"{self.elapsed():.0f}s elapsed, ~{self.eta():.0f}s left of {self.budget:.0f}s")
        return ", ".join(parts)

    def bar(self) -> str:
        done = min(1.0, self.elapsed() / max(self.budget, 1e-9))
        filled = round(done * BAR_WIDTH)
        return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.line()}"

    def clear(self) -> None:
        """Wipe the terminal bar (before a log line is written)."""
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def finish(self) -> None:
        self.clear()

    def _show(self, new: bool) -> None:
        now = time.monotonic()
        if self.tty:
            if new or now - self._last_draw >= REDRAW_SECONDS:
                self.stream.write("\r\x1b[K" + self.bar())
                self.stream.flush()
                self._drawn, self._last_draw = True, now
        elif new and not self.detail:
            log.info("progress: %s", self.line())


_ACTIVE: ContextVar[Progress | None] = ContextVar("converter_progress", default=None)


def active() -> Progress | None:
    return _ACTIVE.get()


@contextmanager
def tracking(progress: Progress) -> Iterator[Progress]:
    """Make ``progress`` the conversion's tracker; log lines clear its bar while it is active."""
    token = _ACTIVE.set(progress)
    guard = _ClearBar(progress)
    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(guard)
    try:
        yield progress
    finally:
        for handler in handlers:
            handler.removeFilter(guard)
        progress.finish()
        _ACTIVE.reset(token)


class _ClearBar(logging.Filter):
    """Clears the terminal bar before a log line is written, so the line starts at column 0."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self.progress.clear()
        return True


def step(name: str) -> None:
    """A new step of the conversion (a pass, or a phase inside one)."""
    if (p := _ACTIVE.get()) is not None:
        p.step(name)


def candidate(name: str) -> None:
    """A new candidate is being built or judged."""
    if (p := _ACTIVE.get()) is not None:
        p.candidate(name)


def reporter(what: str, every_seconds: float = 2.0) -> Callable[[int, int], None]:
    """A callback ``(done, total)`` for a long loop: the bar's detail on a terminal, else a log line
    at most every few seconds and always at the end."""
    last = [0.0]

    def report(done: int, total: int) -> None:
        p = _ACTIVE.get()
        if p is not None and p.tty:
            p.advance(what, done, total)
            return
        now = time.monotonic()
        if done == total or now - last[0] >= every_seconds:
            last[0] = now
            log.info("%s: %d/%d (%d%%)", what, done, total, 100 * done // max(total, 1))

    return report
