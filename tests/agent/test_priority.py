"""agent.priority: the calling thread, and only it, drops to the lowest CPU priority."""

from __future__ import annotations

import os
import threading

from agent.priority import lowest_priority


def test_only_the_calling_thread_is_lowered() -> None:
    seen: dict[str, object] = {}

    def worker() -> None:
        seen["got"] = lowest_priority()
        if hasattr(os, "sched_getscheduler"):
            seen["policy"] = os.sched_getscheduler(0)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["got"] in ("idle", "nice", "unchanged")
    if seen["got"] == "idle":
        assert seen["policy"] == os.SCHED_IDLE
    if seen["got"] == "nice":
        assert seen["nice"] == 19
    # the caller's own thread keeps its priority
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
    if hasattr(os, "sched_getscheduler"):
        assert os.sched_getscheduler(0) != os.SCHED_IDLE
