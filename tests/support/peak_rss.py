"""Run Python code in this process and write its peak resident memory (bytes) to a file at exit.

``python -m tests.support.peak_rss OUT -m MODULE ARGS...`` or ``... OUT -c CODE ARGS...``. A
child's ``ru_maxrss`` is no good for this: Linux carries the parent's high-water mark into a forked
child (up to its exec), so a child of a large process reports at least the parent's size. The
kernel's VmHWM belongs to the process's own address space, which exec made new.
"""

from __future__ import annotations

import atexit
import runpy
import sys
from pathlib import Path


def high_water_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def main() -> None:
    out, kind, target, *rest = sys.argv[1:]
    atexit.register(lambda: Path(out).write_text(str(high_water_bytes())))
    if kind == "-m":
        sys.argv = [target, *rest]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["-c", *rest]
        exec(compile(target, "<peak_rss>", "exec"), {"__name__": "__main__"})


if __name__ == "__main__":
    main()
