"""Facts about the machine this process runs on that the converter and the agent both size work by.

Standard library only: the agent imports it.
"""

from __future__ import annotations

import os


def available_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo (Linux): what can be allocated without swapping; else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def resident_bytes() -> int | None:
    """This process's resident memory now (/proc/self/statm, Linux); else None."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
