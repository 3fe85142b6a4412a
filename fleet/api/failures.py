"""Wrong-token guesses per client address: after too many, that address is refused for a while (429).

A token's secret is 256 random bits, so guessing cannot succeed; this is about noticing and
throttling whoever tries (a WARNING names the address). Only wrong, unknown or malformed tokens
count: a genuine token that was revoked or expired is a stale credential, not a guess. While an address is refused its tokens are not checked at all, so a guesser learns nothing,
and a correct token from that same address waits out the ``Retry-After`` too (clients behind one
NAT share the fate of the noisiest). The table is bounded: past ``max_addresses`` the least recently
failing address is forgotten.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    window_start: float
    failures: int = 0
    blocked_until: float = 0.0


class AuthFailures:
    """Counts failed token checks per address in fixed windows of ``window_s``."""

    def __init__(
        self,
        max_failures: int = 20,
        window_s: float = 60.0,
        *,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until ``address`` may try again, or None when it is not refused."""
        with self._lock:
            entry = self._entries.get(address)
            left = entry.blocked_until - self._clock() if entry else 0.0
        return math.ceil(left) if left > 0 else None

    def failed(self, address: str) -> None:
        """Count one failed check; the one that reaches the limit starts the refusal (and logs it)."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(address)
            if entry is None or now - entry.window_start >= self.window_s:
                entry = _Entry(window_start=now, blocked_until=entry.blocked_until if entry else 0.0)
                self._entries[address] = entry
            self._entries.move_to_end(address)
            while len(self._entries) > self.max_addresses:
                self._entries.popitem(last=False)
            entry.failures += 1
            if entry.failures != self.max_failures or entry.blocked_until > now:
                return
            entry.blocked_until = now + self.window_s
        log.warning(
            "%d wrong tokens from %s within %g s; refusing every token from %s for %g s (429)",
            self.max_failures,
            address,
            self.window_s,
            address,
            self.window_s,
        )
