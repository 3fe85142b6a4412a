"""Stopping the real processes that integration tests start (brokers, fleets, agents)."""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM, and SIGKILL if it is still there after ``grace_s``; returns once it has exited."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
