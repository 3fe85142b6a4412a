"""Give the memory the process has freed back to the operating system.

Building an ONNX Runtime session parses the model file and copies, then prepacks, its weights;
the parse buffers are freed once the session is built, but glibc's allocator keeps freed heap
memory for reuse rather than returning it. Measured with the bench's three MLPs (144 MiB of
weights, sessions built in parallel as the agent's early loads do): a process holding the three
sessions had 310 MiB resident, and 206 MiB after ``malloc_trim(0)``, which took 10 ms. A retired
version's session leaves the same kind of hole. So the agent trims after start-up, after each
version it loads while serving and after each one it retires, off the request path. Where the C
library has no ``malloc_trim`` (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable

from sdk.host import resident_bytes

log = logging.getLogger(__name__)

_lock = threading.Lock()
_trim: Callable[[int], int] | None = None
_looked_up = False


def _malloc_trim() -> Callable[[int], int] | None:
    global _trim, _looked_up
    if not _looked_up:
        _looked_up = True
        try:
            _trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
            _trim.argtypes = [ctypes.c_size_t]
            _trim.restype = ctypes.c_int
        except (AttributeError, OSError):
            _trim = None
    return _trim


def resident_mib() -> float | None:
    """This process's resident memory in MiB (Linux), or None."""
    resident = resident_bytes()
    return None if resident is None else resident / 2**20


def release_freed_memory(reason: str) -> bool:
    """Return freed heap memory to the OS (``malloc_trim(0)``); False where the C library cannot.

    The allocator is locked while it trims (~10 ms for a few hundred MiB of heap): call it after
    loads and retirements, never on a request.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    with _lock:  # one trim at a time: two would only take turns at the allocator's locks
        before = resident_mib()
        trim(0)
        after = resident_mib()
    if before is not None and after is not None:
        log.info(
            "gave back %.0f MiB of freed memory after %s (resident %.0f MiB)", before - after, reason, after
        )
    return True
