"""The lowest CPU priority for the calling thread: for work that answers no caller (shadow runs, the
background re-hash), so that it takes only CPU time the request path leaves idle.

SCHED_IDLE where Linux offers it: a waking request thread preempts an idle-policy thread at once,
where a nice-19 thread may keep the core until its time slice ends; with two cores and two intra-op
threads per model run, that slice is request latency. Falls back to nice 19 elsewhere. A thread's
policy and nice value are its own on Linux (``os.sched_setscheduler(0, ...)`` and
``os.setpriority`` on the thread id change only the caller).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

log = logging.getLogger(__name__)


def lowest_priority() -> str:
    """Lower the calling thread's CPU priority as far as the platform allows; returns what it got
    ("idle", "nice" or "unchanged")."""
    if hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "idle"
        except OSError as exc:  # e.g. a seccomp profile that refuses it
            log.debug("SCHED_IDLE refused (%s); trying nice 19", exc)
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        return "nice"
    return "unchanged"
