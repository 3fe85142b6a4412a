"""Large JSON requests are parsed in a worker process, never in the server's.

``json.loads`` and the list-to-array conversion hold the GIL for their whole run: a 46 MiB JSON
body took seconds on a small CPU, and a worker *thread* would still stall the event loop (health
checks included) that long. A worker process parses it instead and sends back the arrays, which
pickle as plain buffers. The parse's peak memory (10-20 times the JSON) lives and dies there too.

The worker is started on the first large request (spawned, not forked: the server has runtime
threads) and reused; one at a time, since the caller already admits one large body at a time.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from agent.http.codec import decode_request
from agent.infer_type import InferRequest
from sdk.errors import ProtocolError

log = logging.getLogger(__name__)


class ParseFailedError(ProtocolError):
    """The worker died parsing the request (out of memory, most likely)."""

    http_status = 413


class OffloadedDecoder:
    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn")
                )
            return self._pool

    async def decode(
        self, body: bytes | bytearray, header_length: str | None, model: str, version: str | None
    ) -> InferRequest:
        pool = self._executor()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, decode_request, body, header_length, model, version)
        except BrokenProcessPool:
            log.warning("the request parser process died on a %d-byte request; starting a new one", len(body))
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise ParseFailedError("the request could not be parsed within this agent's memory") from None

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
